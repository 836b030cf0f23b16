import { GrpcServer } from '@switchboard/grpc';
import { createLogger } from '@switchboard/logging';
import { connectNats } from '@switchboard/nats';
import { presenceV1 } from '@switchboard/proto';
import { createRedis } from '@switchboard/redis';
import { Lifecycle, OpsServer, runMain, startupStep } from '@switchboard/runtime';
import { startTelemetry } from '@switchboard/telemetry';
import { ChangeAnnouncer } from './announcer';
import { readConfig } from './config';
import { presenceService } from './service';
import { PresenceStore } from './store';

const SERVICE = 'presence';

async function main(): Promise<void> {
  // 1. Configuration, validated before anything starts.
  const config = readConfig();
  const logger = createLogger({ service: SERVICE, level: config.LOG_LEVEL });
  const lifecycle = new Lifecycle({ logger, shutdownDeadlineMs: config.SHUTDOWN_DEADLINE_MS });
  lifecycle.handleSignals();

  // 2. Telemetry.
  const telemetry = startTelemetry({ serviceName: SERVICE, otlpEndpoint: config.OTEL_EXPORTER_OTLP_ENDPOINT });
  lifecycle.onShutdown('telemetry', () => telemetry.shutdown());

  // 3. Clients: Redis, NATS.
  const redis = createRedis(config.REDIS_URL, SERVICE);
  // Without a listener ioredis prints every reconnect failure; readiness reports the outage instead.
  redis.on('error', (err) => logger.debug({ err }, 'redis connection error'));
  await startupStep(logger, 'Redis', () => redis.connect());
  lifecycle.onShutdown('redis', () => redis.quit());
  const nats = await startupStep(logger, 'NATS', () =>
    connectNats({ servers: config.NATS_URL, name: SERVICE, onStatus: (event) => logger.info({ event }, 'nats connection') }),
  );
  lifecycle.onShutdown('nats', () => nats.drain());

  // 4. Background runners: none yet (lease expiry is applied when state is read).

  // 5. Servers: gRPC for the mesh, ops HTTP for probes and metrics.
  const store = new PresenceStore(redis, config.STATE_RETENTION_S);
  const grpc = new GrpcServer({ logger });
  grpc.addService(
    'switchboard.presence.v1.PresenceService',
    presenceV1.PresenceServiceService,
    presenceService(store, new ChangeAnnouncer(store, nats, logger), config, logger),
  );
  const grpcPort = await grpc.listen(config.HOST, config.GRPC_PORT);
  lifecycle.onShutdown('grpc', () => grpc.shutdown(config.SHUTDOWN_DEADLINE_MS / 2));
  const ops = new OpsServer({
    host: config.HOST,
    port: config.OPS_PORT,
    logger,
    metricsHandler: telemetry.metricsHandler,
    checks: [
      { name: 'redis', check: () => redis.ping() },
      { name: 'nats', check: () => (nats.isClosed() ? Promise.reject(new Error('closed')) : nats.flush()) },
    ],
  });
  const opsPort = await ops.start();
  lifecycle.onShutdown('ops', async () => {
    ops.setDraining();
    await ops.stop();
  });
  grpc.setServing(true);
  logger.info({ grpcPort, opsPort }, 'presence is serving');
}

runMain(main);
