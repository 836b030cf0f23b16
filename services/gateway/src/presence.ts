import type { ClientReadableStream } from '@grpc/grpc-js';
import { InvalidArgumentError, NotFoundError } from '@switchboard/errors';
import { tenantToMetadata, type PromiseClient } from '@switchboard/grpc';
import { isSafeId } from '@switchboard/ids';
import type { Logger } from '@switchboard/logging';
import { subjects, SYSTEM_SUBJECTS, type NatsConnection, type Subscription } from '@switchboard/nats';
import { eventsV1, messagingV1, presenceV1, type framesV1, type roomV1 } from '@switchboard/proto';
import type { Identity } from './auth';
import type { GatewayConfig } from './config';
import type { Connection } from './connection';
import type { Fanout } from './fanout';

type Presence = PromiseClient<presenceV1.PresenceServiceClient>;
type Room = PromiseClient<roomV1.RoomServiceClient>;
type ClientKind = NonNullable<framesV1.ClientFrame['kind']>;
type ServerKind = NonNullable<framesV1.ServerFrame['kind']>;

/** The liveness link (AttachGateway): held this long, it counts as healthy and its end is retried at once. */
const LINK_STABLE_MS = 5000;
/** Retries of a link that keeps failing (presence away): from this, doubling, up to the max. */
const LINK_RETRY_BASE_MS = 50;
const LINK_RETRY_MAX_MS = 2000;

export type PresenceFrameKind = Extract<ClientKind, { $case: 'typing' | 'setPresence' | 'watchPresence' | 'unwatchPresence' | 'getPresence' | 'enterConversation' | 'leaveConversation' }>;

const PLATFORMS: Record<string, presenceV1.DevicePlatform> = {
  web: presenceV1.DevicePlatform.DEVICE_PLATFORM_WEB,
  ios: presenceV1.DevicePlatform.DEVICE_PLATFORM_IOS,
  android: presenceV1.DevicePlatform.DEVICE_PLATFORM_ANDROID,
  desktop: presenceV1.DevicePlatform.DEVICE_PLATFORM_DESKTOP,
  server: presenceV1.DevicePlatform.DEVICE_PLATFORM_SERVER,
};
const MAX_DEVICE_TEXT = 256;
/** Why a connection wants a user's presence: their own, the watch-list, or a shared conversation (its id). */
const SELF = '@self';
const WATCH = '@watch';

/**
 * The device a handshake registers: the token's `did` wins; otherwise the
 * client's own stable id from `?device_id=` (generated once and stored by
 * the client), so reconnects are the same device. Without either the
 * gateway makes one up and tells it in `Welcome`, for the client to keep.
 */
export function deviceFromRequest(url: URL, identity: Identity, userAgent: string | undefined): { deviceId: string | undefined; info: Omit<presenceV1.DeviceInfo, 'deviceId'> } {
  const requested = url.searchParams.get('device_id') ?? '';
  if (requested && !isSafeId(requested)) throw new InvalidArgumentError('device_id must be 1-64 characters of A-Z, a-z, 0-9, _ or -', { field: 'device_id' });
  const platformName = (url.searchParams.get('device_platform') ?? '').toLowerCase();
  if (platformName && !(platformName in PLATFORMS)) throw new InvalidArgumentError(`device_platform must be one of ${Object.keys(PLATFORMS).join(', ')}`, { field: 'device_platform' });
  return {
    deviceId: identity.deviceId || requested || undefined,
    info: {
      platform: PLATFORMS[platformName] ?? presenceV1.DevicePlatform.DEVICE_PLATFORM_UNSPECIFIED,
      label: (url.searchParams.get('device_label') ?? '').slice(0, MAX_DEVICE_TEXT),
      appVersion: (url.searchParams.get('app_version') ?? '').slice(0, MAX_DEVICE_TEXT),
      userAgent: (userAgent ?? '').slice(0, MAX_DEVICE_TEXT),
    },
  };
}

