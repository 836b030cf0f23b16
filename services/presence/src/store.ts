import { assertSafeId } from '@switchboard/ids';
import { tenantKey, type Redis } from '@switchboard/redis';
import type { presenceV1 } from '@switchboard/proto';
import type { PresenceStatus } from './merge';

/** What the client said about a device when it connected, and when it was last connected. */
export type StoredDevice = Omit<presenceV1.DeviceInfo, 'deviceId'> & { connectedAt: number; disconnectedAt?: number };

/** One registered connection (alive while it is stored: its gateway's lease and heartbeat keep it). */
export interface Lease {
  deviceId: string;
  gatewayId: string;
  connectionId: string;
  connectedAt: number;
}

/** The status a user chose; times are ms since the epoch, 0 = never. */
export interface ManualStatus {
  status: PresenceStatus;
  statusExpiresAt: number;
  customMessage: string;
  customMessageExpiresAt: number;
  /** What others see as last seen while the user appears offline. */
  frozenLastSeen: number;
  updatedAt: number;
}

export interface StoredSettings {
  autoAwayAfterMs: number;
  hideLastSeen: boolean;
}

/** Everything stored about one user, read at one moment. */
export interface Snapshot {
  userId: string;
  leases: Lease[];
  devices: Map<string, StoredDevice>;
  /** Last user activity per device (ms); devices never active since connecting are absent. */
  activity: Map<string, number>;
  manual: ManualStatus | undefined;
  settings: StoredSettings;
  /** Last moment the user was known online (0 = never). */
  lastSeen: number;
  /** Bumped by every write; orders the change announcements of concurrent writes. */
  version: number;
}

export interface ConnectionRef {
  deviceId: string;
  gatewayId: string;
  connectionId: string;
}

/** One announced change, as kept in the history stream. */
export interface HistoryRecord {
  at: number;
  status: PresenceStatus;
  customMessage: string;
  cause: number;
  deviceCount: number;
}

export interface ChangeClaim {
  version: number;
  fingerprint: string;
  history: HistoryRecord;
  /** When the merged presence must be computed again (auto-away, an expiry); 0 = never. */
  dueAt: number;
  online: boolean;
}

/**
 * Decides whether a snapshot's public presence is news: only a write newer
 * than the last one announced wins; when its fingerprint differs it is also
 * appended to the history (trimmed to the retention). Either way the winner
 * schedules the next recomputation and keeps the tenant's online set true.
 * Atomic, so concurrent replicas announce each change once.
 *   KEYS: meta, history, due, online; ARGV: version, fingerprint, userId,
 *   dueAt, online, now, minHistoryId, retentionMs, history fields…
 */
const CLAIM_CHANGE = `
local cur = redis.call('HMGET', KEYS[1], 'publishedVersion', 'publishedFingerprint')
if cur[1] and tonumber(cur[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'publishedVersion', ARGV[1], 'publishedFingerprint', ARGV[2])
if tonumber(ARGV[4]) > 0 then redis.call('ZADD', KEYS[3], ARGV[4], ARGV[3]) else redis.call('ZREM', KEYS[3], ARGV[3]) end
if ARGV[5] == '1' then redis.call('ZADD', KEYS[4], 'NX', ARGV[6], ARGV[3]) else redis.call('ZREM', KEYS[4], ARGV[3]) end
if cur[2] == ARGV[2] then return 0 end
redis.call('XADD', KEYS[2], 'MINID', '~', ARGV[7], '*', unpack(ARGV, 9))
redis.call('PEXPIRE', KEYS[2], ARGV[8])
return 1`;

/**
 * A gateway's refresh for one tenant: the connections it holds that presence
 * does not know (to register again), and the ones presence holds for it
 * that the gateway no longer has (missed disconnects; only those registered
 * before the gateway's list was taken).
 *   KEYS: the gateway's connection hash; ARGV: registeredBefore, connection ids…
 */
