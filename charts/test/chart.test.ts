/**
 * The umbrella chart as an SRE would review it: rendered by the real helm with
 * the default values and each scenario (production-like, minimal, TLS on),
 * every object validated against the Kubernetes API schemas of the oldest and
 * newest supported Kubernetes, and what matters asserted on every workload.
 */
import { find, helm, ofKind, podSpec, RELEASE, template, type K8sObject } from './support/helm';
import { KUBERNETES_VERSIONS, KubernetesSchemas } from './support/k8s-schema';
import { containerEnv, deployment, fullname, mainContainer, selects, workloads } from './support/objects';
import { DB_SERVICES, SERVICES, umbrellaDir } from './support/paths';

const SCENARIOS: Record<string, string[]> = {
  default: [],
  production: ['ci/production-values.yaml'],
  minimal: ['ci/minimal-values.yaml'],
  tls: ['ci/tls-values.yaml'],
};
const rendered: Record<string, K8sObject[]> = {};

beforeAll(() => {
  for (const [name, values] of Object.entries(SCENARIOS)) rendered[name] = template({ values });
});

const scenarios = Object.keys(SCENARIOS);

test('helm lint --strict passes with the default values and every scenario', () => {
  for (const values of Object.values(SCENARIOS)) {
    const result = helm(['lint', '--strict', umbrellaDir, ...values.flatMap((v) => ['--values', `${umbrellaDir}/${v}`])]);
    expect({ values, status: result.status, output: result.stdout + result.stderr }).toMatchObject({ status: 0 });
  }
});

test('renders for the oldest Kubernetes it supports and refuses an older one', () => {
  const oldest = KUBERNETES_VERSIONS[0].replace(/^v/, '');
  expect(template({ kubeVersion: oldest }).length).toBe(rendered.default!.length);
  const older = helm(['template', RELEASE, umbrellaDir, '--kube-version', '1.29.9']);
  expect(older.status).not.toBe(0);
  expect(older.stderr).toMatch(/kubeVersion/);
});

describe.each(KUBERNETES_VERSIONS)('against the Kubernetes %s API schemas', (version) => {
  let schemas: KubernetesSchemas;
  beforeAll(() => {
    schemas = new KubernetesSchemas(version);
  });

  test.each(scenarios)('every object of the %s scenario is valid', (scenario) => {
    const problems = rendered[scenario]!.flatMap((o) => schemas.validate(o).map((p) => `${o.kind}/${o.metadata?.name}${p}`));
    expect(problems).toEqual([]);
  });

  test('the validator refuses what the API server would (so the test above can fail)', () => {
    const good = deployment(rendered.default!, 'gateway');
    const typo = structuredClone(good);
    typo.spec.template.spec.containers[0].readinesProbe = typo.spec.template.spec.containers[0].readinessProbe;
    expect(schemas.validate(typo).join()).toMatch(/unknown field "readinesProbe"/);
    const wrongType = structuredClone(good);
    wrongType.spec.template.spec.containers[0].ports[0].containerPort = 'eighty';
    expect(schemas.validate(wrongType).join()).toMatch(/containerPort/);
    const twoPorts = structuredClone(good);
    twoPorts.spec.template.spec.containers[0].ports.push({ ...twoPorts.spec.template.spec.containers[0].ports[0] });
    expect(schemas.validate(twoPorts).join()).toMatch(/same/);
    const noName = structuredClone(good);
    delete noName.spec.template.spec.containers[0].name;
    expect(schemas.validate(noName).join()).toMatch(/name/);
    const monitor = structuredClone(find(rendered.default!, 'ServiceMonitor', fullname('gateway')));
    monitor.spec.endpoints[0].intervall = '15s';
    expect(schemas.validate(monitor).join()).toMatch(/unknown field "intervall"/);
  });
});

