import { env, loadConfig } from '@switchboard/config';

export function readConfig(source: NodeJS.ProcessEnv = process.env) {
  return loadConfig(
    {
      HOST: env.string('127.0.0.1'),
      GRPC_PORT: env.port(50055),
      OPS_PORT: env.port(9105),
      DATABASE_URL: env.url('postgres://switchboard:switchboard@127.0.0.1:54329/switchboard', ['postgres', 'postgresql']),
      NATS_URL: env.url('nats://127.0.0.1:42229', ['nats', 'tls']),
      KAFKA_BROKERS: env.string('127.0.0.1:19092'),
      /** Every replica joins this consumer group, so each record is handled by one of them. */
      KAFKA_GROUP_ID: env.string('notification'),
      LOG_LEVEL: env.logLevel(),
      OTEL_EXPORTER_OTLP_ENDPOINT: env.optionalString(),
      SHUTDOWN_DEADLINE_MS: env.positiveInt(10_000),
      /** Largest page a list call returns. */
      MAX_PAGE_SIZE: env.positiveInt(200),
      /** Messages older than this when consumed notify nobody (a new consumer group reads the log from its start). */
      MAX_EVENT_AGE_MS: env.positiveInt(24 * 3600 * 1000),
    },
    source,
  );
}

export type NotificationConfig = ReturnType<typeof readConfig>;