/** Why a connection ended, from its close code, for the presence history. */
export function disconnectReason(code: number): presenceV1.DisconnectReason {
  const R = presenceV1.DisconnectReason;
  switch (code) {
    case 1000:
    case 1001:
    case 1005:
      return R.DISCONNECT_REASON_CLIENT_CLOSED;
    // A terminated socket (no pong, or the network went away).
    case 1006:
      return R.DISCONNECT_REASON_HEARTBEAT_TIMEOUT;
    case 4001:
      return R.DISCONNECT_REASON_TOKEN_EXPIRED;
    case 1012:
      return R.DISCONNECT_REASON_GATEWAY_DRAINING;
    case 4003:
      return R.DISCONNECT_REASON_KICKED;
    default:
      return R.DISCONNECT_REASON_ERROR;
  }
}

/**
 * What the presence link keeps per connection. Only what every connection
 * needs is made at once; the rest is made on first use (an idle connection's
 * seven empty collections were 840 B of its heap, docs/benchmarks.md).
 */
interface ConnectionPresence {
  device: Omit<presenceV1.DeviceInfo, 'deviceId'>;
  /** Registered with presence (ConnectDevice answered). */
  registered: boolean;
  /** Users whose presence this connection receives, and why (a user stays while any reason remains). */
  interests: Map<string, Set<string>>;
  /** Conversations the client has open on screen (occupancy). */
  entered?: Set<string>;
  /**
   * Conversations whose members' presence this connection receives, with
   * their member count; one that grows past the occupancy threshold leaves
   * this map (counts only from then on).
   */
  memberCounts?: Map<string, number>;
  /** Rooms whose members are being read, with the membership events that arrived meanwhile. */
  roomReads?: Map<string, [string, boolean][]>;
  /** Changes waiting for the coalescing window, the latest per user. */
  pending?: Map<string, eventsV1.PresenceChanged>;
  occupancy?: Map<string, presenceV1.Occupancy>;
}

/** A closed connection waiting for the next DisconnectDevices call. */
interface Detached {
  tenantId: string;
  userId: string;
  connectionId: string;
  deviceId: string;
  reason: presenceV1.DisconnectReason;
}

/**
 * The gateway's side of presence:
 *   - registers each connection (ConnectDevice) and its close (closes
 *     gathered into DisconnectDevices calls: one call at a time, carrying
 *     every close since the previous one, so a mass disconnect costs a few
 *     calls, and a lone close leaves at once);
 *   - renews its lease in ONE RenewGateway per interval carrying only the
 *     connections active since the previous one; every few intervals (and at
 *     once when presence asks for a resync, or after a failed registration
 *     or detach) ONE RefreshLeases lists every connection, grouped by tenant,
 *     and presence answers with what it lost, which is registered again;
 *   - subscribes each connection to the presence of its own user, its
 *     watch-list and the members of its conversations up to the occupancy
 *     threshold, through the Fanout's reference-counted subscriptions (one
 *     NATS subscription per watched user per gateway, whatever the number
 *     of connections); larger conversations get occupancy counts instead;
 *   - coalesces presence changes per connection within a short window;
 *   - delivers typing with its expiry: every gateway stops a typing
 *     indicator by itself when it lapses unrenewed.
 */
export class PresenceLink {
  private readonly state = new WeakMap<Connection, ConnectionPresence>();
  private readonly dirty = new Set<Connection>();
  /** Connections that sent a frame other than a ping since the last refresh: resets auto-away. */
  private readonly active = new Set<Connection>();
  /** Refreshes since the last full one; a full one is due when this reaches PRESENCE_FULL_REFRESH_EVERY. */
  private refreshesSinceFull = 0;
  /** Something presence may have missed (a failed registration or detach): the next refresh lists everything. */
  private fullRefreshDue = true;
  private detachQueue: Detached[] = [];
  private detaching: Promise<void> | undefined;
  private flushTimer: NodeJS.Timeout | undefined;
  private refreshTimer: NodeJS.Timeout | undefined;
  private refreshing: Promise<void> | undefined;
  private resync: Subscription | undefined;
  private readonly typingTimers = new Map<string, NodeJS.Timeout>();
  private readonly currentReads = new Map<string, Promise<presenceV1.UserPresence[]>>();
  private link: ClientReadableStream<presenceV1.AttachGatewayResponse> | undefined;
  private linkRetry: NodeJS.Timeout | undefined;
  private linkFailures = 0;
  private linkStopped = false;

