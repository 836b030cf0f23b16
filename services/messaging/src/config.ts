import { env, loadConfig } from '@switchboard/config';

export function readConfig(source: NodeJS.ProcessEnv = process.env) {
  return loadConfig(
    {
      HOST: env.string('127.0.0.1'),
      GRPC_PORT: env.port(50052),
      OPS_PORT: env.port(9102),
      DATABASE_URL: env.url('postgres://switchboard:switchboard@127.0.0.1:54329/switchboard', ['postgres', 'postgresql']),
      NATS_URL: env.url('nats://127.0.0.1:42229', ['nats', 'tls']),
      KAFKA_BROKERS: env.string('127.0.0.1:19092'),
      LOG_LEVEL: env.logLevel(),
      OTEL_EXPORTER_OTLP_ENDPOINT: env.optionalString(),
      SHUTDOWN_DEADLINE_MS: env.positiveInt(10_000),
      /** Longest message text accepted, in characters. */
      MAX_TEXT_LENGTH: env.positiveInt(16_384),
      /** Largest page a history or sync call returns. */
      MAX_PAGE_SIZE: env.positiveInt(200),
      /** How often the outbox relay looks for work when no notification arrives. */
      OUTBOX_POLL_MS: env.positiveInt(500),
    },
    source,
  );
}

export type MessagingConfig = ReturnType<typeof readConfig>;
