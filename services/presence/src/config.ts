import { env, loadConfig } from '@switchboard/config';

export function readConfig(source: NodeJS.ProcessEnv = process.env) {
  return loadConfig(
    {
      HOST: env.string('127.0.0.1'),
      GRPC_PORT: env.port(50053),
      OPS_PORT: env.port(9103),
      REDIS_URL: env.url('redis://127.0.0.1:63799', ['redis', 'rediss']),
      NATS_URL: env.url('nats://127.0.0.1:42229', ['nats', 'tls']),
      LOG_LEVEL: env.logLevel(),
      OTEL_EXPORTER_OTLP_ENDPOINT: env.optionalString(),
      SHUTDOWN_DEADLINE_MS: env.positiveInt(10_000),
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
