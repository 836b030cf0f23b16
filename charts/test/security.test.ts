/**
 * Credentials in the chart, rendered by the real helm: each service's NATS
 * nkey seed, gRPC mutual-TLS material and the gateway's TLS certificate are
 * mounted read-only from the Secrets named in the values (only the service's
 * own nkey), the services are pointed at the files, the internal-call token
 * is read from a Secret, and the example NATS server authorization in k8s/
 * matches the permissions the code is built with and is accepted by the real
 * nats-server.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { natsAuthorizationConfig, nkeys, nkeyVariable, NATS_USERS } from '@switchboard/nats';
import { ofKind, podSpec, template, templateError, type K8sObject } from './support/helm';
import { containerEnv, deployment, mainContainer } from './support/objects';
import { repoRoot, SERVICES, toolsBin } from './support/paths';

const SECURED = {
  'global.nats.credentialsSecret': 'switchboard-nats-users',
  'global.grpcTls.existingSecret': 'switchboard-mesh-tls',
  'gateway.tls.existingSecret': 'chat-example-org-tls',
  'messaging.grpcTls.existingSecret': 'switchboard-messaging-tls',
};
const IDENTITIES = { 'global.grpcTls.internalIdentities': ['switchboard-gateway', 'switchboard-messaging', 'switchboard-presence', 'switchboard-room', 'switchboard-notification'] };

let plain: K8sObject[];
let secured: K8sObject[];

beforeAll(() => {
  plain = template();
  secured = template({ set: SECURED, setJson: IDENTITIES });
});

const volumes = (objects: K8sObject[], service: (typeof SERVICES)[number]) => podSpec(deployment(objects, service)).volumes as any[];
const mounts = (objects: K8sObject[], service: (typeof SERVICES)[number]) => mainContainer(deployment(objects, service)).volumeMounts as any[];

describe('NATS credentials per service', () => {
  test.each(SERVICES)('%s mounts only its own nkey seed, read-only, and is pointed at it', (service) => {
    const volume = volumes(secured, service).find((v) => v.name === 'nats-credentials');
    expect(volume.secret).toEqual({ secretName: 'switchboard-nats-users', defaultMode: 0o440, items: [{ key: `${service}.nk`, path: `${service}.nk` }] });
    expect(mounts(secured, service)).toContainEqual({ name: 'nats-credentials', mountPath: '/etc/switchboard/nats', readOnly: true });
    const env = containerEnv(secured, mainContainer(deployment(secured, service)));
    expect(env.NATS_NKEY_SEED_FILE).toBe(`/etc/switchboard/nats/${service}.nk`);
  });

  test('without a credentials Secret nothing is mounted and no seed file is configured', () => {
    for (const service of SERVICES) {
      expect(volumes(plain, service).map((v) => v.name)).toEqual(['tmp']);
      expect(containerEnv(plain, mainContainer(deployment(plain, service))).NATS_NKEY_SEED_FILE).toBeUndefined();
    }
  });

  test('the example server authorization (k8s/nats-authorization.conf) is what libs/nats grants each service', () => {
    const shipped = fs.readFileSync(path.join(repoRoot, 'k8s', 'nats-authorization.conf'), 'utf8');
    const services = NATS_USERS.filter((u) => u !== 'tools');
    const expected = natsAuthorizationConfig(Object.fromEntries(services.map((u) => [u, `$${nkeyVariable(u)}`])) as never, services);
    expect(shipped.slice(shipped.indexOf('authorization {'))).toBe(expected);
    // The tests' all-subjects user is never part of a cluster's configuration.
    expect(shipped).not.toMatch(/# tools/);
  });

  test('the real nats-server accepts it with the services\' public keys, and refuses it without them', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sb-nats-conf-'));
    fs.copyFileSync(path.join(repoRoot, 'k8s', 'nats-authorization.conf'), path.join(dir, 'nats-authorization.conf'));
    fs.writeFileSync(path.join(dir, 'nats.conf'), 'listen: 127.0.0.1:4222\ninclude ./nats-authorization.conf\n');
    const keys = Object.fromEntries(SERVICES.map((s) => [nkeyVariable(s), nkeys.createUser().getPublicKey()]));
    const check = (env: Record<string, string>) => spawnSync(path.join(toolsBin, 'nats-server'), ['-t', '-c', path.join(dir, 'nats.conf')], { encoding: 'utf8', env: { PATH: process.env.PATH, ...env } });
    const accepted = check(keys);
    expect({ status: accepted.status, output: accepted.stderr + accepted.stdout }).toMatchObject({ status: 0 });
    const missing = check({});
    expect(missing.status).not.toBe(0);
    expect(missing.stderr).toMatch(/SB_NATS_GATEWAY_NKEY/);
  });
});

describe('TLS and mutual TLS material', () => {
  test.each(SERVICES)('%s mounts its gRPC CA, certificate and key read-only and is pointed at them', (service) => {
    const secret = service === 'messaging' ? 'switchboard-messaging-tls' : 'switchboard-mesh-tls';
    const volume = volumes(secured, service).find((v) => v.name === 'grpc-tls');
    expect(volume.secret.secretName).toBe(secret);
    expect(volume.secret.items.map((i: any) => i.key)).toEqual(['ca.crt', 'tls.crt', 'tls.key']);
    expect(mounts(secured, service)).toContainEqual({ name: 'grpc-tls', mountPath: '/etc/switchboard/grpc-tls', readOnly: true });
    const env = containerEnv(secured, mainContainer(deployment(secured, service)));
    expect(env).toMatchObject({
      GRPC_TLS_CA_FILE: '/etc/switchboard/grpc-tls/ca.crt',
      GRPC_TLS_CERT_FILE: '/etc/switchboard/grpc-tls/tls.crt',
      GRPC_TLS_KEY_FILE: '/etc/switchboard/grpc-tls/tls.key',
      GRPC_INTERNAL_IDENTITIES: IDENTITIES['global.grpcTls.internalIdentities'].join(','),
    });
  });

  test('the gateway serves TLS from its certificate Secret', () => {
    const volume = volumes(secured, 'gateway').find((v) => v.name === 'tls');
    expect(volume.secret).toEqual({ secretName: 'chat-example-org-tls', defaultMode: 0o440, items: [{ key: 'tls.crt', path: 'tls.crt' }, { key: 'tls.key', path: 'tls.key' }] });
    expect(mounts(secured, 'gateway')).toContainEqual({ name: 'tls', mountPath: '/etc/switchboard/tls', readOnly: true });
    expect(containerEnv(secured, mainContainer(deployment(secured, 'gateway')))).toMatchObject({ TLS_CERT_FILE: '/etc/switchboard/tls/tls.crt', TLS_KEY_FILE: '/etc/switchboard/tls/tls.key' });
    expect(volumes(secured, 'presence').some((v) => v.name === 'tls')).toBe(false);
  });

  test('mounted Secrets are part of the checksum that rolls the pods when a Secret changes', () => {
    for (const service of SERVICES) {
      const before = deployment(plain, service).spec.template.metadata.annotations['checksum/secret-refs'];
      const after = deployment(secured, service).spec.template.metadata.annotations['checksum/secret-refs'];
      expect({ service, changed: before !== after }).toEqual({ service, changed: true });
    }
  });

  test('mutual TLS without the internal identities is refused with the value to set', () => {
    expect(templateError({ set: { 'global.grpcTls.existingSecret': 'switchboard-mesh-tls' } })).toMatch(/global\.grpcTls\.internalIdentities is required with mutual TLS/);
  });

  test('the schema refuses unknown keys and wrong types in the new values', () => {
    expect(templateError({ set: { 'global.grpcTls.secret': 'x' } })).toMatch(/additional properties 'secret' not allowed|secret/);
    expect(templateError({ set: { 'gateway.tls.existingSecret': 5 } })).toMatch(/existingSecret/);
    expect(templateError({ setJson: { 'global.grpcTls.internalIdentities': ['a,b'] } })).toMatch(/internalIdentities/);
  });
});

describe('the token of internal calls', () => {
  test('every service reads it from the Secret named in the values, never from a ConfigMap', () => {
    for (const service of SERVICES) {
      expect(containerEnv(plain, mainContainer(deployment(plain, service))).GRPC_INTERNAL_TOKEN).toEqual({ secret: 'switchboard-internal-token', key: 'token' });
    }
    for (const configMap of ofKind(plain, 'ConfigMap')) expect(Object.keys(configMap.data ?? {})).not.toContain('GRPC_INTERNAL_TOKEN');
    const own = template({ set: { 'global.internalToken.existingSecret': 'mesh-token', 'global.internalToken.secretKey': 'value' } });
    for (const service of SERVICES) {
      expect(containerEnv(own, mainContainer(deployment(own, service))).GRPC_INTERNAL_TOKEN).toEqual({ secret: 'mesh-token', key: 'value' });
    }
  });

  test('a release without the token Secret is refused', () => {
    expect(templateError({ set: { 'global.internalToken.existingSecret': '' } })).toMatch(/internalToken/);
  });
});
