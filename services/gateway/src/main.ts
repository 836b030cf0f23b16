import { createClient, GrpcServer } from '@switchboard/grpc';
import { createLogger } from '@switchboard/logging';
import { connectNats, newEnvelope, publishEnvelope, SYSTEM_SUBJECTS } from '@switchboard/nats';
import { gatewayV1, messagingV1 } from '@switchboard/proto';
import { Lifecycle, OpsServer, runMain, startupStep } from '@switchboard/runtime';
import { startTelemetry } from '@switchboard/telemetry';
import { gatewayAdminService } from './admin';
import { TokenVerifier } from './auth';
import { readConfig } from './config';
import { Fanout } from './fanout';
import { FrameHandler } from './frames';
import { GatewayServer } from './server';

const SERVICE = 'gateway';

async function main(): Promise<void> {
  // 1. Configuration.
  const config = readConfig();
  const logger = createLogger({ service: SERVICE, level: config.LOG_LEVEL, base: { gateway: config.GATEWAY_ID } });
  const lifecycle = new Lifecycle({ logger, shutdownDeadlineMs: config.SHUTDOWN_DEADLINE_MS });
  lifecycle.handleSignals();

  // 2. Telemetry.
  const telemetry = startTelemetry({ serviceName: SERVICE, otlpEndpoint: config.OTEL_EXPORTER_OTLP_ENDPOINT, attributes: { 'service.instance.id': config.GATEWAY_ID } });
  lifecycle.onShutdown('telemetry', () => telemetry.shutdown());

  // 3. Clients: NATS and the services behind the gateway.
  const nats = await startupStep(logger, 'NATS', () =>
    connectNats({ servers: config.NATS_URL, name: `${SERVICE}-${config.GATEWAY_ID}`, onStatus: (event) => logger.info({ event }, 'nats connection') }),
  );
  lifecycle.onShutdown('nats', () => nats.drain());
  const messaging = createClient(messagingV1.MessagingServiceClient, config.MESSAGING_ADDR);
  lifecycle.onShutdown('messaging client', () => messaging.close());

  // 4. Background runners: the heartbeat that tells the mesh this gateway lives.
  const fanout = new Fanout(nats, messaging, logger, telemetry.meter.createCounter('gateway_messages_delivered_total', { description: 'Messages written to sockets' }), config.BACKEND_DEADLINE_MS);
  const server = new GatewayServer(config, new TokenVerifier(config), fanout, new FrameHandler(messaging, logger, config.BACKEND_DEADLINE_MS, telemetry.meter), logger, telemetry.meter);
  const beat = () =>
    publishEnvelope(
      nats,
      SYSTEM_SUBJECTS.gatewayHeartbeat,
      newEnvelope('sys', { $case: 'gatewayHeartbeat', value: { gatewayId: config.GATEWAY_ID, connections: server.connections.size, draining: server.isDraining, intervalMs: config.GATEWAY_HEARTBEAT_MS } }),
    );
  const heartbeat = setInterval(beat, config.GATEWAY_HEARTBEAT_MS);
  lifecycle.onShutdown('heartbeat', () => clearInterval(heartbeat));

  // 5. Servers: gRPC admin, ops, then WebSockets last so clients arrive to a ready gateway.
  const grpc = new GrpcServer({ logger });
  grpc.addService('switchboard.gateway.v1.GatewayAdminService', gatewayV1.GatewayAdminServiceService, gatewayAdminService(server, config, logger));
  const grpcPort = await grpc.listen(config.HOST, config.GRPC_PORT);
  lifecycle.onShutdown('grpc', () => grpc.shutdown(2000));
  const ops = new OpsServer({
    host: config.HOST,
    port: config.OPS_PORT,
    logger,
    metricsHandler: telemetry.metricsHandler,
    checks: [{ name: 'nats', check: () => (nats.isClosed() ? Promise.reject(new Error('closed')) : nats.flush()) }],
  });
  const opsPort = await ops.start();
  lifecycle.onShutdown('ops', () => ops.stop());
  const wsPort = await server.listen();
  lifecycle.onShutdown('websockets', () => server.close());
  // Registered last so it runs first on SIGTERM: drain while everything behind it still works.
  lifecycle.onShutdown('drain', async () => {
    ops.setDraining();
    beat();
    await server.drain(Math.floor(config.SHUTDOWN_DEADLINE_MS * 0.7));
  });
  grpc.setServing(true);
  logger.info({ wsPort, grpcPort, opsPort, url: `ws://${config.HOST}:${wsPort}/ws` }, 'gateway is serving');
}

runMain(main);
