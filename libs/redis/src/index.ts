import { assertSafeId } from '@switchboard/ids';
import Redis from 'ioredis';

export { Redis };

/**
 * A Redis client that retries its connection forever with a capped backoff
 * (Redis restarting makes the service not-ready, not dead) and fails commands
 * fast while disconnected instead of queueing them without bound.
 */
export function createRedis(url: string, name: string, options: { autoPipelining?: boolean } = {}): Redis {
  return new Redis(url, {
    connectionName: name,
    // Commands issued in one event-loop turn leave in one write (bursts such as a whole gateway going offline).
    enableAutoPipelining: options.autoPipelining ?? false,
    lazyConnect: true,
    maxRetriesPerRequest: 2,
    enableOfflineQueue: true,
    retryStrategy: (attempt) => Math.min(50 * 2 ** attempt, 2000),
  });
}

/**
 * `sb:{<tenant>}:<part>:…`: the braces make every key of a tenant hash to one
 * Redis Cluster slot, so a tenant's multi-key operations stay atomic.
 */
export function tenantKey(tenant: string, ...parts: string[]): string {
  return `sb:{${assertSafeId(tenant, 'tenant')}}:${parts.join(':')}`;
}