  constructor(
    private readonly presence: Presence,
    private readonly nats: NatsConnection,
    private readonly fanout: Fanout,
    private readonly connections: () => Iterable<Connection>,
    private readonly config: GatewayConfig,
    private readonly logger: Logger,
    private readonly room: Room,
  ) {}

  private get internal() {
    return { context: { tenantId: 'sys', userId: '', deviceId: '', internal: true }, deadlineMs: this.config.BACKEND_DEADLINE_MS };
  }

  private options(connection: Connection) {
    return { context: { tenantId: connection.tenantId, userId: connection.userId, deviceId: connection.identity.deviceId, internal: false }, deadlineMs: this.config.BACKEND_DEADLINE_MS };
  }

  /**
   * A restarted gateway (same id) first clears whatever its previous life
   * left registered; before the gateway serves anything (and before it
   * reports ready), so no new connection is registered and then wiped.
   */
  async forgetPreviousLife(): Promise<void> {
    try {
      await this.presence.gatewayDown({ context: undefined, gatewayId: this.config.GATEWAY_ID, reason: 'gateway starting' }, this.internal);
    } catch (err) {
      this.logger.warn({ err }, 'presence unreachable at start; leases are registered once it answers');
    }
  }

  /** Renews leases every interval, and at once when presence asks for a resync; holds the liveness link. */
  start(): void {
    this.refreshTimer = setInterval(() => void this.refresh(), this.config.PRESENCE_REFRESH_MS);
    this.resync = this.nats.subscribe(SYSTEM_SUBJECTS.presenceResync, {
      callback: () => {
        this.fullRefreshDue = true;
        void this.refresh();
      },
    });
    this.holdLink();
  }

  async stop(): Promise<void> {
    clearInterval(this.refreshTimer);
    clearTimeout(this.flushTimer);
    this.resync?.unsubscribe();
    for (const timer of this.typingTimers.values()) clearTimeout(timer);
    try {
      await this.presence.gatewayDown({ context: undefined, gatewayId: this.config.GATEWAY_ID, reason: 'shutdown' }, this.internal);
    } catch (err) {
      this.logger.warn({ err }, 'could not tell presence this gateway is going down; its heartbeat stops instead');
    }
    // After GatewayDown: the link's end would otherwise read as a crash.
    this.linkStopped = true;
    clearTimeout(this.linkRetry);
    this.link?.cancel();
  }

  /**
   * Holds presence's AttachGateway call open while this process lives: if
   * the process dies, the kernel closes the connection and presence drops
   * its users after a short grace instead of the whole heartbeat timeout.
   * Whenever the call ends (a presence replica stopped, the network broke)
   * it is opened again at once, then backing off while presence is away.
   */
  private holdLink(): void {
    if (this.linkStopped) return;
    const opened = Date.now();
    const metadata = tenantToMetadata(this.internal.context);
    const call = this.presence.raw.attachGateway({ context: undefined, gatewayId: this.config.GATEWAY_ID }, metadata);
    this.link = call;
    call.on('data', () => undefined);
    call.on('error', () => undefined);
    call.once('status', (status: { code: number; details: string }) => {
      if (this.linkStopped) return;
      // A link that held a while was fine: open the next one at once. Quick failures back off (presence away).
      this.linkFailures = Date.now() - opened > LINK_STABLE_MS ? 0 : this.linkFailures + 1;
      const delay = this.linkFailures === 0 ? 0 : Math.min(LINK_RETRY_MAX_MS, LINK_RETRY_BASE_MS * 2 ** (this.linkFailures - 1));
      if (this.linkFailures > 0) this.logger.debug({ code: status.code, details: status.details, delay }, 'presence link ended; attaching again');
      this.linkRetry = setTimeout(() => this.holdLink(), delay);
    });
  }

