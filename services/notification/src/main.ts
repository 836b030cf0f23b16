import { path } from './paths';
import { GrpcServer } from '@switchboard/grpc';
import { createKafka } from '@switchboard/kafka';
import { createLogger } from '@switchboard/logging';
import { connectNats } from '@switchboard/nats';
import { createPool, migrate } from '@switchboard/postgres';
import { notificationV1 } from '@switchboard/proto';
import { Lifecycle, OpsServer, runMain, startupStep } from '@switchboard/runtime';
import { startTelemetry } from '@switchboard/telemetry';
import { readConfig } from './config';
import { MessageNotifier } from './consumer';
import { NotificationEvents } from './events';
import { notificationService } from './service';
import { NotificationStore } from './store';

const SERVICE = 'notification';

async function main(): Promise<void> {
  // 1. Configuration, validated before anything starts.
  const config = readConfig();
  const logger = createLogger({ service: SERVICE, level: config.LOG_LEVEL });
  const lifecycle = new Lifecycle({ logger, shutdownDeadlineMs: config.SHUTDOWN_DEADLINE_MS });
  lifecycle.handleSignals();

  // 2. Telemetry.
  const telemetry = startTelemetry({ serviceName: SERVICE, otlpEndpoint: config.OTEL_EXPORTER_OTLP_ENDPOINT });
  lifecycle.onShutdown('telemetry', () => telemetry.shutdown());

  // 3. Clients: PostgreSQL (schema migrated first), NATS, Kafka.
  await startupStep(logger, 'PostgreSQL', () =>
    migrate({ databaseUrl: config.DATABASE_URL, schema: SERVICE, dir: path.migrations, log: (line) => logger.debug(line) }),
  );
  const pool = createPool({
    connectionString: config.DATABASE_URL,
    applicationName: SERVICE,
    schema: SERVICE,
    onError: (err) => logger.warn({ err }, 'idle PostgreSQL connection failed'),
  });
  lifecycle.onShutdown('postgres', () => pool.end());
  const nats = await startupStep(logger, 'NATS', () =>
    connectNats({ servers: config.NATS_URL, name: SERVICE, onStatus: (event) => logger.info({ event }, 'nats connection') }),
  );
  lifecycle.onShutdown('nats', () => nats.drain());
  const kafka = createKafka({ brokers: config.KAFKA_BROKERS, clientId: SERVICE, log: (level, message, extra) => logger[level](extra, message) });
  const consumer = kafka.consumer({ groupId: config.KAFKA_GROUP_ID });
  await startupStep(logger, 'Kafka', () => consumer.connect());
  lifecycle.onShutdown('kafka', () => consumer.disconnect());

  // 4. Background runners: notifications from the message log.
  const store = new NotificationStore(pool);
  const events = new NotificationEvents(nats, logger);
  const notifier = new MessageNotifier({ consumer, store, events, logger, maxEventAgeMs: config.MAX_EVENT_AGE_MS });
  await notifier.start();
  lifecycle.onShutdown('message consumer', () => notifier.stop());

  // 5. Servers: gRPC for the mesh, ops HTTP for probes and metrics.
  const grpc = new GrpcServer({ logger });
  grpc.addService('switchboard.notification.v1.NotificationService', notificationV1.NotificationServiceService, notificationService(store, events, config, logger));
  const grpcPort = await grpc.listen(config.HOST, config.GRPC_PORT);
  lifecycle.onShutdown('grpc', () => grpc.shutdown(config.SHUTDOWN_DEADLINE_MS / 2));
  const ops = new OpsServer({
    host: config.HOST,
    port: config.OPS_PORT,
    logger,
    metricsHandler: telemetry.metricsHandler,
    checks: [
      { name: 'postgres', check: () => pool.query('SELECT 1') },
      { name: 'nats', check: () => (nats.isClosed() ? Promise.reject(new Error('closed')) : nats.flush()) },
      { name: 'kafka', check: () => notifier.check() },
    ],
  });
  const opsPort = await ops.start();
  lifecycle.onShutdown('ops', async () => {
    ops.setDraining();
    await ops.stop();
  });
  grpc.setServing(true);
  logger.info({ grpcPort, opsPort }, 'notification is serving');
}

runMain(main);
