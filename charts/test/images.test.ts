/**
 * The Dockerfiles, read as a reviewer would, since no container runtime runs
 * here (images.int.test.ts executes their build stage and starts the result):
 * multi-stage, production dependencies only, an unprivileged user that the
 * chart runs as, tini, a health check on the service's own endpoint, its real
 * entry point, and a build context that holds every path they copy.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { parse as parseYaml } from 'yaml';
import { contextFiles, dockerignore, expand, readDockerfile, stageEnv, type Stage } from './support/dockerfile';
import { DB_SERVICES, repoRoot, SERVICES, serviceChartDir, umbrellaDir } from './support/paths';

const rootPackage = JSON.parse(fs.readFileSync(path.join(repoRoot, 'package.json'), 'utf8'));
const chartValues = parseYaml(fs.readFileSync(path.join(umbrellaDir, 'values.yaml'), 'utf8'));
const context = new Set(contextFiles());

const runtimeOf = (stages: Stage[]) => stages.at(-1)!;
const buildOf = (stages: Stage[]) => stages.find((s) => s.name === 'build')!;
const run = (stage: Stage) => stage.instructions.filter((i) => i.keyword === 'RUN').map((i) => i.args).join('\n');

test('the build context of a clean checkout holds what the builds need', () => {
  expect(context.size).toBeGreaterThan(50);
  for (const file of ['pnpm-lock.yaml', 'pnpm-workspace.yaml', 'patches/kafkajs@2.2.4.patch', 'package.json', 'tsconfig.json', 'tsconfig.base.json', 'proto/buf.yaml', 'proto/buf.gen.yaml', 'proto/scripts/generate.js']) {
    expect({ file, inContext: context.has(file) }).toEqual({ file, inContext: true });
  }
  const ignored = dockerignore();
  for (const service of SERVICES) for (const file of ['package.json', 'tsconfig.json', 'src/main.ts']) expect(ignored(`services/${service}/${file}`)).toBe(false);
  for (const service of DB_SERVICES) expect(ignored(`services/${service}/migrations/1700000000000_initial.sql`)).toBe(false);
  // What must never travel into an image build.
  for (const file of ['node_modules/x', 'libs/grpc/node_modules/x', '.data/infra/postgres/PG_VERSION', '.git/config', 'services/gateway/test/auth.test.ts', '.env']) expect({ file, ignored: ignored(file) }).toEqual({ file, ignored: true });
});

describe.each(SERVICES)('services/%s/Dockerfile', (service) => {
  const dockerfile = readDockerfile(service);
  const pkg = JSON.parse(fs.readFileSync(path.join(repoRoot, 'services', service, 'package.json'), 'utf8'));
  const build = buildOf(dockerfile.stages);
  const runtime = runtimeOf(dockerfile.stages);
  const args = dockerfile.globalArgs;

  test('is multi-stage on a pinned Node.js that satisfies the workspace engines', () => {
    expect(dockerfile.stages.map((s) => s.name)).toEqual(['build', 'runtime']);
    const image = expand(runtime.from, args);
    expect(image).toBe(expand(build.from, args));
    const [, major, minor] = /^node:(\d+)\.(\d+)-[\w-]+$/.exec(image) ?? [];
    expect({ image, pinned: !!major }).toEqual({ image, pinned: true });
    const [, needMajor, needMinor] = /(\d+)\.(\d+)/.exec(rootPackage.engines.node)!;
    expect(Number(major) > Number(needMajor) || (Number(major) === Number(needMajor) && Number(minor) >= Number(needMinor))).toBe(true);
  });

  test('installs the locked dependencies with the workspace’s pnpm and deploys production dependencies only', () => {
    const pnpmVersion = build.instructions.find((i) => i.keyword === 'ARG' && i.args.startsWith('PNPM_VERSION='))!.args.split('=')[1];
    expect(`pnpm@${pnpmVersion}`).toBe(rootPackage.packageManager);
    const commands = run(build);
    expect(commands).toMatch(/pnpm fetch --frozen-lockfile/);
    expect(commands).toMatch(/pnpm install --frozen-lockfile --offline/);
    expect(commands).toMatch(new RegExp(`tsc --build services/${service}\\b`));
    expect(commands).toMatch(new RegExp(`pnpm deploy --legacy --offline --filter ${pkg.name.replace('/', '\\/')} --prod /out\\b`));
    // A stale dist/ from the host never reaches the image.
    expect(commands.indexOf('-name dist -prune -exec rm -rf')).toBeLessThan(commands.indexOf('tsc --build'));
  });

  test('every path it copies from the context exists and is not excluded by .dockerignore', () => {
    for (const stage of dockerfile.stages) {
      for (const copy of stage.instructions.filter((i) => (i.keyword === 'COPY' || i.keyword === 'ADD') && !i.flags.from)) {
        const sources = copy.words.slice(0, -1);
        for (const source of sources) {
          const inContext = [...context].some((f) => f === source || f.startsWith(`${source.replace(/\/$/, '')}/`));
          expect({ source, exists: fs.existsSync(path.join(repoRoot, source)), inContext }).toEqual({ source, exists: true, inContext: true });
        }
      }
    }
    expect(runtime.instructions.filter((i) => i.keyword === 'COPY').map((i) => i.flags.from)).toEqual(['build']);
  });

  test('runs as the unprivileged user the chart runs its pods as', () => {
    const user = runtime.instructions.filter((i) => i.keyword === 'USER').at(-1)!.words[0]!;
    const [uid, gid] = user.split(':').map(Number);
    expect(uid).toBeGreaterThan(0);
    expect(uid).toBe(chartValues.global.podSecurityContext.runAsUser);
    expect(gid).toBe(chartValues.global.podSecurityContext.runAsGroup);
    // The application files are root's unless a dev build asks otherwise: the service cannot change its own code.
    expect(runtime.instructions.find((i) => i.keyword === 'ARG' && i.args.startsWith('APP_OWNER='))!.args).toBe('APP_OWNER=0:0');
  });

  test('starts the service’s built entry point under tini', () => {
    const entrypoint = runtime.instructions.filter((i) => i.keyword === 'ENTRYPOINT').at(-1)!.json;
    const cmd = runtime.instructions.filter((i) => i.keyword === 'CMD').at(-1)!.json;
    expect(entrypoint).toEqual(['/usr/bin/tini', '--']);
    expect(run(runtime)).toMatch(/apt-get install -y --no-install-recommends tini/);
    expect(cmd).toEqual(['node', pkg.main]);
    expect(pkg.main).toBe('dist/main.js');
    expect(fs.existsSync(path.join(repoRoot, 'services', service, 'src', 'main.ts'))).toBe(true);
    const workdir = runtime.instructions.filter((i) => i.keyword === 'WORKDIR').at(-1)!.words[0];
    expect(workdir).toBe('/app');
  });

  test('listens where the chart and the service’s own defaults say, and checks its health on /healthz', () => {
    const env = stageEnv(runtime);
    const values = parseYaml(fs.readFileSync(path.join(serviceChartDir(service), 'values.yaml'), 'utf8'));
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const defaults = require(path.join(repoRoot, 'services', service, 'dist', 'config.js')).readConfig({});
    expect(env.HOST).toBe('0.0.0.0');
    expect(env.NODE_ENV).toBe('production');
    expect(Number(env.GRPC_PORT)).toBe(values.ports.grpc);
    expect(Number(env.OPS_PORT)).toBe(values.ports.ops);
    expect(Number(env.GRPC_PORT)).toBe(defaults.GRPC_PORT);
    expect(Number(env.OPS_PORT)).toBe(defaults.OPS_PORT);
    const exposed = runtime.instructions.filter((i) => i.keyword === 'EXPOSE').flatMap((i) => i.words.map(Number));
    const wanted = [values.ports.websocket, values.ports.grpc, values.ports.ops].filter(Boolean);
    expect(exposed.sort()).toEqual(wanted.sort());
    if (service === 'gateway') {
      expect(Number(env.PORT)).toBe(values.ports.websocket);
      expect(Number(env.PORT)).toBe(defaults.PORT);
    }
    const health = runtime.instructions.find((i) => i.keyword === 'HEALTHCHECK')!;
    expect(health.json?.slice(0, 2)).toEqual(['node', '-e']);
    expect(health.json?.[2]).toMatch(/process\.env\.OPS_PORT \+ '\/healthz'/);
  });

  if (DB_SERVICES.includes(service)) {
    test('ships its migrations and the migrate entry the chart’s Job runs', () => {
      expect(fs.readdirSync(path.join(repoRoot, 'services', service, 'migrations')).some((f) => f.endsWith('.sql'))).toBe(true);
      expect(fs.existsSync(path.join(repoRoot, 'services', service, 'src', 'migrate.ts'))).toBe(true);
      // pnpm deploy copies the package directory, migrations included; the runtime stage takes /out whole.
      expect(run(build)).not.toMatch(/rm -rf[^&]*\/out\/migrations/);
    });
  }
});