const RECONCILE = `
local stored = redis.call('HGETALL', KEYS[1])
local sent = {}
for i = 2, #ARGV do sent[ARGV[i]] = true end
local have = {}
local stale = {}
for i = 1, #stored, 2 do
  have[stored[i]] = true
  if not sent[stored[i]] then
    local at = tonumber(string.match(stored[i + 1], ':(%d+)$') or '0')
    if at < tonumber(ARGV[1]) then table.insert(stale, stored[i]); table.insert(stale, stored[i + 1]) end
  end
end
local unknown = {}
for i = 2, #ARGV do if not have[ARGV[i]] then table.insert(unknown, ARGV[i]) end end
return {unknown, stale}`;

/** Pops the members of a sorted set scored at or before ARGV[1] (at most ARGV[2]): whoever pops one handles it. */
const POP_DUE = `
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
if #due > 0 then redis.call('ZREM', KEYS[1], unpack(due)) end
return due`;

/**
 * Occupancy: KEYS occ (connection → user), occu (user → connection count);
 * ARGV: field, userId, +1 enter / -1 leave. Returns {online users, connections}.
 */
const OCCUPY = `
if ARGV[3] == '1' then
  if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 1 then redis.call('HINCRBY', KEYS[2], ARGV[2], 1) end
else
  if redis.call('HDEL', KEYS[1], ARGV[1]) == 1 then
    if redis.call('HINCRBY', KEYS[2], ARGV[2], -1) <= 0 then redis.call('HDEL', KEYS[2], ARGV[2]) end
  end
end
return {redis.call('HLEN', KEYS[2]), redis.call('HLEN', KEYS[1])}`;

type ScriptedRedis = Redis & {
  claimPresenceChange(...args: (string | number)[]): Promise<number>;
  reconcileLeases(key: string, ...args: (string | number)[]): Promise<[string[], string[]]>;
  popDue(key: string, now: number, limit: number): Promise<string[]>;
  occupy(occ: string, occu: string, field: string, userId: string, delta: number): Promise<[number, number]>;
};

/** Keys shared by all tenants: which gateways are alive and which tenants each serves. */
const SYSTEM = {
  tenants: 'sb:sys:presence:tenants',
  gatewayLeases: 'sb:sys:presence:gateway-leases',
  gatewayBeats: 'sb:sys:presence:gateway-heartbeats',
  gatewayTenants: (gatewayId: string) => `sb:sys:presence:gateway-tenants:${assertSafeId(gatewayId, 'gateway_id')}`,
};

export interface Occupancy {
  onlineCount: number;
  connectionCount: number;
}

/**
 * Presence state in Redis, every tenant key under the tenant's hash slot
 * (`sb:{<tenant>}:presence:…`) so one user's keys change in one MULTI:
 *   user:<uid>       hash deviceId → device JSON (devices the user connected with)
 *   leases:<uid>     sorted set "<device>:<gateway>:<connection>" scored by connect time
 *   active:<uid>     hash deviceId → last user activity
 *   status:<uid>     hash, the chosen status and custom message
 *   settings:<uid>   hash, auto-away delay and last-seen sharing
 *   meta:<uid>       hash, last seen, write version and the last announced change
 *   history:<uid>    stream of announced changes, trimmed to the retention
 *   watch:<uid>      sorted set of watched users scored by since
 *   gateway:<gw>     hash connection → "<uid>:<device>:<connectedAt>" (what dies with that gateway)
 *   gateway-occ:<gw> set "<conversation>:<connection>" (occupancy that dies with it)
 *   occ:<cid>        hash "<gw>:<connection>" → uid; occu:<cid> hash uid → connections
 *   online           sorted set of users online now
 *   due              sorted set uid → when to recompute (auto-away, expiries)
 *   typing:<cid>     hash uid → typist JSON, expiring within seconds (never persisted longer)
 * Liveness: a connection stays while its gateway holds a lease (renewed by
 * RefreshLeases) and keeps sending heartbeats; otherwise the reaper drops
 * every connection of that gateway at once.
 */
export class PresenceStore {
  readonly redis: ScriptedRedis;

  constructor(
    redis: Redis,
    private readonly retentionS: number,
    private readonly historyRetentionMs: number,
    private readonly defaultAutoAwayMs: number,
  ) {
    redis.defineCommand('claimPresenceChange', { numberOfKeys: 4, lua: CLAIM_CHANGE });
    redis.defineCommand('reconcileLeases', { numberOfKeys: 1, lua: RECONCILE });
    redis.defineCommand('popDue', { numberOfKeys: 1, lua: POP_DUE });
    redis.defineCommand('occupy', { numberOfKeys: 2, lua: OCCUPY });
    this.redis = redis as ScriptedRedis;
  }

