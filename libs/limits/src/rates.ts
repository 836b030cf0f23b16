import { RateLimiterMemory, RateLimiterRes } from 'rate-limiter-flexible';
import { tenantKey, type Redis } from '@switchboard/redis';

export type RateKind = 'user-messages' | 'tenant-messages' | 'tenant-bytes';

export type RateDecision = { allowed: true } | { allowed: false; retryAfterMs: number };

/** One budget to take points from: (kind, tenant, subject), subject being the user for per-user budgets. */
export interface RateStep {
  kind: RateKind;
  tenantId: string;
  subject: string;
  points: number;
  perSecond: number;
}

/** The first step that refused, or allowed. */
export type RatesDecision = { allowed: true } | { allowed: false; step: number; retryAfterMs: number };

/**
 * rate-limiter-flexible's fixed-window step (`set NX EX`, `incrby`, `pttl`,
 * the same keys and values) for several keys in one script, in order,
 * stopping at the first key over its limit: what consuming them one after
 * another does, in one round trip. ARGV: window seconds, then points and
 * limit per key. Returns {0} or {index (1-based), ms left in its window}.
 */
const CONSUME_IN_ORDER = `
for i = 1, #KEYS do
  local points = tonumber(ARGV[2 * i])
  local limit = tonumber(ARGV[2 * i + 1])
  redis.call('set', KEYS[i], 0, 'EX', ARGV[1], 'NX')
  local consumed = redis.call('incrby', KEYS[i], points)
  local ttl = redis.call('pttl', KEYS[i])
  if ttl == -1 then
    redis.call('expire', KEYS[i], ARGV[1])
    ttl = 1000 * ARGV[1]
  end
  if consumed > limit then return {i, ttl} end
end
return {0}
`;

type ScriptedRedis = Redis & { sbConsumeInOrder(...args: (string | number)[]): Promise<[number, number?]> };

/**
 * Per-second budgets shared by every gateway: fixed one-second windows in
 * Redis under the tenant's key `sb:{<tenant>}:rl:<kind>:<per second>:<subject>`
 * (the keys and counting of rate-limiter-flexible's RateLimiterRedis, which
 * this used per budget). The budgets of one frame (tenant bandwidth, tenant
 * messages, user messages) are taken in one script, in order and stopping at
 * the first refusal: one Redis round trip per frame instead of one per
 * budget. Once a key is over its budget the process refuses it from memory
 * until its window ends, so a flooding tenant stops costing round trips; if
 * Redis fails, per-process in-memory limiters with the same budgets
 * (rate-limiter-flexible's RateLimiterMemory) take over rather than letting
 * everything through.
 */
export class SharedRateLimits {
  private readonly insurance = new Map<string, RateLimiterMemory>();
  /** Keys known to be over budget, until their window ends (ms since the epoch). */
  private readonly blocked = new Map<string, number>();
  private readonly redis: ScriptedRedis;

  constructor(redis: Redis) {
    redis.defineCommand('sbConsumeInOrder', { lua: CONSUME_IN_ORDER });
    this.redis = redis as ScriptedRedis;
  }

  /** Takes `points` from the budget of (kind, tenant, subject); subject is the user for per-user budgets. */
  async consume(kind: RateKind, tenantId: string, subject: string, points: number, perSecond: number): Promise<RateDecision> {
    const decision = await this.consumeInOrder([{ kind, tenantId, subject, points, perSecond }]);
    return decision.allowed ? decision : { allowed: false, retryAfterMs: decision.retryAfterMs };
  }

  /**
   * Takes points from each budget in order and stops at the first that
   * refuses (the later ones are not charged), as consuming them one by one
   * would, in one round trip.
   */
  async consumeInOrder(steps: readonly RateStep[]): Promise<RatesDecision> {
    const now = Date.now();
    const keys = steps.map(keyOf);
    // A step known to be over budget refuses from memory; only the steps before it go to Redis.
    let upTo = steps.length;
    let blockedRefusal: RatesDecision | undefined;
    for (let i = 0; i < keys.length; i += 1) {
      const until = this.blocked.get(keys[i]!);
      if (until === undefined) continue;
      if (until > now) {
        upTo = i;
        blockedRefusal = { allowed: false, step: i, retryAfterMs: until - now };
        break;
      }
      this.blocked.delete(keys[i]!);
    }
    if (upTo > 0) {
      const charged = steps.slice(0, upTo);
      let reply: [number, number?];
      try {
        reply = await this.redis.sbConsumeInOrder(upTo, ...keys.slice(0, upTo), 1, ...charged.flatMap((step) => [step.points, step.perSecond]));
      } catch {
        return this.insured(charged, blockedRefusal);
      }
      const [refusedAt, ttl] = reply;
      if (refusedAt > 0) {
        const retryAfterMs = Math.max(1, Number(ttl));
        this.blocked.set(keys[refusedAt - 1]!, Date.now() + retryAfterMs);
        if (this.blocked.size > 10_000) this.blocked.delete(this.blocked.keys().next().value!);
        return { allowed: false, step: refusedAt - 1, retryAfterMs };
      }
    }
    return blockedRefusal ?? { allowed: true };
  }

  /** Redis failed: the same steps against this process's own budgets. */
  private async insured(steps: readonly RateStep[], otherwise: RatesDecision | undefined): Promise<RatesDecision> {
    for (const [index, step] of steps.entries()) {
      const name = `${step.kind}:${step.perSecond}`;
      let limiter = this.insurance.get(name);
      if (!limiter) this.insurance.set(name, (limiter = new RateLimiterMemory({ points: step.perSecond, duration: 1 })));
      try {
        await limiter.consume(keyOf(step), step.points);
      } catch (rejection) {
        if (rejection instanceof RateLimiterRes) return { allowed: false, step: index, retryAfterMs: Math.max(1, rejection.msBeforeNext) };
        throw rejection;
      }
    }
    return otherwise ?? { allowed: true };
  }
}

function keyOf({ kind, tenantId, subject, perSecond }: RateStep): string {
  return tenantKey(tenantId, 'rl', kind, String(perSecond), subject);
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
