import { GrpcServer } from '@switchboard/grpc';
import { createGroupConsumer, createIdempotentProducer, createKafka, leaveGroup, TOPICS } from '@switchboard/kafka';
import { notificationV1 } from '@switchboard/proto';
import { openNats, openPostgres, runMain, ServiceHost } from '@switchboard/runtime';
import { readConfig } from './config';
import { DeliveryStore } from './deliveries';
import { DeadLetters, ensureTopics } from './dlq';
import { NotificationEvents } from './events';
import { path } from './paths';
import { Peers } from './peers';
import { Pipeline } from './pipeline';
import { providersFrom } from './providers';
import { notificationService } from './service';
import { SettingsStore } from './settings';
import { NotificationStore } from './store';
import { DeliveryWorker } from './worker';

const SERVICE = 'notification';

async function main(): Promise<void> {
  // 1. Configuration, validated before anything starts (provider credentials included); then logs, signals, telemetry.
  const config = readConfig();
  const host = ServiceHost.start(SERVICE, config);
  const { logger } = host;
  const providers = providersFrom(config, logger);
  host.lifecycle.onShutdown('providers', async () => {
    await Promise.all([...providers.push.values()].map((p) => p.close()));
    await providers.email?.close();
  });

  // 2. Clients: PostgreSQL (schema migrated first), NATS, Kafka (the dead-letter topic created when missing), presence and room.
  const pool = await openPostgres(host, { url: config.DATABASE_URL, migrationsDir: path.migrations });
  const nats = await openNats(host, { url: config.NATS_URL, seedFile: config.NATS_NKEY_SEED_FILE });
  const kafka = createKafka({ brokers: config.KAFKA_BROKERS, clientId: SERVICE, log: (level, message, extra) => logger[level](extra, message) });
  const { consumer, producer } = await host.dependency(
    'Kafka',
    async () => {
      const topics = [config.DLQ_TOPIC, TOPICS.notifications];
      const spec = { numPartitions: config.DLQ_PARTITIONS, replicationFactor: config.KAFKA_REPLICATION_FACTOR };
      await ensureTopics(kafka, topics.map((topic) => ({ topic, ...spec })), logger);
      const clients = {
        consumer: createGroupConsumer(kafka, config.KAFKA_GROUP_ID, config.KAFKA_SESSION_TIMEOUT_MS),
        producer: createIdempotentProducer(kafka),
      };
      await clients.consumer.connect();
      await clients.producer.connect();
      return clients;
    },
    {
      close: async (clients) => {
        // Bounded like messaging's: the producer and the rest of the shutdown still need the deadline.
        if (!(await leaveGroup(clients.consumer, config.SHUTDOWN_DEADLINE_MS / 4))) logger.warn('the consumer did not leave its group in time; its partitions move when its session times out');
        await clients.producer.disconnect();
      },
    },
  );
  const peers = new Peers(config.PRESENCE_ADDR, config.ROOM_ADDR, config.PEER_DEADLINE_MS, logger);
  host.lifecycle.onShutdown('peers', () => peers.close());

  // 3. Background runners: the delivery worker, then the pipeline from Kafka (consuming is a readiness condition).
  const store = new NotificationStore(pool);
  const settings = new SettingsStore(pool, config);
  const deliveries = new DeliveryStore(pool);
  const events = new NotificationEvents(nats, logger);
  const deadLetters = new DeadLetters(producer, config.DLQ_TOPIC, logger);
  const worker = new DeliveryWorker({ pool, settings, events, providers, deadLetters, logger, config });
  host.runner('delivery worker', () => worker.start(), () => worker.stop());
  const usable = new Set(providers.push.keys());
  const pipeline = new Pipeline({ consumer, pool, settings, events, peers, deadLetters, logger, config, wake: () => worker.wake(), usable: () => usable });
  await pipeline.start();
  host.lifecycle.onShutdown('consumer', () => pipeline.stop());
  host.checks.push({ name: 'kafka', check: () => pipeline.check() });

  // 4. Servers.
  const grpc = new GrpcServer({ logger });
  grpc.addService(
    'switchboard.notification.v1.NotificationService',
    notificationV1.NotificationServiceService,
    notificationService({ store, settings, deliveries, events, peers, producer, config, logger, wake: () => worker.wake() }),
  );
  await host.serve(grpc.servable(config.HOST, config.GRPC_PORT, config.SHUTDOWN_DEADLINE_MS / 2));
}

runMain(main);
