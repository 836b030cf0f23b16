import type { IncomingMessage } from 'node:http';
import { createRemoteJWKSet, errors as joseErrors, jwtVerify, type JWTVerifyGetKey } from 'jose';
import { UnauthenticatedError } from '@switchboard/errors';
import { isSafeId } from '@switchboard/ids';
import { parseEventPattern } from '@switchboard/nats';
import type { GatewayConfig } from './config';

export interface Identity {
  tenantId: string;
  userId: string;
  deviceId: string;
  /** Claim `roles`: which tenant-wide broadcast audiences the user belongs to, and whether they may broadcast. */
  roles: string[];
  /**
   * Claim `events`: the event patterns (below the tenant's `evt.`) this
   * connection may subscribe to, or to any pattern they cover; none without
   * the claim (centrifugo's `channels` claim is the precedent).
   */
  eventPatterns: string[];
  expiresAt: Date;
}

/** More roles than a real token carries; a token with more is refused, not cut. */
const MAX_ROLES = 32;
/** Event patterns a token may allow; more is refused, not cut. */
const MAX_EVENT_PATTERNS = 32;

/** Subprotocol entries that carry a token instead of naming a protocol version (browsers cannot set headers). */
export const TOKEN_SUBPROTOCOL_PREFIX = 'bearer.';

/**
 * Verifies the JWT presented at the upgrade with jose: a pinned algorithm
 * list (so `alg: none` or an HS/RS confusion is refused), `exp` required,
 * `iss`/`aud` when configured, `sub` = user, `tid` = tenant, optional `did` =
 * device. The tenant comes from here only, never from a frame.
 */
export class TokenVerifier {
  private readonly key: Uint8Array | JWTVerifyGetKey;
  private readonly algorithms: string[];

  constructor(private readonly config: GatewayConfig) {
    if (config.JWT_JWKS_URL) {
      // jose caches the key set and refetches it when a token names an unknown kid.
      this.key = createRemoteJWKSet(new URL(config.JWT_JWKS_URL), { cooldownDuration: config.JWT_JWKS_COOLDOWN_MS, cacheMaxAge: config.JWT_JWKS_CACHE_MAX_AGE_MS });
      this.algorithms = ['RS256', 'ES256'];
    } else {
      this.key = new TextEncoder().encode(config.JWT_SECRET);
      this.algorithms = ['HS256'];
    }
  }

  async verify(token: string): Promise<Identity> {
    let payload;
    try {
      ({ payload } = await jwtVerify(token, this.key as Uint8Array, {
        algorithms: this.algorithms,
        requiredClaims: ['exp', 'sub'],
        clockTolerance: this.config.JWT_CLOCK_TOLERANCE_S,
        ...(this.config.JWT_ISSUER ? { issuer: this.config.JWT_ISSUER } : {}),
        ...(this.config.JWT_AUDIENCE ? { audience: this.config.JWT_AUDIENCE } : {}),
      }));
    } catch (err) {
      const reason = err instanceof joseErrors.JWTExpired ? 'token expired' : err instanceof joseErrors.JOSEError ? `invalid token (${err.code})` : 'invalid token';
      throw new UnauthenticatedError(reason, { cause: err });
    }
    const tenantId = payload.tid;
    if (!isSafeId(tenantId)) throw new UnauthenticatedError('token has no valid tenant (tid)');
    if (!isSafeId(payload.sub)) throw new UnauthenticatedError('token has no valid subject (sub)');
    const deviceId = payload.did === undefined ? '' : payload.did;
    if (deviceId !== '' && !isSafeId(deviceId)) throw new UnauthenticatedError('token has an invalid device id (did)');
    const roles = payload.roles ?? [];
    if (!Array.isArray(roles) || roles.length > MAX_ROLES || !roles.every(isSafeId)) {
      throw new UnauthenticatedError(`token has invalid roles (at most ${MAX_ROLES} ids of A-Z, a-z, 0-9, '_' or '-')`);
    }
    const eventPatterns = payload.events ?? [];
    if (!Array.isArray(eventPatterns) || eventPatterns.length > MAX_EVENT_PATTERNS) {
      throw new UnauthenticatedError(`token has an invalid events claim (a list of at most ${MAX_EVENT_PATTERNS} event patterns)`);
    }
    for (const pattern of eventPatterns) {
      try {
        parseEventPattern(pattern, 'events');
      } catch (err) {
        throw new UnauthenticatedError(`token has an invalid events claim: ${(err as Error).message}`, { cause: err });
      }
    }
    return { tenantId, userId: payload.sub, deviceId: deviceId as string, roles, eventPatterns: eventPatterns as string[], expiresAt: new Date(payload.exp! * 1000) };
  }
}

/** The token from `Authorization: Bearer`, the `access_token` query parameter, or a `bearer.<token>` subprotocol. */
export function tokenFromRequest(req: IncomingMessage, offeredProtocols: string[]): string | undefined {
  const header = req.headers.authorization;
  if (header?.startsWith('Bearer ')) return header.slice('Bearer '.length).trim();
  const query = new URL(req.url ?? '/', 'http://gateway').searchParams.get('access_token');
  if (query) return query;
  return offeredProtocols.find((p) => p.startsWith(TOKEN_SUBPROTOCOL_PREFIX))?.slice(TOKEN_SUBPROTOCOL_PREFIX.length);
}
