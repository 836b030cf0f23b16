import { tenantKey, type Redis } from '@switchboard/redis';

/**
 * Take a connection slot: drop expired slots, refuse when `max` are held,
 * else hold one until `expiresAt`. One script so that two gateways admitting
 * the last slot at once cannot both get it.
 */
const ACQUIRE = `
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local held = redis.call('ZCARD', KEYS[1])
if held >= tonumber(ARGV[3]) then return -held end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
redis.call('PEXPIREAT', KEYS[1], ARGV[2])
return held + 1
`;

export type SlotDecision = { admitted: true; held: number } | { admitted: false; held: number };

/**
 * Concurrent connections per tenant across all gateways: a sorted set
 * `sb:{<tenant>}:conns` of connection ids scored by when their slot lapses.
 * Gateways renew the slots of their open connections every `ttlMs / 3` in one
 * pipeline and remove a slot when its connection closes; the slots of a
 * gateway that dies lapse after `ttlMs`. (rate-limiter-flexible counts
 * events, not things held; a semaphore library would need one renewal timer
 * per connection, where this renews thousands in one round trip.)
 */
export class ConnectionSlots {
  constructor(
    private readonly redis: Redis,
    readonly ttlMs = 30_000,
  ) {
    redis.defineCommand('sbAcquireSlot', { numberOfKeys: 1, lua: ACQUIRE });
  }

  async acquire(tenantId: string, connectionId: string, max: number): Promise<SlotDecision> {
    const now = Date.now();
    const held = (await (this.redis as unknown as { sbAcquireSlot(...args: (string | number)[]): Promise<number> }).sbAcquireSlot(
      tenantKey(tenantId, 'conns'),
      now,
      now + this.ttlMs,
      max,
      connectionId,
    )) as number;
    return held > 0 ? { admitted: true, held } : { admitted: false, held: -held };
  }

  async release(tenantId: string, connectionId: string): Promise<void> {
    await this.redis.zrem(tenantKey(tenantId, 'conns'), connectionId);
  }

  /** Extends the slots of open connections (tenant → connection ids). */
  async renew(open: Map<string, string[]>): Promise<void> {
    if (open.size === 0) return;
    const expiresAt = Date.now() + this.ttlMs;
    const pipeline = this.redis.pipeline();
    for (const [tenantId, ids] of open) {
      const key = tenantKey(tenantId, 'conns');
      // One flat argument list (no pair array per connection: thousands are renewed at once).
      const args: (string | number)[] = new Array(ids.length * 2);
      for (let i = 0; i < ids.length; i += 1) {
        args[i * 2] = expiresAt;
        args[i * 2 + 1] = ids[i]!;
      }
      pipeline.zadd(key, 'XX', ...args);
      pipeline.pexpireat(key, expiresAt);
    }
    await pipeline.exec();
  }

  /** Connections the tenant holds now, across all gateways. */
  async held(tenantId: string): Promise<number> {
    return this.redis.zcount(tenantKey(tenantId, 'conns'), Date.now(), '+inf');
  }
}