  async connect(tenantId: string, userId: string, ref: ConnectionRef, device: StoredDevice, now: number, gatewayLeaseUntil: number): Promise<Snapshot> {
    const k = keys(tenantId, userId);
    const tx = this.redis.multi();
    // A connection registered again (after a presence restart) keeps one member.
    tx.zadd(k.leases, now, leaseMember(ref));
    tx.hset(k.devices, ref.deviceId, JSON.stringify(device));
    // Connecting is activity: the first frames after it never count as a return from auto-away.
    tx.hset(k.active, ref.deviceId, now);
    tx.hset(k.meta, 'lastSeen', now);
    tx.hset(gatewayKey(tenantId, ref.gatewayId), ref.connectionId, `${userId}:${ref.deviceId}:${now}`);
    const snapshot = await this.commit(tx, tenantId, userId);
    await this.redis
      .pipeline()
      .zadd(SYSTEM.gatewayLeases, gatewayLeaseUntil, ref.gatewayId)
      .sadd(SYSTEM.gatewayTenants(ref.gatewayId), tenantId)
      .sadd(SYSTEM.tenants, tenantId)
      .exec();
    return snapshot;
  }

  /** Drops connections of one user; devices left without a connection are marked disconnected now. */
  async disconnect(tenantId: string, userId: string, refs: ConnectionRef[], now: number): Promise<Snapshot> {
    const k = keys(tenantId, userId);
    const tx = this.redis.multi();
    for (const ref of refs) {
      tx.zrem(k.leases, leaseMember(ref));
      tx.hdel(gatewayKey(tenantId, ref.gatewayId), ref.connectionId);
    }
    // The user was online until this moment, whichever connection remains.
    tx.hset(k.meta, 'lastSeen', now);
    // Retention was refreshed when these connected; a whole gateway's users drop at once, so keep it lean.
    const snapshot = await this.commit(tx, tenantId, userId, false);
    const remaining = new Set(snapshot.leases.map((l) => l.deviceId));
    const gone = [...new Set(refs.map((r) => r.deviceId))].filter((d) => !remaining.has(d) && snapshot.devices.has(d));
    if (gone.length > 0) {
      const updates: Record<string, string> = {};
      for (const deviceId of gone) {
        const device = { ...snapshot.devices.get(deviceId)!, disconnectedAt: now };
        snapshot.devices.set(deviceId, device);
        updates[deviceId] = JSON.stringify(device);
      }
      await this.redis.hset(k.devices, updates);
    }
    return snapshot;
  }

  /** Replaces the chosen status as a whole; undefined clears it. */
  async setManual(tenantId: string, userId: string, manual: ManualStatus | undefined): Promise<Snapshot> {
    const k = keys(tenantId, userId);
    const tx = this.redis.multi();
    tx.del(k.status);
    if (manual) tx.hset(k.status, { ...manual });
    return this.commit(tx, tenantId, userId);
  }

  async setSettings(tenantId: string, userId: string, settings: StoredSettings): Promise<Snapshot> {
    const k = keys(tenantId, userId);
    const tx = this.redis.multi();
    tx.hset(k.settings, { autoAwayAfterMs: settings.autoAwayAfterMs, hideLastSeen: settings.hideLastSeen ? 1 : 0 });
    return this.commit(tx, tenantId, userId);
  }

  /** A write that changes nothing but the version: makes the next announcement of this user win (time-driven changes). */
  async touch(tenantId: string, userId: string): Promise<Snapshot> {
    return this.commit(this.redis.multi(), tenantId, userId);
  }

  /** Many users at once, in the order asked. */
  async read(tenantId: string, userIds: string[]): Promise<Snapshot[]> {
    if (userIds.length === 0) return [];
    const pipeline = this.redis.pipeline();
    for (const userId of userIds) queueSnapshotReads(pipeline, keys(tenantId, userId));
    const results = unwrap(await pipeline.exec());
    return userIds.map((userId, index) => this.parseSnapshot(userId, results.slice(index * READS_PER_USER, (index + 1) * READS_PER_USER)));
  }

