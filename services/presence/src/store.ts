import { assertSafeId } from '@switchboard/ids';
import { tenantKey, type Redis } from '@switchboard/redis';
import type { presenceV1 } from '@switchboard/proto';
import { PresenceStatus } from './merge';

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

/** Connections of one user to drop together. */
export interface UserConnections {
  userId: string;
  connections: { connectionId: string; deviceId: string }[];
}

/** One user of a dropped gateway: offline and already claimed, or still connected elsewhere. */
export type DroppedUser =
  | { userId: string; gone?: undefined; online: true; snapshot: Snapshot }
  | { userId: string; gone?: undefined; online: false; news: boolean; customMessage: string; /** 0 = not shown */ lastSeen: number; occupancy: Map<string, Occupancy> }
  /** Dropped already (a retried batch, another replica, a disconnect first): nothing done. */
  | { userId: string; gone: true };

/** OFFLINE changes a drop claimed, kept in Redis until published (see DROP_USERS). */
export interface OutboxEntry {
  batchId: string;
  at: number;
  users: { userId: string; version: number; customMessage: string; lastSeen: number }[];
}

/** What is left of a dead gateway's drop in one tenant (see TAKE_DROP). */
export interface DropWork {
  tenantId: string;
  connections: { connectionId: string; userId: string; deviceId: string }[];
  occupancy: { conversationId: string; connectionId: string }[];
  outbox: OutboxEntry[];
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
  userId: string;
  version: number;
  fingerprint: string;
  history: HistoryRecord;
  /** When the merged presence must be computed again (auto-away, an expiry); 0 = never. */
  dueAt: number;
  online: boolean;
  /** Appears offline to others (then left out of visible occupancy counts). */
  hidden: boolean;
}

/**
 * Runs `run` with the list's items as arguments, at most 1000 at a time
 * (Lua's unpack limit), so one command covers many users of a call (Lua).
 */
const IN_CHUNKS = `
local function inChunks(list, run)
  for i = 1, #list, 1000 do run(unpack(list, i, math.min(i + 999, #list))) end
end
`;

/**
 * Removes n connections of one user (ARGV[first…], pairs of connectionId,
 * deviceId) held by one gateway, and from the gateway's hash too when it is
 * given. Shared by DROP_USERS and DISCONNECT (Lua). Writes nothing to meta
 * itself: it returns the meta fields to write (the user was online until
 * now, so last seen moves; the version is bumped; each device left without
 * a connection gets `disconnectedAt:<device>` = now: a field of the small
 * meta hash instead of a rewrite of the device's JSON), so the caller
 * writes them with its own fields in one HSET. Returns the new version, the
 * remaining lease list (with scores), those fields, the last announced
 * {publishedVersion, publishedFingerprint} and how many of the given
 * connections it found (0: dropped already).
 */
const DROP_CONNECTIONS = `
local function dropConnections(leases, meta, gatewayId, now, first, n, gatewayHash)
  local members, connections, touched = {}, {}, {}
  for i = 0, n - 1 do
    local connection, device = ARGV[first + i * 2], ARGV[first + i * 2 + 1]
    members[i + 1] = device .. ':' .. gatewayId .. ':' .. connection
    connections[i + 1] = connection
    touched[device] = true
  end
  local removed = 0
  if n > 0 then
    removed = redis.call('ZREM', leases, unpack(members))
    if gatewayHash then redis.call('HDEL', gatewayHash, unpack(connections)) end
  end
  local leaseList = redis.call('ZRANGE', leases, 0, -1, 'WITHSCORES')
  local remaining = {}
  for i = 1, #leaseList, 2 do remaining[string.match(leaseList[i], '^[^:]*')] = true end
  local cur = redis.call('HMGET', meta, 'version', 'publishedVersion', 'publishedFingerprint')
  local version = tonumber(cur[1] or '0') + 1
  local fields = {'lastSeen', now, 'version', version}
  for device in pairs(touched) do
    if not remaining[device] then table.insert(fields, 'disconnectedAt:' .. device); table.insert(fields, now) end
  end
  return version, leaseList, fields, {cur[2], cur[3]}, removed
end
`;

/**
 * The claims of many users' changes, shared by CLAIM_CHANGES and DROP_USERS
 * (Lua): see CLAIM_CHANGES. `shared` = {due, online, invisible keys, now,
 * minHistoryId, retentionMs, occupancy key prefix}; each claim = {meta,
 * history, occupying, version, fingerprint, userId, dueAt, online, hidden,
 * at, status, message, cause, devices} and optionally `published` (its
 * {publishedVersion, publishedFingerprint}, already read) and `fields`
 * (more meta fields to write in the same HSET). Sets on each claim news
 * (0/1) and counts (the flat {conversationId, users, connections}… whose
 * visible counts changed). The tenant's due, online and invisible sets are
 * written once per call for all winners, each user ending as its last
 * winning claim of the call leaves it (as if the claims ran one by one).
 */