describe.each(scenarios)('the %s scenario', (scenario) => {
  const objects = () => rendered[scenario]!;
  const enabledServices = () => SERVICES.filter((s) => objects().some((o) => o.kind === 'Deployment' && o.metadata.name === fullname(s)));

  test('deploys every service', () => {
    expect(enabledServices()).toEqual([...SERVICES]);
  });

  test('object names are unique per kind and fit in 63 characters', () => {
    const seen = new Set<string>();
    for (const o of objects()) {
      const key = `${o.kind}/${o.metadata.name}`;
      expect(seen.has(key) ? key : '').toBe('');
      seen.add(key);
      expect(o.metadata.name.length).toBeLessThanOrEqual(63);
    }
  });

  test('every container has startup, liveness and readiness probes on its own ops endpoints', () => {
    for (const service of SERVICES) {
      const container = mainContainer(deployment(objects(), service));
      const opsPort = container.ports.find((p: any) => p.name === 'ops');
      expect(opsPort).toBeDefined();
      for (const [probe, path] of [['startupProbe', '/healthz'], ['livenessProbe', '/healthz'], ['readinessProbe', '/readyz']] as const) {
        expect({ service, probe, get: container[probe]?.httpGet }).toEqual({ service, probe, get: { path, port: 'ops' } });
      }
      // Readiness checks every dependency with up to 2 s each: a shorter timeout flaps.
      expect(container.readinessProbe.timeoutSeconds).toBeGreaterThanOrEqual(3);
      // Liveness must not restart a pod that only waits for a dependency: it probes /healthz, never /readyz.
      expect(container.livenessProbe.httpGet.path).not.toBe('/readyz');
    }
  });

  test('every container has CPU and memory requests and a memory limit', () => {
    for (const workload of workloads(objects())) {
      for (const container of podSpec(workload).containers) {
        expect({ workload: workload.metadata.name, requests: Object.keys(container.resources?.requests ?? {}).sort(), limit: !!container.resources?.limits?.memory }).toEqual({
          workload: workload.metadata.name,
          requests: ['cpu', 'memory'],
          limit: true,
        });
      }
    }
  });

  test('no container runs as root, escalates privileges or writes its image', () => {
    for (const workload of workloads(objects())) {
      const pod = podSpec(workload);
      for (const container of pod.containers) {
        const runAsUser = container.securityContext?.runAsUser ?? pod.securityContext?.runAsUser;
        const runAsNonRoot = container.securityContext?.runAsNonRoot ?? pod.securityContext?.runAsNonRoot;
        expect({ workload: workload.metadata.name, runAsNonRoot, rootUser: runAsUser === 0 }).toEqual({ workload: workload.metadata.name, runAsNonRoot: true, rootUser: false });
        expect(container.securityContext).toMatchObject({ allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: { drop: ['ALL'] } });
        expect(container.securityContext.privileged ?? false).toBe(false);
      }
      expect(pod.securityContext.seccompProfile).toEqual({ type: 'RuntimeDefault' });
      // The services never call the Kubernetes API: no token in the pods.
      expect(pod.automountServiceAccountToken).toBe(false);
      // A read-only root needs a writable /tmp.
      expect(pod.containers[0].volumeMounts).toContainEqual({ name: 'tmp', mountPath: '/tmp' });
    }
  });

  test('each service has a PodDisruptionBudget that selects its pods and still lets nodes drain', () => {
    for (const service of enabledServices()) {
      const pods = deployment(objects(), service).spec.template.metadata.labels;
      const pdbs = ofKind(objects(), 'PodDisruptionBudget').filter((p) => selects(p.spec.selector.matchLabels, pods));
      expect({ service, pdbs: pdbs.length }).toEqual({ service, pdbs: 1 });
      expect(pdbs[0]!.spec.minAvailable).toBeUndefined();
      expect(pdbs[0]!.spec.maxUnavailable).not.toBe(0);
    }
  });

  test('autoscaled services have an HPA on their Deployment, and the Deployment leaves the replica count to it', () => {
    for (const service of enabledServices()) {
      const workload = deployment(objects(), service);
      const hpa = ofKind(objects(), 'HorizontalPodAutoscaler').find((h) => h.spec.scaleTargetRef.name === workload.metadata.name);
      if (scenario === 'minimal') {
        expect(hpa).toBeUndefined();
        expect(workload.spec.replicas).toBe(1);
        continue;
      }
      expect(hpa).toMatchObject({ spec: { scaleTargetRef: { apiVersion: 'apps/v1', kind: 'Deployment' } } });
      // With replicas set, every helm upgrade would reset what the HPA decided.
      expect(workload.spec.replicas).toBeUndefined();
      expect(hpa!.spec.minReplicas).toBeGreaterThanOrEqual(2);
      expect(hpa!.spec.maxReplicas).toBeGreaterThanOrEqual(hpa!.spec.minReplicas);
      expect(hpa!.spec.metrics).toContainEqual({ type: 'Resource', resource: { name: 'cpu', target: { type: 'Utilization', averageUtilization: expect.any(Number) } } });
    }
  });

  test('the gateway scales on connections per pod, with CPU as the fallback, and scales down slowly', () => {
    if (scenario === 'minimal') return;
    const hpa = find(objects(), 'HorizontalPodAutoscaler', fullname('gateway'));
    const types = hpa.spec.metrics.map((m: any) => m.type);
    expect(types).toEqual(['Pods', 'Resource']);
    expect(hpa.spec.metrics[0].pods).toEqual({ metric: { name: 'gateway_connections' }, target: { type: 'AverageValue', averageValue: expect.stringMatching(/^\d+$/) } });
    expect(hpa.spec.behavior.scaleDown.stabilizationWindowSeconds).toBeGreaterThanOrEqual(300);
    expect(hpa.spec.behavior.scaleDown.policies).toEqual([{ type: 'Pods', value: 1, periodSeconds: expect.any(Number) }]);
  });

  test('every pod is given the time its drain needs before it is killed', () => {
    for (const service of SERVICES) {
      const workload = deployment(objects(), service);
      const container = mainContainer(workload);
      const env = containerEnv(objects(), container);
      const deadlineSeconds = Math.ceil(Number(env.SHUTDOWN_DEADLINE_MS) / 1000);
      const preStop = container.lifecycle?.preStop?.sleep?.seconds;
      expect({ service, preStop: typeof preStop }).toEqual({ service, preStop: 'number' });
      expect(Number.isFinite(deadlineSeconds)).toBe(true);
      // preStop runs inside the grace period, then SIGTERM starts the drain.
      expect(workload.spec.template.spec.terminationGracePeriodSeconds).toBeGreaterThan(preStop + deadlineSeconds);
      // A rollout never takes a ready pod away before its replacement is ready.
      expect(workload.spec.strategy.rollingUpdate.maxUnavailable).toBe(0);
    }
    // The gateway drains connections for 70% of SHUTDOWN_DEADLINE_MS: the default gives clients 21 s to move.
    if (scenario === 'default') {
      const gateway = deployment(objects(), 'gateway');
      expect(containerEnv(objects(), mainContainer(gateway)).SHUTDOWN_DEADLINE_MS).toBe('30000');
      expect(gateway.spec.template.spec.terminationGracePeriodSeconds).toBeGreaterThanOrEqual(40);
    }
  });

  test('pods listen where their Service, probes and ConfigMap say, on all interfaces', () => {
    for (const service of SERVICES) {
      const workload = deployment(objects(), service);
      const container = mainContainer(workload);
      const env = containerEnv(objects(), container);
      expect(env.HOST).toBe('0.0.0.0');
      const ports = Object.fromEntries(container.ports.map((p: any) => [p.name, p.containerPort]));
      expect(Number(env.GRPC_PORT)).toBe(ports.grpc);
      expect(Number(env.OPS_PORT)).toBe(ports.ops);
      if (service === 'gateway') expect(Number(env.PORT)).toBe(ports.websocket);
      const svc = find(objects(), 'Service', fullname(service));
      expect(selects(svc.spec.selector, workload.spec.template.metadata.labels)).toBe(true);
      for (const port of svc.spec.ports) expect(Object.keys(ports)).toContain(port.targetPort);
      // No sticky sessions: any gateway serves any user.
      expect(svc.spec.sessionAffinity ?? 'None').toBe('None');
    }
  });

  test('a service finds the services it calls at a Service that routes to their gRPC port', () => {
    const callers: Record<string, string[]> = { gateway: ['messaging', 'presence', 'room'], notification: ['presence', 'room'], room: ['messaging', 'notification'] };
    for (const [caller, callees] of Object.entries(callers)) {
      const env = containerEnv(objects(), mainContainer(deployment(objects(), caller as any)));
      for (const callee of callees) {
        const address = env[`${callee.toUpperCase()}_ADDR`] as string;
        const [host, port] = address.split(':');
        const svc = find(objects(), 'Service', host!);
        const servicePort = svc.spec.ports.find((p: any) => p.port === Number(port));
        expect({ caller, callee, targetPort: servicePort?.targetPort }).toEqual({ caller, callee, targetPort: 'grpc' });
        expect(selects(svc.spec.selector, deployment(objects(), callee as any).spec.template.metadata.labels)).toBe(true);
      }
    }
  });

  test('a configuration change rolls the pods: the pod template carries checksums of the config and of the Secrets it reads', () => {
    for (const service of SERVICES) {
      const annotations = deployment(objects(), service).spec.template.metadata.annotations;
      expect(annotations['checksum/config']).toMatch(/^[0-9a-f]{64}$/);
      expect(annotations['checksum/secret-refs']).toMatch(/^[0-9a-f]{64}$/);
    }
  });

  test('secrets are only referenced, never rendered', () => {
    expect(ofKind(objects(), 'Secret')).toEqual([]);
    for (const service of SERVICES) {
      const env = containerEnv(objects(), mainContainer(deployment(objects(), service)));
      for (const [name, value] of Object.entries(env)) {
        if (/SECRET|PASSWORD|PRIVATE|DATABASE_URL|SERVICE_ACCOUNT/.test(name)) expect({ name, value }).toEqual({ name, value: { secret: expect.any(String), key: expect.any(String) } });
      }
    }
    for (const configMap of ofKind(objects(), 'ConfigMap')) {
      expect(JSON.stringify(configMap.data)).not.toMatch(/:\/\/[^/@"\s]+:[^/@"\s]+@/);
    }
  });

  test('only the gateway takes traffic from outside the mesh, and only on its WebSocket port', () => {
    const policies = ofKind(objects(), 'NetworkPolicy');
    if (scenario === 'minimal') {
      expect(policies).toEqual([]);
      return;
    }
    const meshPods = SERVICES.map((s) => deployment(objects(), s).spec.template.metadata.labels);
    for (const service of SERVICES) {
      const pods = deployment(objects(), service).spec.template.metadata.labels;
      const mine = policies.filter((p) => selects(p.spec.podSelector.matchLabels, pods));
      expect({ service, policies: mine.length }).toEqual({ service, policies: 1 });
      const policy = mine[0]!;
      expect(policy.spec.policyTypes).toContain('Ingress');
      for (const rule of policy.spec.ingress) {
        const ports = rule.ports.map((p: any) => p.port);
        const open = !rule.from || rule.from.length === 0;
        if (open) expect({ service, ports }).toEqual({ service: 'gateway', ports: ['websocket'] });
        if (ports.includes('grpc')) {
          // The mesh: every Switchboard pod of the release may call, nothing else.
          expect(rule.from).toHaveLength(1);
          for (const labels of meshPods) expect(selects(rule.from[0].podSelector.matchLabels, labels)).toBe(true);
          expect(rule.from[0].namespaceSelector).toBeUndefined();
        }
      }
    }
  });

  test('Prometheus scrapes every service through a ServiceMonitor that matches its Service', () => {
    const monitors = ofKind(objects(), 'ServiceMonitor');
    if (scenario === 'minimal') {
      expect(monitors).toEqual([]);
      return;
    }
    for (const service of SERVICES) {
      const svc = find(objects(), 'Service', fullname(service));
      const monitor = monitors.find((m) => selects(m.spec.selector.matchLabels, svc.metadata.labels));
      expect(monitor).toBeDefined();
      expect(monitor!.spec.endpoints).toEqual([expect.objectContaining({ port: 'ops', path: '/metrics' })]);
      expect(svc.spec.ports.map((p: any) => p.name)).toContain('ops');
      // The alerts and dashboards select series by job = the service's name.
      expect(monitor!.spec.jobLabel).toBe('app.kubernetes.io/name');
      expect(svc.metadata.labels!['app.kubernetes.io/name']).toBe(service);
    }
  });

  test('migrations run as a Helm hook Job from the service image before install and upgrade', () => {
    for (const service of DB_SERVICES) {
      const job = find(objects(), 'Job', `${fullname(service)}-migrate`);
      const workload = deployment(objects(), service);
      expect(job.metadata.annotations).toMatchObject({ 'helm.sh/hook': 'pre-install,pre-upgrade' });
      const container = podSpec(job).containers[0];
      expect(container.image).toBe(mainContainer(workload).image);
      expect(container.args).toEqual(['node', 'dist/migrate.js']);
      expect(container.env.find((e: any) => e.name === 'DATABASE_URL').valueFrom.secretKeyRef).toBeDefined();
      expect(podSpec(job).restartPolicy).toBe('Never');
      // Its pods are never endpoints of the service, nor counted by its PDB.
      const jobPods = job.spec.template.metadata.labels;
      expect(selects(find(objects(), 'Service', fullname(service)).spec.selector, jobPods)).toBe(false);
      for (const pdb of ofKind(objects(), 'PodDisruptionBudget')) expect(selects(pdb.spec.selector.matchLabels, jobPods)).toBe(false);
      // The hook's ServiceAccount exists before the Job (a pre-install hook cannot use the release's own objects).
      const account = find(objects(), 'ServiceAccount', podSpec(job).serviceAccountName);
      expect(Number(account.metadata.annotations!['helm.sh/hook-weight'])).toBeLessThan(Number(job.metadata.annotations!['helm.sh/hook-weight']));
    }
    for (const service of SERVICES.filter((s) => !DB_SERVICES.includes(s))) {
      expect(ofKind(objects(), 'Job').filter((j) => j.metadata.name === `${fullname(service)}-migrate`)).toEqual([]);
    }
  });

  test('every image is the service image, pinned to a tag or digest', () => {
    for (const service of SERVICES) {
      const image: string = mainContainer(deployment(objects(), service)).image;
      expect(image).toMatch(new RegExp(`(^|/)switchboard/${service}(:[\\w.-]+|@sha256:[0-9a-f]{64})$`));
      expect(image).not.toMatch(/:latest$/);
    }
  });
});