  /** Announces a change when it is news; see CLAIM_CHANGE. */
  async claimChange(tenantId: string, userId: string, claim: ChangeClaim, now: number): Promise<boolean> {
    const k = keys(tenantId, userId);
    const h = claim.history;
    return (
      (await this.redis.claimPresenceChange(
        k.meta,
        k.history,
        tenantKey(tenantId, 'presence', 'due'),
        tenantKey(tenantId, 'presence', 'online'),
        claim.version,
        claim.fingerprint,
        userId,
        claim.dueAt,
        claim.online ? 1 : 0,
        now,
        `${Math.max(0, now - this.historyRetentionMs)}-0`,
        this.historyRetentionMs,
        'at',
        h.at,
        'status',
        h.status,
        'message',
        h.customMessage,
        'cause',
        h.cause,
        'devices',
        h.deviceCount,
      )) === 1
    );
  }

  // --- gateways ---

  /** Extends a gateway's lease and reconciles one tenant's connections; see RECONCILE. */
  async reconcile(tenantId: string, gatewayId: string, connectionIds: string[], registeredBefore: number): Promise<{ unknown: string[]; stale: { connectionId: string; userId: string; deviceId: string }[] }> {
    const [unknown, staleFlat] = await this.redis.reconcileLeases(gatewayKey(tenantId, gatewayId), registeredBefore, ...connectionIds);
    const stale = [];
    for (let i = 0; i < staleFlat.length; i += 2) {
      const [userId = '', deviceId = ''] = staleFlat[i + 1]!.split(':');
      stale.push({ connectionId: staleFlat[i]!, userId, deviceId });
    }
    return { unknown, stale };
  }

  async renewGateway(gatewayId: string, tenantIds: string[], leaseUntil: number): Promise<void> {
    const pipeline = this.redis.pipeline().zadd(SYSTEM.gatewayLeases, leaseUntil, gatewayId);
    if (tenantIds.length > 0) pipeline.sadd(SYSTEM.gatewayTenants(gatewayId), ...tenantIds).sadd(SYSTEM.tenants, ...tenantIds);
    unwrap(await pipeline.exec());
  }

  async heartbeat(gatewayId: string, deadline: number): Promise<void> {
    await this.redis.zadd(SYSTEM.gatewayBeats, deadline, gatewayId);
  }

  /** Gateways whose lease lapsed or whose heartbeats stopped; each is returned to exactly one caller. */
  async popDeadGateways(now: number): Promise<string[]> {
    const [beats, leases] = await Promise.all([this.redis.popDue(SYSTEM.gatewayBeats, now, 100), this.redis.popDue(SYSTEM.gatewayLeases, now, 100)]);
    return [...new Set([...beats, ...leases])];
  }

  /** Everything a gateway holds, by tenant, and forgets the gateway (its connections are the caller's to drop). */
  async takeGateway(gatewayId: string): Promise<{ tenantId: string; connections: { connectionId: string; userId: string; deviceId: string }[]; occupancy: { conversationId: string; connectionId: string }[] }[]> {
    const tenants = await this.redis.smembers(SYSTEM.gatewayTenants(gatewayId));
    const result = [];
    for (const tenantId of tenants) {
      const [[, connections], [, occupancy]] = unwrapPairs(await this.redis.pipeline().hgetall(gatewayKey(tenantId, gatewayId)).smembers(gatewayOccKey(tenantId, gatewayId)).exec());
      result.push({
        tenantId,
        connections: Object.entries(connections as Record<string, string>).map(([connectionId, value]) => {
          const [userId = '', deviceId = ''] = value.split(':');
          return { connectionId, userId, deviceId };
        }),
        occupancy: (occupancy as string[]).map((entry) => {
          const [conversationId = '', connectionId = ''] = entry.split(':');
          return { conversationId, connectionId };
        }),
      });
    }
    const cleanup = this.redis.pipeline();
    for (const { tenantId } of result) cleanup.del(gatewayKey(tenantId, gatewayId), gatewayOccKey(tenantId, gatewayId));
    cleanup.del(SYSTEM.gatewayTenants(gatewayId)).zrem(SYSTEM.gatewayBeats, gatewayId).zrem(SYSTEM.gatewayLeases, gatewayId);
    await cleanup.exec();
    return result;
  }

