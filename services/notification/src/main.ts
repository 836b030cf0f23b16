import { path } from './paths';
import { GrpcServer } from '@switchboard/grpc';
import { createIdempotentProducer, createKafka, TOPICS } from '@switchboard/kafka';
import { createLogger } from '@switchboard/logging';
import { connectNats } from '@switchboard/nats';
import { createPool, migrate } from '@switchboard/postgres';
import { notificationV1 } from '@switchboard/proto';
import { Lifecycle, OpsServer, runMain, startupStep } from '@switchboard/runtime';
import { startTelemetry } from '@switchboard/telemetry';
import { readConfig } from './config';
import { DeliveryStore } from './deliveries';
import { DeadLetters, ensureTopics } from './dlq';
import { NotificationEvents } from './events';
import { Peers } from './peers';
import { Pipeline } from './pipeline';
import { providersFrom } from './providers';
import { notificationService } from './service';
import { SettingsStore } from './settings';
import { NotificationStore } from './store';
import { DeliveryWorker } from './worker';

const SERVICE = 'notification';

async function main(): Promise<void> {
  // 1. Configuration, validated before anything starts (provider credentials included).
  const config = readConfig();
  const logger = createLogger({ service: SERVICE, level: config.LOG_LEVEL });
  const lifecycle = new Lifecycle({ logger, shutdownDeadlineMs: config.SHUTDOWN_DEADLINE_MS });
  lifecycle.handleSignals();
  const providers = providersFrom(config, logger);
  lifecycle.onShutdown('providers', async () => {
    await Promise.all([...providers.push.values()].map((p) => p.close()));
    await providers.email?.close();
  });

  // 2. Telemetry.
  const telemetry = startTelemetry({ serviceName: SERVICE, otlpEndpoint: config.OTEL_EXPORTER_OTLP_ENDPOINT });
  lifecycle.onShutdown('telemetry', () => telemetry.shutdown());

  // 3. Clients: PostgreSQL (schema migrated first), NATS, Kafka (the dead-letter topic created when missing), presence and room.
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
  const consumer = kafka.consumer({
    groupId: config.KAFKA_GROUP_ID,
    sessionTimeout: config.KAFKA_SESSION_TIMEOUT_MS,
    heartbeatInterval: Math.max(500, Math.floor(config.KAFKA_SESSION_TIMEOUT_MS / 6)),
  });
  const producer = createIdempotentProducer(kafka);
  await startupStep(logger, 'Kafka', async () => {
    await ensureTopics(
      kafka,
      [
        { topic: config.DLQ_TOPIC, numPartitions: config.DLQ_PARTITIONS, replicationFactor: config.KAFKA_REPLICATION_FACTOR },
        { topic: TOPICS.notifications, numPartitions: config.DLQ_PARTITIONS, replicationFactor: config.KAFKA_REPLICATION_FACTOR },
      ],
      logger,
    );
    await consumer.connect();
    await producer.connect();
  });
  lifecycle.onShutdown('kafka', async () => {
    await consumer.disconnect();
    await producer.disconnect();
  });
  const peers = new Peers(config.PRESENCE_ADDR, config.ROOM_ADDR, config.PEER_DEADLINE_MS, logger);
  lifecycle.onShutdown('peers', () => peers.close());

  // 4. Background runners: the delivery worker, then the pipeline from Kafka.
  const store = new NotificationStore(pool);
  const settings = new SettingsStore(pool, config);
  const deliveries = new DeliveryStore(pool);
  const events = new NotificationEvents(nats, logger);
  const deadLetters = new DeadLetters(producer, config.DLQ_TOPIC, logger);
  const worker = new DeliveryWorker({ pool, settings, events, providers, deadLetters, logger, config });
  worker.start();
  lifecycle.onShutdown('delivery worker', () => worker.stop());
  const usable = new Set(providers.push.keys());
  const pipeline = new Pipeline({ consumer, pool, settings, events, peers, deadLetters, logger, config, wake: () => worker.wake(), usable: () => usable });
  await pipeline.start();
  lifecycle.onShutdown('consumer', () => pipeline.stop());

  // 5. Servers: gRPC for the mesh, ops HTTP for probes and metrics.
  const grpc = new GrpcServer({ logger });
  grpc.addService(
    'switchboard.notification.v1.NotificationService',
    notificationV1.NotificationServiceService,
    notificationService({ store, settings, deliveries, events, peers, producer, config, logger, wake: () => worker.wake() }),
  );
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
      { name: 'kafka', check: () => pipeline.check() },
    ],
  });
  const opsPort = await ops.start();
  ops.setServing();
  lifecycle.onShutdown('ops', async () => {
    ops.setDraining();
    await ops.stop();
  });
  grpc.setServing(true);
  logger.info({ grpcPort, opsPort }, 'notification is serving');
}

runMain(main);
