import * as grpc from '@grpc/grpc-js';
import { infraEnv, launchWithClient, type ServiceProcess } from '@switchboard/devenv';
import { createClient, INTERNAL_TOKEN_METADATA } from '@switchboard/grpc';
import { presenceV1 } from '@switchboard/proto';
import { Report } from './support';

// Security suite, part 6: internal callers. `x-sb-internal: true` skips the
// user checks (a gateway renews every tenant's leases, a service acts for any
// user of a tenant), so a service honours it only with proof: without mTLS the
// mesh's shared token (GRPC_INTERNAL_TOKEN), compared in constant time; with
// mTLS a certificate identity from GRPC_INTERNAL_IDENTITIES (mtls.e2e.test.ts).
// RefreshLeases is a gateway's call (internal only): it shows the difference.
const report = new Report('security suite: internal callers need proof');
let presence: ServiceProcess | undefined;
let address = '';

beforeAll(async () => {
  const launched = await launchWithClient('presence', presenceV1.PresenceServiceClient);
  presence = launched.service;
  address = launched.address;
  launched.client.close();
}, 60_000);

afterAll(async () => {
  await presence?.stop();
  report.print();
});

/** RefreshLeases with exactly the metadata given: the answer's status. */
function refreshLeases(metadata: Record<string, string>): Promise<string> {
  const client = new presenceV1.PresenceServiceClient(address, grpc.credentials.createInsecure());
  const md = new grpc.Metadata();
  for (const [key, value] of Object.entries(metadata)) md.set(key, value);
  return new Promise((resolve) => {
    client.refreshLeases({ context: undefined, gatewayId: 'gw-internal-test', tenants: [] }, md, { deadline: Date.now() + 5000 }, (err) => {
      client.close();
      resolve(err ? `${grpc.status[err.code]}: ${err.details}` : 'OK');
    });
  });
}

describe('x-sb-internal holds only with the mesh token (no mTLS)', () => {
  const token = infraEnv().GRPC_INTERNAL_TOKEN!;

  it('the services and the harness have a token', () => {
    expect(token.length).toBeGreaterThanOrEqual(32);
  });

  it('serves an internal call that carries the token (what gateways and services send)', async () => {
    expect(await refreshLeases({ 'x-sb-tenant': 'sys', 'x-sb-internal': 'true', [INTERNAL_TOKEN_METADATA]: token })).toBe('OK');
    // createClient adds the token to internal calls by itself (configureInternalCallers).
    const client = createClient(presenceV1.PresenceServiceClient, address);
    const answer = await client.refreshLeases({ context: undefined, gatewayId: 'gw-internal-test', tenants: [] }, { context: { tenantId: 'sys', userId: '', deviceId: '', internal: true } });
    client.close();
    expect(answer.unknown).toEqual([]);
  });

  it('refuses x-sb-internal without the token, with a wrong one, and with one of another length', async () => {
    const attempts: [string, Record<string, string>][] = [
      ['x-sb-internal: true without a token', { 'x-sb-tenant': 'sys', 'x-sb-internal': 'true' }],
      ['x-sb-internal: true with a wrong token of the same length', { 'x-sb-tenant': 'sys', 'x-sb-internal': 'true', [INTERNAL_TOKEN_METADATA]: `${token.slice(0, -1)}${token.endsWith('A') ? 'B' : 'A'}` }],
      ['x-sb-internal: true with a short token', { 'x-sb-tenant': 'sys', 'x-sb-internal': 'true', [INTERNAL_TOKEN_METADATA]: 'x' }],
      ['x-sb-internal: true as a user of the tenant', { 'x-sb-tenant': 'acme', 'x-sb-user': 'mallory', 'x-sb-internal': 'true' }],
    ];
    for (const [tried, metadata] of attempts) {
      const outcome = await refreshLeases(metadata);
      expect(outcome).toMatch(/^UNAUTHENTICATED: internal calls need the mesh internal token/);
      report.held(tried, outcome);
    }
    // Without the claim the caller is a user, and the gateways' call is not for users.
    const asUser = await refreshLeases({ 'x-sb-tenant': 'acme', 'x-sb-user': 'mallory' });
    expect(asUser).toMatch(/^PERMISSION_DENIED: RefreshLeases is for gateways and internal callers only/);
    report.held('RefreshLeases as a user', asUser);
  });
});
