import { env, infraSettings, loadConfig, serviceSettings } from '@switchboard/config';
import { limitSettings } from '@switchboard/limits';

export function readConfig(source: NodeJS.ProcessEnv = process.env) {
  return loadConfig(
    {
      ...serviceSettings({ grpcPort: 50054, opsPort: 9104 }),
      ...infraSettings.postgres(),
      ...infraSettings.nats(),
      ...infraSettings.kafka(),
      /** Tenant limits (max_room_size) set through the gateway admin API live in Redis. */
      ...infraSettings.redis(),
      ...limitSettings(),
      /** Messaging (announcements are posted into the room's conversation) and notification (members are told). */
      MESSAGING_ADDR: env.string('127.0.0.1:50052'),
      NOTIFICATION_ADDR: env.string('127.0.0.1:50055'),
      /** Largest page a list call returns. */
      MAX_PAGE_SIZE: env.positiveInt(200),
      /** The tenant-wide member limit of a room; a room's own limit may only be lower. */
      MAX_ROOM_MEMBERS: env.positiveInt(10_000),
      /** Most members CreateRoom adds at once. */
      MAX_INITIAL_MEMBERS: env.positiveInt(500),
      /** Most pinned messages per room. */
      MAX_PINS: env.positiveInt(50),
      /** Longest lifetime of an invite link (default 30 days). */
      MAX_INVITE_LINK_LIFETIME_MS: env.positiveInt(30 * 24 * 3600 * 1000),
      /** How long a deleted room's rows are kept before the purge removes them (default 30 days). */
      DELETED_ROOM_RETENTION_MS: env.positiveInt(30 * 24 * 3600 * 1000),
      /** How often the purge looks for deleted rooms past their retention. */
      PURGE_INTERVAL_MS: env.positiveInt(60_000),
      /** How often the outbox relay looks for work when no wake-up arrives. */
      OUTBOX_POLL_MS: env.positiveInt(500),
    },
    source,
  );
}

export type RoomConfig = ReturnType<typeof readConfig>;
