/**
 * The dev cluster and the inner loop: k8s/ manifests valid for Kubernetes and
 * complete for the chart with the dev values (every Secret, every address),
 * the kind config, and the Tiltfile run under Starlark (go.starlark.net, as
 * Tilt runs it) with recording stand-ins for Tilt's builtins, checked against
 * the chart, the Dockerfiles and k8s/.
 */
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { parse as parseYaml } from 'yaml';
import { ofKind, parseManifests, podSpec, template, type K8sObject } from './support/helm';
import { KUBERNETES_VERSIONS, KubernetesSchemas } from './support/k8s-schema';
import { containerEnv, deployment, mainContainer, selects, workloads } from './support/objects';
import { DB_SERVICES, repoRoot, SERVICES } from './support/paths';

const k8sDir = path.join(repoRoot, 'k8s');
const DEV_RELEASE = 'switchboard';
const DEV_NAMESPACE = 'switchboard';

interface TiltCall {
  fn: string;
  args: any[];
  kwargs: Record<string, any>;
}

let manifests: K8sObject[];
let chart: K8sObject[];
let tilt: { calls: TiltCall[]; globals: Record<string, unknown> };

function runTiltfile(): typeof tilt {
  const printed = execFileSync('go', ['run', '.', path.join(repoRoot, 'Tiltfile')], {
    cwd: path.join(repoRoot, 'libs', 'devenv', 'tilt'),
    encoding: 'utf8',
    env: { ...process.env, PATH: `${process.env.PATH}:/usr/local/go/bin`, GOFLAGS: '-mod=mod' },
    maxBuffer: 16 * 1024 * 1024,
  });
  return JSON.parse(printed);
}

const calls = (fn: string) => tilt.calls.filter((c) => c.fn === fn);

beforeAll(() => {
  tilt = runTiltfile();
  const files = (calls('k8s_yaml').flatMap((c) => c.args[0]).filter((a) => typeof a === 'string') as string[]);
  manifests = files.flatMap((f) => parseManifests(fs.readFileSync(path.join(repoRoot, f), 'utf8')));
  const helmCall = calls('k8s_yaml').map((c) => c.args[0]).find((a) => a && a.fn === 'helm');
  chart = template({ chart: path.join(repoRoot, helmCall.args[0]), release: helmCall.kwargs.name, namespace: helmCall.kwargs.namespace, values: helmCall.kwargs.values.map((v: string) => path.join(repoRoot, v)) });
}, 120_000);

