import { connectNats, natsReady, type NatsConnection } from '@switchboard/nats';
import { openDatabase, type Pool } from '@switchboard/postgres';
import { createRedis, type Redis } from '@switchboard/redis';
import type { ServiceHost } from './service-host';

/**
 * The shared infrastructure, opened the same way by every service that uses
 * it: named in the start log and in "cannot reach …", closed at shutdown,
 * and (where it is one) a readiness condition — so each service's start
 * sequence says only what it needs.
 */

/** The service's own PostgreSQL schema, migrated first, then a pool under its role; a readiness condition. */
export function openPostgres(host: ServiceHost, options: { url: string; migrationsDir: string }): Promise<Pool> {
  const { logger } = host;
  return host.dependency(
    'PostgreSQL',
    () =>
      openDatabase({
        connectionString: options.url,
        applicationName: host.name,
        schema: host.name,
        migrationsDir: options.migrationsDir,
        log: (line) => logger.debug(line),
        onError: (err) => logger.warn({ err }, 'idle PostgreSQL connection failed'),
      }),
    { close: (pool) => pool.end(), ready: (pool) => pool.query('SELECT 1') },
  );
}

/** NATS as the service's own user (its nkey seed); drained at shutdown; a readiness condition. */
export function openNats(host: ServiceHost, options: { url: string; seedFile: string | undefined; connectionName?: string; inboxPrefix?: string }): Promise<NatsConnection> {
  const { logger } = host;
  return host.dependency(
    'NATS',
    () => connectNats({ servers: options.url, nkeySeedFile: options.seedFile, inboxPrefix: options.inboxPrefix, name: options.connectionName ?? host.name, onStatus: (event) => logger.info({ event }, 'nats connection') }),
    { close: (nc) => nc.drain(), ready: natsReady },
  );
}

/**
 * Redis; a readiness condition unless `optional` (the service then serves
 * with its defaults while Redis is away). Reconnect failures go to the debug
 * log: readiness reports the outage instead of a line per retry.
 */
export function openRedis(host: ServiceHost, options: { url: string; connectionName?: string; autoPipelining?: boolean; optional?: boolean }): Promise<Redis> {
  const { logger } = host;
  return host.dependency(
    'Redis',
    async () => {
      const client = createRedis(options.url, options.connectionName ?? host.name, { autoPipelining: options.autoPipelining ?? false });
      client.on('error', (err) => logger.debug({ err }, 'redis connection error'));
      await client.connect();
      return client;
    },
    options.optional ? { close: (r) => r.quit() } : { close: (r) => r.quit(), ready: (r) => r.ping() },
  );
}
