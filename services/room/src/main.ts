import { path } from './paths';
import { GrpcServer } from '@switchboard/grpc';
import { createLogger } from '@switchboard/logging';
import { connectNats } from '@switchboard/nats';
import { createPool, migrate } from '@switchboard/postgres';
import { roomV1 } from '@switchboard/proto';
import { Lifecycle, OpsServer, runMain, startupStep } from '@switchboard/runtime';
import { startTelemetry } from '@switchboard/telemetry';
import { readConfig } from './config';
import { MembershipEvents } from './events';
import { roomService } from './service';
import { RoomStore } from './store';

const SERVICE = 'room';

async function main(): Promise<void> {
  // 1. Configuration, validated before anything starts.
  const config = readConfig();
  const logger = createLogger({ service: SERVICE, level: config.LOG_LEVEL });
  const lifecycle = new Lifecycle({ logger, shutdownDeadlineMs: config.SHUTDOWN_DEADLINE_MS });
  lifecycle.handleSignals();

  // 2. Telemetry.
  const telemetry = startTelemetry({ serviceName: SERVICE, otlpEndpoint: config.OTEL_EXPORTER_OTLP_ENDPOINT });
  lifecycle.onShutdown('telemetry', () => telemetry.shutdown());

  // 3. Clients: PostgreSQL (schema migrated first), NATS.
  await startupStep(logger, 'PostgreSQL', () =>
    migrate({ databaseUrl: config.DATABASE_URL, schema: SERVICE, dir: path.migrations, log: (line) => logger.debug(line) }),
  );
  const pool = createPool({
    connectionString: config.DATABASE_URL,
    applicationName: SERVICE,
    schema: SERVICE,
    onError: (err) => logger.warn({ err }, 'idle PostgreSQL connection failed'),
  });
  lifecycle.onShutdown('postgres', () => pool.end());
  const nats = await startupStep(logger, 'NATS', () =>
    connectNats({ servers: config.NATS_URL, name: SERVICE, onStatus: (event) => logger.info({ event }, 'nats connection') }),
  );
  lifecycle.onShutdown('nats', () => nats.drain());

  // 4. Background runners: none yet.

  // 5. Servers: gRPC for the mesh, ops HTTP for probes and metrics.
  const grpc = new GrpcServer({ logger });
  const store = new RoomStore(pool, config.MAX_ROOM_MEMBERS);
  grpc.addService('switchboard.room.v1.RoomService', roomV1.RoomServiceService, roomService(store, new MembershipEvents(nats, logger), config, logger));
  const grpcPort = await grpc.listen(config.HOST, config.GRPC_PORT);
  lifecycle.onShutdown('grpc', () => grpc.shutdown(config.SHUTDOWN_DEADLINE_MS / 2));
  const ops = new OpsServer({
    host: config.HOST,
    port: config.OPS_PORT,
    logger,
    metricsHandler: telemetry.metricsHandler,
    checks: [
      { name: 'postgres', check: () => pool.query('SELECT 1') },
      { name: 'nats', check: () => (nats.isClosed() ? Promise.reject(new Error('closed')) : nats.flush()) },
    ],
  });
  const opsPort = await ops.start();
  lifecycle.onShutdown('ops', async () => {
    ops.setDraining();
    await ops.stop();
  });
  grpc.setServing(true);
  logger.info({ grpcPort, opsPort }, 'room is serving');
}

runMain(main);
