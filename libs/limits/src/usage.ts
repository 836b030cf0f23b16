import { tenantKey, type Redis } from '@switchboard/redis';

/** Counters kept per tenant; rejects are counted per reason as `rejected:<reason>`. */
export type UsageField = 'connectionsOpened' | 'frames' | 'messages' | 'bytesIn' | 'bytesOut' | `rejected:${string}`;

export interface TenantUsage {
  counters: Record<string, number>;
  /** When the first counter of the tenant was written. */
  since: Date | undefined;
}

/**
 * Usage counters an operator can query per tenant, summed over every gateway
 * in the Redis hash `sb:{<tenant>}:usage`. Each process adds up in memory and
 * flushes once per interval in one pipeline, so counting costs no round trip
 * per frame.
 */
export class UsageCounters {
  private pending = new Map<string, Map<string, number>>();

  constructor(private readonly redis: Redis) {}

  add(tenantId: string, field: UsageField, amount = 1): void {
    let counters = this.pending.get(tenantId);
    if (!counters) this.pending.set(tenantId, (counters = new Map()));
    counters.set(field, (counters.get(field) ?? 0) + amount);
  }

  async flush(): Promise<void> {
    if (this.pending.size === 0) return;
    const batch = this.pending;
    this.pending = new Map();
    const pipeline = this.redis.pipeline();
    for (const [tenantId, counters] of batch) {
      const key = tenantKey(tenantId, 'usage');
      pipeline.hsetnx(key, 'since', String(Date.now()));
      for (const [field, amount] of counters) pipeline.hincrby(key, field, amount);
    }
    await pipeline.exec();
  }

  async read(tenantId: string): Promise<TenantUsage> {
    const stored = await this.redis.hgetall(tenantKey(tenantId, 'usage'));
    const counters: Record<string, number> = {};
    for (const [field, value] of Object.entries(stored)) if (field !== 'since') counters[field] = Number(value);
    return { counters, since: stored['since'] ? new Date(Number(stored['since'])) : undefined };
  }
}
