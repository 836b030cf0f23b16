import { SignJWT, base64url } from 'jose';
import { UnauthenticatedError } from '@switchboard/errors';
import { TokenVerifier } from '../src/auth';
import { readConfig } from '../src/config';

const secret = 'unit-test-secret';
const key = new TextEncoder().encode(secret);
const verifier = new TokenVerifier(readConfig({ JWT_SECRET: secret, JWT_ISSUER: 'switchboard-test', JWT_AUDIENCE: 'gateway' }));

function token(claims: Record<string, unknown>, options: { exp?: string | number; sub?: string; iss?: string; aud?: string; signWith?: Uint8Array } = {}) {
  let jwt = new SignJWT(claims).setProtectedHeader({ alg: 'HS256' }).setIssuer(options.iss ?? 'switchboard-test').setAudience(options.aud ?? 'gateway');
  if (options.sub !== '') jwt = jwt.setSubject(options.sub ?? 'alice');
  if (options.exp !== undefined) jwt = jwt.setExpirationTime(options.exp);
  return jwt.sign(options.signWith ?? key);
}

describe('TokenVerifier', () => {
  it('reads user, tenant and device from a valid token', async () => {
    const identity = await verifier.verify(await token({ tid: 'acme', did: 'phone-1' }, { exp: '5m' }));
    expect(identity).toMatchObject({ tenantId: 'acme', userId: 'alice', deviceId: 'phone-1' });
    expect(identity.expiresAt.getTime()).toBeGreaterThan(Date.now());
  });

  it.each([
    ['expired', () => token({ tid: 'acme' }, { exp: Math.floor(Date.now() / 1000) - 3600 }), 'token expired'],
    ['without exp', () => token({ tid: 'acme' }), 'invalid token (ERR_JWT_CLAIM_VALIDATION_FAILED)'],
    ['wrongly signed', () => token({ tid: 'acme' }, { exp: '5m', signWith: new TextEncoder().encode('another-secret') }), 'invalid token (ERR_JWS_SIGNATURE_VERIFICATION_FAILED)'],
    ['from another issuer', () => token({ tid: 'acme' }, { exp: '5m', iss: 'evil' }), 'invalid token (ERR_JWT_CLAIM_VALIDATION_FAILED)'],
    ['for another audience', () => token({ tid: 'acme' }, { exp: '5m', aud: 'other' }), 'invalid token (ERR_JWT_CLAIM_VALIDATION_FAILED)'],
    ['without tenant', () => token({}, { exp: '5m' }), 'token has no valid tenant (tid)'],
    ['with an unsafe tenant', () => token({ tid: 'acme.>' }, { exp: '5m' }), 'token has no valid tenant (tid)'],
    ['without subject', () => token({ tid: 'acme' }, { exp: '5m', sub: '' }), 'invalid token (ERR_JWT_CLAIM_VALIDATION_FAILED)'],
  ])('refuses a token %s', async (_name, make, reason) => {
    const jwt = await make();
    await expect(verifier.verify(jwt)).rejects.toThrow(UnauthenticatedError);
    await expect(verifier.verify(jwt)).rejects.toThrow(reason);
  });

  it('refuses alg none even with valid claims', async () => {
    const header = base64url.encode(JSON.stringify({ alg: 'none', typ: 'JWT' }));
    const payload = base64url.encode(
      JSON.stringify({ sub: 'alice', tid: 'acme', iss: 'switchboard-test', aud: 'gateway', exp: Math.floor(Date.now() / 1000) + 300 }),
    );
    await expect(verifier.verify(`${header}.${payload}.`)).rejects.toThrow(UnauthenticatedError);
  });

  it('reads the events claim: the event patterns the connection may subscribe to (none without it)', async () => {
    const identity = await verifier.verify(await token({ tid: 'acme', events: ['labs.>', 'ward.7.*'] }, { exp: '5m' }));
    expect(identity.eventPatterns).toEqual(['labs.>', 'ward.7.*']);
    expect((await verifier.verify(await token({ tid: 'acme' }, { exp: '5m' }))).eventPatterns).toEqual([]);
  });

  it.each([
    ['not a list', 'labs.>', /invalid events claim \(a list of at most 32 event patterns\)/],
    ['too long a list', Array.from({ length: 33 }, (_, i) => `p${i}`), /at most 32 event patterns/],
    ['a pattern with > inside', ['labs.>.x'], /invalid events claim: events has > at position 2 of 3/],
    ['a pattern that is no string', [7], /invalid events claim: events must be a string \(an event pattern\)/],
    ['a pattern with a dot too many', ['labs..x'], /invalid events claim: events has an empty token at position 2/],
  ])('refuses a token whose events claim is %s', async (_name, events, reason) => {
    const jwt = await token({ tid: 'acme', events }, { exp: '5m' });
    await expect(verifier.verify(jwt)).rejects.toThrow(UnauthenticatedError);
    await expect(verifier.verify(jwt)).rejects.toThrow(reason);
  });

  it('refuses garbage', async () => {
    await expect(verifier.verify('not-a-jwt')).rejects.toThrow('invalid token (ERR_JWS_INVALID)');
  });
});

