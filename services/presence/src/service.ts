import { RateLimiterRedis, RateLimiterRes } from 'rate-limiter-flexible';
import { InvalidArgumentError, PermissionDeniedError, QuotaExceededError, RateLimitedError } from '@switchboard/errors';
import { actingUser, type CallContext, heldOpen, targetUser, unary } from '@switchboard/grpc';
import { assertSafeId } from '@switchboard/ids';
import type { Logger } from '@switchboard/logging';
import { newEnvelope, publishEnvelope, subjects, type NatsConnection } from '@switchboard/nats';
import { presenceV1 } from '@switchboard/proto';
import { Cause, type ChangeAnnouncer } from './announcer';
import type { PresenceConfig } from './config';
import type { Liveness } from './liveness';
import { devicePresences, mergePresence, PresenceStatus, type Audience } from './merge';
import type { ManualStatus, PresenceStore, UserConnections } from './store';

/** Longest device label, app version or user agent kept. */
const MAX_DEVICE_TEXT = 256;
/** Auto-away delays a user may choose (0 = the tenant default). */
const AUTO_AWAY_BOUNDS_MS = { min: 1000, max: 24 * 3600_000 };
const DEFAULT_PAGE = 100;
const MAX_PAGE = 500;
/** Users per script call of a DisconnectDevices batch (as many as a dropped gateway's per call). */
const DISCONNECT_SLICE = 500;
/** Most transitions read for one history query (a week of a very busy user). */
const MAX_HISTORY_SCAN = 5000;

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

function requireInternal(ctx: CallContext, method: string): void {
  if (!ctx.tenant.internal) throw new PermissionDeniedError(`${method} is for gateways and internal callers only`, { field: 'context.internal' });
}

function safeIds(ids: string[], field: string, max: number): string[] {
  if (ids.length === 0) throw new InvalidArgumentError(`${field} must name at least one user`, { field });
  if (ids.length > max) throw new InvalidArgumentError(`at most ${max} ${field} per call`, { field });
  return [...new Set(ids.map((id) => assertSafeId(id, field)))];
}

function page(request: { pageSize: number; pageToken: string } | undefined): { offset: number; size: number } {
  const size = Math.min(request?.pageSize || DEFAULT_PAGE, MAX_PAGE);
  const offset = request?.pageToken ? Number(request.pageToken) : 0;
  if (!Number.isInteger(offset) || offset < 0) throw new InvalidArgumentError('page_token is not one this service issued', { field: 'page.page_token' });
  return { offset, size };
}

