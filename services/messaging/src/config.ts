import { env, infraSettings, loadConfig, serviceSettings, z } from '@switchboard/config';

export function readConfig(source: NodeJS.ProcessEnv = process.env) {
  return loadConfig(
    {
      ...serviceSettings({ grpcPort: 50052, opsPort: 9102 }),
      ...infraSettings.postgres(),
      ...infraSettings.nats(),
      ...infraSettings.kafka(),
      /** The room service: asked on every post and read of a room conversation. */
      ROOM_ADDR: env.string('127.0.0.1:50054'),
      /** Deadline of a permission check with the room service. */
      ROOM_DEADLINE_MS: env.positiveInt(2000),
      /** Consumer group that feeds the room membership replica from Kafka sb.events (one per deployment). */
      ROOM_EVENTS_GROUP_ID: env.string('messaging-rooms'),
      /** After how long without a heartbeat a replica's share of sb.events moves to the others (a killed replica's share waits that long). */
      ROOM_EVENTS_SESSION_TIMEOUT_MS: env.positiveInt(10_000),
      /** How long a deleted room's history is kept before it is purged. */
      DELETED_ROOM_RETENTION_MS: env.positiveInt(30 * 24 * 3600 * 1000),
      /** How often due purges of deleted rooms run. */
      ROOM_PURGE_INTERVAL_MS: env.positiveInt(60_000),
      /** Longest message text accepted, in characters. */
      MAX_TEXT_LENGTH: env.positiveInt(16_384),
      /** Largest page a history or sync call returns. */
      MAX_PAGE_SIZE: env.positiveInt(200),
      /** Send transactions running at once; sends beyond them wait and then commit together. */
      SEND_CONCURRENCY: env.positiveInt(8),
      /** Most sends committed in one transaction. */
      SEND_BATCH_MAX: env.positiveInt(64),
      /**
       * Most sends waiting for a transaction slot. Beyond it a send is refused
       * at once with OVERLOADED (load shedding) rather than queued past its
       * caller's deadline: about one round of SEND_CONCURRENCY full batches.
       */
      SEND_QUEUE_MAX: env.positiveInt(512),
      /**
       * A send is refused at once with OVERLOADED while the oldest waiting
       * send has waited longer than this: commits are not keeping up, and a
       * send queued now would wait as long. (Sends whose caller's deadline
       * passed while they waited are dropped unstored.)
       */
      SEND_QUEUE_MAX_WAIT_MS: env.positiveInt(300),
      /** The retry hint of such a refusal. */
      SEND_RETRY_AFTER_MS: env.positiveInt(500),
      /** Roles (token claim `roles`) that may broadcast to tenant-wide audiences; internal callers always may. */
      BROADCAST_ROLES: env.list(['admin']),
      /** How often the outbox relay looks for work when no notification arrives. */
      OUTBOX_POLL_MS: env.positiveInt(500),
      /** The relay's Kafka sink gathers the commits of this window into one produce request (NATS, the live path, does not wait). */
      OUTBOX_KAFKA_LINGER_MS: z.coerce.number().int().min(0).max(1000).default(50),
    },
    source,
  );
}

export type MessagingConfig = ReturnType<typeof readConfig>;
