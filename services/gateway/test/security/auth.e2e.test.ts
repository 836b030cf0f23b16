import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { SignJWT, base64url, exportJWK, exportSPKI, generateKeyPair } from 'jose';
import { DEV_JWT_SECRET, SwitchboardClient } from '@switchboard/client';
import { startMesh, type Mesh, type ServiceProcess } from '@switchboard/devenv';
import { newId } from '@switchboard/ids';
import { AUDIENCE, handshake, ISSUER, launchGateway, rawConnect, Report, SECURITY_GATEWAY_ENV, token, until, type RawConnection } from './support';

// Security suite, part 1: authentication at the handshake and during a connection.
const report = new Report('security suite: authentication');
const tenant = `t${newId().slice(0, 10)}`;
const secret = new TextEncoder().encode(DEV_JWT_SECRET);
const now = () => Math.floor(Date.now() / 1000);
let mesh: Mesh;
const extra: ServiceProcess[] = [];
const open: RawConnection[] = [];

beforeAll(async () => {
  mesh = await startMesh({ gateways: 1, ports: 'free', env: { LOG_LEVEL: 'warn' }, gatewayEnv: SECURITY_GATEWAY_ENV });
}, 120_000);

afterAll(async () => {
  for (const c of open) c.ws.terminate();
  await Promise.all(extra.map((p) => p.stop()));
  await mesh?.stop();
  report.print();
});

const claims = (overrides: Record<string, unknown> = {}) => ({ sub: 'alice', tid: tenant, iss: ISSUER, aud: AUDIENCE, iat: now(), exp: now() + 300, ...overrides });
const hs256 = (payload: Record<string, unknown>, key: Uint8Array = secret) => new SignJWT(payload).setProtectedHeader({ alg: 'HS256', typ: 'JWT' }).sign(key);

describe('JWT attacks at the handshake (HS256 gateway)', () => {
  const attacks: [string, () => Promise<string>, RegExp][] = [
    ['alg none', async () => `${base64url.encode(JSON.stringify({ alg: 'none', typ: 'JWT' }))}.${base64url.encode(JSON.stringify(claims()))}.`, /ERR_JOSE_ALG_NOT_ALLOWED|invalid token/],
    ['a forged signature (another secret)', () => hs256(claims(), new TextEncoder().encode('attacker-secret')), /ERR_JWS_SIGNATURE_VERIFICATION_FAILED/],
    [
      'a tampered payload (tenant changed, signature kept)',
      async () => {
        const [header, , signature] = (await hs256(claims())).split('.');
        return `${header}.${base64url.encode(JSON.stringify(claims({ tid: 'victim-tenant' })))}.${signature}`;
      },
      /ERR_JWS_SIGNATURE_VERIFICATION_FAILED/,
    ],
    ['an expired token', () => hs256(claims({ iat: now() - 600, exp: now() - 60 })), /token expired/],
    ['a token not valid yet (nbf in the future)', () => hs256(claims({ nbf: now() + 600 })), /ERR_JWT_CLAIM_VALIDATION_FAILED/],
    ['another issuer', () => hs256(claims({ iss: 'https://evil.example' })), /ERR_JWT_CLAIM_VALIDATION_FAILED/],
    ['another audience', () => hs256(claims({ aud: 'some-other-service' })), /ERR_JWT_CLAIM_VALIDATION_FAILED/],
    ['no exp', () => hs256(claims({ exp: undefined })), /ERR_JWT_CLAIM_VALIDATION_FAILED/],
    ['no tenant', () => hs256(claims({ tid: undefined })), /no valid tenant/],
    ['a tenant that would change a subject (wildcards)', () => hs256(claims({ tid: 'acme.>' })), /no valid tenant/],
    [
      'RS256 where HS256 is pinned',
      async () => {
        const { privateKey } = await generateKeyPair('RS256');
        return new SignJWT(claims()).setProtectedHeader({ alg: 'RS256' }).sign(privateKey);
      },
      /ERR_JOSE_ALG_NOT_ALLOWED/,
    ],
    ['HS512 where HS256 is pinned', () => new SignJWT(claims()).setProtectedHeader({ alg: 'HS512' }).sign(new Uint8Array(64).fill(1)), /ERR_JOSE_ALG_NOT_ALLOWED/],
    ['garbage', async () => 'not.a.jwt', /invalid token/],
  ];

  it.each(attacks)('refuses %s with 401 and opens no socket', async (name, make, reason) => {
    const refused = await handshake(mesh.gateways[0]!.url, { authorization: `Bearer ${await make()}` });
    expect(refused.status).toBe(401);
    expect(refused.body).toMatch(reason);
    report.held(`handshake with ${name}`, `401 ${refused.body}`);
  });

  it('refuses a missing token, and accepts the valid one the attacks were made from', async () => {
    expect((await handshake(mesh.gateways[0]!.url, {})).status).toBe(401);
    expect((await handshake(mesh.gateways[0]!.url, { authorization: `Bearer ${await hs256(claims())}` })).status).toBe(101);
  });
});

