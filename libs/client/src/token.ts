import { SignJWT } from 'jose';

/** The shared HS256 secret local development uses unless SB_JWT_SECRET (or the gateway's config) says otherwise. */
export const DEV_JWT_SECRET = 'switchboard-dev-secret-change-me';

export interface DevTokenOptions {
  /** HS256 shared secret (its UTF-8 bytes are the key). */
  secret: string;
  tenantId: string;
  userId: string;
  deviceId?: string;
  /** Lifetime; 3600 unless given. */
  ttlSeconds?: number;
  issuer?: string;
  audience?: string | string[];
  /** Extra claims (for tests of the gateway's claim handling). */
  claims?: Record<string, unknown>;
  /** "Now" in seconds since the epoch; defaults to the clock. */
  nowSeconds?: number;
}

/**
 * Mints an HS256 token the gateway accepts in local development:
 * `sub` = user id, `tid` = tenant id, optional `did` = device id, `iat`, `exp`
 * and, when given, `iss`/`aud`. Not for production, where tokens come from
 * the identity provider and are checked against its JWKS.
 */
export async function mintDevToken(options: DevTokenOptions): Promise<string> {
  const now = options.nowSeconds ?? Math.floor(Date.now() / 1000);
  const ttl = options.ttlSeconds ?? 3600;
  const payload: Record<string, unknown> = { ...options.claims, tid: options.tenantId };
  if (options.deviceId !== undefined) payload.did = options.deviceId;
  let jwt = new SignJWT(payload)
    .setProtectedHeader({ alg: 'HS256', typ: 'JWT' })
    .setSubject(options.userId)
    .setIssuedAt(now)
    .setExpirationTime(now + ttl);
  if (options.issuer !== undefined) jwt = jwt.setIssuer(options.issuer);
  if (options.audience !== undefined) jwt = jwt.setAudience(options.audience);
  return jwt.sign(new TextEncoder().encode(options.secret));
}