  /** As the connection opens, before the Fanout lists its conversations (whose members it then receives). */
  prepare(connection: Connection, device: Omit<presenceV1.DeviceInfo, 'deviceId'>): void {
    this.state.set(connection, { device, registered: false, interests: new Map() });
    // Batched changes (a dead gateway's users) come on the tenant's batch subject: one subscription per tenant per gateway.
    this.fanout.subscribe(subjects.presenceBatch(connection.tenantId), connection);
    // Every device of a user sees the user's merged state.
    this.want(connection, connection.userId, SELF);
  }

  /** Before Welcome: the watch-list's subscriptions, then the registration (so the user shows online). */
  async attach(connection: Connection): Promise<void> {
    try {
      let pageToken = '';
      for (let page = 0; page < 10; page += 1) {
        const result = await this.presence.listWatched({ context: undefined, page: { pageSize: 500, pageToken }, includePresence: false }, this.options(connection));
        for (const user of result.users) this.want(connection, user.userId, WATCH);
        pageToken = result.page?.nextPageToken ?? '';
        if (!pageToken) break;
      }
    } catch (err) {
      this.logger.warn({ err, connection: connection.id }, 'could not read the watch-list; watched users show up on the next connection');
    }
    await this.register(connection);
  }

  private async register(connection: Connection): Promise<void> {
    const state = this.state.get(connection);
    if (!state || !connection.open) return;
    try {
      await this.presence.connectDevice(
        { context: undefined, gatewayId: this.config.GATEWAY_ID, connectionId: connection.id, device: { deviceId: connection.identity.deviceId, ...state.device } },
        this.options(connection),
      );
      state.registered = true;
      for (const conversationId of state.entered ?? []) await this.occupy(connection, conversationId, true);
    } catch (err) {
      // The next (full) refresh reports it unknown and it is registered then.
      this.fullRefreshDue = true;
      this.logger.warn({ err, connection: connection.id }, 'could not register a connection with presence');
    }
  }

  async detach(connection: Connection, reason: presenceV1.DisconnectReason): Promise<void> {
    const state = this.state.get(connection);
    if (!state) return;
    this.state.delete(connection);
    this.dirty.delete(connection);
    this.active.delete(connection);
    for (const userId of state.interests.keys()) this.fanout.unsubscribe(subjects.presence(connection.tenantId, userId), connection);
    this.fanout.unsubscribe(subjects.presenceBatch(connection.tenantId), connection);
    try {
      for (const conversationId of state.entered ?? []) await this.occupy(connection, conversationId, false);
    } catch (err) {
      this.logger.warn({ err, connection: connection.id }, 'could not leave the conversations a closed connection was present in');
    }
    const { tenantId, userId, deviceId } = connection.identity;
    this.detachQueue.push({ tenantId, userId, connectionId: connection.id, deviceId, reason });
    await this.sendDetaches();
  }

  /**
   * One DisconnectDevices call at a time: a close while none is running
   * leaves at once; closes meanwhile wait and go together in the next call
   * (at most PRESENCE_DETACH_BATCH each). Resolves once the queue is empty.
   */
  private sendDetaches(): Promise<void> {
    this.detaching ??= (async () => {
      // Closes of the same event-loop turn (a dropped network, a drain) leave together.
      await new Promise((resolve) => setImmediate(resolve));
      while (this.detachQueue.length > 0) {
        const batch = this.detachQueue.splice(0, this.config.PRESENCE_DETACH_BATCH);
        const byTenant = new Map<string, presenceV1.TenantDisconnects>();
        for (const { tenantId, userId, connectionId, deviceId, reason } of batch) {
          let tenant = byTenant.get(tenantId);
          if (!tenant) byTenant.set(tenantId, (tenant = { tenantId, connections: [] }));
          tenant.connections.push({ userId, connectionId, deviceId, reason });
        }
        try {
          await this.presence.disconnectDevices({ context: undefined, gatewayId: this.config.GATEWAY_ID, tenants: [...byTenant.values()] }, this.internal);
        } catch (err) {
          // The next refresh lists every connection: presence drops what this gateway no longer has.
          this.fullRefreshDue = true;
          this.logger.warn({ err, connections: batch.length }, 'could not unregister closed connections from presence; the next refresh reconciles them');
        }
      }
    })().finally(() => (this.detaching = undefined));
    return this.detaching;
  }