describe('JWKS: pinned algorithms, rotation, removal (RS256/ES256 gateway)', () => {
  let jwksServer: Server;
  let keys: Record<string, unknown>[] = [];
  let url = '';

  beforeAll(async () => {
    jwksServer = createServer((_req, res) => res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ keys })));
    await new Promise<void>((resolve) => jwksServer.listen(0, '127.0.0.1', resolve));
    const jwksUrl = `http://127.0.0.1:${(jwksServer.address() as AddressInfo).port}/jwks.json`;
    // A short cache, so a removed key stops working within a second in this test (5 minutes by default).
    const gateway = await launchGateway(mesh, 'gateway-jwks', { JWT_JWKS_URL: jwksUrl, JWT_JWKS_COOLDOWN_MS: '100', JWT_JWKS_CACHE_MAX_AGE_MS: '1000' });
    extra.push(gateway.process);
    url = gateway.url;
  }, 60_000);
  afterAll(() => new Promise<void>((resolve) => jwksServer.close(() => resolve())));

  async function key(alg: 'RS256' | 'ES256', kid: string) {
    const pair = await generateKeyPair(alg, { extractable: true });
    return { ...pair, jwk: { ...(await exportJWK(pair.publicKey)), kid, alg, use: 'sig' } };
  }
  const signed = (alg: string, kid: string, privateKey: Parameters<SignJWT['sign']>[0]) => new SignJWT(claims()).setProtectedHeader({ alg, kid }).sign(privateKey);
  const status = async (jwt: string) => (await handshake(url, { authorization: `Bearer ${jwt}` })).status;

  it('accepts a published key, refuses an unknown kid and HS256 made with the public key (key confusion)', async () => {
    const k1 = await key('RS256', 'k1');
    keys = [k1.jwk];
    expect(await status(await signed('RS256', 'k1', k1.privateKey))).toBe(101);
    const stranger = await key('RS256', 'k-unknown');
    expect(await status(await signed('RS256', 'k-unknown', stranger.privateKey))).toBe(401);
    report.held('JWKS gateway: token with an unknown kid', '401');
    const pem = new TextEncoder().encode(await exportSPKI(k1.publicKey as Parameters<typeof exportSPKI>[0]));
    expect(await status(await signed('HS256', 'k1', pem))).toBe(401);
    expect(await status(await signed('HS256', 'k1', new TextEncoder().encode(JSON.stringify(k1.jwk))))).toBe(401);
    report.held('JWKS gateway: HS256 signed with the RSA public key (PEM and JWK) as the secret', '401');
  });

  it('picks up a rotated-in key without restart, and stops accepting a key removed from the set', async () => {
    // Key ids of their own: the set cached by the previous case names other keys.
    const k1 = await key('RS256', 'rot-1');
    const k2 = await key('ES256', 'rot-2');
    keys = [k1.jwk];
    await new Promise((r) => setTimeout(r, 150));
    expect(await status(await signed('RS256', 'rot-1', k1.privateKey))).toBe(101);
    keys = [k1.jwk, k2.jwk];
    await new Promise((r) => setTimeout(r, 150));
    expect(await status(await signed('ES256', 'rot-2', k2.privateKey))).toBe(101);
    report.held('JWKS rotation: a new key published', 'accepted without restart');
    keys = [k2.jwk];
    const oldToken = await signed('RS256', 'rot-1', k1.privateKey);
    const deadline = Date.now() + 10_000;
    let last = 101;
    while (Date.now() < deadline && (last = await status(oldToken)) === 101) await new Promise((r) => setTimeout(r, 200));
    expect(last).toBe(401);
    report.held('JWKS rotation: a key removed from the set', '401 once the cached set aged out (JWT_JWKS_CACHE_MAX_AGE_MS)');
    expect(await status(await signed('ES256', 'rot-2', k2.privateKey))).toBe(101);
  });
});

