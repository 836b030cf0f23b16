/**
 * Values: every one documented, the schema refusing what would hurt, the
 * template refusing what the schema cannot see, and the config the chart
 * passes in step with what the services read.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { isMap, isScalar, parseDocument, type YAMLMap } from 'yaml';
import { ofKind, template, templateError } from './support/helm';
import { containerEnv, deployment, mainContainer } from './support/objects';
import { chartsDir, repoRoot, SERVICES, serviceChartDir, umbrellaDir } from './support/paths';

/** Paths of keys in a values file with no "# -- …" comment above them. */
function undocumented(file: string): string[] {
  const doc = parseDocument(fs.readFileSync(file, 'utf8'));
  const missing: string[] = [];
  const walk = (map: YAMLMap, prefix: string) => {
    map.items.forEach((pair, index) => {
      const key = isScalar(pair.key) ? String(pair.key.value) : String(pair.key);
      const comment = (pair.key as { commentBefore?: string }).commentBefore ?? (index === 0 ? map.commentBefore : undefined);
      if (!comment || !/(^|\n)\s*-- \S/.test(comment)) missing.push(`${prefix}${key}`);
      // Lists are data (their items are examples of a value), not further values.
      if (isMap(pair.value)) walk(pair.value, `${prefix}${key}.`);
    });
  };
  if (isMap(doc.contents)) walk(doc.contents, '');
  return missing;
}

describe('every value is documented', () => {
  const files = [path.join(umbrellaDir, 'values.yaml'), ...SERVICES.map((s) => path.join(serviceChartDir(s), 'values.yaml'))];
  test.each(files.map((f) => [path.relative(repoRoot, f), f]))('%s', (_name, file) => {
    expect(undocumented(file)).toEqual([]);
  });

  test('every chart has a schema for its values', () => {
    for (const dir of [umbrellaDir, ...SERVICES.map(serviceChartDir)]) expect(fs.existsSync(path.join(dir, 'values.schema.json'))).toBe(true);
  });
});

