import { env, loadConfig } from '@switchboard/config';

export function readConfig(source: NodeJS.ProcessEnv = process.env) {
  return loadConfig(
    {
      HOST: env.string('127.0.0.1'),
      GRPC_PORT: env.port(50054),
      OPS_PORT: env.port(9104),
      DATABASE_URL: env.url('postgres://switchboard:switchboard@127.0.0.1:54329/switchboard', ['postgres', 'postgresql']),
      NATS_URL: env.url('nats://127.0.0.1:42229', ['nats', 'tls']),
      LOG_LEVEL: env.logLevel(),
      OTEL_EXPORTER_OTLP_ENDPOINT: env.optionalString(),
      SHUTDOWN_DEADLINE_MS: env.positiveInt(10_000),
      /** Largest page a list call returns. */
      MAX_PAGE_SIZE: env.positiveInt(200),
      /** The tenant-wide member limit of a room; a room's own limit may only be lower. */
      MAX_ROOM_MEMBERS: env.positiveInt(10_000),
      /** Most members CreateRoom adds at once. */
      MAX_INITIAL_MEMBERS: env.positiveInt(500),
    },
    source,
  );
}

export type RoomConfig = ReturnType<typeof readConfig>;
