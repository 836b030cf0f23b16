import { appendFileSync, readFileSync } from 'node:fs';
import * as grpc from '@grpc/grpc-js';
import { generate } from 'selfsigned';
import { infraEnv, launchWithClient, type ServiceProcess } from '@switchboard/devenv';
import { configureGrpcTls, createClient, INTERNAL_TOKEN_METADATA } from '@switchboard/grpc';
import { presenceV1 } from '@switchboard/proto';
import { Report, testPki, type TestPki } from './support';

// Security suite, part 4: mutual TLS between services. A service started with
// GRPC_TLS_* serves only clients that present a certificate of the CA, and
// takes x-sb-internal only from certificates naming an identity of
// GRPC_INTERNAL_IDENTITIES (the mesh token does not count under mTLS).
const report = new Report('security suite: mutual TLS between services');
const asUser = { context: { tenantId: 'mtls', userId: 'alice', deviceId: '', internal: false } };
let presence: ServiceProcess | undefined;
let files: TestPki;
let address = '';
let outsider: { cert: string; private: string };

beforeAll(async () => {
  files = await testPki();
  // A second trusted certificate that is not an internal identity (e.g. an operator's tool or another team's client).
  outsider = await generate([{ name: 'commonName', value: 'switchboard-outsider' }], {
    keySize: 2048,
    days: 1,
    extensions: [{ name: 'basicConstraints', cA: true }],
  } as never);
  appendFileSync(files.GRPC_TLS_CA_FILE, `\n${outsider.cert}`);
  configureGrpcTls(files);
  const launched = await launchWithClient('presence', presenceV1.PresenceServiceClient, { ...files, GRPC_INTERNAL_IDENTITIES: 'switchboard-mesh' });
  presence = launched.service;
  address = launched.address;
  launched.client.close();
}, 60_000);

afterAll(async () => {
  configureGrpcTls({});
  await presence?.stop();
  report.print();
});

/** RefreshLeases (internal only) as an internal caller presenting `creds`, with the mesh token too. */
function internalCall(creds: grpc.ChannelCredentials): Promise<string> {
  const client = new presenceV1.PresenceServiceClient(address, creds);
  const metadata = new grpc.Metadata();
  metadata.set('x-sb-tenant', 'sys');
  metadata.set('x-sb-internal', 'true');
  metadata.set(INTERNAL_TOKEN_METADATA, infraEnv().GRPC_INTERNAL_TOKEN ?? '');
  return new Promise((resolve) => {
    client.refreshLeases({ context: undefined, gatewayId: 'gw-mtls-test', tenants: [] }, metadata, { deadline: Date.now() + 3000 }, (err) => {
      client.close();
      resolve(err ? `${grpc.status[err.code]}: ${err.details}` : 'served');
    });
  });
}

function rawCall(creds: grpc.ChannelCredentials): Promise<string> {
  const client = new presenceV1.PresenceServiceClient(address, creds);
  const metadata = new grpc.Metadata();
  metadata.set('x-sb-tenant', 'mtls');
  metadata.set('x-sb-user', 'alice');
  return new Promise((resolve) => {
    client.getPresence({ context: undefined, userIds: ['alice'], includeDevices: false }, metadata, { deadline: Date.now() + 3000 }, (err) => {
      client.close();
      resolve(err ? `refused: ${grpc.status[err.code]}` : 'served');
    });
  });
}

describe('mutual TLS between services', () => {
  it('serves a client with a certificate of the mesh CA', async () => {
    const client = createClient(presenceV1.PresenceServiceClient, address);
    const answer = await client.getPresence({ context: undefined, userIds: ['alice'], includeDevices: false }, asUser);
    client.close();
    expect(answer).toBeDefined();
  });

  it('refuses a plaintext client and a TLS client without a certificate', async () => {
    const plaintext = await rawCall(grpc.credentials.createInsecure());
    const noCertificate = await rawCall(grpc.credentials.createSsl(readFileSync(files.GRPC_TLS_CA_FILE)));
    expect(plaintext).toBe('refused: UNAVAILABLE');
    expect(noCertificate).toBe('refused: UNAVAILABLE');
    report.held('a call to a service with GRPC_TLS_* in plaintext', plaintext);
    report.held('a call over TLS without a client certificate', noCertificate);
  });

  it('takes x-sb-internal only from a certificate of an internal identity', async () => {
    const ca = readFileSync(files.GRPC_TLS_CA_FILE);
    const mesh = grpc.credentials.createSsl(ca, readFileSync(files.GRPC_TLS_KEY_FILE), readFileSync(files.GRPC_TLS_CERT_FILE));
    const other = grpc.credentials.createSsl(ca, Buffer.from(outsider.private), Buffer.from(outsider.cert));
    expect(await internalCall(mesh)).toBe('served');
    const outsiderInternal = await internalCall(other);
    expect(outsiderInternal).toBe('UNAUTHENTICATED: internal calls need a client certificate of an internal identity (GRPC_INTERNAL_IDENTITIES); this one names switchboard-outsider');
    report.held('x-sb-internal (and the mesh token) from a CA-trusted certificate that is not an internal identity', outsiderInternal);
    // The same certificate is still served as a user: it is trusted, just not internal.
    expect(await rawCall(other)).toBe('served');
  });
});