describe('the gateway Ingress', () => {
  test('routes /ws to the gateway WebSocket port, with timeouts far above the heartbeat and no session affinity', () => {
    const objects = rendered.default!;
    const ingress = find(objects, 'Ingress', fullname('gateway'));
    const path = ingress.spec.rules[0].http.paths[0];
    expect(path).toMatchObject({ path: '/ws', pathType: 'Prefix', backend: { service: { name: fullname('gateway'), port: { name: 'websocket' } } } });
    const heartbeatSeconds = Number(containerEnv(objects, mainContainer(deployment(objects, 'gateway'))).HEARTBEAT_INTERVAL_MS) / 1000;
    for (const key of ['proxy-read-timeout', 'proxy-send-timeout']) {
      expect(Number(ingress.metadata.annotations![`nginx.ingress.kubernetes.io/${key}`])).toBeGreaterThan(heartbeatSeconds * 2);
    }
    expect(Object.keys(ingress.metadata.annotations!).filter((k) => /affinity|sticky|session-cookie|upstream-hash/.test(k))).toEqual([]);
  });

  test.each(['production', 'tls'])('terminates TLS for its host in the %s scenario', (scenario) => {
    const ingress = find(rendered[scenario]!, 'Ingress', fullname('gateway'));
    const host = ingress.spec.rules[0].host;
    expect(host).toMatch(/\./);
    expect(ingress.spec.tls).toEqual([{ hosts: [host], secretName: expect.any(String) }]);
    expect(ingress.metadata.annotations!['nginx.ingress.kubernetes.io/ssl-redirect']).toBe('true');
  });

  test('is absent in the minimal scenario', () => {
    expect(ofKind(rendered.minimal!, 'Ingress')).toEqual([]);
  });
});