  markActive(connection: Connection): void {
    if (this.state.has(connection)) this.active.add(connection);
  }

  /** One call per interval for this gateway (see the class comment); runs at most once at a time. */
  refresh(): Promise<void> {
    this.refreshing ??= this.refreshOnce().finally(() => (this.refreshing = undefined));
    return this.refreshing;
  }

  private async refreshOnce(): Promise<void> {
    this.refreshesSinceFull += 1;
    const active = new Map<string, string[]>();
    for (const connection of this.active) {
      let ids = active.get(connection.tenantId);
      if (!ids) active.set(connection.tenantId, (ids = []));
      ids.push(connection.id);
    }
    this.active.clear();
    if (!this.fullRefreshDue && this.refreshesSinceFull < this.config.PRESENCE_FULL_REFRESH_EVERY) {
      try {
        const tenants = [...active].map(([tenantId, activeConnectionIds]) => ({ tenantId, activeConnectionIds }));
        await this.presence.renewGateway({ context: undefined, gatewayId: this.config.GATEWAY_ID, tenants }, this.internal);
        return;
      } catch (err) {
        // A presence that cannot renew (or does not know RenewGateway yet) still gets the full call, now.
        this.logger.warn({ err }, 'could not renew the presence lease; sending the full refresh instead');
      }
    }
    this.fullRefreshDue = false;
    this.refreshesSinceFull = 0;
    const byTenant = new Map<string, presenceV1.TenantLeases>();
    const byId = new Map<string, Connection>();
    for (const connection of this.connections()) {
      if (!this.state.has(connection)) continue;
      byId.set(connection.id, connection);
      let leases = byTenant.get(connection.tenantId);
      if (!leases) byTenant.set(connection.tenantId, (leases = { tenantId: connection.tenantId, connectionIds: [], activeConnectionIds: active.get(connection.tenantId) ?? [] }));
      leases.connectionIds.push(connection.id);
    }
    try {
      const { unknown } = await this.presence.refreshLeases({ context: undefined, gatewayId: this.config.GATEWAY_ID, tenants: [...byTenant.values()] }, this.internal);
      const lost = unknown.flatMap((u) => u.connectionIds.map((id) => byId.get(id)).filter((c): c is Connection => c !== undefined && c.tenantId === u.tenantId));
      if (lost.length > 0) this.logger.warn({ connections: lost.length }, 'presence lost connections of this gateway: registering them again');
      for (let i = 0; i < lost.length; i += 100) await Promise.all(lost.slice(i, i + 100).map((c) => this.register(c)));
    } catch (err) {
      this.fullRefreshDue = true;
      this.logger.warn({ err }, 'could not refresh presence leases; retrying next interval');
    }
  }

  // --- who sees whom ---

  private want(connection: Connection, userId: string, reason: string): void {
    const state = this.state.get(connection);
    if (!state || !isSafeId(userId)) return;
    let reasons = state.interests.get(userId);
    if (!reasons) {
      state.interests.set(userId, (reasons = new Set()));
      this.fanout.subscribe(subjects.presence(connection.tenantId, userId), connection);
    }
    reasons.add(reason);
  }

  private unwant(connection: Connection, userId: string, reason: string): void {
    const state = this.state.get(connection);
    const reasons = state?.interests.get(userId);
    if (!state || !reasons) return;
    reasons.delete(reason);
    if (reasons.size > 0) return;
    state.interests.delete(userId);
    this.fanout.unsubscribe(subjects.presence(connection.tenantId, userId), connection);
  }

  /** Conversations the connection belongs to: small ones give per-member presence, large ones occupancy. */
  conversationsListed(connection: Connection, conversations: messagingV1.Conversation[]): void {
    for (const conversation of conversations) this.followConversation(connection, conversation, false);
  }

  /** Joined while connected: the members' presence is pushed now, not only at their next change. */
  conversationJoined(connection: Connection, conversation: messagingV1.Conversation | undefined): void {
    if (conversation) this.followConversation(connection, conversation, true);
  }

