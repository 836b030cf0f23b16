import { readFileSync } from 'node:fs';
import * as grpc from '@grpc/grpc-js';
import { launchWithClient, type ServiceProcess } from '@switchboard/devenv';
import { configureGrpcTls, createClient } from '@switchboard/grpc';
import { presenceV1 } from '@switchboard/proto';
import { Report, testPki, type TestPki } from './support';

// Security suite, part 4: mutual TLS between services. A service started with
// GRPC_TLS_* serves only clients that present a certificate of the CA.
const report = new Report('security suite: mutual TLS between services');
const asUser = { context: { tenantId: 'mtls', userId: 'alice', deviceId: '', internal: false } };
let presence: ServiceProcess | undefined;
let files: TestPki;
let address = '';

beforeAll(async () => {
  files = await testPki();
  configureGrpcTls(files);
  const launched = await launchWithClient('presence', presenceV1.PresenceServiceClient, files);
  presence = launched.service;
  address = launched.address;
  launched.client.close();
}, 60_000);

afterAll(async () => {
  configureGrpcTls({});
  await presence?.stop();
  report.print();
});

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
});
