import { decodeProtectedHeader, jwtVerify } from 'jose';
import { DEV_JWT_SECRET, mintDevToken } from '../src';

const key = (secret: string) => new TextEncoder().encode(secret);

describe('mintDevToken', () => {
  it('mints an HS256 token with sub, tid, did, iat and exp that jose verifies', async () => {
    const token = await mintDevToken({ secret: DEV_JWT_SECRET, tenantId: 't1', userId: 'alice', deviceId: 'phone' });
    expect(decodeProtectedHeader(token).alg).toBe('HS256');
    const { payload } = await jwtVerify(token, key(DEV_JWT_SECRET), { algorithms: ['HS256'] });
    expect(payload.sub).toBe('alice');
    expect(payload.tid).toBe('t1');
    expect(payload.did).toBe('phone');
    expect(payload.exp! - payload.iat!).toBe(3600);
    expect(Math.abs(payload.iat! - Date.now() / 1000)).toBeLessThan(5);
  });

  it('honours ttl, issuer and audience, and omits did without a device', async () => {
    const token = await mintDevToken({ secret: 's', tenantId: 't', userId: 'u', ttlSeconds: 60, issuer: 'sb-dev', audience: 'switchboard' });
    const { payload } = await jwtVerify(token, key('s'), { issuer: 'sb-dev', audience: 'switchboard' });
    expect(payload.exp! - payload.iat!).toBe(60);
    expect(payload).not.toHaveProperty('did');
  });

  it('is rejected with another secret', async () => {
    const token = await mintDevToken({ secret: 'right', tenantId: 't', userId: 'u' });
    await expect(jwtVerify(token, key('wrong'))).rejects.toThrow();
  });

  it('can mint an already expired token (for negative tests)', async () => {
    const token = await mintDevToken({ secret: 's', tenantId: 't', userId: 'u', nowSeconds: 1000, ttlSeconds: 10 });
    await expect(jwtVerify(token, key('s'))).rejects.toMatchObject({ code: 'ERR_JWT_EXPIRED' });
  });
});