  /** A direct conversation lists its members; a room's come from the room service (with the count that decides). */
  private followConversation(connection: Connection, conversation: messagingV1.Conversation, pushNow: boolean): void {
    if (conversation.kind === messagingV1.ConversationKind.CONVERSATION_KIND_ROOM) {
      void this.followRoom(connection, conversation.conversationId, pushNow);
      return;
    }
    const members = this.followMembers(connection, conversation.conversationId, conversation.memberIds, conversation.memberIds.length);
    if (pushNow && members.length > 0) this.pushCurrent(connection, members);
  }

  /**
   * One ListMembers page of threshold size tells both who and how many.
   * Membership events that arrive meanwhile wait and are applied after it
   * (each applies once), so a join during the read is never lost.
   */
  private async followRoom(connection: Connection, roomId: string, pushNow: boolean): Promise<void> {
    const state = this.state.get(connection);
    if (!state || state.roomReads?.has(roomId)) return;
    (state.roomReads ??= new Map()).set(roomId, []);
    let followed: string[] = [];
    try {
      const { members, totalCount } = await this.room.listMembers(
        { context: undefined, roomId, roles: [], page: { pageSize: this.config.PRESENCE_OCCUPANCY_THRESHOLD, pageToken: '' } },
        connection.callOptions(this.config.BACKEND_DEADLINE_MS),
      );
      if (connection.conversations.has(roomId)) followed = this.followMembers(connection, roomId, members.map((m) => m.userId), totalCount);
    } catch (err) {
      this.logger.warn({ err, connection: connection.id, roomId }, 'could not list room members; their presence shows after a reconnect');
    }
    const waiting = state.roomReads?.get(roomId) ?? [];
    state.roomReads?.delete(roomId);
    if (pushNow && followed.length > 0) this.pushCurrent(connection, followed);
    for (const [userId, member] of waiting) this.memberChanged(connection, roomId, userId, member);
  }

  /** Receives the presence of a small conversation's members (the connection's own user aside); returns them. */
  private followMembers(connection: Connection, conversationId: string, memberIds: string[], memberCount: number): string[] {
    const state = this.state.get(connection);
    if (!state || memberCount > this.config.PRESENCE_OCCUPANCY_THRESHOLD) return [];
    (state.memberCounts ??= new Map()).set(conversationId, memberCount);
    const others = memberIds.filter((memberId) => memberId !== connection.userId);
    for (const memberId of others) this.want(connection, memberId, conversationId);
    return others;
  }

  /**
   * Another user joined or left a conversation of this connection (room
   * membership events on the room's subject): a joiner's presence is
   * received (and pushed now) from then on, a member who left is no longer
   * received for this conversation's sake. Past the threshold the
   * conversation switches to occupancy counts.
   */
  memberChanged(connection: Connection, conversationId: string, userId: string, member: boolean): void {
    const state = this.state.get(connection);
    state?.roomReads?.get(conversationId)?.push([userId, member]);
    const counts = state?.memberCounts;
    const count = counts?.get(conversationId);
    if (!state || !counts || count === undefined || userId === connection.userId) return;
    const following = state.interests.get(userId)?.has(conversationId) ?? false;
    // A redelivered event changes nothing.
    if (member === following) return;
    if (!member) {
      counts.set(conversationId, count - 1);
      this.unwant(connection, userId, conversationId);
      return;
    }
    if (count + 1 > this.config.PRESENCE_OCCUPANCY_THRESHOLD) {
      counts.delete(conversationId);
      for (const memberId of [...state.interests.keys()]) this.unwant(connection, memberId, conversationId);
      return;
    }
    counts.set(conversationId, count + 1);
    this.want(connection, userId, conversationId);
    this.pushCurrent(connection, [userId]);
  }

