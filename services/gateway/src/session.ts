import { PermissionDeniedError } from '@switchboard/errors';
import type { TokenVerifier } from './auth';
import type { Connection } from './connection';

/**
 * `refresh_token`: a new token for the same tenant, user (and device, when
 * the connection's token named one) extends the connection to the new
 * token's expiry. The new token is verified exactly like one at the
 * handshake; a refused refresh leaves the old expiry in force.
 */
export async function refreshToken(connection: Connection, token: string, verifier: TokenVerifier, graceMs: number, onExpired: () => void): Promise<void> {
  const identity = await verifier.verify(token);
  if (identity.tenantId !== connection.tenantId || identity.userId !== connection.userId) {
    throw new PermissionDeniedError('the new token is for another tenant or user than this connection', { field: 'refresh_token.token' });
  }
  if (identity.deviceId && identity.deviceId !== connection.identity.deviceId) {
    throw new PermissionDeniedError('the new token is for another device than this connection', { field: 'refresh_token.token' });
  }
  connection.identity.expiresAt = identity.expiresAt;
  connection.scheduleExpiry(graceMs, onExpired);
}
