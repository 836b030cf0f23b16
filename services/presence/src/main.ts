import { GrpcServer } from '@switchboard/grpc';
import { SYSTEM_SUBJECTS } from '@switchboard/nats';
import { presenceV1 } from '@switchboard/proto';
import { openNats, openRedis, runMain, ServiceHost } from '@switchboard/runtime';
import { ChangeAnnouncer } from './announcer';
import { readConfig } from './config';
import { Liveness } from './liveness';
import { presenceService } from './service';
import { PresenceStore } from './store';

const SERVICE = 'presence';

async function main(): Promise<void> {
  // 1. Configuration, validated before anything starts; then logs, signals, telemetry.
  const config = readConfig();
  const host = ServiceHost.start(SERVICE, config);
  const { logger } = host;

  // 2. Clients: Redis, NATS.
  const redis = await openRedis(host, { url: config.REDIS_URL, autoPipelining: true });
  const nats = await openNats(host, { url: config.NATS_URL, seedFile: config.NATS_NKEY_SEED_FILE });

  // 3. Background runners: heartbeats and the gateway reaper, the due sweeper (auto-away, expiries).
  const store = new PresenceStore(redis, config.STATE_RETENTION_S, config.HISTORY_RETENTION_MS, config.AUTO_AWAY_MS);
  const announcer = new ChangeAnnouncer(store, nats, logger, config.OCCUPANCY_THROTTLE_MS);
  const liveness = new Liveness(store, announcer, nats, config, logger);
  host.runner('liveness', () => liveness.start(), () => {
    liveness.stop();
    announcer.close();
  });
  // Redis came back after an outage, possibly empty: gateways refresh at once and register what is missing.
  // (The client is connected already, so every later 'ready' is a reconnect; the ping is empty, like the outbox wake.)
  redis.on('ready', () => {
    logger.warn('redis reconnected: asking gateways to resync presence');
    nats.publish(SYSTEM_SUBJECTS.presenceResync);
  });

  // 4. Servers.
  const grpc = new GrpcServer({ logger });
  grpc.addService('switchboard.presence.v1.PresenceService', presenceV1.PresenceServiceService, presenceService(store, announcer, liveness, nats, config, logger));
  await host.serve(grpc.servable(config.HOST, config.GRPC_PORT, config.SHUTDOWN_DEADLINE_MS / 2));
  // Registered last, so it runs first on SIGTERM: the gateways' open links would hold the server's drain, and
  // ending them here (not through a closed connection) says nothing about the gateways.
  host.lifecycle.onShutdown('gateway links', () => liveness.closeLinks());
}

runMain(main);
