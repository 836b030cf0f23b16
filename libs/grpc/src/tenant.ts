import { Metadata } from '@grpc/grpc-js';
import { UnauthenticatedError } from '@switchboard/errors';
import { assertSafeId, InvalidIdError } from '@switchboard/ids';
import { commonV1 } from '@switchboard/proto';
import { addInternalProof } from './internal';

/** Metadata keys that carry the tenant context on every call. */
export const TENANT_METADATA = {
  tenant: 'x-sb-tenant',
  user: 'x-sb-user',
  device: 'x-sb-device',
  internal: 'x-sb-internal',
  roles: 'x-sb-roles',
} as const;

/** More roles than any real token carries: a longer list is refused rather than cut. */
export const MAX_ROLES = 32;

/**
 * The user's roles from the verified token (claim `roles`, e.g. "provider"),
 * carried beside the tenant context as `x-sb-roles` (comma-separated): they
 * decide which tenant-wide broadcast audiences a user belongs to and whether
 * the user may broadcast.
 */
export function rolesToMetadata(roles: readonly string[], metadata: Metadata): Metadata {
  if (roles.length > 0) metadata.set(TENANT_METADATA.roles, roles.join(','));
  return metadata;
}

/** The caller's roles; a malformed list is refused like a malformed tenant. */
export function rolesFromMetadata(metadata: Metadata): string[] {
  const value = first(metadata, TENANT_METADATA.roles);
  if (!value) return [];
  return checkedRoles(value.split(','));
}

/** A role list as metadata or a batch item carries it: at most MAX_ROLES safe ids, else UNAUTHENTICATED. */
export function checkedRoles(roles: readonly string[]): string[] {
  if (roles.length > MAX_ROLES) throw new UnauthenticatedError(`the call carries more than ${MAX_ROLES} roles`, { field: 'roles' });
  try {
    return roles.map((role) => assertSafeId(role, 'roles'));
  } catch (err) {
    throw new UnauthenticatedError(`invalid roles: ${(err as Error).message}`, { field: 'roles', cause: err });
  }
}

export function tenantToMetadata(ctx: commonV1.TenantContext, metadata = new Metadata()): Metadata {
  metadata.set(TENANT_METADATA.tenant, ctx.tenantId);
  if (ctx.userId) metadata.set(TENANT_METADATA.user, ctx.userId);
  if (ctx.deviceId) metadata.set(TENANT_METADATA.device, ctx.deviceId);
  if (ctx.internal) {
    metadata.set(TENANT_METADATA.internal, 'true');
    addInternalProof(metadata);
  }
  return metadata;
}

function first(metadata: Metadata, key: string): string {
  const value = metadata.get(key)[0];
  return typeof value === 'string' ? value : '';
}

/**
 * The tenant context of an incoming call; a call without a valid tenant is
 * refused. `internal` is only the caller's claim: unary() checks its proof
 * (verifyInternalCaller) before a handler sees it.
 */
export function tenantFromMetadata(metadata: Metadata): commonV1.TenantContext {
  try {
    const tenantId = assertSafeId(first(metadata, TENANT_METADATA.tenant), 'tenant');
    const userId = first(metadata, TENANT_METADATA.user);
    const deviceId = first(metadata, TENANT_METADATA.device);
    return {
      tenantId,
      userId: userId ? assertSafeId(userId, 'user') : '',
      deviceId: deviceId ? assertSafeId(deviceId, 'device') : '',
      internal: first(metadata, TENANT_METADATA.internal) === 'true',
    };
  } catch (err) {
    if (err instanceof InvalidIdError) {
      throw new UnauthenticatedError(`missing or invalid tenant context: ${err.message}`, { field: err.field, cause: err });
    }
    throw err;
  }
}
