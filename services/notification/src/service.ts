import { InvalidArgumentError, PermissionDeniedError } from '@switchboard/errors';
import { unary, type CallContext } from '@switchboard/grpc';
import { assertSafeId } from '@switchboard/ids';
import type { Logger } from '@switchboard/logging';
import type { notificationV1 } from '@switchboard/proto';
import type { NotificationConfig } from './config';
import type { NotificationEvents } from './events';
import type { NotificationStore } from './store';

/** Kinds are dotted lowercase words, e.g. `message.mention`. */
const KIND_PATTERN = /^[a-z0-9_]+(\.[a-z0-9_]+)*$/;

/** The acting user: user calls act as themselves. */
function actingUser(ctx: CallContext): string {
  if (!ctx.tenant.userId) throw new PermissionDeniedError('this call needs a user in the tenant context', { field: 'context.user_id' });
  return ctx.tenant.userId;
}

/** Users read their own; internal callers may name any user of their tenant. */
function targetUser(ctx: CallContext, requested: string): string {
  if (!requested) return actingUser(ctx);
  const userId = assertSafeId(requested, 'user_id');
  if (userId !== ctx.tenant.userId && !ctx.tenant.internal) throw new PermissionDeniedError('only internal callers may read another user’s notifications', { field: 'user_id' });
  return userId;
}

function kinds(requested: string[]): string[] {
  for (const kind of requested) {
    if (kind.length > 100 || !KIND_PATTERN.test(kind)) throw new InvalidArgumentError('kinds are dotted lowercase words', { field: 'kinds' });
  }
  return requested;
}

function pageSize(requested: number | undefined, config: NotificationConfig, fallback = 50): number {
  return Math.min(requested || fallback, config.MAX_PAGE_SIZE);
}

export function notificationService(
  store: NotificationStore,
  events: NotificationEvents,
  config: NotificationConfig,
  logger: Logger,
): Partial<notificationV1.NotificationServiceServer> {
  return {
    listNotifications: unary('ListNotifications', logger, async (req: notificationV1.ListNotificationsRequest, ctx) => {
      const { notifications, nextPageToken, unreadCount } = await store.list(
        ctx.tenant.tenantId,
        targetUser(ctx, req.userId),
        req.unreadOnly,
        kinds(req.kinds),
        pageSize(req.page?.pageSize, config),
        req.page?.pageToken ?? '',
      );
      return { notifications, page: { nextPageToken }, unreadCount };
    }),

    markNotificationRead: unary('MarkNotificationRead', logger, async (req: notificationV1.MarkNotificationReadRequest, ctx) => {
      const tenantId = ctx.tenant.tenantId;
      const userId = actingUser(ctx);
      const { notification, changed, unreadCount } = await store.markRead(tenantId, userId, assertSafeId(req.notificationId, 'notification_id'));
      if (changed) events.badge(tenantId, userId, unreadCount);
      return { notification, unreadCount };
    }),

    markAllRead: unary('MarkAllRead', logger, async (req: notificationV1.MarkAllReadRequest, ctx) => {
      const tenantId = ctx.tenant.tenantId;
      const userId = actingUser(ctx);
      const { marked, unreadCount } = await store.markAllRead(tenantId, userId, req.upTo, kinds(req.kinds));
      if (marked > 0) events.badge(tenantId, userId, unreadCount);
      return { marked, unreadCount };
    }),

    getBadgeCount: unary('GetBadgeCount', logger, async (req: notificationV1.GetBadgeCountRequest, ctx) => {
      return { unreadCount: await store.badgeCount(ctx.tenant.tenantId, targetUser(ctx, req.userId)) };
    }),
  };
}
