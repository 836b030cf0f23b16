import { RateLimiterMemory, RateLimiterRedis, RateLimiterRes } from 'rate-limiter-flexible';
import { tenantKey, type Redis } from '@switchboard/redis';

export type RateKind = 'user-messages' | 'tenant-messages' | 'tenant-bytes';

export type RateDecision = { allowed: true } | { allowed: false; retryAfterMs: number };

/**
 * Per-second budgets shared by every gateway: rate-limiter-flexible's
 * RateLimiterRedis (one atomic Redis round trip per consume, fixed one-second
 * windows) under the tenant's key `sb:{<tenant>}:rl:…`. Once a key is over
 * its budget the process refuses it from memory until the window ends
 * (`inMemoryBlockOnConsumed`), so a flooding tenant stops costing Redis round
 * trips; if Redis fails, a per-process in-memory limiter with the same budget
 * takes over (`insuranceLimiter`) rather than letting everything through.
 */
export class SharedRateLimits {
  private readonly limiters = new Map<string, RateLimiterRedis>();

  constructor(private readonly redis: Redis) {}

  private limiter(kind: RateKind, perSecond: number): RateLimiterRedis {
    const name = `${kind}:${perSecond}`;
    let limiter = this.limiters.get(name);
    if (!limiter) {
      limiter = new RateLimiterRedis({
        storeClient: this.redis,
        keyPrefix: 'sb',
        points: perSecond,
        duration: 1,
        inMemoryBlockOnConsumed: perSecond,
        inMemoryBlockDuration: 1,
        insuranceLimiter: new RateLimiterMemory({ points: perSecond, duration: 1 }),
      });
      this.limiters.set(name, limiter);
    }
    return limiter;
  }

  /** Takes `points` from the budget of (kind, tenant, subject); subject is the user for per-user budgets. */
  async consume(kind: RateKind, tenantId: string, subject: string, points: number, perSecond: number): Promise<RateDecision> {
    // rate-limiter-flexible prefixes "sb:"; the rest is the tenant's key, braces and all.
    const key = tenantKey(tenantId, 'rl', kind, String(perSecond), subject).slice('sb:'.length);
    try {
      await this.limiter(kind, perSecond).consume(key, points);
      return { allowed: true };
    } catch (rejection) {
      if (rejection instanceof RateLimiterRes) return { allowed: false, retryAfterMs: Math.max(1, rejection.msBeforeNext) };
      throw rejection;
    }
  }
}

/**
 * A budget local to one object (a connection): frames per second from one
 * socket. A connection lives on one gateway, so its budget needs no Redis.
 */
export class LocalRate {
  private readonly limiter: RateLimiterMemory;

  constructor(perSecond: number) {
    this.limiter = new RateLimiterMemory({ points: perSecond, duration: 1 });
  }

  async consume(key: string, points = 1): Promise<RateDecision> {
    try {
      await this.limiter.consume(key, points);
      return { allowed: true };
    } catch (rejection) {
      if (rejection instanceof RateLimiterRes) return { allowed: false, retryAfterMs: Math.max(1, rejection.msBeforeNext) };
      throw rejection;
    }
  }

  async forget(key: string): Promise<void> {
    await this.limiter.delete(key);
  }
}
