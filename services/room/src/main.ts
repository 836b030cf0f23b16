import { createClient, GrpcServer } from '@switchboard/grpc';
import { createIdempotentProducer, createKafka } from '@switchboard/kafka';
import { limitDefaults, TenantLimitStore } from '@switchboard/limits';
import { SYSTEM_SUBJECTS } from '@switchboard/nats';
import { OutboxRelay, outboxWaker } from '@switchboard/outbox';
import { messagingV1, notificationV1, roomV1 } from '@switchboard/proto';
import { openNats, openPostgres, openRedis, runMain, ServiceHost } from '@switchboard/runtime';
import { Announcer } from './announcements';
import { readConfig } from './config';
import { path } from './paths';
import { Purger } from './purger';
import { roomService } from './service';
import { RoomStore } from './store';

const SERVICE = 'room';
/** Advisory locks are per database: messaging's relay holds 0x5b00001. */
const OUTBOX_LEADER_LOCK = 0x5b0_0002;

async function main(): Promise<void> {
  // 1. Configuration, validated before anything starts; then logs, signals, telemetry.
  const config = readConfig();
  const host = ServiceHost.start(SERVICE, config);
  const { logger } = host;

  // 2. Clients: PostgreSQL (schema migrated first), NATS, Kafka, messaging and notification.
  const pool = await openPostgres(host, { url: config.DATABASE_URL, migrationsDir: path.migrations });
  // Tenant limits (max_room_size): not a readiness condition, the defaults apply while Redis is away.
  const redis = await openRedis(host, { url: config.REDIS_URL, optional: true });
  const tenantLimits = new TenantLimitStore(redis, limitDefaults(config), config.TENANT_LIMITS_CACHE_MS);
  const tenantMaxMembers = async (tenantId: string) => {
    try {
      return (await tenantLimits.get(tenantId)).maxRoomSize;
    } catch (err) {
      logger.warn({ err, tenant: tenantId }, 'tenant limits unreadable: using the default room size');
      return tenantLimits.defaults.maxRoomSize;
    }
  };
  const nats = await openNats(host, { url: config.NATS_URL, seedFile: config.NATS_NKEY_SEED_FILE });
  // Kafka is not a readiness condition: the outbox holds events while it is away.
  const kafka = createKafka({ brokers: config.KAFKA_BROKERS, clientId: SERVICE, log: (level, message, extra) => logger[level](extra, message) });
  const producer = await host.dependency('Kafka', async () => {
    const p = createIdempotentProducer(kafka);
    await p.connect();
    return p;
  }, { close: (p) => p.disconnect() });
  const messaging = createClient(messagingV1.MessagingServiceClient, config.MESSAGING_ADDR);
  host.lifecycle.onShutdown('messaging client', () => messaging.close());
  const notification = createClient(notificationV1.NotificationServiceClient, config.NOTIFICATION_ADDR);
  host.lifecycle.onShutdown('notification client', () => notification.close());

  // 3. Background runners: the outbox relay (membership and room events to
  // NATS and Kafka), woken after commits here and, over NATS, after commits
  // of other replicas; the purge of deleted rooms past their retention.
  const relay = new OutboxRelay({
    service: SERVICE,
    leaderLockKey: OUTBOX_LEADER_LOCK,
    pool,
    databaseUrl: config.DATABASE_URL,
    nats,
    producer,
    logger,
    pollMs: config.OUTBOX_POLL_MS,
    pendingGauge: host.telemetry.meter.createObservableGauge('room_outbox_pending', { description: 'Outbox events not yet published, per sink' }),
  });
  host.runner('outbox relay', () => relay.start(), () => relay.stop());
  const waker = outboxWaker(relay, nats, SYSTEM_SUBJECTS.roomOutboxWake);
  host.lifecycle.onShutdown('outbox wake-ups', waker.close);
  const store = new RoomStore(pool, { maxMembers: config.MAX_ROOM_MEMBERS, tenantMaxMembers, maxPins: config.MAX_PINS, deletedRetentionMs: config.DELETED_ROOM_RETENTION_MS }, waker.written);
  const purger = new Purger(store, config.PURGE_INTERVAL_MS, logger);
  host.runner('purge of deleted rooms', () => purger.start(), () => purger.stop());

  // 4. Servers.
  const grpc = new GrpcServer({ logger });
  const announcer = new Announcer(store, messaging, notification, logger);
  grpc.addService('switchboard.room.v1.RoomService', roomV1.RoomServiceService, roomService(store, announcer, config, logger));
  await host.serve(grpc.servable(config.HOST, config.GRPC_PORT, config.SHUTDOWN_DEADLINE_MS / 2));
}

runMain(main);
