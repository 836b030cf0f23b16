import { env, infraSettings, loadConfig, serviceSettings } from '@switchboard/config';

export function readConfig(source: NodeJS.ProcessEnv = process.env) {
  return loadConfig(
    {
      ...serviceSettings({ grpcPort: 50053, opsPort: 9103 }),
      ...infraSettings.redis(),
      ...infraSettings.nats(),
      /** A connection counts as online this long after it was registered or last renewed. */
      LEASE_TTL_MS: env.positiveInt(30_000),
      /** Most users one GetPresence call may ask about (the contract promises at least 500). */
      MAX_PRESENCE_BATCH: env.positiveInt(500),
      /** Longest custom status message, in characters. */
      MAX_CUSTOM_MESSAGE_LENGTH: env.positiveInt(140),
      /** A user's presence keys are dropped after this long without any change. */
      STATE_RETENTION_S: env.positiveInt(30 * 24 * 3600),
    },
    source,
  );
}

export type PresenceConfig = ReturnType<typeof readConfig>;
