/**
 * Each image, built the way its Dockerfile builds it, without a container
 * runtime: the build stage's instructions run in a temporary directory laid
 * out like the image (the context of a clean checkout copied in, its RUN
 * commands executed, /out mapped to a directory), the runtime stage's copy of
 * /out becomes the app directory, and the service starts from there with the
 * image's ENV and CMD as the image's unprivileged user, against the real
 * infrastructure: it gets ready, its HEALTHCHECK passes, its migrations entry
 * (the chart's Job) runs, and SIGTERM stops it cleanly. What this cannot see:
 * the base image, apt's tini and the registry.
 *
 * The five builds share one tree, the way a layer cache shares them: a step
 * (a COPY, or one command of a RUN's && chain) that already ran with the same
 * text is not run again. So messaging's build runs every step, and the
 * others compile and deploy only their own service.
 */
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { freePort, infraEnv, natsSeedFile } from '@switchboard/devenv';
import { contextFiles, expand, readDockerfile, stageEnv } from './support/dockerfile';
import { DB_SERVICES, repoRoot, SERVICES, type Service } from './support/paths';

jest.setTimeout(600_000);

const isRoot = process.getuid?.() === 0;
let workdir: string;
let context: string[];

beforeAll(() => {
  workdir = fs.mkdtempSync(path.join(os.tmpdir(), 'sb-image-'));
  fs.chmodSync(workdir, 0o755);
  context = contextFiles();
});

afterAll(() => {
  if (workdir) fs.rmSync(workdir, { recursive: true, force: true });
});

const done = new Set<string>();

/** Runs the build stage in the shared tree; returns the directory standing for its /out. */
function buildStage(service: string): string {
  const dockerfile = readDockerfile(service);
  const stage = dockerfile.stages.find((s) => s.name === 'build')!;
  const vars: Record<string, string> = { ...dockerfile.globalArgs };
  const root = path.join(workdir, 'build');
  const out = path.join(workdir, service, 'out');
  fs.mkdirSync(path.dirname(out), { recursive: true });
  let cwd = root;
  for (const instruction of stage.instructions) {
    const args = expand(instruction.args, vars);
    switch (instruction.keyword) {
      case 'ARG': {
        const [name, value] = args.split('=');
        vars[name!] = value ?? vars[name!] ?? '';
        break;
      }
      case 'WORKDIR':
        cwd = path.join(root, args);
        fs.mkdirSync(cwd, { recursive: true });
        break;
      case 'COPY': {
        if (done.has(`${cwd} COPY ${args}`)) break;
        done.add(`${cwd} COPY ${args}`);
        // Docker's COPY: a file goes into a destination ending in / (or one of several sources),
        // a directory's contents go into the destination.
        const words = instruction.words.map((w) => expand(w, vars));
        const sources = words.slice(0, -1);
        const destination = words.at(-1)!;
        const target = path.resolve(cwd, destination);
        for (const source of sources) {
          const normalized = path.posix.normalize(source).replace(/\/$/, '');
          const asFile = context.includes(normalized);
          const files = asFile ? [normalized] : context.filter((f) => f.startsWith(`${normalized}/`));
          expect({ source, inContext: files.length > 0 }).toEqual({ source, inContext: true });
          for (const file of files) {
            const to = asFile ? (destination.endsWith('/') || sources.length > 1 ? path.join(target, path.basename(file)) : target) : path.join(target, path.relative(normalized, file));
            fs.mkdirSync(path.dirname(to), { recursive: true });
            fs.copyFileSync(path.join(repoRoot, file), to);
          }
        }
        break;
      }
      case 'RUN': {
        if (/npm install --global[^&]*pnpm@/.test(args)) {
          // The image installs the workspace's pnpm; here it must be that version already.
          expect(execFileSync('pnpm', ['--version'], { encoding: 'utf8' }).trim()).toBe(vars.PNPM_VERSION);
          break;
        }
        for (const step of args.split(/\s+&&\s+/)) {
          const command = step.replace(/(^|\s)\/out(?=\/|\s|$)/g, `$1${out}`);
          if (done.has(`${cwd} RUN ${command}`)) continue;
          const result = spawnSync('sh', ['-c', command], { cwd, encoding: 'utf8', env: { ...process.env, CI: 'true' }, maxBuffer: 64 * 1024 * 1024 });
          if (result.status !== 0) throw new Error(`RUN ${step}\nfailed (${result.status}):\n${result.stdout.slice(-3000)}\n${result.stderr.slice(-3000)}`);
          done.add(`${cwd} RUN ${command}`);
        }
        break;
      }
      default:
        break;
    }
  }
  return out;
}

