import { env } from '@switchboard/config';
import { InvalidArgumentError } from '@switchboard/errors';
import { tenantKey, type Redis } from '@switchboard/redis';

/** What one tenant may use. Every value is positive; 0 never means "unlimited". */
export interface TenantLimits {
  /** Open WebSocket connections of the tenant across all gateways. */
  maxConnections: number;
  /** Messages one user may send per second (all their connections, all gateways). */
  messagesPerSecondPerUser: number;
  /** Messages the whole tenant may send per second. */
  messagesPerSecondPerTenant: number;
  /** Bytes of client frames the tenant may send per second. */
  bytesPerSecondPerTenant: number;
  /** Largest client frame (never above the gateway's own MAX_FRAME_BYTES). */
  maxFrameBytes: number;
  /** Members a room may have (checked by the room service). */
  maxRoomSize: number;
}

export const LIMIT_NAMES = ['maxConnections', 'messagesPerSecondPerUser', 'messagesPerSecondPerTenant', 'bytesPerSecondPerTenant', 'maxFrameBytes', 'maxRoomSize'] as const satisfies readonly (keyof TenantLimits)[];

/** The defaults, from the environment of every service that reads limits (names are the variables). */
export function limitSettings() {
  return {
    TENANT_MAX_CONNECTIONS: env.positiveInt(10_000),
    TENANT_MESSAGES_PER_SECOND_PER_USER: env.positiveInt(50),
    TENANT_MESSAGES_PER_SECOND: env.positiveInt(5_000),
    TENANT_BYTES_PER_SECOND: env.positiveInt(16 * 1024 * 1024),
    TENANT_MAX_FRAME_BYTES: env.positiveInt(64 * 1024),
    TENANT_MAX_ROOM_SIZE: env.positiveInt(10_000),
    /** How long a service keeps a tenant's limits before reading them again (an override takes effect within this). */
    TENANT_LIMITS_CACHE_MS: env.positiveInt(1000),
  };
}

/** The settings `limitSettings()` reads, as a loaded configuration has them. */
export interface LimitConfig {
  TENANT_MAX_CONNECTIONS: number;
  TENANT_MESSAGES_PER_SECOND_PER_USER: number;
  TENANT_MESSAGES_PER_SECOND: number;
  TENANT_BYTES_PER_SECOND: number;
  TENANT_MAX_FRAME_BYTES: number;
  TENANT_MAX_ROOM_SIZE: number;
}

export function limitDefaults(config: LimitConfig): TenantLimits {
  return {
    maxConnections: config.TENANT_MAX_CONNECTIONS,
    messagesPerSecondPerUser: config.TENANT_MESSAGES_PER_SECOND_PER_USER,
    messagesPerSecondPerTenant: config.TENANT_MESSAGES_PER_SECOND,
    bytesPerSecondPerTenant: config.TENANT_BYTES_PER_SECOND,
    maxFrameBytes: config.TENANT_MAX_FRAME_BYTES,
    maxRoomSize: config.TENANT_MAX_ROOM_SIZE,
  };
}

/** Ceiling of any limit value, so an override cannot overflow a counter or a uint32 field. */
const MAX_LIMIT = 2 ** 31 - 1;

/**
 * Tenant limits: defaults from configuration, overrides per tenant in the
 * Redis hash `sb:{<tenant>}:limits` (field = limit name), so every gateway
 * and the room service see the same values. Reads are cached per process for
 * `cacheMs`; an override applies everywhere within that time.
 */
export class TenantLimitStore {
  private readonly cache = new Map<string, { limits: TenantLimits; until: number }>();

  constructor(
    private readonly redis: Redis,
    readonly defaults: TenantLimits,
    private readonly cacheMs = 1000,
  ) {}

  /** Reads under way: the frames that find the cache expired at once share one read instead of one HGETALL each. */
  private readonly reading = new Map<string, Promise<TenantLimits>>();

  async get(tenantId: string): Promise<TenantLimits> {
    const cached = this.cache.get(tenantId);
    if (cached && cached.until > Date.now()) return cached.limits;
    let read = this.reading.get(tenantId);
    if (!read) {
      read = this.read(tenantId).finally(() => this.reading.delete(tenantId));
      this.reading.set(tenantId, read);
    }
    return read;
  }

  private async read(tenantId: string): Promise<TenantLimits> {
    const limits = { ...this.defaults, ...(await this.overrides(tenantId)) };
    this.cache.set(tenantId, { limits, until: Date.now() + this.cacheMs });
    if (this.cache.size > 10_000) this.cache.delete(this.cache.keys().next().value!);
    return limits;
  }

  async overrides(tenantId: string): Promise<Partial<TenantLimits>> {
    const stored = await this.redis.hgetall(tenantKey(tenantId, 'limits'));
    const overrides: Partial<TenantLimits> = {};
    for (const name of LIMIT_NAMES) {
      const value = Number(stored[name]);
      if (Number.isSafeInteger(value) && value > 0) overrides[name] = value;
    }
    return overrides;
  }

  /** Sets the given overrides; a value of 0 removes that override (back to the default). */
  async set(tenantId: string, changes: Partial<TenantLimits>): Promise<Partial<TenantLimits>> {
    const key = tenantKey(tenantId, 'limits');
    const multi = this.redis.multi();
    for (const name of LIMIT_NAMES) {
      const value = changes[name];
      if (value === undefined) continue;
      if (!Number.isSafeInteger(value) || value < 0 || value > MAX_LIMIT) {
        throw new InvalidArgumentError(`${name} must be an integer from 1 to ${MAX_LIMIT} (0 removes the override)`, { field: name });
      }
      if (value === 0) multi.hdel(key, name);
      else multi.hset(key, name, String(value));
    }
    await multi.exec();
    this.cache.delete(tenantId);
    this.reading.delete(tenantId);
    return this.overrides(tenantId);
  }
}