describe('values reach the pods', () => {
  test('a config change rolls only the pods of the service it concerns', () => {
    const before = rendered.default!;
    const after = template({ set: { 'messaging.config.LOG_LEVEL': 'debug' } });
    for (const service of SERVICES) {
      const checksum = (objects: K8sObject[]) => deployment(objects, service).spec.template.metadata.annotations['checksum/config'];
      expect({ service, changed: checksum(before) !== checksum(after) }).toEqual({ service, changed: service === 'messaging' });
    }
  });

  test('pointing a service at another Secret rolls its pods', () => {
    const after = template({ set: { 'gateway.auth.jwtSecret.existingSecret': 'jwt-rotated' } });
    const checksum = (objects: K8sObject[]) => deployment(objects, 'gateway').spec.template.metadata.annotations['checksum/secret-refs'];
    expect(checksum(after)).not.toBe(checksum(rendered.default!));
    expect(containerEnv(after, mainContainer(deployment(after, 'gateway'))).JWT_SECRET).toEqual({ secret: 'jwt-rotated', key: 'secret' });
  });

  test('the production scenario wires credentials, per-service roles and the migrations role from Secrets', () => {
    const objects = rendered.production!;
    const env = (service: (typeof SERVICES)[number]) => containerEnv(objects, mainContainer(deployment(objects, service)));
    expect(env('messaging').DATABASE_URL).toEqual({ secret: 'switchboard-postgres-messaging', key: 'url' });
    expect(env('presence').DATABASE_URL).toBeUndefined();
    expect(env('presence').REDIS_URL).toEqual({ secret: 'switchboard-redis', key: 'url' });
    expect(env('gateway').NATS_URL).toEqual({ secret: 'switchboard-nats', key: 'url' });
    expect(env('gateway').JWT_JWKS_URL).toBe('https://auth.example.com/.well-known/jwks.json');
    expect(env('gateway').JWT_SECRET).toBeUndefined();
    expect(env('gateway').ALLOWED_ORIGINS).toBe('https://app.example.com');
    expect(env('notification').VAPID_PRIVATE_KEY).toEqual({ secret: 'switchboard-push', key: 'vapid-private-key' });
    expect(env('messaging').OTEL_EXPORTER_OTLP_ENDPOINT).toBe('http://otel-collector.observability:4318');
    expect(env('messaging').KAFKA_BROKERS).toBe('kafka-0.kafka.data:9092,kafka-1.kafka.data:9092,kafka-2.kafka.data:9092');
    const job = find(objects, 'Job', `${fullname('messaging')}-migrate`);
    expect(podSpec(job).containers[0].env.find((e: any) => e.name === 'DATABASE_URL').valueFrom.secretKeyRef.name).toBe('switchboard-postgres-owner');
    expect(mainContainer(deployment(objects, 'messaging')).image).toBe('registry.example.com/switchboard/messaging@sha256:4f53cda18c2baa0c0354bb5f9a3ecbe5ed12ab4d8e11ba873c2f11161202b945');
    expect(mainContainer(deployment(objects, 'gateway')).image).toBe('registry.example.com/switchboard/gateway:1.4.2');
    expect(podSpec(deployment(objects, 'gateway')).imagePullSecrets).toEqual([{ name: 'registry-credentials' }]);
  });

  test('each gateway pod is its own gateway: GATEWAY_ID is the pod name', () => {
    expect(containerEnv(rendered.default!, mainContainer(deployment(rendered.default!, 'gateway'))).GATEWAY_ID).toEqual({ field: 'metadata.name' });
  });

  test('a service can be left out', () => {
    const objects = template({ set: { 'notification.enabled': false } });
    expect(objects.filter((o) => o.metadata.name.startsWith(fullname('notification')))).toEqual([]);
    expect(objects.some((o) => o.metadata.name === fullname('gateway'))).toBe(true);
  });

  test('another release name gives other object names and addresses', () => {
    const objects = template({ release: 'chat' });
    const env = containerEnv(objects, mainContainer(deployment(objects, 'gateway', 'chat')));
    expect(env.MESSAGING_ADDR).toBe('chat-messaging:50052');
    expect(RELEASE).not.toBe('chat');
  });
});