/** The runtime stage: /app is a copy of the build's /out; returns its ENV, CMD and user. */
function runtimeStage(service: string, out: string) {
  const dockerfile = readDockerfile(service);
  const stage = dockerfile.stages.at(-1)!;
  const app = path.join(workdir, service, 'app');
  // COPY --from=build /out ./ (symbolic links kept, as Docker keeps them).
  execFileSync('cp', ['-a', out, app]);
  const user = stage.instructions.filter((i) => i.keyword === 'USER').at(-1)!.words[0]!.split(':').map(Number);
  return {
    app,
    env: stageEnv(stage),
    cmd: stage.instructions.filter((i) => i.keyword === 'CMD').at(-1)!.json!,
    healthcheck: stage.instructions.find((i) => i.keyword === 'HEALTHCHECK')!.json!,
    uid: user[0]!,
    gid: user[1]!,
  };
}

async function waitFor(url: string, exited: () => boolean, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let last = '';
  while (Date.now() < deadline) {
    if (exited()) throw new Error(`exited before ${url} answered`);
    try {
      const res = await fetch(url);
      if (res.ok) return;
      last = `${res.status} ${await res.text()}`;
    } catch (err) {
      last = (err as Error).message;
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`${url} not ready within ${timeoutMs} ms: ${last}`);
}

// messaging first: its build runs every step.
describe.each<Service>(['messaging', ...SERVICES.filter((s) => s !== 'messaging')])('the %s image', (service) => {
  test('builds from its Dockerfile’s instructions and runs, unprivileged, from production dependencies only', async () => {
    const out = buildStage(service);
    const pkg = JSON.parse(fs.readFileSync(path.join(out, 'package.json'), 'utf8'));
    expect(pkg.name).toBe(`@switchboard/${service}`);
    // Production dependencies only: no dev tool in the tree.
    for (const tool of ['typescript', 'jest', 'ts-jest', '@bufbuild/buf', 'ts-proto', '@switchboard/devenv', '@switchboard/client']) {
      expect({ tool, shipped: fs.existsSync(path.join(out, 'node_modules', tool)) }).toEqual({ tool, shipped: false });
    }
    expect(fs.existsSync(path.join(out, 'src'))).toBe(false);
    if (DB_SERVICES.includes(service)) expect(fs.readdirSync(path.join(out, 'migrations')).length).toBeGreaterThan(0);

    const image = runtimeStage(service, out);
    expect(fs.existsSync(path.join(image.app, image.cmd[1]!))).toBe(true);
    const ports = { GRPC_PORT: String(await freePort()), OPS_PORT: String(await freePort()), ...(service === 'gateway' ? { PORT: String(await freePort()) } : {}) };
    const asUser = isRoot ? { uid: image.uid, gid: image.gid } : {};
    // The image's user can read what it runs and write nothing of it.
    fs.chmodSync(path.join(workdir, service), 0o755);
    // Its NATS user's seed, readable by the image's user only (as a mounted Secret would be).
    const seed = path.join(workdir, service, 'nats.nk');
    fs.copyFileSync(natsSeedFile(service), seed);
    if (isRoot) fs.chownSync(seed, image.uid, image.gid);
    fs.chmodSync(seed, 0o400);
    const env = { PATH: process.env.PATH!, ...image.env, ...infraEnv(), ...ports, NATS_NKEY_SEED_FILE: seed, LOG_LEVEL: 'warn' };

    if (DB_SERVICES.includes(service)) {
      const migrate = spawnSync(image.cmd[0]!, ['dist/migrate.js'], { cwd: image.app, env, encoding: 'utf8', ...asUser, timeout: 60_000 });
      expect({ status: migrate.status, stderr: migrate.stderr }).toEqual({ status: 0, stderr: '' });
    }

    const child = spawn(image.cmd[0]!, image.cmd.slice(1), { cwd: image.app, env, stdio: ['ignore', 'pipe', 'pipe'], ...asUser });
    let output = '';
    child.stdout!.on('data', (d) => (output += d));
    child.stderr!.on('data', (d) => (output += d));
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    let done = false;
    void exited.then(() => (done = true));
    try {
      await waitFor(`http://127.0.0.1:${ports.OPS_PORT}/readyz`, () => done, 60_000).catch((err) => {
        throw new Error(`${(err as Error).message}\n${output.slice(-3000)}`);
      });
      const health = spawnSync(image.healthcheck[0]!, image.healthcheck.slice(1), { env, encoding: 'utf8', ...asUser, timeout: 10_000 });
      expect(health.status).toBe(0);
      if (isRoot) {
        const owner = fs.statSync(path.join(image.app, 'dist', 'main.js')).uid;
        expect(owner).not.toBe(image.uid);
      }
    } finally {
      child.kill('SIGTERM');
    }
    expect(await exited).toBe(0);
  });
});
