import { path } from './paths';
import { GrpcServer } from '@switchboard/grpc';
import { createIdempotentProducer, createKafka } from '@switchboard/kafka';
import { createLogger } from '@switchboard/logging';
import { connectNats } from '@switchboard/nats';
import { createPool, migrate } from '@switchboard/postgres';
import { messagingV1 } from '@switchboard/proto';
import { Lifecycle, OpsServer, runMain, startupStep } from '@switchboard/runtime';
import { startTelemetry } from '@switchboard/telemetry';
import { readConfig } from './config';
import { OutboxRelay } from './outbox-relay';
import { messagingService } from './service';
import { MessageStore } from './store';

const SERVICE = 'messaging';

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
  const producer = createIdempotentProducer(kafka);
  await startupStep(logger, 'Kafka', () => producer.connect());
  lifecycle.onShutdown('kafka', () => producer.disconnect());

  // 4. Background runners.
  const relay = new OutboxRelay({ pool, databaseUrl: config.DATABASE_URL, nats, producer, logger, meter: telemetry.meter, pollMs: config.OUTBOX_POLL_MS });
  relay.start();
  lifecycle.onShutdown('outbox relay', () => relay.stop());

  // 5. Servers: gRPC for the mesh, ops HTTP for probes and metrics.
  const grpc = new GrpcServer({ logger });
  grpc.addService('switchboard.messaging.v1.MessagingService', messagingV1.MessagingServiceService, messagingService(new MessageStore(pool), config, logger));
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
    ],
  });
  const opsPort = await ops.start();
  lifecycle.onShutdown('ops', async () => {
    ops.setDraining();
    await ops.stop();
  });
  grpc.setServing(true);
  logger.info({ grpcPort, opsPort }, 'messaging is serving');
}

runMain(main);