describe('the schema refuses bad values, naming them', () => {
  const cases: [string, Parameters<typeof templateError>[0], RegExp][] = [
    ['a misspelt setting', { set: { 'gateway.config.LOG_LEVLE': 'debug' } }, /LOG_LEVLE/],
    ['a log level the service does not know', { set: { 'messaging.config.LOG_LEVEL': 'verbose' } }, /LOG_LEVEL/],
    ['a negative deadline', { set: { 'gateway.config.SHUTDOWN_DEADLINE_MS': -1 } }, /SHUTDOWN_DEADLINE_MS/],
    ['a number as words', { set: { 'room.config.MAX_PAGE_SIZE': 'lots' } }, /MAX_PAGE_SIZE/],
    ['a setting the chart owns (the listen port)', { set: { 'gateway.config.PORT': 9000 } }, /PORT/],
    ['a secret in the ConfigMap', { set: { 'notification.config.VAPID_PRIVATE_KEY': 'k' } }, /VAPID_PRIVATE_KEY/],
    ['a misspelt top-level section', { setJson: { gatway: { enabled: true } } }, /gatway/],
    ['running as root', { set: { 'global.podSecurityContext.runAsUser': 0 } }, /runAsUser/],
    ['privilege escalation', { set: { 'global.containerSecurityContext.allowPrivilegeEscalation': true } }, /allowPrivilegeEscalation/],
    ['a container with no memory limit', { set: { 'messaging.resources.limits.memory': 'null' } }, /memory/],
    ['a CPU request that is not a quantity', { set: { 'presence.resources.requests.cpu': 'lots' } }, /cpu/],
    ['a PDB that blocks every node drain', { set: { 'gateway.podDisruptionBudget.maxUnavailable': 0 } }, /maxUnavailable/],
    ['autoscaling to zero', { set: { 'room.autoscaling.minReplicas': 0 } }, /minReplicas/],
    ['a privileged port', { set: { 'gateway.ports.websocket': 80 } }, /websocket/],
    ['a readiness timeout shorter than the dependency checks', { set: { 'messaging.probes.readiness.timeoutSeconds': 1 } }, /timeoutSeconds/],
    ['a malformed digest', { set: { 'gateway.image.digest': 'sha256:abc' } }, /digest/],
    ['NATS over HTTP', { set: { 'global.nats.url': 'http://nats:4222' } }, /nats/],
    ['Kafka brokers without ports', { set: { 'global.kafka.brokers': 'kafka' } }, /brokers/],
    ['PostgreSQL without a Secret', { set: { 'global.postgres.existingSecret': '' } }, /existingSecret/],
    ['a JWKS fetched in the clear', { set: { 'gateway.auth.jwksUrl': 'http://auth.example.com/jwks' } }, /jwksUrl/],
    ['an Ingress timeout that cuts idle WebSockets', { set: { 'gateway.ingress.timeoutSeconds': 10 } }, /timeoutSeconds/],
    ['a memory alert above 100%', { set: { 'monitoring.prometheusRule.thresholds.memoryPercent': 120 } }, /memoryPercent/],
    ['metrics open to everyone', { setJson: { 'global.networkPolicy.metricsFrom': [] } }, /metricsFrom/],
    ['a secretEnv for a setting the service does not read', { setJson: { 'notification.secretEnv': { NOPE: { existingSecret: 's', secretKey: 'k' } } } }, /NOPE/],
  ];
  test.each(cases)('%s', (_name, options, message) => {
    const error = templateError(options);
    expect(error).toMatch(/values don't meet the specifications of the schema/);
    expect(error).toMatch(message);
  });
});

describe('the templates refuse what the schema cannot see', () => {
  const cases: [string, Parameters<typeof templateError>[0], RegExp][] = [
    ['a grace period shorter than the drain', { set: { 'gateway.lifecycle.terminationGracePeriodSeconds': 20 } }, /shorter than preStopSleepSeconds \+ SHUTDOWN_DEADLINE_MS/],
    ['more pods at least than at most', { set: { 'messaging.autoscaling.minReplicas': 5, 'messaging.autoscaling.maxReplicas': 3 } }, /maxReplicas \(3\) is below autoscaling.minReplicas \(5\)/],
    ['TLS without a host', { set: { 'gateway.ingress.tls.enabled': true } }, /host is required when TLS is on/],
    ['no way to check tokens', { set: { 'gateway.auth.jwtSecret.existingSecret': '' } }, /jwtSecret.existingSecret is required/],
    ['an Ingress timeout near the heartbeat', { set: { 'gateway.ingress.timeoutSeconds': 60, 'gateway.config.HEARTBEAT_INTERVAL_MS': 45000 } }, /must exceed twice the heartbeat/],
    ['Redis with neither a URL nor a Secret', { set: { 'global.redis.url': '' } }, /global.redis.url/],
  ];
  test.each(cases)('%s', (_name, options, message) => {
    expect(templateError(options)).toMatch(message);
  });

  test('a long enough grace period is taken as given', () => {
    const objects = template({ set: { 'gateway.lifecycle.terminationGracePeriodSeconds': 120 } });
    expect(deployment(objects, 'gateway').spec.template.spec.terminationGracePeriodSeconds).toBe(120);
  });

  test('large numbers reach the pods as digits, not in scientific notation', () => {
    const objects = template({ values: [writeValues({ notification: { config: { LOG_LEVEL: 'info', SHUTDOWN_DEADLINE_MS: 10000, MAX_EVENT_AGE_MS: 86400000 } } })] });
    expect(containerEnv(objects, mainContainer(deployment(objects, 'notification'))).MAX_EVENT_AGE_MS).toBe('86400000');
  });
});

function writeValues(values: unknown): string {
  const file = path.join(fs.mkdtempSync(path.join(require('node:os').tmpdir(), 'sb-values-')), 'values.yaml');
  fs.writeFileSync(file, JSON.stringify(values));
  return file;
}

describe('the configuration is the services’ own', () => {
  test('each chart accepts exactly the settings its service reads (charts/scripts/config-schema.js --check)', () => {
    const result = spawnSync(process.execPath, [path.join(chartsDir, 'scripts', 'config-schema.js'), '--check'], { encoding: 'utf8' });
    expect(result.stderr).toBe('');
    expect(result.status).toBe(0);
  });

  test('every variable the chart sets is one the service reads', () => {
    const objects = template({ values: ['ci/production-values.yaml'] });
    for (const service of SERVICES) {
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      const { readConfig } = require(path.join(repoRoot, 'services', service, 'dist', 'config.js')) as { readConfig: (env: Record<string, string>) => Record<string, unknown> };
      const reads = Object.keys(readConfig({}));
      const set = Object.keys(containerEnv(objects, mainContainer(deployment(objects, service))));
      expect({ service, unknown: set.filter((name) => !reads.includes(name)) }).toEqual({ service, unknown: [] });
    }
  });

  test('the values the chart renders are ones the services accept', () => {
    const objects = template({ values: ['ci/production-values.yaml'] });
    for (const configMap of ofKind(objects, 'ConfigMap').filter((c) => SERVICES.some((s) => c.metadata.name.endsWith(`-${s}`)))) {
      const service = SERVICES.find((s) => configMap.metadata.name.endsWith(`-${s}`))!;
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      const { readConfig } = require(path.join(repoRoot, 'services', service, 'dist', 'config.js')) as { readConfig: (env: Record<string, string>) => unknown };
      expect(() => readConfig({ ...configMap.data, DATABASE_URL: 'postgres://u:p@db:5432/x', REDIS_URL: 'redis://r:6379', NATS_URL: 'nats://n:4222', JWT_SECRET: 's', GATEWAY_ID: 'gw-1' })).not.toThrow();
    }
  });
});
