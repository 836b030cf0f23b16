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

/**
 * Extend the slots still held (XX: one released meanwhile stays released):
 * ARGV[1] the new expiry, ARGV[2] the connection ids joined by ','. One
 * string instead of two arguments per connection: a gateway renews
 * thousands at once, and encoding 30,000 arguments was most of its idle CPU.
 */
const RENEW = `
local args = {}
for id in string.gmatch(ARGV[2], '[^,]+') do
  args[#args + 1] = ARGV[1]
  args[#args + 1] = id
  if #args >= 1000 then
    redis.call('ZADD', KEYS[1], 'XX', unpack(args))
    args = {}
  end
end
if #args > 0 then redis.call('ZADD', KEYS[1], 'XX', unpack(args)) end
redis.call('PEXPIREAT', KEYS[1], ARGV[1])
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
    redis.defineCommand('sbRenewSlots', { numberOfKeys: 1, lua: RENEW });
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
    const pipeline = this.redis.pipeline() as unknown as { sbRenewSlots(key: string, expiresAt: number, ids: string): void; exec(): Promise<unknown> };
    // Connection ids are safe ids (no ',').
    for (const [tenantId, ids] of open) pipeline.sbRenewSlots(tenantKey(tenantId, 'conns'), expiresAt, ids.join(','));
    await pipeline.exec();
  }

  /** Connections the tenant holds now, across all gateways. */
  async held(tenantId: string): Promise<number> {
    return this.redis.zcount(tenantKey(tenantId, 'conns'), Date.now(), '+inf');
  }
}
