import { tenantKey, type Redis } from '@switchboard/redis';
import type { presenceV1 } from '@switchboard/proto';
import type { PresenceStatus } from './merge';

/** What the client said about a device when it connected. */
export type StoredDevice = Omit<presenceV1.DeviceInfo, 'deviceId'> & { connectedAt: number };

/** One registered connection and when its lease lapses (ms since the epoch). */
export interface Lease {
  deviceId: string;
  gatewayId: string;
  connectionId: string;
  leaseUntil: number;
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

/** Everything stored about one user, read at one moment. */
export interface Snapshot {
  userId: string;
  leases: Lease[];
  devices: Map<string, StoredDevice>;
  manual: ManualStatus | undefined;
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

/**
 * Decides whether a snapshot's public presence is news: only a write newer
 * than the last one announced, whose fingerprint differs, wins. Atomic in
 * Redis so that concurrent replicas announce each change once.
 */
const CLAIM_CHANGE = `
local cur = redis.call('HMGET', KEYS[1], 'publishedVersion', 'publishedFingerprint')
if cur[1] and tonumber(cur[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'publishedVersion', ARGV[1], 'publishedFingerprint', ARGV[2])
if cur[2] == ARGV[2] then return 0 end
return 1`;

type ClaimingRedis = Redis & { claimPresenceChange(key: string, version: number, fingerprint: string): Promise<number> };

/**
 * Presence state in Redis, every key under the tenant's hash slot
 * (`sb:{<tenant>}:presence:…`) so one user's keys change in one MULTI:
 *   user:<uid>   hash deviceId → device JSON (the devices the user connected with)
 *   leases:<uid> sorted set "<device>:<gateway>:<connection>" scored by lease end
 *   status:<uid> hash, the chosen status and custom message
 *   meta:<uid>   hash, last seen, write version and the last announced change
 */
export class PresenceStore {
  private readonly redis: ClaimingRedis;

  constructor(
    redis: Redis,
    private readonly retentionS: number,
  ) {
    redis.defineCommand('claimPresenceChange', { numberOfKeys: 1, lua: CLAIM_CHANGE });
    this.redis = redis as ClaimingRedis;
  }

  async connect(tenantId: string, userId: string, ref: ConnectionRef, device: StoredDevice, leaseUntil: number, now: number): Promise<Snapshot> {
    const k = keys(tenantId, userId);
    const tx = this.redis.multi();
    tx.zremrangebyscore(k.leases, '-inf', now);
    tx.zadd(k.leases, leaseUntil, leaseMember(ref));
    tx.hset(k.devices, ref.deviceId, JSON.stringify(device));
    tx.hset(k.meta, 'lastSeen', now);
    return this.commit(tx, tenantId, userId);
  }

  async disconnect(tenantId: string, userId: string, ref: ConnectionRef, now: number): Promise<Snapshot> {
    const k = keys(tenantId, userId);
    const tx = this.redis.multi();
    tx.zrem(k.leases, leaseMember(ref));
    tx.zremrangebyscore(k.leases, '-inf', now);
    // The user was online until this moment, whichever connection remains.
    tx.hset(k.meta, 'lastSeen', now);
    return this.commit(tx, tenantId, userId);
  }

  /** Replaces the chosen status as a whole; undefined clears it. */
  async setManual(tenantId: string, userId: string, manual: ManualStatus | undefined): Promise<Snapshot> {
    const k = keys(tenantId, userId);
    const tx = this.redis.multi();
    tx.del(k.status);
    if (manual) tx.hset(k.status, { ...manual });
    return this.commit(tx, tenantId, userId);
  }

  /** Many users at once, in the order asked. */
  async read(tenantId: string, userIds: string[]): Promise<Snapshot[]> {
    if (userIds.length === 0) return [];
    const pipeline = this.redis.pipeline();
    for (const userId of userIds) queueSnapshotReads(pipeline, keys(tenantId, userId));
    const results = unwrap(await pipeline.exec());
    return userIds.map((userId, index) => parseSnapshot(userId, results.slice(index * READS_PER_USER, (index + 1) * READS_PER_USER)));
  }

  /** True when this snapshot's fingerprint is a change nobody announced yet (and this caller should announce it). */
  async claimChange(tenantId: string, snapshot: Snapshot, fingerprint: string): Promise<boolean> {
    return (await this.redis.claimPresenceChange(keys(tenantId, snapshot.userId).meta, snapshot.version, fingerprint)) === 1;
  }

  /** Runs the writes, bumps the version, refreshes retention and reads the result, all in one MULTI. */
  private async commit(tx: ReturnType<Redis['multi']>, tenantId: string, userId: string): Promise<Snapshot> {
    const k = keys(tenantId, userId);
    tx.hincrby(k.meta, 'version', 1);
    for (const key of Object.values(k)) tx.expire(key, this.retentionS);
    queueSnapshotReads(tx, k);
    const results = unwrap(await tx.exec());
    return parseSnapshot(userId, results.slice(-READS_PER_USER));
  }
}

type Keys = ReturnType<typeof keys>;

function keys(tenantId: string, userId: string) {
  return {
    devices: tenantKey(tenantId, 'presence', 'user', userId),
    leases: tenantKey(tenantId, 'presence', 'leases', userId),
    status: tenantKey(tenantId, 'presence', 'status', userId),
    meta: tenantKey(tenantId, 'presence', 'meta', userId),
  };
}

/** Safe ids contain no ':', so the member splits back unambiguously. */
function leaseMember(ref: ConnectionRef): string {
  return `${ref.deviceId}:${ref.gatewayId}:${ref.connectionId}`;
}

const READS_PER_USER = 4;

function queueSnapshotReads(batch: ReturnType<Redis['pipeline']>, k: Keys): void {
  batch.zrange(k.leases, 0, -1, 'WITHSCORES');
  batch.hgetall(k.devices);
  batch.hgetall(k.status);
  batch.hgetall(k.meta);
}

function unwrap(results: [Error | null, unknown][] | null): unknown[] {
  // exec() answers null only when a WATCH failed, and nothing here watches.
  if (!results) throw new Error('redis transaction was discarded');
  return results.map(([err, value]) => {
    if (err) throw err;
    return value;
  });
}

function parseSnapshot(userId: string, [leaseList, devices, status, meta]: unknown[]): Snapshot {
  const flat = leaseList as string[];
  const leases: Lease[] = [];
  for (let i = 0; i < flat.length; i += 2) {
    const [deviceId = '', gatewayId = '', connectionId = ''] = flat[i]!.split(':');
    leases.push({ deviceId, gatewayId, connectionId, leaseUntil: Number(flat[i + 1]) });
  }
  const deviceMap = new Map<string, StoredDevice>();
  for (const [deviceId, json] of Object.entries(devices as Record<string, string>)) deviceMap.set(deviceId, JSON.parse(json) as StoredDevice);
  const s = status as Record<string, string>;
  const m = meta as Record<string, string>;
  return {
    userId,
    leases,
    devices: deviceMap,
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
    lastSeen: Number(m.lastSeen ?? 0),
    version: Number(m.version ?? 0),
  };
}