/** Markup in a status message could run in a client that renders it: refused rather than silently altered. */
const MARKUP = /<[^>]*>|&[#a-z0-9]+;|javascript:/i;

export function presenceService(
  store: PresenceStore,
  announcer: ChangeAnnouncer,
  liveness: Liveness,
  nats: NatsConnection,
  config: PresenceConfig,
  logger: Logger,
): presenceV1.PresenceServiceServer {
  const typingLimiter = new RateLimiterRedis({ storeClient: store.redis, keyPrefix: 'sb', points: config.TYPING_RATE_POINTS, duration: config.TYPING_RATE_WINDOW_S });
  const refreshIntervalMs = Math.floor(config.LEASE_TTL_MS / 3);

  async function presencesFor(ctx: CallContext, userIds: string[], includeDevices = false): Promise<presenceV1.UserPresence[]> {
    const snapshots = await store.read(ctx.tenant.tenantId, userIds);
    const now = Date.now();
    return snapshots.map((snapshot) => mergePresence(snapshot, now, audienceFor(ctx, snapshot.userId), includeDevices));
  }

  function publishWatchChange(tenantId: string, userId: string, userIds: string[], watching: boolean): void {
    publishEnvelope(nats, subjects.user(tenantId, userId), newEnvelope(tenantId, { $case: 'presenceWatchChanged', value: { userId, userIds, watching } }));
  }

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
        now,
        now + config.LEASE_TTL_MS,
      );
      await announcer.announce(tenantId, snapshot, now, Cause.PRESENCE_CHANGE_CAUSE_CONNECTED);
      return {
        presence: mergePresence(snapshot, now, 'private'),
        leaseTtlMs: config.LEASE_TTL_MS,
        // Three renewals per lease, so one lost refresh never drops a connection.
        refreshIntervalMs,
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
      await announcer.announce(tenantId, snapshot, now, Cause.PRESENCE_CHANGE_CAUSE_DISCONNECTED);
      return { status: mergePresence(snapshot, now, 'private').status };
    }),

    disconnectDevices: unary('DisconnectDevices', logger, async (req: presenceV1.DisconnectDevicesRequest, ctx) => {
      requireInternal(ctx, 'DisconnectDevices');
      const gatewayId = assertSafeId(req.gatewayId, 'gateway_id');
      const count = req.tenants.reduce((n, t) => n + t.connections.length, 0);
      if (count > config.MAX_DISCONNECT_BATCH) throw new InvalidArgumentError(`at most ${config.MAX_DISCONNECT_BATCH} connections per call`, { field: 'tenants.connections' });
      // Everything checked before anything is written: a bad id refuses the whole call.
      const tenants = req.tenants.map((tenant) => {
        const byUser = new Map<string, UserConnections>();
        for (const c of tenant.connections) {
          const userId = assertSafeId(c.userId, 'tenants.connections.user_id');
          let user = byUser.get(userId);
          if (!user) byUser.set(userId, (user = { userId, connections: [] }));
          user.connections.push({ connectionId: assertSafeId(c.connectionId, 'tenants.connections.connection_id'), deviceId: assertSafeId(c.deviceId, 'tenants.connections.device_id') });
        }
        return { tenantId: assertSafeId(tenant.tenantId, 'tenants.tenant_id'), users: [...byUser.values()] };
      });
      const now = Date.now();
      let usersOffline = 0;
      for (const { tenantId, users } of tenants) {
        // One script call and one claim per slice of users, as a dropped gateway's users are.
        for (let i = 0; i < users.length; i += DISCONNECT_SLICE) {
          const snapshots = await store.disconnectMany(tenantId, gatewayId, users.slice(i, i + DISCONNECT_SLICE), now);
          usersOffline += snapshots.filter((s) => s.leases.length === 0).length;
          await announcer.announceMany(tenantId, snapshots, now, Cause.PRESENCE_CHANGE_CAUSE_DISCONNECTED);
        }
      }
      return { connections: count, usersOffline };
    }),

    refreshLeases: unary('RefreshLeases', logger, async (req: presenceV1.RefreshLeasesRequest, ctx) => {
      requireInternal(ctx, 'RefreshLeases');
      const gatewayId = assertSafeId(req.gatewayId, 'gateway_id');
      const now = Date.now();
      const tenantIds = req.tenants.map((t) => assertSafeId(t.tenantId, 'tenants.tenant_id'));
      await store.renewGateway(gatewayId, tenantIds, now + config.LEASE_TTL_MS);
      const unknown: presenceV1.UnknownConnections[] = [];
      // Per tenant: one script call reconciles, one pipeline records activity, whatever the number of connections.
      for (const tenant of req.tenants) {
        const connectionIds = tenant.connectionIds.map((id) => assertSafeId(id, 'tenants.connection_ids'));
        const { unknown: notKnown, stale } = await store.reconcile(tenant.tenantId, gatewayId, connectionIds, now - refreshIntervalMs);
        if (notKnown.length > 0) unknown.push({ tenantId: tenant.tenantId, connectionIds: notKnown });
        const staleByUser = new Map<string, UserConnections>();
        for (const s of stale) {
          let user = staleByUser.get(s.userId);
          if (!user) staleByUser.set(s.userId, (user = { userId: s.userId, connections: [] }));
          user.connections.push({ connectionId: s.connectionId, deviceId: s.deviceId });
        }
        const dropped = await store.disconnectMany(tenant.tenantId, gatewayId, [...staleByUser.values()], now);
        await announcer.announceMany(tenant.tenantId, dropped, now, Cause.PRESENCE_CHANGE_CAUSE_LEASE_EXPIRED);
        await recordActivity(tenant.tenantId, gatewayId, tenant.activeConnectionIds, now);
      }
      return { unknown, leaseTtlMs: config.LEASE_TTL_MS };
    }),

    renewGateway: unary('RenewGateway', logger, async (req: presenceV1.RenewGatewayRequest, ctx) => {
      requireInternal(ctx, 'RenewGateway');
      const gatewayId = assertSafeId(req.gatewayId, 'gateway_id');
      const now = Date.now();
      const tenantIds = req.tenants.map((t) => assertSafeId(t.tenantId, 'tenants.tenant_id'));
      await store.renewGateway(gatewayId, tenantIds, now + config.LEASE_TTL_MS);
      for (const tenant of req.tenants) await recordActivity(tenant.tenantId, gatewayId, tenant.activeConnectionIds, now);
      return { leaseTtlMs: config.LEASE_TTL_MS };
    }),

    gatewayDown: unary('GatewayDown', logger, async (req: presenceV1.GatewayDownRequest, ctx) => {
      requireInternal(ctx, 'GatewayDown');
      const gatewayId = assertSafeId(req.gatewayId, 'gateway_id');
      const result = await liveness.dropGateway(gatewayId, Cause.PRESENCE_CHANGE_CAUSE_GATEWAY_DOWN);
      logger.info({ gateway: gatewayId, reason: req.reason, ...result }, 'gateway down');
      return { connections: result.connections, usersOffline: result.usersOffline };
    }),

    attachGateway: heldOpen('AttachGateway', logger, async (req: presenceV1.AttachGatewayRequest, ctx, call) => {
      requireInternal(ctx, 'AttachGateway');
      const gatewayId = assertSafeId(req.gatewayId, 'gateway_id');
      // Not recorded (Redis away): the call fails and the gateway attaches again; its heartbeat timeout still applies.
      await liveness.attach(gatewayId, { onClosed: (listener) => call.once('cancelled', listener), end: () => call.end() });
    }),

    getPresence: unary('GetPresence', logger, async (req: presenceV1.GetPresenceRequest, ctx) => {
      if (req.userIds.length > config.MAX_PRESENCE_BATCH) {
        throw new InvalidArgumentError(`at most ${config.MAX_PRESENCE_BATCH} user_ids per call`, { field: 'user_ids' });
      }
      const userIds = req.userIds.map((userId) => assertSafeId(userId, 'user_ids'));
      return { presences: await presencesFor(ctx, userIds, req.includeDevices) };
    }),

    setStatus: unary('SetStatus', logger, async (req: presenceV1.SetStatusRequest, ctx) => {
      const tenantId = ctx.tenant.tenantId;
      const userId = targetUser(ctx, req.userId);
      if (!Object.values(PresenceStatus).includes(req.status) || req.status === PresenceStatus.UNRECOGNIZED) {
        throw new InvalidArgumentError('unknown status: expected available, away, busy or offline', { field: 'status' });
      }
      const now = Date.now();
      // Control characters could break the clients that render it.
      const customMessage = boundedText(req.customMessage.replace(/\p{Cc}/gu, '').trim(), 'custom_message', config.MAX_CUSTOM_MESSAGE_LENGTH);
      if (MARKUP.test(customMessage)) throw new InvalidArgumentError('custom_message must be plain text (no markup)', { field: 'custom_message' });
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
      await announcer.announce(tenantId, snapshot, now, Cause.PRESENCE_CHANGE_CAUSE_MANUAL);
      return { presence: mergePresence(snapshot, now, 'private') };
    }),

    getPresenceSettings: unary('GetPresenceSettings', logger, async (req: presenceV1.GetPresenceSettingsRequest, ctx) => {
      const settings = await store.rawSettings(ctx.tenant.tenantId, targetUser(ctx, req.userId));
      return { settings };
    }),

    updatePresenceSettings: unary('UpdatePresenceSettings', logger, async (req: presenceV1.UpdatePresenceSettingsRequest, ctx) => {
      const tenantId = ctx.tenant.tenantId;
      const userId = targetUser(ctx, req.userId);
      const settings = req.settings ?? { autoAwayAfterMs: 0, hideLastSeen: false };
      const delay = settings.autoAwayAfterMs;
      if (delay !== 0 && (delay < AUTO_AWAY_BOUNDS_MS.min || delay > AUTO_AWAY_BOUNDS_MS.max)) {
        throw new InvalidArgumentError(`auto_away_after_ms must be 0 (default) or between ${AUTO_AWAY_BOUNDS_MS.min} and ${AUTO_AWAY_BOUNDS_MS.max}`, { field: 'settings.auto_away_after_ms' });
      }
      const now = Date.now();
      const snapshot = await store.setSettings(tenantId, userId, { autoAwayAfterMs: delay, hideLastSeen: settings.hideLastSeen });
      await announcer.announce(tenantId, snapshot, now, Cause.PRESENCE_CHANGE_CAUSE_MANUAL);
      return { settings: { autoAwayAfterMs: delay, hideLastSeen: settings.hideLastSeen } };
    }),

    listDevices: unary('ListDevices', logger, async (req: presenceV1.ListDevicesRequest, ctx) => {
      const userId = targetUser(ctx, req.userId);
      const [snapshot] = await store.read(ctx.tenant.tenantId, [userId]);
      return { devices: devicePresences(snapshot!, Date.now(), req.includeDisconnected) };
    }),

    setTyping: unary('SetTyping', logger, async (req: presenceV1.SetTypingRequest, ctx) => {
      const tenantId = ctx.tenant.tenantId;
      const userId = actingUser(ctx);
      const conversationId = assertSafeId(req.conversationId, 'conversation_id');
      const now = Date.now();
      let expiresAt: number | undefined;
      if (req.typing) {
        try {
          await typingLimiter.consume(`{${tenantId}}:presence:typing-rate:${userId}:${conversationId}`);
        } catch (err) {
          if (err instanceof RateLimiterRes) {
            throw new RateLimitedError(`typing is limited to ${config.TYPING_RATE_POINTS} starts per ${config.TYPING_RATE_WINDOW_S} s per conversation`, { field: 'typing', retryAfterMs: err.msBeforeNext });
          }
          throw err;
        }
        expiresAt = now + config.TYPING_TTL_MS;
      }
      const deviceId = ctx.tenant.deviceId;
      await store.setTyping(tenantId, conversationId, userId, expiresAt ? { deviceId, startedAt: now, expiresAt } : undefined, config.TYPING_TTL_MS);
      publishEnvelope(
        nats,
        subjects.conversation(tenantId, conversationId),
        newEnvelope(tenantId, { $case: 'typingChanged', value: { conversationId, userId, typing: req.typing, deviceId, expiresAt: expiresAt ? new Date(expiresAt) : undefined } }),
      );
      return { expiresAt: expiresAt ? new Date(expiresAt) : undefined };
    }),

    getTyping: unary('GetTyping', logger, async (req: presenceV1.GetTypingRequest, ctx) => {
      const conversationId = assertSafeId(req.conversationId, 'conversation_id');
      const now = Date.now();
      const typists = await store.typists(ctx.tenant.tenantId, conversationId);
      return {
        typists: [...typists]
          .filter(([userId, t]) => userId !== ctx.tenant.userId && t.expiresAt > now)
          .map(([userId, t]) => ({ userId, deviceId: t.deviceId, startedAt: new Date(t.startedAt), expiresAt: new Date(t.expiresAt) })),
      };
    }),

    getPresenceHistory: unary('GetPresenceHistory', logger, async (req: presenceV1.GetPresenceHistoryRequest, ctx) => {
      const userId = targetUser(ctx, req.userId);
      const now = Date.now();
      const retainedSince = now - config.HISTORY_RETENTION_MS;
      const start = req.range?.start?.getTime() ?? retainedSince;
      const end = req.range?.end?.getTime() ?? now;
      if (end < start) throw new InvalidArgumentError('range.end is before range.start', { field: 'range' });
      const records = await store.history(ctx.tenant.tenantId, userId, MAX_HISTORY_SCAN);
      // Newest first: each period ends where the next newer one started.
      const periods: presenceV1.PresenceHistoryEntry[] = [];
      let endedAt: number | undefined;
      for (const record of records) {
        const overlaps = record.at < end && (endedAt === undefined || endedAt > start);
        if (overlaps) {
          periods.push({
            status: record.status,
            customMessage: record.customMessage,
            startedAt: new Date(record.at),
            endedAt: endedAt === undefined ? undefined : new Date(endedAt),
            cause: record.cause,
            deviceCount: record.deviceCount,
          });
        }
        if (record.at <= start) break;
        endedAt = record.at;
      }
      const { offset, size } = page(req.page);
      const entries = periods.slice(offset, offset + size);
      return { entries, page: { nextPageToken: offset + size < periods.length ? String(offset + size) : '' }, retainedSince: new Date(retainedSince) };
    }),

    watch: unary('Watch', logger, async (req: presenceV1.WatchRequest, ctx) => {
      const tenantId = ctx.tenant.tenantId;
      const userId = actingUser(ctx);
      const userIds = safeIds(req.userIds, 'user_ids', config.MAX_WATCHED);
      const count = await store.watch(tenantId, userId, userIds, config.MAX_WATCHED, Date.now());
      if (count === 'over') throw new QuotaExceededError(`a watch-list holds at most ${config.MAX_WATCHED} users`, { field: 'user_ids' });
      publishWatchChange(tenantId, userId, userIds, true);
      return { presences: await presencesFor(ctx, userIds), watchedCount: count };
    }),

    unwatch: unary('Unwatch', logger, async (req: presenceV1.UnwatchRequest, ctx) => {
      const tenantId = ctx.tenant.tenantId;
      const userId = actingUser(ctx);
      const userIds = safeIds(req.userIds, 'user_ids', config.MAX_WATCHED);
      const count = await store.unwatch(tenantId, userId, userIds);
      publishWatchChange(tenantId, userId, userIds, false);
      return { watchedCount: count };
    }),

    listWatched: unary('ListWatched', logger, async (req: presenceV1.ListWatchedRequest, ctx) => {
      const userId = actingUser(ctx);
      const { offset, size } = page(req.page);
      const { users, total } = await store.watched(ctx.tenant.tenantId, userId, offset, size);
      const presences = req.includePresence ? await presencesFor(ctx, users.map((u) => u.userId)) : [];
      return {
        users: users.map((u, i) => ({ userId: u.userId, watchedSince: new Date(u.since), presence: presences[i] })),
        page: { nextPageToken: offset + size < total ? String(offset + size) : '' },
      };
    }),

    enterConversation: unary('EnterConversation', logger, async (req: presenceV1.EnterConversationRequest, ctx) => {
      return { occupancy: await occupy(req, ctx, true) };
    }),

    leaveConversation: unary('LeaveConversation', logger, async (req: presenceV1.LeaveConversationRequest, ctx) => {
      return { occupancy: await occupy(req, ctx, false) };
    }),

    getOccupancy: unary('GetOccupancy', logger, async (req: presenceV1.GetOccupancyRequest, ctx) => {
      if (req.conversationIds.length > config.MAX_PRESENCE_BATCH) throw new InvalidArgumentError(`at most ${config.MAX_PRESENCE_BATCH} conversation_ids per call`, { field: 'conversation_ids' });
      const conversationIds = req.conversationIds.map((id) => assertSafeId(id, 'conversation_ids'));
      const counts = await store.occupancy(ctx.tenant.tenantId, conversationIds, ctx.tenant.internal);
      const occupancies = await Promise.all(
        conversationIds.map(async (conversationId, i) => ({
          conversationId,
          ...counts[i]!,
          userIds: req.includeUserIds ? (await store.occupants(ctx.tenant.tenantId, conversationId, ctx.tenant.internal)).slice(0, MAX_PAGE) : [],
        })),
      );
      return { occupancies };
    }),

    listOnlineUsers: unary('ListOnlineUsers', logger, async (req: presenceV1.ListOnlineUsersRequest, ctx) => {
      const tenantId = ctx.tenant.tenantId;
      const { offset, size } = page(req.page);
      let userIds: string[];
      let total: number;
      if (req.conversationId) {
        const all = await store.occupants(tenantId, assertSafeId(req.conversationId, 'conversation_id'), ctx.tenant.internal);
        userIds = all.slice(offset, offset + size);
        total = all.length;
      } else {
        ({ userIds, total } = await store.onlineUsers(tenantId, offset, size));
      }
      const presences = await presencesFor(ctx, userIds);
      return {
        // Someone appearing offline is not listed to other users.
        users: presences.filter((p) => p.status !== PresenceStatus.PRESENCE_STATUS_OFFLINE || (ctx.tenant.internal && p.deviceCount > 0)),
        page: { nextPageToken: offset + size < total ? String(offset + size) : '' },
      };
    }),
  };

  /** User activity on a gateway's connections: resets auto-away; a user who was away is announced again. */
  async function recordActivity(tenantId: string, gatewayId: string, activeConnectionIds: string[], now: number): Promise<void> {
    const active = activeConnectionIds.map((id) => assertSafeId(id, 'tenants.active_connection_ids'));
    const owners = await store.ownersOf(tenantId, gatewayId, active);
    if (owners.length === 0) return;
    for (const userId of await store.recordActivity(tenantId, owners, now)) {
      await announcer.announce(tenantId, await store.touch(tenantId, userId), now, Cause.PRESENCE_CHANGE_CAUSE_ACTIVITY);
    }
  }

  /** Membership is the gateway's to check (it only forwards conversations the user belongs to). */
  async function occupy(req: presenceV1.EnterConversationRequest, ctx: CallContext, enter: boolean): Promise<presenceV1.Occupancy> {
    const tenantId = ctx.tenant.tenantId;
    const userId = actingUser(ctx);
    const conversationId = assertSafeId(req.conversationId, 'conversation_id');
    const counts = await store.occupy(tenantId, assertSafeId(req.gatewayId, 'gateway_id'), assertSafeId(req.connectionId, 'connection_id'), userId, conversationId, enter);
    announcer.occupancyChanged(tenantId, conversationId, counts);
    return { conversationId, ...counts, userIds: [] };
  }
}

/** What others keep seeing as last seen once the user appears offline: the moment they were last visibly online. */
async function frozenLastSeen(store: PresenceStore, tenantId: string, userId: string, now: number): Promise<number> {
  const [before] = await store.read(tenantId, [userId]);
  const visible = mergePresence(before!, now, 'public');
  return visible.lastSeen?.getTime() ?? before!.lastSeen;
}