  /**
   * Queues the users' presence as it is now (one GetPresence shared by all
   * connections that ask for the same users in the same turn). A change
   * that arrived meanwhile is newer and stays.
   */
  private pushCurrent(connection: Connection, userIds: string[]): void {
    const key = `${connection.tenantId}/${[...userIds].sort().join(',')}`;
    let read = this.currentReads.get(key);
    if (!read) {
      read = this.presence.getPresence({ context: undefined, userIds, includeDevices: false }, this.options(connection)).then((r) => r.presences);
      this.currentReads.set(key, read);
      void read.finally(() => this.currentReads.delete(key)).catch(() => undefined);
    }
    read.then(
      (presences) => {
        const state = this.state.get(connection);
        if (!state) return;
        for (const p of presences) {
          if (!state.interests.has(p.userId) || state.pending?.has(p.userId)) continue;
          this.queue(connection, { userId: p.userId, status: p.status, customMessage: p.customMessage, lastSeen: p.lastSeen, deviceCount: p.deviceCount, changedAt: p.updatedAt });
        }
      },
      (err: unknown) => this.logger.warn({ err, connection: connection.id }, 'could not read the presence of new co-members; they show at their next change'),
    );
  }

  conversationLeft(connection: Connection, conversationId: string): void {
    const state = this.state.get(connection);
    if (!state) return;
    state.memberCounts?.delete(conversationId);
    for (const userId of [...state.interests.keys()]) this.unwant(connection, userId, conversationId);
    if (state.entered?.has(conversationId)) {
      state.entered.delete(conversationId);
      void this.occupy(connection, conversationId, false).catch(() => undefined);
    }
  }

  /** Events of kinds the Fanout leaves to presence; `targets` are this gateway's connections on the subject, of the event's tenant. */
  onEvent(subject: string, envelope: eventsV1.Envelope, targets: Connection[]): void {
    const event = envelope.event;
    switch (event?.$case) {
      case 'presenceChanged':
        for (const connection of targets) this.queue(connection, event.value);
        return;
      case 'presenceChangedBatch': {
        // Only on the envelope's own tenant's batch subject: each change goes where that user's own subject would take it.
        if (subject !== subjects.presenceBatch(envelope.tenantId)) return;
        for (const change of event.value.changes) {
          if (!isSafeId(change.userId)) continue;
          for (const connection of this.fanout.connectionsOn(subjects.presence(envelope.tenantId, change.userId))) {
            if (connection.tenantId === envelope.tenantId) this.queue(connection, change);
          }
        }
        return;
      }
      case 'typingChanged':
        this.onTyping(subject, envelope.tenantId, event.value, targets);
        return;
      case 'occupancyChanged': {
        const occupancy = { conversationId: event.value.conversationId, onlineCount: event.value.onlineCount, connectionCount: event.value.connectionCount, userIds: [] };
        for (const connection of targets) {
          const state = this.state.get(connection);
          if (!state) continue;
          (state.occupancy ??= new Map()).set(occupancy.conversationId, occupancy);
          this.markDirty(connection);
        }
        return;
      }
      case 'presenceWatchChanged':
        for (const connection of targets) {
          if (connection.userId !== event.value.userId) continue;
          for (const userId of event.value.userIds) {
            if (event.value.watching) this.want(connection, userId, WATCH);
            else this.unwant(connection, userId, WATCH);
          }
        }
        return;
      default:
        return;
    }
  }

  private queue(connection: Connection, change: eventsV1.PresenceChanged): void {
    const state = this.state.get(connection);
    if (!state) return;
    (state.pending ??= new Map()).set(change.userId, change);
    this.markDirty(connection);
  }

  /** Presence and occupancy for one connection within the window leave as one push. One timer for the gateway. */
  private markDirty(connection: Connection): void {
    this.dirty.add(connection);
    if (this.flushTimer) return;
    this.flushTimer = setTimeout(() => {
      this.flushTimer = undefined;
      const connections = [...this.dirty];
      this.dirty.clear();
      for (const c of connections) {
        const state = this.state.get(c);
        if (!state) continue;
        // Dropped once sent: most connections hear nothing for long stretches.
        if (state.pending?.size) c.push({ requestId: '', kind: { $case: 'presence', value: { changes: [...state.pending.values()] } } });
        if (state.occupancy?.size) c.push({ requestId: '', kind: { $case: 'occupancy', value: { occupancies: [...state.occupancy.values()] } } });
        state.pending = undefined;
        state.occupancy = undefined;
      }
    }, this.config.PRESENCE_COALESCE_MS);
  }

