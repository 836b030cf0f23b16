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

  it('refuses garbage', async () => {
    await expect(verifier.verify('not-a-jwt')).rejects.toThrow('invalid token (ERR_JWS_INVALID)');
  });
});
