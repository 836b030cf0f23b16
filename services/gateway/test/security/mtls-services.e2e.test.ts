import { readFileSync } from 'node:fs';
import * as grpc from '@grpc/grpc-js';
import { freePort, infraEnv, launchService, type ServiceProcess } from '@switchboard/devenv';
import { Report, testPki, type TestPki } from './support';

// Security suite, part 4b: every service with GRPC_TLS_* serves gRPC over
// mutual TLS only — a service that read the settings but never applied them
// would answer in plaintext, which is what this file catches.
const report = new Report('security suite: mutual TLS on every service');
const SERVICES = ['messaging', 'presence', 'room', 'notification'] as const;
const running: { name: string; process: ServiceProcess; address: string }[] = [];
let files: TestPki;

beforeAll(async () => {
  files = await testPki();
  for (const name of SERVICES) {
    const grpcPort = await freePort();
    const process = await launchService({ service: name, env: { ...infraEnv(), LOG_LEVEL: 'warn', GRPC_PORT: String(grpcPort), ...files }, opsPort: await freePort() });
    running.push({ name, process, address: `127.0.0.1:${grpcPort}` });
  }
}, 180_000);

afterAll(async () => {
  await Promise.all(running.map(({ process }) => process.stop()));
  report.print();
});

/** The gRPC health check (every service serves it), answered "SERVING" or refused with the status. */
function healthCheck(address: string, credentials: grpc.ChannelCredentials): Promise<string> {
  const client = new grpc.Client(address, credentials);
  return new Promise((resolve) => {
    client.makeUnaryRequest(
      '/grpc.health.v1.Health/Check',
      () => Buffer.alloc(0),
      (bytes: Buffer) => bytes,
      {},
      new grpc.Metadata(),
      { deadline: Date.now() + 5000 },
      (err, answer) => {
        client.close();
        // HealthCheckResponse { status = 1 (SERVING) } is the two bytes 08 01.
        resolve(err ? `refused: ${grpc.status[err.code]}` : answer?.equals(Buffer.from([0x08, 0x01])) ? 'SERVING' : `answered ${answer?.toString('hex')}`);
      },
    );
  });
}

describe.each(SERVICES)('%s with GRPC_TLS_*', (name) => {
  it('serves a client holding a certificate of the mesh CA, and refuses plaintext and certificate-less TLS', async () => {
    const { address } = running.find((service) => service.name === name)!;
    const ca = readFileSync(files.GRPC_TLS_CA_FILE);
    const mutual = await healthCheck(address, grpc.credentials.createSsl(ca, readFileSync(files.GRPC_TLS_KEY_FILE), readFileSync(files.GRPC_TLS_CERT_FILE)));
    const plaintext = await healthCheck(address, grpc.credentials.createInsecure());
    const noCertificate = await healthCheck(address, grpc.credentials.createSsl(ca));
    expect([mutual, plaintext, noCertificate]).toEqual(['SERVING', 'refused: UNAVAILABLE', 'refused: UNAVAILABLE']);
    report.held(`${name}: a plaintext call`, plaintext);
    report.held(`${name}: a TLS call without a client certificate`, noCertificate);
  });
});