const CLAIM_ALL = `${IN_CHUNKS}
local function recount(shared, c, sign)
  for _, cid in ipairs(redis.call('SMEMBERS', c.occupying)) do
    local n = tonumber(redis.call('HGET', shared.prefix .. 'occu:' .. cid, c.userId) or '0')
    local visible = shared.prefix .. 'occv:' .. cid
    if n > 0 then
      redis.call('HINCRBY', visible, 'users', sign)
      redis.call('HINCRBY', visible, 'connections', sign * n)
    end
    local counts = redis.call('HMGET', visible, 'users', 'connections')
    table.insert(c.counts, cid); table.insert(c.counts, tonumber(counts[1] or '0')); table.insert(c.counts, tonumber(counts[2] or '0'))
  end
end

local function claimAll(shared, claims)
  local winners = {}
  for _, c in ipairs(claims) do
    c.news, c.counts = 0, {}
    local cur = c.published or redis.call('HMGET', c.meta, 'publishedVersion', 'publishedFingerprint')
    local fields = c.fields or {}
    if not (cur[1] and tonumber(cur[1]) >= tonumber(c.version)) then
      table.insert(fields, 'publishedVersion'); table.insert(fields, c.version)
      table.insert(fields, 'publishedFingerprint'); table.insert(fields, c.fingerprint)
      if cur[2] ~= c.fingerprint then
        redis.call('XADD', c.history, 'MINID', '~', shared.minId, '*', 'at', c.at, 'status', c.status, 'message', c.message, 'cause', c.cause, 'devices', c.devices)
        redis.call('PEXPIRE', c.history, shared.retention)
        c.news = 1
      end
      table.insert(winners, c)
    end
    if #fields > 0 then redis.call('HSET', c.meta, unpack(fields)) end
  end
  if #winners == 0 then return end
  local last, users, wentOffline = {}, {}, {}
  for _, c in ipairs(winners) do
    if not last[c.userId] then table.insert(users, c.userId) end
    last[c.userId] = c
    if c.online ~= '1' then wentOffline[c.userId] = true end
  end
  -- Due and online: each user's last winner decides; a user who went
  -- offline in between is removed before being added (online since now).
  local dueAdd, dueRem, onlineAdd, onlineRem = {}, {}, {}, {}
  for _, userId in ipairs(users) do
    local c = last[userId]
    if tonumber(c.dueAt) > 0 then table.insert(dueAdd, c.dueAt); table.insert(dueAdd, userId) else table.insert(dueRem, userId) end
    if wentOffline[userId] then table.insert(onlineRem, userId) end
    if c.online == '1' then table.insert(onlineAdd, shared.now); table.insert(onlineAdd, userId) end
  end
  inChunks(dueRem, function(...) redis.call('ZREM', shared.due, ...) end)
  inChunks(dueAdd, function(...) redis.call('ZADD', shared.due, ...) end)
  inChunks(onlineRem, function(...) redis.call('ZREM', shared.online, ...) end)
  inChunks(onlineAdd, function(...) redis.call('ZADD', shared.online, 'NX', ...) end)
  -- Appearing offline: occupancy is recounted only for the claims that flip it.
  local was, hiddenNow = {}, {}
  local i = 0
  inChunks(users, function(...)
    for _, member in ipairs(redis.call('SMISMEMBER', shared.invisible, ...)) do
      i = i + 1
      was[users[i]] = member == 1
      hiddenNow[users[i]] = member == 1
    end
  end)
  for _, c in ipairs(winners) do
    local hidden = c.hidden == '1'
    if hidden ~= hiddenNow[c.userId] then
      hiddenNow[c.userId] = hidden
      recount(shared, c, hidden and -1 or 1)
    end
  end
  local hide, show = {}, {}
  for _, userId in ipairs(users) do
    if hiddenNow[userId] ~= was[userId] then table.insert(hiddenNow[userId] and hide or show, userId) end
  end
  inChunks(hide, function(...) redis.call('SADD', shared.invisible, ...) end)
  inChunks(show, function(...) redis.call('SREM', shared.invisible, ...) end)
end
`;

/**
 * Decides, for many users of one tenant at once, whether each snapshot's
 * public presence is news: only a write newer than the last one announced
 * wins; when its fingerprint differs it is also appended to the history
 * (trimmed to the retention). Either way the winner schedules the next
 * recomputation, keeps the tenant's online set true and records whether
 * the user appears offline; when that flips, the visible occupancy counts
 * of the conversations the user is present in change, and are returned.
 * Atomic, so concurrent replicas announce each change once.
 *   KEYS: due, online, invisible, then per user: meta, history, occupying;
 *   ARGV: now, minHistoryId, retentionMs, occupancy key prefix, then per user
 *   CLAIM_FIELDS values: version, fingerprint, userId, dueAt, online, hidden,
 *   and the history fields at, status, message, cause, devices.
 * Returns per user {news 0/1, {conversationId, users, connections}…}.
 * The occupancy keys are built from the prefix: the same tenant, so the
 * same hash slot as every declared key.
 */
const CLAIM_CHANGES = `${CLAIM_ALL}
local shared = {due = KEYS[1], online = KEYS[2], invisible = KEYS[3], now = ARGV[1], minId = ARGV[2], retention = ARGV[3], prefix = ARGV[4]}
local claims = {}
local a = 5
for u = 0, (#KEYS - 3) / 3 - 1 do
  table.insert(claims, {meta = KEYS[4 + u * 3], history = KEYS[5 + u * 3], occupying = KEYS[6 + u * 3],
    version = ARGV[a], fingerprint = ARGV[a + 1], userId = ARGV[a + 2], dueAt = ARGV[a + 3], online = ARGV[a + 4], hidden = ARGV[a + 5],
    at = ARGV[a + 6], status = ARGV[a + 7], message = ARGV[a + 8], cause = ARGV[a + 9], devices = ARGV[a + 10]})
  a = a + 11
end
claimAll(shared, claims)
local result = {}
for _, c in ipairs(claims) do table.insert(result, {c.news, c.counts}) end
return result`;

/**
 * Drops the connections of many users of one dead gateway (its connection
 * hash already set aside as the drop's work list, see TAKE_DROP) and, for
 * each user left without any connection, decides and claims the OFFLINE
 * announcement in the same call: a user with no device left is offline
 * whatever else is stored, so the public face needs only the chosen status
 * (appear-offline freezes last seen and hides the custom message; a live
 * custom message still shows) and the last-seen setting: mergePresence's
 * rule for a user without devices, in Lua, proven equal by the presence
 * tests. The version is bumped in the same atomic call, so the claim always
 * wins over earlier writes and later writes win over it. Users with a
 * connection left elsewhere get their snapshot back for the ordinary merge
 * and claim. Each user at most once per call.
 * Durable and idempotent: the batch's connections leave the work list in
 * the same call, and its claimed OFFLINE changes are written to the
 * gateway's outbox (field = batch id; cleared once published), so a replica
 * that dies or loses Redis at any point leaves either the whole batch to do
 * or its changes to publish. A user none of whose given connections is
 * still leased (a retried or concurrent batch, a disconnect that came
 * first) is left alone.
 *   KEYS: due, online, invisible, work list, outbox, then per user leases,
 *   devices, status, meta, active, settings, history, occupying;
 *   ARGV: now, gatewayId, minHistoryId, retentionMs, occupancy key prefix,
 *   cause, OFFLINE status number, batch id, then per user: userId, n, n ×
 *   (connectionId, deviceId).
 * Returns per user either {0, leaseList, devices, status, meta, active,
 * settings} (still online), {1, news, customMessage, lastSeen (0 =
 * hidden), {conversationId, users, connections}…} (offline) or {2}
 * (dropped already).
 * Outbox entry: cjson [now, userId, version, customMessage, lastSeen, …]
 * of the claims that were news.
 */