describe('k8s/', () => {
  test('the Tiltfile applies every manifest in k8s/ (and the dev values through the chart)', () => {
    const applied = calls('k8s_yaml').flatMap((c) => c.args[0]).filter((a) => typeof a === 'string');
    const onDisk = fs.readdirSync(k8sDir).filter((f) => f.endsWith('.yaml') && !['kind-config.yaml', 'values-dev.yaml'].includes(f)).map((f) => `k8s/${f}`);
    expect([...applied].sort()).toEqual(onDisk.sort());
  });

  describe.each(KUBERNETES_VERSIONS)('against the Kubernetes %s API schemas', (version) => {
    test('every manifest and every object of the chart with the dev values is valid', () => {
      const schemas = new KubernetesSchemas(version);
      const problems = [...manifests, ...chart].flatMap((o) => schemas.validate(o).map((p) => `${o.kind}/${o.metadata.name}${p}`));
      expect(problems).toEqual([]);
    });
  });

  test('runs NATS with JetStream, Redis, PostgreSQL and single-node Kafka, each behind the Service the dev values name', () => {
    const values = parseYaml(fs.readFileSync(path.join(k8sDir, 'values-dev.yaml'), 'utf8'));
    const addresses = [new URL(values.global.nats.url), new URL(values.global.redis.url), ...values.global.kafka.brokers.split(',').map((b: string) => new URL(`kafka://${b}`))];
    for (const address of addresses) {
      const service = ofKind(manifests, 'Service').find((s) => s.metadata.name === address.hostname);
      expect({ host: address.hostname, port: service?.spec.ports.some((p: any) => p.port === Number(address.port)) }).toEqual({ host: address.hostname, port: true });
      const backing = workloads(manifests).find((w) => selects(service!.spec.selector, w.spec.template.metadata.labels));
      expect(backing).toBeDefined();
    }
    const nats = ofKind(manifests, 'StatefulSet').find((s) => s.metadata.name === 'nats')!;
    expect(mainContainer(nats).args).toContain('--jetstream');
    const kafka = containerEnv(manifests, mainContainer(ofKind(manifests, 'StatefulSet').find((s) => s.metadata.name === 'kafka')!));
    expect(kafka.KAFKA_PROCESS_ROLES).toBe('broker,controller');
    expect(kafka.KAFKA_ADVERTISED_LISTENERS).toBe('PLAINTEXT://kafka:9092');
  });

  test('creates the Kafka topics the local infrastructure creates', () => {
    const infra = fs.readFileSync(path.join(repoRoot, 'libs', 'devenv', 'infra', 'infra.sh'), 'utf8');
    const topics = /^KAFKA_TOPICS=\(([^)]*)\)/m.exec(infra)![1]!.trim().split(/\s+/);
    const job = ofKind(manifests, 'Job').find((j) => j.metadata.name === 'kafka-topics')!;
    expect(mainContainer(job).args[0]).toContain(`for topic in ${topics.join(' ')}; do`);
  });

  test('PostgreSQL gives the services a role that is not a superuser (row-level security applies to it)', () => {
    const init = ofKind(manifests, 'ConfigMap').find((c) => c.metadata.name === 'postgres-init')!;
    const script = Object.values(init.data!).join('\n');
    expect(script).toMatch(/CREATE ROLE switchboard LOGIN NOSUPERUSER/);
    const url = new URL(Buffer.from(ofKind(manifests, 'Secret').find((s) => s.metadata.name === 'switchboard-postgres')!.stringData.url).toString());
    expect(url.username).toBe('switchboard');
    expect(url.hostname).toBe('postgres');
  });

  test('every Secret key the chart references with the dev values exists in k8s/', () => {
    const secrets = new Map(ofKind(manifests, 'Secret').map((s) => [s.metadata.name, Object.keys({ ...s.data, ...s.stringData })]));
    for (const workload of [...workloads(chart), ...workloads(manifests)]) {
      for (const container of podSpec(workload).containers) {
        for (const entry of container.env ?? []) {
          const ref = entry.valueFrom?.secretKeyRef;
          if (ref) expect({ workload: workload.metadata.name, ref: `${ref.name}/${ref.key}`, exists: secrets.get(ref.name)?.includes(ref.key) ?? false }).toMatchObject({ exists: true });
        }
      }
    }
  });

  test('the dev JWT secret is the one the command-line client mints tokens with', () => {
    const secret = ofKind(manifests, 'Secret').find((s) => s.metadata.name === 'switchboard-jwt')!;
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const { DEV_JWT_SECRET } = require('@switchboard/client') as { DEV_JWT_SECRET: string };
    expect(secret.stringData.secret).toBe(DEV_JWT_SECRET);
  });

  test('every infrastructure container runs unprivileged, with probes and resources', () => {
    for (const workload of workloads(manifests)) {
      const pod = podSpec(workload);
      expect(pod.securityContext.runAsNonRoot).toBe(true);
      for (const container of pod.containers) {
        expect(container.securityContext).toMatchObject({ allowPrivilegeEscalation: false, capabilities: { drop: ['ALL'] } });
        expect(container.resources.limits.memory).toBeDefined();
        if (workload.kind !== 'Job') expect({ workload: workload.metadata.name, probes: !!container.readinessProbe && !!container.livenessProbe }).toEqual({ workload: workload.metadata.name, probes: true });
      }
    }
  });

  test('the kind config makes the cluster whose context the Tiltfile allows', () => {
    const kind = parseYaml(fs.readFileSync(path.join(k8sDir, 'kind-config.yaml'), 'utf8'));
    expect(kind).toMatchObject({ kind: 'Cluster', apiVersion: 'kind.x-k8s.io/v1alpha4' });
    expect(kind.nodes.length).toBeGreaterThan(0);
    expect(calls('allow_k8s_contexts').map((c) => c.args[0])).toEqual([`kind-${kind.name}`]);
  });

  test('the dev values deploy one pod per service without the Prometheus Operator', () => {
    expect(ofKind(chart, 'ServiceMonitor')).toEqual([]);
    expect(ofKind(chart, 'PrometheusRule')).toEqual([]);
    expect(ofKind(chart, 'HorizontalPodAutoscaler')).toEqual([]);
    for (const service of SERVICES) expect(deployment(chart, service, DEV_RELEASE).spec.replicas).toBe(1);
    for (const object of [...chart, ...manifests]) if (object.kind !== 'Namespace') expect(object.metadata.namespace).toBe(DEV_NAMESPACE);
  });
});