  /** Which users the given connections of one gateway belong to (unknown connections are left out). */
  async ownersOf(tenantId: string, gatewayId: string, connectionIds: string[]): Promise<{ userId: string; deviceId: string }[]> {
    if (connectionIds.length === 0) return [];
    const values = await this.redis.hmget(gatewayKey(tenantId, gatewayId), ...connectionIds);
    return values.filter((v): v is string => v !== null).map((v) => {
      const [userId = '', deviceId = ''] = v.split(':');
      return { userId, deviceId };
    });
  }

  /**
   * Records user activity per device. Returns the users who may have been
   * auto-away until now (their previous activity is older than their delay):
   * only those need their presence recomputed.
   */
  async recordActivity(tenantId: string, owners: { userId: string; deviceId: string }[], now: number): Promise<string[]> {
    const users = [...new Set(owners.map((o) => o.userId))];
    const pipeline = this.redis.pipeline();
    for (const userId of users) pipeline.hvals(keys(tenantId, userId).active).hget(keys(tenantId, userId).settings, 'autoAwayAfterMs');
    for (const { userId, deviceId } of owners) pipeline.hset(keys(tenantId, userId).active, deviceId, now);
    const results = unwrap(await pipeline.exec());
    return users.filter((_, index) => {
      const previous = Math.max(0, ...(results[index * 2] as string[]).map(Number));
      const delay = Number(results[index * 2 + 1] ?? 0) || this.defaultAutoAwayMs;
      return previous + delay <= now;
    });
  }

  async tenants(): Promise<string[]> {
    return this.redis.smembers(SYSTEM.tenants);
  }

  async popDueUsers(tenantId: string, now: number, limit: number): Promise<string[]> {
    return this.redis.popDue(tenantKey(tenantId, 'presence', 'due'), now, limit);
  }

  // --- occupancy ---

  async occupy(tenantId: string, gatewayId: string, connectionId: string, userId: string, conversationId: string, enter: boolean): Promise<Occupancy> {
    const k = occupancyKeys(tenantId, conversationId);
    const [onlineCount, connectionCount] = await this.redis.occupy(k.connections, k.users, `${gatewayId}:${connectionId}`, userId, enter ? 1 : -1);
    const marker = `${conversationId}:${connectionId}`;
    if (enter) await this.redis.sadd(gatewayOccKey(tenantId, gatewayId), marker);
    else await this.redis.srem(gatewayOccKey(tenantId, gatewayId), marker);
    return { onlineCount, connectionCount };
  }

  /** Leaves every conversation a dropped connection was present in; returns the conversations whose counts changed. */
  async vacate(tenantId: string, gatewayId: string, entries: { conversationId: string; connectionId: string; userId: string }[]): Promise<Map<string, Occupancy>> {
    const changed = new Map<string, Occupancy>();
    for (const entry of entries) {
      const k = occupancyKeys(tenantId, entry.conversationId);
      const [onlineCount, connectionCount] = await this.redis.occupy(k.connections, k.users, `${gatewayId}:${entry.connectionId}`, entry.userId, -1);
      changed.set(entry.conversationId, { onlineCount, connectionCount });
    }
    return changed;
  }

  async occupancy(tenantId: string, conversationIds: string[]): Promise<Occupancy[]> {
    if (conversationIds.length === 0) return [];
    const pipeline = this.redis.pipeline();
    for (const conversationId of conversationIds) {
      const k = occupancyKeys(tenantId, conversationId);
      pipeline.hlen(k.users).hlen(k.connections);
    }
    const results = unwrap(await pipeline.exec()) as number[];
    return conversationIds.map((_, i) => ({ onlineCount: results[i * 2]!, connectionCount: results[i * 2 + 1]! }));
  }

  async occupants(tenantId: string, conversationId: string): Promise<string[]> {
    return (await this.redis.hkeys(occupancyKeys(tenantId, conversationId).users)).sort();
  }