const DROP_USERS = `${CLAIM_ALL}${DROP_CONNECTIONS}
local now = ARGV[1]
local shared = {due = KEYS[1], online = KEYS[2], invisible = KEYS[3], now = now, minId = ARGV[3], retention = ARGV[4], prefix = ARGV[5]}
local nowN = tonumber(now)
local offline = ARGV[7]
local function live(expiresAt) return expiresAt == 0 or expiresAt > nowN end
local result, claims, claimed, done = {}, {}, {}, {}
local a = 9
for u = 0, (#KEYS - 5) / 8 - 1 do
  local k = 5 + u * 8
  local leases, devices, status, meta, active, settings, history, occupying = KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], KEYS[k + 4], KEYS[k + 5], KEYS[k + 6], KEYS[k + 7], KEYS[k + 8]
  local userId = ARGV[a]
  local n = tonumber(ARGV[a + 1])
  for i = 0, n - 1 do table.insert(done, ARGV[a + 2 + i * 2]) end
  local version, leaseList, fields, published, removed = dropConnections(leases, meta, ARGV[2], now, a + 2, n, nil)
  a = a + 2 + n * 2
  if removed == 0 then
    table.insert(result, {2})
  elseif #leaseList > 0 then
    redis.call('HSET', meta, unpack(fields))
    table.insert(result, {0, leaseList, redis.call('HGETALL', devices), redis.call('HGETALL', status), redis.call('HGETALL', meta), redis.call('HGETALL', active), redis.call('HGETALL', settings)})
  else
    local m = redis.call('HMGET', status, 'status', 'statusExpiresAt', 'customMessage', 'customMessageExpiresAt', 'frozenLastSeen', 'updatedAt')
    local chosen = m[6] and m[1] or nil
    local statusExpiresAt, messageExpiresAt = tonumber(m[2] or '0'), tonumber(m[4] or '0')
    local invisible = chosen == offline and live(statusExpiresAt)
    local message = ''
    if m[6] and not invisible and m[3] and m[3] ~= '' and live(messageExpiresAt) then message = m[3] end
    local dueAt = 0
    if m[6] then
      for _, at in ipairs({statusExpiresAt, messageExpiresAt}) do
        if at > nowN and (dueAt == 0 or at < dueAt) then dueAt = at end
      end
    end
    local lastSeen = now
    if invisible then lastSeen = m[5] or '0' end
    if redis.call('HGET', settings, 'hideLastSeen') == '1' then lastSeen = '0' end
    table.insert(claims, {meta = meta, history = history, occupying = occupying, version = version, fingerprint = offline .. '|' .. message, userId = userId,
      dueAt = dueAt, online = '0', hidden = invisible and '1' or '0', at = now, status = offline, message = message, cause = ARGV[6], devices = 0,
      published = published, fields = fields})
    table.insert(result, {1, 0, message, tonumber(lastSeen), {}})
    table.insert(claimed, #result)
  end
end
claimAll(shared, claims)
local outbox = {nowN}
for j, c in ipairs(claims) do
  local r = result[claimed[j]]
  r[2] = c.news
  r[5] = c.counts
  if c.news == 1 then
    table.insert(outbox, c.userId); table.insert(outbox, tonumber(c.version)); table.insert(outbox, r[3]); table.insert(outbox, r[4])
  end
end
if #outbox > 1 then redis.call('HSET', KEYS[5], ARGV[8], cjson.encode(outbox)) end
inChunks(done, function(...) redis.call('HDEL', KEYS[4], ...) end)
return result`;

/**
 * Sets a dead gateway's connections (and occupancy) of one tenant aside as
 * the drop's work list, unless a drop of it was already under way (then the
 * remaining list is resumed, and connections registered meanwhile stay
 * with the gateway), and reads the list, the occupancy and the unpublished
 * outbox. KEYS: gateway hash, work list, gateway occupancy set, occupancy
 * work set, outbox; ARGV[1] = '1': the work list is not read (the caller
 * read the gateway's connections while its link's grace ran).
 */
const TAKE_DROP = `
local started = redis.call('EXISTS', KEYS[2], KEYS[4], KEYS[5]) > 0
if not started then
  if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('RENAME', KEYS[1], KEYS[2]) end
  if redis.call('EXISTS', KEYS[3]) == 1 then redis.call('RENAME', KEYS[3], KEYS[4]) end
end
return {ARGV[1] == '1' and {} or redis.call('HGETALL', KEYS[2]), redis.call('SMEMBERS', KEYS[4]), redis.call('HGETALL', KEYS[5])}`;

/**
 * Gateways whose heartbeats stopped or whose lease lapsed, and drops whose
 * claim lapsed (the replica doing it died or lost Redis): each is moved to
 * the drops set, claimed until ARGV[3], and forgotten as a live gateway.
 * KEYS: beats, leases, drops, links; ARGV: now, limit, claimUntil.
 */