describe('token expiry and refresh_token', () => {
  const connect = async (userId: string, ttlSeconds: number) => {
    const c = await rawConnect(mesh.gateways[0]!.url, await token(tenant, userId, { ttlSeconds }));
    open.push(c);
    return c;
  };

  it('warns when the token expires and closes with 4001 after the grace period', async () => {
    const c = await connect('expiring', 2);
    const warning = await until(() => c.frames.find((f) => f.tokenExpiring)?.tokenExpiring, 10_000, 'token_expiring push');
    expect(warning.closesInMs).toBe(1000);
    expect(await c.closed).toEqual({ code: 4001, reason: 'token expired' });
    report.held('connection whose token expired without refresh', 'token_expiring push, then close 4001 after the grace');
  });

  it('keeps a connection refreshed with a new token open past the old expiry', async () => {
    const c = await connect('refreshing', 2);
    const ok = await c.request({ refreshToken: { token: await token(tenant, 'refreshing', { ttlSeconds: 3600 }) } });
    expect(ok).toHaveProperty('ok');
    await new Promise((r) => setTimeout(r, 3500));
    expect(c.frames.some((f) => f.tokenExpiring)).toBe(false);
    expect(await c.request({ ping: { clientTimeMs: 1 } })).toHaveProperty('pong');
  });

  it('@switchboard/client refreshes on token_expiring and keeps its connection', async () => {
    let minted = 0;
    const client = new SwitchboardClient({
      url: mesh.gateways[0]!.url,
      // The first token lives 2 s; the refresh gets a long one.
      token: () => token(tenant, 'library-user', { ttlSeconds: (minted += 1) === 1 ? 2 : 3600 }),
    });
    const disconnects: unknown[] = [];
    client.on('disconnected', (event) => disconnects.push(event));
    await client.connect();
    await new Promise((r) => setTimeout(r, 4000));
    expect(minted).toBe(2);
    expect(disconnects).toEqual([]);
    expect((await client.ping()).rttMs).toBeGreaterThanOrEqual(0);
    await client.close();
    report.held('a client library connection whose token expired', 'refreshed on token_expiring, connection kept');
  });

  it('refuses a refresh with another user, another tenant, an expired or a forged token, and keeps the old expiry', async () => {
    const c = await connect('victim', 3600);
    const cases: [string, string, string][] = [
      ['another user', await token(tenant, 'mallory', { ttlSeconds: 3600 }), 'ERROR_CODE_PERMISSION_DENIED'],
      ['another tenant', await token('other-tenant', 'victim', { ttlSeconds: 3600 }), 'ERROR_CODE_PERMISSION_DENIED'],
      ['an expired token', await hs256(claims({ sub: 'victim', exp: now() - 60 })), 'ERROR_CODE_UNAUTHENTICATED'],
      ['a forged token', await hs256(claims({ sub: 'victim' }), new TextEncoder().encode('attacker')), 'ERROR_CODE_UNAUTHENTICATED'],
      ['an empty token', '', 'ERROR_CODE_INVALID_ARGUMENT'],
    ];
    for (const [name, jwt, code] of cases) {
      const answer = await c.request({ refreshToken: { token: jwt } });
      expect({ name, code: answer.error?.code }).toEqual({ name, code });
      report.held(`refresh_token with ${name}`, code);
    }
    expect(await c.request({ ping: { clientTimeMs: 1 } })).toHaveProperty('pong');
  });
});
