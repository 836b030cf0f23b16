import { PermissionDeniedError } from '@switchboard/errors';
import { assertSafeId } from '@switchboard/ids';
import type { CallContext } from './handlers';

/** The user a call acts as: user calls act as themselves; a call without a user cannot. */
export function actingUser(ctx: CallContext): string {
  if (!ctx.tenant.userId) throw new PermissionDeniedError('this call needs a user in the tenant context', { field: 'context.user_id' });
  return ctx.tenant.userId;
}

/** Users act on themselves; internal callers may name any user of their tenant. */
export function targetUser(ctx: CallContext, requested: string): string {
  if (!requested) return actingUser(ctx);
  const userId = assertSafeId(requested, 'user_id');
  if (userId !== ctx.tenant.userId && !ctx.tenant.internal) throw new PermissionDeniedError('only internal callers may act for another user', { field: 'user_id' });
  return userId;
}

/** Who reads: undefined for an internal caller without a user (any resource of its tenant), else the acting user. */
export function viewer(ctx: CallContext): string | undefined {
  return ctx.tenant.internal && !ctx.tenant.userId ? undefined : actingUser(ctx);
}