  /** A page of the tenant's online users (appear-offline ones included), and how many there are. */
  async onlineUsers(tenantId: string, offset: number, count: number): Promise<{ userIds: string[]; total: number }> {
    const key = tenantKey(tenantId, 'presence', 'online');
    const [[, userIds], [, total]] = unwrapPairs(await this.redis.pipeline().zrange(key, offset, offset + count - 1).zcard(key).exec());
    return { userIds: userIds as string[], total: total as number };
  }

  // --- watch-list ---

  async watch(tenantId: string, userId: string, watched: string[], cap: number, now: number): Promise<number | 'over'> {
    const key = keys(tenantId, userId).watch;
    const [[, size], [, scores]] = unwrapPairs(await this.redis.pipeline().zcard(key).zmscore(key, ...watched).exec());
    const added = new Set(watched.filter((_, i) => (scores as (string | null)[])[i] === null)).size;
    if ((size as number) + added > cap) return 'over';
    if (added > 0) await this.redis.zadd(key, 'NX', ...watched.flatMap((w) => [now, w]));
    return (size as number) + added;
  }

  async unwatch(tenantId: string, userId: string, watched: string[]): Promise<number> {
    const key = keys(tenantId, userId).watch;
    const [, [, size]] = unwrapPairs(await this.redis.pipeline().zrem(key, ...watched).zcard(key).exec());
    return size as number;
  }

  async watched(tenantId: string, userId: string, offset: number, count: number): Promise<{ users: { userId: string; since: number }[]; total: number }> {
    const key = keys(tenantId, userId).watch;
    const [[, flat], [, total]] = unwrapPairs(await this.redis.pipeline().zrange(key, offset, offset + count - 1, 'WITHSCORES').zcard(key).exec());
    const users = [];
    const list = flat as string[];
    for (let i = 0; i < list.length; i += 2) users.push({ userId: list[i]!, since: Number(list[i + 1]) });
    return { users, total: total as number };
  }

  // --- typing ---

  async setTyping(tenantId: string, conversationId: string, userId: string, typist: { deviceId: string; startedAt: number; expiresAt: number } | undefined, ttlMs: number): Promise<void> {
    const key = tenantKey(tenantId, 'presence', 'typing', conversationId);
    if (!typist) {
      await this.redis.hdel(key, userId);
      return;
    }
    await this.redis.pipeline().hset(key, userId, JSON.stringify(typist)).pexpire(key, ttlMs * 2).exec();
  }

  async typists(tenantId: string, conversationId: string): Promise<Map<string, { deviceId: string; startedAt: number; expiresAt: number }>> {
    const raw = await this.redis.hgetall(tenantKey(tenantId, 'presence', 'typing', conversationId));
    return new Map(Object.entries(raw).map(([userId, json]) => [userId, JSON.parse(json) as { deviceId: string; startedAt: number; expiresAt: number }]));
  }

  // --- history ---

  async history(tenantId: string, userId: string, limit: number): Promise<HistoryRecord[]> {
    const entries = await this.redis.xrevrange(keys(tenantId, userId).history, '+', '-', 'COUNT', limit);
    return entries.map(([, fields]) => {
      const f: Record<string, string> = {};
      for (let i = 0; i < fields.length; i += 2) f[fields[i]!] = fields[i + 1]!;
      return { at: Number(f.at), status: Number(f.status) as PresenceStatus, customMessage: f.message ?? '', cause: Number(f.cause), deviceCount: Number(f.devices) };
    });
  }

  /** Runs the writes, bumps the version, refreshes retention and reads the result, all in one MULTI. */
  private async commit(tx: ReturnType<Redis['multi']>, tenantId: string, userId: string, refreshRetention = true): Promise<Snapshot> {
    const k = keys(tenantId, userId);
    tx.hincrby(k.meta, 'version', 1);
    if (refreshRetention) for (const key of [k.devices, k.leases, k.status, k.meta, k.active, k.settings]) tx.expire(key, this.retentionS);
    queueSnapshotReads(tx, k);
    const results = unwrap(await tx.exec());
    return this.parseSnapshot(userId, results.slice(-READS_PER_USER));
  }