describe('the Tiltfile', () => {
  test('builds one image per service from its Dockerfile, and the chart runs exactly those images', () => {
    const builds = calls('docker_build');
    expect(builds.map((b) => b.args[0]).sort()).toEqual(SERVICES.map((s) => `switchboard/${s}`).sort());
    for (const build of builds) {
      const service = build.args[0].split('/')[1];
      expect(build.args[1]).toBe('.');
      expect(build.kwargs.dockerfile).toBe(`services/${service}/Dockerfile`);
      expect(fs.existsSync(path.join(repoRoot, build.kwargs.dockerfile))).toBe(true);
      const image: string = mainContainer(deployment(chart, service, DEV_RELEASE)).image;
      // Tilt swaps its own tag in for every image reference that names the built repository.
      expect(image.replace(/[:@].*$/, '')).toBe(build.args[0]);
      for (const entry of build.kwargs.only) expect(fs.existsSync(path.join(repoRoot, entry))).toBe(true);
    }
    const images = new Set(workloads(chart).map((w) => mainContainer(w).image.replace(/[:@].*$/, '')));
    expect([...images].sort()).toEqual(builds.map((b) => b.args[0]).sort());
  });

  test('live-updates a service by syncing its compiled code into /app/dist, where the image runs it with node --watch', () => {
    for (const build of calls('docker_build')) {
      const service = build.args[0].split('/')[1];
      const steps = build.kwargs.live_update as { fn: string; args: any[] }[];
      const sync = steps.find((s) => s.fn === 'sync')!;
      expect(sync.args).toEqual([`services/${service}/dist`, '/app/dist']);
      expect(steps[0]!.fn).toBe('fall_back_on');
      expect(steps[0]!.args[0]).toEqual(expect.arrayContaining(['libs', 'proto', 'pnpm-lock.yaml']));
      // The image's WORKDIR is /app and it runs dist/main.js.
      const dockerfile = fs.readFileSync(path.join(repoRoot, build.kwargs.dockerfile), 'utf8');
      expect(dockerfile).toMatch(/^WORKDIR \/app$/m);
      expect(mainContainer(deployment(chart, service, DEV_RELEASE)).args).toEqual(['node', '--watch', 'dist/main.js']);
      // The synced files must be writable by the pod's user, in a writable root file system.
      expect(build.kwargs.build_args).toEqual({ APP_OWNER: '10001:10001' });
      expect(dockerfile).toMatch(/COPY --from=build --chown=\$\{APP_OWNER\} \/out/);
      expect(mainContainer(deployment(chart, service, DEV_RELEASE)).securityContext.readOnlyRootFilesystem).toBe(false);
      // The compiled code comes from the host build, which .dockerignore must not hide from Tilt.
      expect(fs.readFileSync(path.join(repoRoot, '.dockerignore'), 'utf8')).not.toMatch(/^\*\*\/dist$/m);
    }
    const compile = calls('local_resource').find((c) => c.args[0] === 'compile')!;
    expect(compile.kwargs.cmd).toBe('pnpm build');
  });

  test('deploys the chart with the dev values, and groups every workload and its objects by service', () => {
    const resources = calls('k8s_resource');
    const names = new Set(chart.map((o) => `${o.metadata.name}:${o.kind.toLowerCase()}`));
    for (const service of SERVICES) {
      const resource = resources.find((r) => r.args[0] === `${DEV_RELEASE}-${service}`)!;
      expect(resource.kwargs).toMatchObject({ new_name: service, labels: [service] });
      for (const object of resource.kwargs.objects) expect({ object, rendered: names.has(object) }).toEqual({ object, rendered: true });
      if (DB_SERVICES.includes(service)) {
        const migrate = resources.find((r) => r.args[0] === `${DEV_RELEASE}-${service}-migrate`)!;
        expect(migrate.kwargs.labels).toEqual([service]);
        expect(names.has(`${DEV_RELEASE}-${service}-migrate:job`)).toBe(true);
      }
    }
    // Every rendered object belongs to some resource (nothing left in "uncategorized").
    const claimed = new Set<string>(resources.flatMap((r) => [...(r.kwargs.objects ?? []), ...(r.args[0] ? [`${r.args[0]}:deployment`, `${r.args[0]}:job`, `${r.args[0]}:statefulset`] : [])]));
    const unclaimed = [...chart, ...manifests]
      .filter((o) => !['Service'].includes(o.kind))
      .map((o) => `${o.metadata.name}:${o.kind.toLowerCase()}`)
      .filter((n) => !claimed.has(n));
    expect(unclaimed).toEqual([]);
    // Workload resources of the infrastructure exist in k8s/.
    for (const resource of resources.filter((r) => r.kwargs.labels?.includes('infra') && r.args[0])) {
      expect(workloads(manifests).map((w) => w.metadata.name)).toContain(resource.args[0]);
    }
  });

  test('a service starts after what it needs at start', () => {
    const resources = calls('k8s_resource');
    const deps = (service: string) => resources.find((r) => r.kwargs.new_name === service)!.kwargs.resource_deps as string[];
    const envOf = (service: (typeof SERVICES)[number]) => containerEnv(chart, mainContainer(deployment(chart, service, DEV_RELEASE)));
    for (const service of SERVICES) {
      const env = envOf(service);
      if (env.DATABASE_URL) expect(deps(service)).toContain('postgres');
      if (env.REDIS_URL) expect(deps(service)).toContain('redis');
      if (env.NATS_URL) expect(deps(service)).toContain('nats');
      if (env.KAFKA_BROKERS) expect(deps(service)).toContain('kafka');
      for (const callee of SERVICES) {
        if (!env[`${callee.toUpperCase()}_ADDR`]) continue;
        // Two services that call each other (room ↔ notification) cannot both wait: the one that does not is
        // the one whose calls are occasional (gRPC clients connect lazily). At least one side must wait.
        const mutual = Boolean(envOf(callee)[`${service.toUpperCase()}_ADDR`]);
        if (mutual) expect(deps(service).includes(callee) || deps(callee).includes(service)).toBe(true);
        else expect(deps(service)).toContain(callee);
      }
    }
  });

  test('port-forwards the gateway’s WebSocket and ops ports as the chart defines them', () => {
    const gateway = calls('k8s_resource').find((r) => r.kwargs.new_name === 'gateway')!;
    const forwards = (gateway.kwargs.port_forwards as { args: number[] }[]).map((f) => f.args[1]);
    const ports = Object.fromEntries(mainContainer(deployment(chart, 'gateway', DEV_RELEASE)).ports.map((p: any) => [p.name, p.containerPort]));
    expect(forwards).toEqual([ports.websocket, ports.ops]);
    const demo = calls('local_resource').find((c) => c.args[0] === 'demo-client')!;
    expect(demo.kwargs.cmd).toContain(`ws://127.0.0.1:${ports.websocket}/ws`);
    expect(fs.existsSync(path.join(repoRoot, 'libs', 'client', 'src', 'cli.ts'))).toBe(true);
  });
});