  private onTyping(subject: string, tenantId: string, typing: eventsV1.TypingChanged, targets: Connection[]): void {
    const key = `${tenantId}/${typing.conversationId}/${typing.userId}`;
    clearTimeout(this.typingTimers.get(key));
    this.typingTimers.delete(key);
    const send = (to: Connection[], value: framesV1.TypingEvent) => {
      for (const connection of to) if (connection.userId !== typing.userId) connection.push({ requestId: '', kind: { $case: 'typing', value } });
    };
    send(targets, { conversationId: typing.conversationId, userId: typing.userId, typing: typing.typing, expiresAt: typing.expiresAt });
    if (!typing.typing || !typing.expiresAt) return;
    // Nobody renewed it: stop it here, whether the typist stopped, crashed or lost its connection.
    const timer = setTimeout(() => {
      this.typingTimers.delete(key);
      send(this.fanout.connectionsOn(subject).filter((c) => c.tenantId === tenantId), { conversationId: typing.conversationId, userId: typing.userId, typing: false, expiresAt: undefined });
    }, Math.max(0, typing.expiresAt.getTime() - Date.now()));
    timer.unref();
    this.typingTimers.set(key, timer);
  }

  // --- frames ---

  async reply(connection: Connection, kind: PresenceFrameKind): Promise<ServerKind> {
    const options = this.options(connection);
    switch (kind.$case) {
      case 'typing': {
        this.requireMember(connection, kind.value.conversationId);
        await this.presence.setTyping({ context: undefined, conversationId: kind.value.conversationId, typing: kind.value.typing }, options);
        return { $case: 'ok', value: {} };
      }
      case 'setPresence': {
        const { presence } = await this.presence.setStatus(
          { context: undefined, userId: '', status: kind.value.status, statusExpiresAt: undefined, customMessage: kind.value.customMessage, customMessageExpiresAt: kind.value.customMessageExpiresAt },
          options,
        );
        return { $case: 'presenceState', value: { presences: presence ? [presence] : [], watchedCount: 0 } };
      }
      case 'watchPresence': {
        const { presences, watchedCount } = await this.presence.watch({ context: undefined, userIds: kind.value.userIds }, options);
        for (const p of presences) this.want(connection, p.userId, WATCH);
        return { $case: 'presenceState', value: { presences, watchedCount } };
      }
      case 'unwatchPresence': {
        const { watchedCount } = await this.presence.unwatch({ context: undefined, userIds: kind.value.userIds }, options);
        for (const userId of kind.value.userIds) this.unwant(connection, userId, WATCH);
        return { $case: 'presenceState', value: { presences: [], watchedCount } };
      }
      case 'getPresence': {
        const { presences } = await this.presence.getPresence({ context: undefined, userIds: kind.value.userIds, includeDevices: false }, options);
        return { $case: 'presenceState', value: { presences, watchedCount: 0 } };
      }
      case 'enterConversation':
      case 'leaveConversation': {
        const conversationId = kind.value.conversationId;
        this.requireMember(connection, conversationId);
        const enter = kind.$case === 'enterConversation';
        const state = this.state.get(connection)!;
        if (enter) (state.entered ??= new Set()).add(conversationId);
        else state.entered?.delete(conversationId);
        return { $case: 'occupancyState', value: { occupancy: await this.occupy(connection, conversationId, enter) } };
      }
    }
  }

  private requireMember(connection: Connection, conversationId: string): void {
    if (!isSafeId(conversationId)) throw new InvalidArgumentError('conversation_id must be 1-64 characters of A-Z, a-z, 0-9, _ or -', { field: 'conversation_id' });
    // The same answer for a conversation that does not exist: nothing about other conversations leaks.
    if (!connection.conversations.has(conversationId)) throw new NotFoundError(`conversation ${conversationId} not found among yours`, { field: 'conversation_id' });
  }

  private async occupy(connection: Connection, conversationId: string, enter: boolean): Promise<presenceV1.Occupancy | undefined> {
    const request = { context: undefined, gatewayId: this.config.GATEWAY_ID, connectionId: connection.id, conversationId };
    const { occupancy } = enter ? await this.presence.enterConversation(request, this.options(connection)) : await this.presence.leaveConversation(request, this.options(connection));
    return occupancy;
  }
}
