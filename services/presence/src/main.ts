import { GrpcServer } from '@switchboard/grpc';
import { connectNats, natsReady } from '@switchboard/nats';
import { presenceV1 } from '@switchboard/proto';
import { createRedis } from '@switchboard/redis';
import { runMain, ServiceHost } from '@switchboard/runtime';
import { ChangeAnnouncer } from './announcer';
import { readConfig } from './config';
import { presenceService } from './service';
import { PresenceStore } from './store';

const SERVICE = 'presence';

async function main(): Promise<void> {
  // 1. Configuration, validated before anything starts; then logs, signals, telemetry.
  const config = readConfig();
  const host = ServiceHost.start(SERVICE, config);
  const { logger } = host;

  // 2. Clients: Redis, NATS.
  const redis = await host.dependency(
    'Redis',
    async () => {
      const client = createRedis(config.REDIS_URL, SERVICE);
      // Without a listener ioredis prints every reconnect failure; readiness reports the outage instead.
      client.on('error', (err) => logger.debug({ err }, 'redis connection error'));
      await client.connect();
      return client;
    },
    { close: (r) => r.quit(), ready: (r) => r.ping() },
  );
  const nats = await host.dependency(
    'NATS',
    () => connectNats({ servers: config.NATS_URL, name: SERVICE, onStatus: (event) => logger.info({ event }, 'nats connection') }),
    { close: (nc) => nc.drain(), ready: natsReady },
  );

  // 3. Background runners: none yet (lease expiry is applied when state is read).

  // 4. Servers.
  const store = new PresenceStore(redis, config.STATE_RETENTION_S);
  const grpc = new GrpcServer({ logger });
  grpc.addService(
    'switchboard.presence.v1.PresenceService',
    presenceV1.PresenceServiceService,
    presenceService(store, new ChangeAnnouncer(store, nats, logger), config, logger),
  );
  await host.serve(grpc.servable(config.HOST, config.GRPC_PORT, config.SHUTDOWN_DEADLINE_MS / 2));
}

runMain(main);