describe('TokenVerifier with a JWKS endpoint (RS256 / ES256)', () => {
  const { createServer } = require('node:http') as typeof import('node:http');
  const { exportJWK, generateKeyPair } = require('jose') as typeof import('jose');
  let server: import('node:http').Server;
  let jwks: { keys: Record<string, unknown>[] } = { keys: [] };
  let fetches = 0;
  let url = '';

  beforeAll(async () => {
    server = createServer((_req, res) => {
      fetches += 1;
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(jwks));
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    url = `http://127.0.0.1:${(server.address() as import('node:net').AddressInfo).port}/.well-known/jwks.json`;
  });
  afterAll(() => new Promise<void>((resolve) => server.close(() => resolve())));

  async function keyPair(alg: 'RS256' | 'ES256', kid: string) {
    const { privateKey, publicKey } = await generateKeyPair(alg);
    return { privateKey, jwk: { ...(await exportJWK(publicKey)), kid, alg, use: 'sig' } };
  }

  const sign = (alg: string, kid: string, privateKey: Parameters<SignJWT['sign']>[0]) =>
    new SignJWT({ tid: 'acme' }).setProtectedHeader({ alg, kid }).setSubject('alice').setExpirationTime('5m').sign(privateKey);

  it('accepts RS256 and ES256 tokens signed by a published key, and picks up a new key without restart', async () => {
    const rsa = await keyPair('RS256', 'rsa-1');
    const ec = await keyPair('ES256', 'ec-1');
    jwks = { keys: [rsa.jwk, ec.jwk] };
    const jwksVerifier = new TokenVerifier(readConfig({ JWT_JWKS_URL: url, JWT_JWKS_COOLDOWN_MS: '1' }));
    expect((await jwksVerifier.verify(await sign('RS256', 'rsa-1', rsa.privateKey))).userId).toBe('alice');
    expect((await jwksVerifier.verify(await sign('ES256', 'ec-1', ec.privateKey))).tenantId).toBe('acme');

    // Key rotation: a token with a kid the cached set does not have makes jose refetch the set.
    const rotated = await keyPair('ES256', 'ec-2');
    await new Promise((r) => setTimeout(r, 5));
    jwks = { keys: [rsa.jwk, ec.jwk, rotated.jwk] };
    const before = fetches;
    expect((await jwksVerifier.verify(await sign('ES256', 'ec-2', rotated.privateKey))).userId).toBe('alice');
    expect(fetches).toBeGreaterThan(before);
  });

  it('refuses a token signed by a key the set does not publish, and an HS256 token in JWKS mode', async () => {
    const rsa = await keyPair('RS256', 'rsa-1');
    jwks = { keys: [rsa.jwk] };
    const jwksVerifier = new TokenVerifier(readConfig({ JWT_JWKS_URL: url }));
    const stranger = await keyPair('RS256', 'rsa-1');
    await expect(jwksVerifier.verify(await sign('RS256', 'rsa-1', stranger.privateKey))).rejects.toThrow(UnauthenticatedError);
    // An attacker who knows a JWK must not get it used as an HMAC secret.
    const hs = await new SignJWT({ tid: 'acme' }).setProtectedHeader({ alg: 'HS256', kid: 'rsa-1' }).setSubject('alice').setExpirationTime('5m').sign(new TextEncoder().encode(JSON.stringify(rsa.jwk)));
    await expect(jwksVerifier.verify(hs)).rejects.toThrow(UnauthenticatedError);
  });
});
