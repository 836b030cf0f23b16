import { createClient, GrpcServer } from '@switchboard/grpc';
import { createGroupConsumer, createIdempotentProducer, createKafka } from '@switchboard/kafka';
import { SYSTEM_SUBJECTS } from '@switchboard/nats';
import { OutboxRelay, outboxWaker } from '@switchboard/outbox';
import { messagingV1, roomV1 } from '@switchboard/proto';
import { openNats, openPostgres, runMain, ServiceHost } from '@switchboard/runtime';
import { readConfig } from './config';
import { path } from './paths';
import { RoomAccess } from './room-access';
import { RoomReplica, runRoomEvents } from './room-replica';
import { messagingService } from './service';
import { MessageStore } from './store';

const SERVICE = 'messaging';

async function main(): Promise<void> {
  // 1. Configuration, validated before anything starts; then logs, signals, telemetry.
  const config = readConfig();
  const host = ServiceHost.start(SERVICE, config);
  const { logger } = host;

  // 2. Clients: PostgreSQL (schema migrated first), NATS, Kafka.
  const pool = await openPostgres(host, { url: config.DATABASE_URL, migrationsDir: path.migrations });
  const nats = await openNats(host, { url: config.NATS_URL, seedFile: config.NATS_NKEY_SEED_FILE });
  // Kafka is not a readiness condition: the outbox holds events while it is away.
  const kafka = createKafka({ brokers: config.KAFKA_BROKERS, clientId: SERVICE, log: (level, message, extra) => logger[level](extra, message) });
  const producer = await host.dependency('Kafka', async () => {
    const p = createIdempotentProducer(kafka);
    await p.connect();
    return p;
  }, { close: (p) => p.disconnect() });

  // 3. Background runners: the outbox relay, woken after commits here and,
  // over NATS, after commits of other replicas (polling covers a lost wake-up).
  const relay = new OutboxRelay({
    service: SERVICE,
    leaderLockKey: 0x5b0_0001,
    pool,
    databaseUrl: config.DATABASE_URL,
    nats,
    producer,
    logger,
    pollMs: config.OUTBOX_POLL_MS,
    kafkaLingerMs: config.OUTBOX_KAFKA_LINGER_MS,
    pendingGauge: host.telemetry.meter.createObservableGauge('messaging_outbox_pending', { description: 'Outbox events not yet published, per sink' }),
  });
  host.runner('outbox relay', () => relay.start(), () => relay.stop());
  const waker = outboxWaker(relay, nats, SYSTEM_SUBJECTS.messagingOutboxWake);
  host.lifecycle.onShutdown('outbox wake-ups', waker.close);
  const outboxWritten = waker.written;

  // The room membership replica, fed from Kafka sb.events, and the purge of deleted rooms' history.
  const replica = new RoomReplica(pool, config.DELETED_ROOM_RETENTION_MS, host.telemetry.meter);
  let stopRoomEvents: () => Promise<void> = async () => undefined;
  host.runner(
    'room events',
    () => {
      const consumer = createGroupConsumer(kafka, config.ROOM_EVENTS_GROUP_ID, config.ROOM_EVENTS_SESSION_TIMEOUT_MS);
      // A quarter of the shutdown deadline: the servers' drain and the other clients need the rest.
      stopRoomEvents = runRoomEvents(consumer, replica, logger, config.SHUTDOWN_DEADLINE_MS / 4);
    },
    () => stopRoomEvents(),
  );
  const purge = setInterval(() => {
    replica.purgeDue().catch((err: unknown) => logger.warn({ err }, 'purging deleted rooms failed; next interval retries'));
  }, config.ROOM_PURGE_INTERVAL_MS);
  host.lifecycle.onShutdown('room purge', () => clearInterval(purge));
  const rooms = createClient(roomV1.RoomServiceClient, config.ROOM_ADDR);
  host.lifecycle.onShutdown('room client', () => rooms.close());

  // 4. Servers.
  const grpc = new GrpcServer({ logger });
  grpc.addService('switchboard.messaging.v1.MessagingService', messagingV1.MessagingServiceService, messagingService(
      new MessageStore(
        pool,
        {
          maxConcurrent: config.SEND_CONCURRENCY,
          maxBatch: config.SEND_BATCH_MAX,
          maxQueued: config.SEND_QUEUE_MAX,
          maxQueueWaitMs: config.SEND_QUEUE_MAX_WAIT_MS,
          retryAfterMs: config.SEND_RETRY_AFTER_MS,
          meter: host.telemetry.meter,
        },
        outboxWritten,
      ),
      new RoomAccess(rooms, config.ROOM_DEADLINE_MS),
      config,
      logger,
    ));
  await host.serve(grpc.servable(config.HOST, config.GRPC_PORT, config.SHUTDOWN_DEADLINE_MS / 2));
}

runMain(main);
