import { createClient, GrpcServer } from '@switchboard/grpc';
import { inboxPrefixOf, newEnvelope, publishEnvelope, SYSTEM_SUBJECTS } from '@switchboard/nats';
import { ConnectionSlots, limitDefaults, LocalRate, SharedRateLimits, TenantLimitStore, UsageCounters } from '@switchboard/limits';
import { gatewayV1, messagingV1, presenceV1, roomV1 } from '@switchboard/proto';
import { openNats, openRedis, runMain, ServiceHost } from '@switchboard/runtime';
import { HotCounter } from '@switchboard/telemetry';
import { gatewayAdminService } from './admin';
import { EventBroadcast } from './events';
import { TokenVerifier } from './auth';
import { readConfig } from './config';
import { Fanout } from './fanout';
import { FrameHandler } from './frames';
import { GatewayLimits } from './limits';
import { Rooms } from './rooms';
import { PresenceLink } from './presence';
import { GatewayServer } from './server';
import { tenantAdminService } from './tenant-admin';

const SERVICE = 'gateway';

async function main(): Promise<void> {
  // 1. Configuration, validated before anything starts; then logs, signals, telemetry.
  const config = readConfig();
  const host = ServiceHost.start(SERVICE, config, { logFields: { gateway: config.GATEWAY_ID }, telemetryAttributes: { 'service.instance.id': config.GATEWAY_ID } });
  const { logger, telemetry } = host;

  // 2. Clients: NATS and the services behind the gateway.
  const nats = await openNats(host, { url: config.NATS_URL, seedFile: config.NATS_NKEY_SEED_FILE, connectionName: `${SERVICE}-${config.GATEWAY_ID}`, inboxPrefix: inboxPrefixOf('gateway') });
  // Broadcast events: the JetStream stream is created or brought to this gateway's settings, then tailed.
  const events = await host.dependency('NATS event stream', async () => {
    const broadcast = new EventBroadcast(nats, config, logger, telemetry.meter);
    await broadcast.start();
    return broadcast;
  }, { close: (broadcast) => broadcast.stop() });
  // Tenant limits, shared budgets and usage live in Redis, shared by every gateway.
  const redis = await openRedis(host, { url: config.REDIS_URL, connectionName: `${SERVICE}-${config.GATEWAY_ID}` });
  const slots = new ConnectionSlots(redis);
  const limits = new GatewayLimits(
    new TenantLimitStore(redis, limitDefaults(config), config.TENANT_LIMITS_CACHE_MS),
    new SharedRateLimits(redis),
    slots,
    new UsageCounters(redis),
    new LocalRate(config.CONNECTION_FRAMES_PER_SECOND),
    new LocalRate(config.CONNECTION_FRAMES_PER_SECOND),
    config,
    logger,
    telemetry.meter,
  );
  const messaging = createClient(messagingV1.MessagingServiceClient, config.MESSAGING_ADDR);
  host.lifecycle.onShutdown('messaging client', () => messaging.close());
  const room = createClient(roomV1.RoomServiceClient, config.ROOM_ADDR);
  host.lifecycle.onShutdown('room client', () => room.close());
  const rooms = new Rooms(room);
  const presence = createClient(presenceV1.PresenceServiceClient, config.PRESENCE_ADDR);
  host.lifecycle.onShutdown('presence client', () => presence.close());

  // 3. Background runners: the heartbeat that tells the mesh this gateway lives.
  const fanout = new Fanout(nats, messaging, logger, new HotCounter(telemetry.meter, 'gateway_messages_delivered_total', { description: 'Messages written to sockets' }), config.BACKEND_DEADLINE_MS, config.RECEIPT_COALESCE_MS, rooms);
  const frames = new FrameHandler(messaging, logger, config.BACKEND_DEADLINE_MS, telemetry.meter, rooms, {
    maxPendingSends: config.MAX_PENDING_SENDS,
    retryAfterMs: config.OVERLOAD_RETRY_AFTER_MS,
  }, { maxCalls: config.MESSAGING_SEND_CALLS, maxBatch: config.MESSAGING_SEND_BATCH_MAX });
  host.lifecycle.onShutdown('messaging send streams', () => frames.close());
  const server = new GatewayServer(config, new TokenVerifier(config), fanout, frames, logger, telemetry.meter, limits);
  const presenceLink = new PresenceLink(presence, nats, fanout, () => server.connections, config, logger, room);
  server.presence = presenceLink;
  frames.presence = presenceLink;
  server.events = events;
  frames.events = events;
  fanout.hooks = presenceLink;
  await presenceLink.forgetPreviousLife();
  const beat = () =>
    publishEnvelope(
      nats,
      SYSTEM_SUBJECTS.gatewayHeartbeat,
      newEnvelope('sys', { $case: 'gatewayHeartbeat', value: { gatewayId: config.GATEWAY_ID, connections: server.connections.size, draining: server.isDraining, intervalMs: config.GATEWAY_HEARTBEAT_MS } }),
    );
  let heartbeat: NodeJS.Timeout | undefined;
  host.runner('heartbeat', () => (heartbeat = setInterval(beat, config.GATEWAY_HEARTBEAT_MS)), () => clearInterval(heartbeat));

  // 4. Servers: gRPC admin, then WebSockets last so clients arrive to a ready
  // gateway; on SIGTERM the WebSockets drain first while everything behind them still works.
  const grpc = new GrpcServer({ logger });
  grpc.addService('switchboard.gateway.v1.GatewayAdminService', gatewayV1.GatewayAdminServiceService, { ...gatewayAdminService(server, config, logger, events), ...tenantAdminService(limits, slots, logger) });
  await host.serve(grpc.servable(config.HOST, config.GRPC_PORT, 2000), {
    name: 'websockets',
    start: async () => {
      presenceLink.start();
      const wsPort = await server.listen();
      return { wsPort, url: `${server.scheme}://${config.HOST}:${wsPort}/ws` };
    },
    stop: async () => {
      await server.drain(Math.floor(config.SHUTDOWN_DEADLINE_MS * 0.7), beat);
      await server.close();
      await presenceLink.stop();
    },
  });
}

runMain(main);
