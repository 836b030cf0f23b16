import { GrpcServer } from '@switchboard/grpc';
import { connectNats, natsReady } from '@switchboard/nats';
import { openDatabase } from '@switchboard/postgres';
import { roomV1 } from '@switchboard/proto';
import { runMain, ServiceHost } from '@switchboard/runtime';
import { readConfig } from './config';
import { MembershipEvents } from './events';
import { path } from './paths';
import { roomService } from './service';
import { RoomStore } from './store';

const SERVICE = 'room';

async function main(): Promise<void> {
  // 1. Configuration, validated before anything starts; then logs, signals, telemetry.
  const config = readConfig();
  const host = ServiceHost.start(SERVICE, config);
  const { logger } = host;

  // 2. Clients: PostgreSQL (schema migrated first), NATS.
  const pool = await host.dependency(
    'PostgreSQL',
    () =>
      openDatabase({
        connectionString: config.DATABASE_URL,
        applicationName: SERVICE,
        schema: SERVICE,
        migrationsDir: path.migrations,
        log: (line) => logger.debug(line),
        onError: (err) => logger.warn({ err }, 'idle PostgreSQL connection failed'),
      }),
    { close: (p) => p.end(), ready: (p) => p.query('SELECT 1') },
  );
  const nats = await host.dependency(
    'NATS',
    () => connectNats({ servers: config.NATS_URL, name: SERVICE, onStatus: (event) => logger.info({ event }, 'nats connection') }),
    { close: (nc) => nc.drain(), ready: natsReady },
  );

  // 3. Background runners: none yet.

  // 4. Servers.
  const grpc = new GrpcServer({ logger });
  const store = new RoomStore(pool, config.MAX_ROOM_MEMBERS);
  grpc.addService('switchboard.room.v1.RoomService', roomV1.RoomServiceService, roomService(store, new MembershipEvents(nats, logger), config, logger));
  await host.serve(grpc.servable(config.HOST, config.GRPC_PORT, config.SHUTDOWN_DEADLINE_MS / 2));
}

runMain(main);