  private parseSnapshot(userId: string, [leaseList, devices, status, meta, active, settings]: unknown[]): Snapshot {
    const flat = leaseList as string[];
    const leases: Lease[] = [];
    for (let i = 0; i < flat.length; i += 2) {
      const [deviceId = '', gatewayId = '', connectionId = ''] = flat[i]!.split(':');
      leases.push({ deviceId, gatewayId, connectionId, connectedAt: Number(flat[i + 1]) });
    }
    const deviceMap = new Map<string, StoredDevice>();
    for (const [deviceId, json] of Object.entries(devices as Record<string, string>)) deviceMap.set(deviceId, JSON.parse(json) as StoredDevice);
    const s = status as Record<string, string>;
    const m = meta as Record<string, string>;
    const st = settings as Record<string, string>;
    return {
      userId,
      leases,
      devices: deviceMap,
      activity: new Map(Object.entries(active as Record<string, string>).map(([d, at]) => [d, Number(at)])),
      manual:
        s.updatedAt === undefined
          ? undefined
          : {
              status: Number(s.status) as PresenceStatus,
              statusExpiresAt: Number(s.statusExpiresAt ?? 0),
              customMessage: s.customMessage ?? '',
              customMessageExpiresAt: Number(s.customMessageExpiresAt ?? 0),
              frozenLastSeen: Number(s.frozenLastSeen ?? 0),
              updatedAt: Number(s.updatedAt),
            },
      settings: { autoAwayAfterMs: Number(st.autoAwayAfterMs ?? 0) || this.defaultAutoAwayMs, hideLastSeen: st.hideLastSeen === '1' },
      lastSeen: Number(m.lastSeen ?? 0),
      version: Number(m.version ?? 0),
    };
  }

  /** The stored settings as the user set them (0 = tenant default). */
  async rawSettings(tenantId: string, userId: string): Promise<StoredSettings> {
    const st = await this.redis.hgetall(keys(tenantId, userId).settings);
    return { autoAwayAfterMs: Number(st.autoAwayAfterMs ?? 0), hideLastSeen: st.hideLastSeen === '1' };
  }
}

type Keys = ReturnType<typeof keys>;

function keys(tenantId: string, userId: string) {
  return {
    devices: tenantKey(tenantId, 'presence', 'user', userId),
    leases: tenantKey(tenantId, 'presence', 'leases', userId),
    status: tenantKey(tenantId, 'presence', 'status', userId),
    meta: tenantKey(tenantId, 'presence', 'meta', userId),
    active: tenantKey(tenantId, 'presence', 'active', userId),
    settings: tenantKey(tenantId, 'presence', 'settings', userId),
    history: tenantKey(tenantId, 'presence', 'history', userId),
    watch: tenantKey(tenantId, 'presence', 'watch', userId),
  };
}

function gatewayKey(tenantId: string, gatewayId: string): string {
  return tenantKey(tenantId, 'presence', 'gateway', assertSafeId(gatewayId, 'gateway_id'));
}

function gatewayOccKey(tenantId: string, gatewayId: string): string {
  return tenantKey(tenantId, 'presence', 'gateway-occ', assertSafeId(gatewayId, 'gateway_id'));
}

function occupancyKeys(tenantId: string, conversationId: string) {
  return { connections: tenantKey(tenantId, 'presence', 'occ', conversationId), users: tenantKey(tenantId, 'presence', 'occu', conversationId) };
}

/** Safe ids contain no ':', so the member splits back unambiguously. */
function leaseMember(ref: ConnectionRef): string {
  return `${ref.deviceId}:${ref.gatewayId}:${ref.connectionId}`;
}

const READS_PER_USER = 6;

function queueSnapshotReads(batch: ReturnType<Redis['pipeline']>, k: Keys): void {
  batch.zrange(k.leases, 0, -1, 'WITHSCORES');
  batch.hgetall(k.devices);
  batch.hgetall(k.status);
  batch.hgetall(k.meta);
  batch.hgetall(k.active);
  batch.hgetall(k.settings);
}

function unwrap(results: [Error | null, unknown][] | null): unknown[] {
  // exec() answers null only when a WATCH failed, and nothing here watches.
  if (!results) throw new Error('redis transaction was discarded');
  return results.map(([err, value]) => {
    if (err) throw err;
    return value;
  });
}

function unwrapPairs(results: [Error | null, unknown][] | null): [null, unknown][] {
  return unwrap(results).map((value) => [null, value]);
}
