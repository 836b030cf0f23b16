import { InvalidArgumentError } from '@switchboard/errors';
import { actingUser, type CallContext, targetUser, unary } from '@switchboard/grpc';
import { assertSafeId } from '@switchboard/ids';
import type { Logger } from '@switchboard/logging';
import { presenceV1 } from '@switchboard/proto';
import type { ChangeAnnouncer } from './announcer';
import type { PresenceConfig } from './config';
import { mergePresence, PresenceStatus, type Audience } from './merge';
import type { ManualStatus, PresenceStore } from './store';

/** Longest device label, app version or user agent kept. */
const MAX_DEVICE_TEXT = 256;



function audienceFor(ctx: CallContext, userId: string): Audience {
  return ctx.tenant.internal || ctx.tenant.userId === userId ? 'private' : 'public';
}

function boundedText(value: string, field: string, max: number): string {
  if (value.length > max) throw new InvalidArgumentError(`${field} is longer than ${max} characters`, { field });
  return value;
}

/** A future time as ms since the epoch; unset = never (0). */
function expiry(value: Date | undefined, now: number, field: string): number {
  if (!value) return 0;
  if (value.getTime() <= now) throw new InvalidArgumentError(`${field} must be in the future`, { field });
  return value.getTime();
}

export function presenceService(
  store: PresenceStore,
  announcer: ChangeAnnouncer,
  config: PresenceConfig,
  logger: Logger,
): Partial<presenceV1.PresenceServiceServer> {
  return {
    connectDevice: unary('ConnectDevice', logger, async (req: presenceV1.ConnectDeviceRequest, ctx) => {
      const tenantId = ctx.tenant.tenantId;
      const userId = actingUser(ctx);
      const gatewayId = assertSafeId(req.gatewayId, 'gateway_id');
      const connectionId = assertSafeId(req.connectionId, 'connection_id');
      if (!req.device) throw new InvalidArgumentError('device is required', { field: 'device' });
      const deviceId = assertSafeId(req.device.deviceId, 'device.device_id');
      if (ctx.tenant.deviceId && ctx.tenant.deviceId !== deviceId) {
        throw new InvalidArgumentError('device.device_id differs from the device of the tenant context', { field: 'device.device_id' });
      }
      const now = Date.now();
      const snapshot = await store.connect(
        tenantId,
        userId,
        { deviceId, gatewayId, connectionId },
        {
          platform: req.device.platform,
          label: boundedText(req.device.label, 'device.label', MAX_DEVICE_TEXT),
          appVersion: boundedText(req.device.appVersion, 'device.app_version', MAX_DEVICE_TEXT),
          userAgent: boundedText(req.device.userAgent, 'device.user_agent', MAX_DEVICE_TEXT),
          connectedAt: now,
        },
        now + config.LEASE_TTL_MS,
        now,
      );
      await announcer.announce(tenantId, snapshot, now);
      return {
        presence: mergePresence(snapshot, now, 'private'),
        leaseTtlMs: config.LEASE_TTL_MS,
        // Three renewals per lease, so one lost refresh never drops a connection.
        refreshIntervalMs: Math.floor(config.LEASE_TTL_MS / 3),
      };
    }),

    disconnectDevice: unary('DisconnectDevice', logger, async (req: presenceV1.DisconnectDeviceRequest, ctx) => {
      const tenantId = ctx.tenant.tenantId;
      const userId = actingUser(ctx);
      const ref = {
        gatewayId: assertSafeId(req.gatewayId, 'gateway_id'),
        connectionId: assertSafeId(req.connectionId, 'connection_id'),
        deviceId: assertSafeId(req.deviceId || ctx.tenant.deviceId, 'device_id'),
      };
      const now = Date.now();
      const snapshot = await store.disconnect(tenantId, userId, ref, now);
      await announcer.announce(tenantId, snapshot, now);
      return { status: mergePresence(snapshot, now, 'private').status };
    }),

    getPresence: unary('GetPresence', logger, async (req: presenceV1.GetPresenceRequest, ctx) => {
      if (req.userIds.length > config.MAX_PRESENCE_BATCH) {
        throw new InvalidArgumentError(`at most ${config.MAX_PRESENCE_BATCH} user_ids per call`, { field: 'user_ids' });
      }
      const userIds = req.userIds.map((userId) => assertSafeId(userId, 'user_ids'));
      const snapshots = await store.read(ctx.tenant.tenantId, userIds);
      const now = Date.now();
      return { presences: snapshots.map((snapshot) => mergePresence(snapshot, now, audienceFor(ctx, snapshot.userId), req.includeDevices)) };
    }),

    setStatus: unary('SetStatus', logger, async (req: presenceV1.SetStatusRequest, ctx) => {
      const tenantId = ctx.tenant.tenantId;
      const userId = targetUser(ctx, req.userId);
      if (!Object.values(PresenceStatus).includes(req.status) || req.status === PresenceStatus.UNRECOGNIZED) {
        throw new InvalidArgumentError('unknown status', { field: 'status' });
      }
      const now = Date.now();
      // Control characters could break the clients that render it.
      const customMessage = boundedText(req.customMessage.replace(/\p{Cc}/gu, '').trim(), 'custom_message', config.MAX_CUSTOM_MESSAGE_LENGTH);
      const followsActivity = req.status === PresenceStatus.PRESENCE_STATUS_UNSPECIFIED || req.status === PresenceStatus.PRESENCE_STATUS_AVAILABLE;
      let manual: ManualStatus | undefined;
      if (!followsActivity || customMessage) {
        manual = {
          status: followsActivity ? PresenceStatus.PRESENCE_STATUS_UNSPECIFIED : req.status,
          statusExpiresAt: followsActivity ? 0 : expiry(req.statusExpiresAt, now, 'status_expires_at'),
          customMessage,
          customMessageExpiresAt: customMessage ? expiry(req.customMessageExpiresAt, now, 'custom_message_expires_at') : 0,
          frozenLastSeen: req.status === PresenceStatus.PRESENCE_STATUS_OFFLINE ? await frozenLastSeen(store, tenantId, userId, now) : 0,
          updatedAt: now,
        };
      }
      const snapshot = await store.setManual(tenantId, userId, manual);
      await announcer.announce(tenantId, snapshot, now);
      return { presence: mergePresence(snapshot, now, 'private') };
    }),
  };
}

/** What others keep seeing as last seen once the user appears offline: the moment they were last visibly online. */
async function frozenLastSeen(store: PresenceStore, tenantId: string, userId: string, now: number): Promise<number> {
  const [before] = await store.read(tenantId, [userId]);
  const visible = mergePresence(before!, now, 'public');
  return visible.lastSeen?.getTime() ?? 0;
}