const POP_DEAD = `
local dead, seen = {}, {}
for i = 1, 3 do
  for _, gatewayId in ipairs(redis.call('ZRANGEBYSCORE', KEYS[i], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))) do
    if not seen[gatewayId] then seen[gatewayId] = true; table.insert(dead, gatewayId) end
  end
end
for _, gatewayId in ipairs(dead) do
  redis.call('ZREM', KEYS[1], gatewayId)
  redis.call('ZREM', KEYS[2], gatewayId)
  redis.call('HDEL', KEYS[4], gatewayId)
  redis.call('ZADD', KEYS[3], ARGV[3], gatewayId)
end
return dead`;

/**
 * Drops connections of many users of one tenant and one gateway at once
 * (a whole dead gateway in a few calls), marks devices left without a
 * connection disconnected, bumps each user's version and returns each
 * user's snapshot (lease list, devices, status, meta, activity, settings;
 * devices and activity left empty for a user now offline: the merge does not
 * read them then, and a whole gateway's worth would be most of the reply).
 *   KEYS: the gateway's connection hash, then per user leases, devices,
 *   status, meta, active, settings;
 *   ARGV: now, gatewayId, '1' when the gateway hash is already gone, then
 *   per user: n, n × (connectionId, deviceId).
 */
const DISCONNECT = `${DROP_CONNECTIONS}
local now = ARGV[1]
local result = {}
local a = 4
for u = 0, (#KEYS - 1) / 6 - 1 do
  local leases, devices, status, meta, active, settings = KEYS[2 + u * 6], KEYS[3 + u * 6], KEYS[4 + u * 6], KEYS[5 + u * 6], KEYS[6 + u * 6], KEYS[7 + u * 6]
  local n = tonumber(ARGV[a])
  local _, leaseList, fields = dropConnections(leases, meta, ARGV[2], now, a + 1, n, ARGV[3] ~= '1' and KEYS[1] or nil)
  redis.call('HSET', meta, unpack(fields))
  a = a + 1 + n * 2
  local online = #leaseList > 0
  table.insert(result, {leaseList, online and redis.call('HGETALL', devices) or {}, redis.call('HGETALL', status), online and redis.call('HGETALL', meta) or fields, online and redis.call('HGETALL', active) or {}, redis.call('HGETALL', settings)})
end
return result`;

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
 * Occupancy: KEYS occ (connection → user), occu (user → connection count),
 * occv (the counts others see: users and connections not appearing
 * offline), occupying (the user's conversations, for when they hide),
 * invisible (the tenant's users appearing offline);
 * ARGV: field, userId, +1 enter / -1 leave, conversationId.
 * Returns the visible {users, connections}.
 */
const OCCUPY = `
local seen = redis.call('SISMEMBER', KEYS[5], ARGV[2]) == 0
if ARGV[3] == '1' then
  if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 1 then
    local n = redis.call('HINCRBY', KEYS[2], ARGV[2], 1)
    redis.call('SADD', KEYS[4], ARGV[4])
    if seen then
      redis.call('HINCRBY', KEYS[3], 'connections', 1)
      if n == 1 then redis.call('HINCRBY', KEYS[3], 'users', 1) end
    end
  end
else
  if redis.call('HDEL', KEYS[1], ARGV[1]) == 1 then
    local n = redis.call('HINCRBY', KEYS[2], ARGV[2], -1)
    if n <= 0 then
      redis.call('HDEL', KEYS[2], ARGV[2])
      redis.call('SREM', KEYS[4], ARGV[4])
    end
    if seen then
      redis.call('HINCRBY', KEYS[3], 'connections', -1)
      if n <= 0 then redis.call('HINCRBY', KEYS[3], 'users', -1) end
    end
  end
end
local c = redis.call('HMGET', KEYS[3], 'users', 'connections')
return {tonumber(c[1] or '0'), tonumber(c[2] or '0')}`;

/**
 * A gateway's liveness link (see AttachGateway): KEYS the gateway links
 * hash (gateway → the id of its current link, or 'lost'), the heartbeat
 * deadlines. HEARTBEAT records a beat unless the gateway's link was lost:
 * a beat still in flight from a dead gateway must not undo the short grace.
 * LINK_LOST marks the link lost and shortens the deadline to the grace,
 * only if it is still the gateway's current link (a gateway that already
 * attached again elsewhere is alive).
 */
const HEARTBEAT = `
if redis.call('HGET', KEYS[1], ARGV[1]) == 'lost' then return 0 end
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
return 1`;
const LINK_LOST = `
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], 'lost')
redis.call('ZADD', KEYS[2], 'LT', ARGV[3], ARGV[1])
return 1`;

type ScriptedRedis = Redis & {
  recordHeartbeat(links: string, beats: string, gatewayId: string, deadline: number): Promise<number>;
  linkLost(links: string, beats: string, gatewayId: string, linkId: string, deadline: number): Promise<number>;
  claimPresenceChanges(numberOfKeys: number, ...args: (string | number)[]): Promise<[number, (string | number)[]][]>;
  disconnectMany(numberOfKeys: number, ...args: (string | number)[]): Promise<unknown[][]>;
  dropUsers(numberOfKeys: number, ...args: (string | number)[]): Promise<unknown[][]>;
  takeDrop(gateway: string, work: string, occupancy: string, occupancyWork: string, outbox: string, skipWork: number): Promise<[string[], string[], string[]]>;
  popDead(beats: string, leases: string, drops: string, links: string, now: number, limit: number, claimUntil: number): Promise<string[]>;
  reconcileLeases(key: string, ...args: (string | number)[]): Promise<[string[], string[]]>;
  popDue(key: string, now: number, limit: number): Promise<string[]>;
  occupy(occ: string, occu: string, occv: string, occupying: string, invisible: string, field: string, userId: string, delta: number, conversationId: string): Promise<[number, number]>;
};

/** Keys shared by all tenants: which gateways are alive and which tenants each serves. */
const SYSTEM = {
  tenants: 'sb:sys:presence:tenants',
  gatewayLeases: 'sb:sys:presence:gateway-leases',
  gatewayBeats: 'sb:sys:presence:gateway-heartbeats',
  gatewayLinks: 'sb:sys:presence:gateway-links',
  /** Dead gateways whose drop is under way, scored by when its claim lapses (then any replica resumes it). */
  gatewayDrops: 'sb:sys:presence:gateway-drops',
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
 *   meta:<uid>       hash, last seen, write version, the last announced change and
 *                    disconnectedAt:<device> (when a device lost its last connection)
 *   history:<uid>    stream of announced changes, trimmed to the retention
 *   watch:<uid>      sorted set of watched users scored by since
 *   gateway:<gw>     hash connection → "<uid>:<device>:<connectedAt>" (what dies with that gateway)
 *   gateway-occ:<gw> set "<conversation>:<connection>" (occupancy that dies with it)
 *   drop:<gw>, drop-occ:<gw>  the two above, set aside when the gateway is declared dead: what
 *                    its drop has left to do (each batch removes its connections as it applies)
 *   drop-outbox:<gw> hash batch → OFFLINE changes claimed by a drop and not yet published
 *   occ:<cid>        hash "<gw>:<connection>" → uid; occu:<cid> hash uid → connections
 *   occv:<cid>       hash users/connections: the counts others see (appear-offline users left out)
 *   occupying:<uid>  set of conversations the user is present in (to recount when they hide)
 *   online           sorted set of users online now
 *   invisible        set of users appearing offline
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
    // Variable key counts: given with each call.
    redis.defineCommand('claimPresenceChanges', { lua: CLAIM_CHANGES });
    redis.defineCommand('disconnectMany', { lua: DISCONNECT });
    redis.defineCommand('dropUsers', { lua: DROP_USERS });
    redis.defineCommand('takeDrop', { numberOfKeys: 5, lua: TAKE_DROP });
    redis.defineCommand('popDead', { numberOfKeys: 4, lua: POP_DEAD });
    redis.defineCommand('reconcileLeases', { numberOfKeys: 1, lua: RECONCILE });
    redis.defineCommand('popDue', { numberOfKeys: 1, lua: POP_DUE });
    redis.defineCommand('recordHeartbeat', { numberOfKeys: 2, lua: HEARTBEAT });
    redis.defineCommand('linkLost', { numberOfKeys: 2, lua: LINK_LOST });
    redis.defineCommand('occupy', { numberOfKeys: 5, lua: OCCUPY });
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
    // A connected device has no disconnect time: the one of its previous connection goes.
    tx.hdel(k.meta, `${DISCONNECTED_AT}${ref.deviceId}`);
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

  /** Drops one connection; its device, left without a connection, is marked disconnected now. */
  async disconnect(tenantId: string, userId: string, ref: ConnectionRef, now: number): Promise<Snapshot> {
    const [snapshot] = await this.disconnectMany(tenantId, ref.gatewayId, [{ userId, connections: [{ connectionId: ref.connectionId, deviceId: ref.deviceId }] }], now);
    return snapshot!;
  }

  /**
   * Drops connections of many users of one gateway in one script call (see
   * DISCONNECT); a snapshot per user, in the order given. Each user once.
   * `gatewayTaken`: the gateway's connection list is already gone (takeGateway).
   */
  async disconnectMany(tenantId: string, gatewayId: string, users: UserConnections[], now: number, gatewayTaken = false): Promise<Snapshot[]> {
    if (users.length === 0) return [];
    const keyList = [gatewayKey(tenantId, gatewayId)];
    const args: (string | number)[] = [now, gatewayId, gatewayTaken ? 1 : 0];
    for (const { userId, connections } of users) {
      const k = keys(tenantId, userId);
      keyList.push(k.leases, k.devices, k.status, k.meta, k.active, k.settings);
      args.push(connections.length);
      for (const c of connections) args.push(c.connectionId, c.deviceId);
    }
    const results = await this.redis.disconnectMany(keyList.length, ...keyList, ...args);
    return users.map(({ userId }, i) => {
      const [leaseList, ...hashes] = results[i]!;
      return this.parseSnapshot(userId, [leaseList, ...hashes.map((flat) => objectOf(flat as string[]))]);
    });
  }

  /**
   * Drops many users' connections of a dead gateway whose connection list
   * was taken (see DROP_USERS): users left offline come back decided and
   * claimed (publish when `news`); users still connected elsewhere come back
   * as snapshots for the ordinary merge and claim.
   */
  async dropUsers(tenantId: string, gatewayId: string, users: UserConnections[], now: number, cause: number, batchId: string): Promise<DroppedUser[]> {
    if (users.length === 0) return [];
    const prefix = tenantKey(tenantId, 'presence');
    const drop = dropKeys(tenantId, gatewayId);
    const keyList = [tenantKey(tenantId, 'presence', 'due'), tenantKey(tenantId, 'presence', 'online'), invisibleKey(tenantId), drop.work, drop.outbox];
    const args: (string | number)[] = [now, gatewayId, `${Math.max(0, now - this.historyRetentionMs)}-0`, this.historyRetentionMs, occupancyPrefix(tenantId), cause, PresenceStatus.PRESENCE_STATUS_OFFLINE, batchId];
    for (const { userId, connections } of users) {
      const k = keysIn(prefix, userId);
      keyList.push(k.leases, k.devices, k.status, k.meta, k.active, k.settings, k.history, k.occupying);
      args.push(userId, connections.length);
      for (const c of connections) args.push(c.connectionId, c.deviceId);
    }
    // Its own write, not auto-pipelined: ioredis runs one auto-pipeline at a time and answers it as a whole, so the
    // next batch could not be queued at Redis while this one runs (see Liveness: two drop calls in flight).
    const pipeline = this.redis.pipeline() as unknown as { dropUsers(...args: (string | number)[]): { exec(): ReturnType<ReturnType<Redis['pipeline']>['exec']> } };
    const [results] = unwrap(await pipeline.dropUsers(keyList.length, ...keyList, ...args).exec()) as [unknown[][]];
    return users.map(({ userId }, i): DroppedUser => {
      const [offline, ...rest] = results[i]!;
      if (offline === 2) return { userId, gone: true };
      if (offline === 0) {
        const [leaseList, ...hashes] = rest;
        return { userId, online: true, snapshot: this.parseSnapshot(userId, [leaseList, ...hashes.map((flat) => objectOf(flat as string[]))]) };
      }
      const [news, customMessage, lastSeen, flat] = rest as [number, string, number, (string | number)[]];
      const occupancy = new Map<string, Occupancy>();
      for (let j = 0; j < flat.length; j += 3) occupancy.set(String(flat[j]), { onlineCount: Number(flat[j + 1]), connectionCount: Number(flat[j + 2]) });
      return { userId, online: false, news: news === 1, customMessage, lastSeen, occupancy };
    });
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

  /**
   * Claims the announcement of many users' changes at once (see
   * CLAIM_CHANGES): per claim, whether it is news to publish, and the
   * conversations whose visible occupancy changed because the user started
   * or stopped appearing offline.
   */
  async claimChanges(tenantId: string, claims: ChangeClaim[], now: number): Promise<{ news: boolean; occupancy: Map<string, Occupancy> }[]> {
    if (claims.length === 0) return [];
    const keyList = [tenantKey(tenantId, 'presence', 'due'), tenantKey(tenantId, 'presence', 'online'), invisibleKey(tenantId)];
    const args: (string | number)[] = [now, `${Math.max(0, now - this.historyRetentionMs)}-0`, this.historyRetentionMs, occupancyPrefix(tenantId)];
    for (const claim of claims) {
      const k = keys(tenantId, claim.userId);
      keyList.push(k.meta, k.history, k.occupying);
      const h = claim.history;
      args.push(claim.version, claim.fingerprint, claim.userId, claim.dueAt, claim.online ? 1 : 0, claim.hidden ? 1 : 0, h.at, h.status, h.customMessage, h.cause, h.deviceCount);
    }
    const results = await this.redis.claimPresenceChanges(keyList.length, ...keyList, ...args);
    return results.map(([news, flat]) => {
      const occupancy = new Map<string, Occupancy>();
      for (let i = 0; i < flat.length; i += 3) occupancy.set(String(flat[i]), { onlineCount: Number(flat[i + 1]), connectionCount: Number(flat[i + 2]) });
      return { news: news === 1, occupancy };
    });
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

  /** A beat moves the gateway's deadline out, unless its link was lost (see HEARTBEAT). */
  async heartbeat(gatewayId: string, deadline: number): Promise<void> {
    await this.redis.recordHeartbeat(SYSTEM.gatewayLinks, SYSTEM.gatewayBeats, gatewayId, deadline);
  }

  /**
   * The gateway holds a new link (AttachGateway): it lives now, so its
   * deadline is at least `deadline` (a grace running since its old link was
   * lost must not outlast the attach), and its beats count again.
   */
  async linkAttached(gatewayId: string, linkId: string, deadline: number): Promise<void> {
    unwrap(await this.redis.multi().hset(SYSTEM.gatewayLinks, gatewayId, linkId).zadd(SYSTEM.gatewayBeats, 'GT', deadline, gatewayId).exec());
  }

  /**
   * The gateway's link closed without presence closing it: unless it has
   * attached again since, it must now beat before `graceDeadline` — and only
   * a new link makes its beats count again. Returns whether it applied.
   */
  async linkLost(gatewayId: string, linkId: string, graceDeadline: number): Promise<boolean> {
    return (await this.redis.linkLost(SYSTEM.gatewayLinks, SYSTEM.gatewayBeats, gatewayId, linkId, graceDeadline)) === 1;
  }

  /**
   * Gateways whose lease lapsed or whose heartbeats stopped, and drops whose
   * claim lapsed: each is returned to exactly one caller, claimed by it
   * until `claimUntil` (see POP_DEAD).
   */
  async popDeadGateways(now: number, claimUntil: number): Promise<string[]> {
    return this.redis.popDead(SYSTEM.gatewayBeats, SYSTEM.gatewayLeases, SYSTEM.gatewayDrops, SYSTEM.gatewayLinks, now, 100, claimUntil);
  }

  /**
   * Claims (or renews the claim on) a gateway's drop until `claimUntil` and
   * forgets it as a live gateway: a drop asked for directly (GatewayDown).
   */
  async claimDrop(gatewayId: string, claimUntil: number): Promise<void> {
    unwrap(
      await this.redis
        .multi()
        .zadd(SYSTEM.gatewayDrops, claimUntil, gatewayId)
        .zrem(SYSTEM.gatewayBeats, gatewayId)
        .zrem(SYSTEM.gatewayLeases, gatewayId)
        .hdel(SYSTEM.gatewayLinks, gatewayId)
        .exec(),
    );
  }

  /** Keeps a drop under way claimed by this replica until `claimUntil` (no-op once it is finished). */
  async renewDrop(gatewayId: string, claimUntil: number): Promise<void> {
    await this.redis.zadd(SYSTEM.gatewayDrops, 'XX', claimUntil, gatewayId);
  }

  /**
   * What is left to drop of a dead gateway, by tenant (see TAKE_DROP): on a
   * first call its connection lists are set aside as the drop's work list;
   * the tenants whose drop is finished are no longer listed. One round trip
   * for all tenants after reading them. `skipConnections`: the work lists
   * are not read (the caller has the connections from readGateway).
   */
  async takeGateway(gatewayId: string, skipConnections = false): Promise<DropWork[]> {
    const tenants = await this.redis.smembers(SYSTEM.gatewayTenants(gatewayId));
    const replies = await Promise.all(
      tenants.map((tenantId) => {
        const drop = dropKeys(tenantId, gatewayId);
        return this.redis.takeDrop(gatewayKey(tenantId, gatewayId), drop.work, gatewayOccKey(tenantId, gatewayId), drop.occupancyWork, drop.outbox, skipConnections ? 1 : 0);
      }),
    );
    return tenants.map((tenantId, i) => {
      const [connections, occupancy, outbox] = replies[i]!;
      return {
        tenantId,
        connections: parseConnections(pairs(connections)),
        occupancy: occupancy.map((entry) => {
          const [conversationId = '', connectionId = ''] = entry.split(':');
          return { conversationId, connectionId };
        }),
        outbox: parseOutbox(outbox),
      };
    });
  }

  /**
   * A gateway's connections by tenant, read only: while its link's grace
   * runs, so that a drop that follows need not read them (see takeGateway).
   */
  async readGateway(gatewayId: string): Promise<Map<string, DropWork['connections']>> {
    const tenants = await this.redis.smembers(SYSTEM.gatewayTenants(gatewayId));
    const lists = await Promise.all(tenants.map((tenantId) => this.redis.hgetall(gatewayKey(tenantId, gatewayId))));
    return new Map(tenants.map((tenantId, i) => [tenantId, parseConnections(Object.entries(lists[i]!))]));
  }

  /** What is still on a drop's work list in one tenant. */
  async remainingWork(tenantId: string, gatewayId: string): Promise<DropWork['connections']> {
    return parseConnections(Object.entries(await this.redis.hgetall(dropKeys(tenantId, gatewayId).work)));
  }

  /** The OFFLINE changes of a gateway's drop in one tenant that are claimed and not yet published. */
  async outbox(tenantId: string, gatewayId: string): Promise<OutboxEntry[]> {
    return parseOutbox(Object.entries(await this.redis.hgetall(dropKeys(tenantId, gatewayId).outbox)).flat());
  }

  /** The outbox's users whose claimed OFFLINE is still the last change announced (nothing newer went out since). */
  async stillCurrent(tenantId: string, users: OutboxEntry['users']): Promise<OutboxEntry['users']> {
    if (users.length === 0) return [];
    const pipeline = this.redis.pipeline();
    for (const user of users) pipeline.hget(keys(tenantId, user.userId).meta, 'publishedVersion');
    const versions = unwrap(await pipeline.exec());
    return users.filter((user, i) => Number(versions[i] ?? 0) === user.version);
  }

  /**
   * Outbox entries that are published. Written at once, not auto-pipelined:
   * ioredis runs one auto-pipeline at a time, so it would wait for the drop
   * call in flight, and a replica dying meanwhile would leave the batch to be
   * published twice.
   */
  async published(tenantId: string, gatewayId: string, batchIds: string[]): Promise<void> {
    if (batchIds.length > 0) unwrap(await this.redis.pipeline().hdel(dropKeys(tenantId, gatewayId).outbox, ...batchIds).exec());
  }

  /**
   * One tenant's part of a drop is done: its leftovers go, and the tenant is
   * no longer the gateway's unless the gateway registered connections of it
   * since (it is alive after all; its refresh lists the tenant again anyway).
   */
  async finishTenant(tenantId: string, gatewayId: string): Promise<void> {
    const drop = dropKeys(tenantId, gatewayId);
    const [, , , [, live]] = unwrapPairs(await this.redis.pipeline().del(drop.occupancyWork).del(drop.work).del(drop.outbox).exists(gatewayKey(tenantId, gatewayId)).exec());
    if (live === 0) await this.redis.srem(SYSTEM.gatewayTenants(gatewayId), tenantId);
  }

  /** The whole drop is done: nothing of it is left to claim. */
  async finishDrop(gatewayId: string): Promise<void> {
    await this.redis.zrem(SYSTEM.gatewayDrops, gatewayId);
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
    const marker = `${conversationId}:${connectionId}`;
    const [counts] = await Promise.all([
      this.occupyOne(tenantId, gatewayId, connectionId, userId, conversationId, enter),
      enter ? this.redis.sadd(gatewayOccKey(tenantId, gatewayId), marker) : this.redis.srem(gatewayOccKey(tenantId, gatewayId), marker),
    ]);
    return counts;
  }

  private async occupyOne(tenantId: string, gatewayId: string, connectionId: string, userId: string, conversationId: string, enter: boolean): Promise<Occupancy> {
    const k = occupancyKeys(tenantId, conversationId);
    const [onlineCount, connectionCount] = await this.redis.occupy(
      k.connections,
      k.users,
      k.visible,
      keys(tenantId, userId).occupying,
      invisibleKey(tenantId),
      `${gatewayId}:${connectionId}`,
      userId,
      enter ? 1 : -1,
      conversationId,
    );
    return { onlineCount, connectionCount };
  }

  /**
   * Leaves every conversation dropped connections were present in (pipelined); returns the conversations whose counts
   * changed. Each connection's user is read from the conversation's occupancy (left already: nothing to do), so a
   * resumed drop needs nothing but the gateway's occupancy list.
   */
  async vacate(tenantId: string, gatewayId: string, occupancy: { conversationId: string; connectionId: string }[]): Promise<Map<string, Occupancy>> {
    if (occupancy.length === 0) return new Map();
    const pipeline = this.redis.pipeline();
    for (const o of occupancy) pipeline.hget(occupancyKeys(tenantId, o.conversationId).connections, `${gatewayId}:${o.connectionId}`);
    const owners = unwrap(await pipeline.exec()) as (string | null)[];
    const entries = occupancy.flatMap((o, i) => (owners[i] ? [{ ...o, userId: owners[i] }] : []));
    const counts = await Promise.all(entries.map((e) => this.occupyOne(tenantId, gatewayId, e.connectionId, e.userId, e.conversationId, false)));
    // In the order Redis ran them: the last count of a conversation is its latest.
    return new Map(entries.map((e, i) => [e.conversationId, counts[i]!]));
  }

  /** The counts users see (appear-offline users left out), or with `includeHidden` (internal callers) everyone present. */
  async occupancy(tenantId: string, conversationIds: string[], includeHidden: boolean): Promise<Occupancy[]> {
    if (conversationIds.length === 0) return [];
    const pipeline = this.redis.pipeline();
    for (const conversationId of conversationIds) {
      const k = occupancyKeys(tenantId, conversationId);
      if (includeHidden) pipeline.hlen(k.users).hlen(k.connections);
      else pipeline.hmget(k.visible, 'users', 'connections');
    }
    const results = unwrap(await pipeline.exec());
    return conversationIds.map((_, i) => {
      if (includeHidden) return { onlineCount: results[i * 2] as number, connectionCount: results[i * 2 + 1] as number };
      const [users, connections] = results[i] as (string | null)[];
      return { onlineCount: Number(users ?? 0), connectionCount: Number(connections ?? 0) };
    });
  }

  /** Users present in a conversation; those appearing offline only when `includeHidden` (internal callers). */
  async occupants(tenantId: string, conversationId: string, includeHidden: boolean): Promise<string[]> {
    const users = (await this.redis.hkeys(occupancyKeys(tenantId, conversationId).users)).sort();
    if (includeHidden || users.length === 0) return users;
    const hidden = await this.redis.smismember(invisibleKey(tenantId), ...users);
    return users.filter((_, i) => hidden[i] === 0);
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
    const m = meta as Record<string, string>;
    const deviceMap = new Map<string, StoredDevice>();
    for (const [deviceId, json] of Object.entries(devices as Record<string, string>)) {
      const device = JSON.parse(json) as StoredDevice;
      // Disconnect times live in meta (see DROP_CONNECTIONS); a device JSON of an older version may still carry one.
      const disconnectedAt = m[`${DISCONNECTED_AT}${deviceId}`];
      if (disconnectedAt !== undefined) device.disconnectedAt = Number(disconnectedAt);
      deviceMap.set(deviceId, device);
    }
    const s = status as Record<string, string>;
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
  return keysIn(tenantKey(tenantId, 'presence'), userId);
}

/** A user's keys under the tenant's presence prefix (`tenantKey(tenant, 'presence')`), for callers that build many. */
function keysIn(prefix: string, userId: string) {
  return {
    devices: `${prefix}:user:${userId}`,
    leases: `${prefix}:leases:${userId}`,
    status: `${prefix}:status:${userId}`,
    meta: `${prefix}:meta:${userId}`,
    active: `${prefix}:active:${userId}`,
    settings: `${prefix}:settings:${userId}`,
    history: `${prefix}:history:${userId}`,
    watch: `${prefix}:watch:${userId}`,
    occupying: `${prefix}:occupying:${userId}`,
  };
}

function gatewayKey(tenantId: string, gatewayId: string): string {
  return tenantKey(tenantId, 'presence', 'gateway', assertSafeId(gatewayId, 'gateway_id'));
}

/** A dead gateway's drop in one tenant: its connections and occupancy left to drop, and its claimed but unpublished changes. */
function dropKeys(tenantId: string, gatewayId: string) {
  const gateway = assertSafeId(gatewayId, 'gateway_id');
  return {
    work: tenantKey(tenantId, 'presence', 'drop', gateway),
    occupancyWork: tenantKey(tenantId, 'presence', 'drop-occ', gateway),
    outbox: tenantKey(tenantId, 'presence', 'drop-outbox', gateway),
  };
}

function gatewayOccKey(tenantId: string, gatewayId: string): string {
  return tenantKey(tenantId, 'presence', 'gateway-occ', assertSafeId(gatewayId, 'gateway_id'));
}

function occupancyKeys(tenantId: string, conversationId: string) {
  return {
    connections: tenantKey(tenantId, 'presence', 'occ', conversationId),
    users: tenantKey(tenantId, 'presence', 'occu', conversationId),
    visible: tenantKey(tenantId, 'presence', 'occv', conversationId),
  };
}

/** What CLAIM_CHANGES appends `occu:<cid>` / `occv:<cid>` to (the conversation ids it reads are validated when entered). */
function occupancyPrefix(tenantId: string): string {
  return tenantKey(tenantId, 'presence', 'occ').slice(0, -'occ'.length);
}

function invisibleKey(tenantId: string): string {
  return tenantKey(tenantId, 'presence', 'invisible');
}

/** A gateway's connection hash entries: connection → "<uid>:<device>:<connectedAt>". */
function parseConnections(entries: [string, string][]): DropWork['connections'] {
  return entries.map(([connectionId, value]) => {
    const [userId = '', deviceId = ''] = value.split(':');
    return { connectionId, userId, deviceId };
  });
}

function parseOutbox(flat: string[]): OutboxEntry[] {
  return pairs(flat).map(([batchId, json]) => {
    const [at, ...values] = JSON.parse(json) as (string | number)[];
    const users = [];
    for (let j = 0; j < values.length; j += 4) users.push({ userId: String(values[j]), version: Number(values[j + 1]), customMessage: String(values[j + 2]), lastSeen: Number(values[j + 3]) });
    return { batchId, at: Number(at), users };
  });
}

/** A flat field, value list (HGETALL from Lua) as pairs. */
function pairs(flat: string[]): [string, string][] {
  const result: [string, string][] = [];
  for (let i = 0; i < flat.length; i += 2) result.push([flat[i]!, flat[i + 1]!]);
  return result;
}

/** A Redis HGETALL reply as Lua returns it (flat field, value list) as an object. */
function objectOf(flat: string[]): Record<string, string> {
  const result: Record<string, string> = {};
  for (let i = 0; i < flat.length; i += 2) result[flat[i]!] = flat[i + 1]!;
  return result;
}

/** Safe ids contain no ':', so the member splits back unambiguously. */
function leaseMember(ref: ConnectionRef): string {
  return `${ref.deviceId}:${ref.gatewayId}:${ref.connectionId}`;
}

/** Meta field prefix of a device's disconnect time (`disconnectedAt:<deviceId>`), written by DROP_CONNECTIONS. */
const DISCONNECTED_AT = 'disconnectedAt:';

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
