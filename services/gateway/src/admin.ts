import { PermissionDeniedError } from '@switchboard/errors';
import { unary } from '@switchboard/grpc';
import { assertSafeId } from '@switchboard/ids';
import type { Logger } from '@switchboard/logging';
import type { gatewayV1 } from '@switchboard/proto';
import type { GatewayConfig } from './config';
import { CLOSE } from './connection';
import type { EventBroadcast } from './events';
import type { GatewayServer } from './server';

/** The gateway's internal admin API. */
export function gatewayAdminService(server: GatewayServer, config: GatewayConfig, logger: Logger, events: EventBroadcast): Partial<gatewayV1.GatewayAdminServiceServer> {
  return {
    publishEvent: unary('PublishEvent', logger, async (req: gatewayV1.PublishEventRequest, ctx) => {
      // Platform systems broadcast; a user's context (a client's token) never does.
      if (!ctx.tenant.internal) throw new PermissionDeniedError('publishing events is for internal callers only', { field: 'context.internal' });
      return events.publish(ctx.tenant.tenantId, req, ctx.deadlineMs());
    }),
    getStats: unary('GetStats', logger, async (_req: gatewayV1.GetStatsRequest, ctx) => {
      // Every call acts within one tenant, internal callers too: no tenant sees another's figures.
      const mine = [...server.connections].filter((c) => c.tenantId === ctx.tenant.tenantId);
      const byTenant = new Map<string, number>();
      for (const connection of mine) byTenant.set(connection.tenantId, (byTenant.get(connection.tenantId) ?? 0) + 1);
      return {
        gatewayId: config.GATEWAY_ID,
        connections: mine.length,
        tenants: [...byTenant].map(([tenantId, connections]) => ({ tenantId, connections })),
        draining: server.isDraining,
      };
    }),
    disconnectUser: unary('DisconnectUser', logger, async (req: gatewayV1.DisconnectUserRequest, ctx) => {
      const userId = assertSafeId(req.userId, 'user_id');
      const targets = server.connectionsOf(ctx.tenant.tenantId, userId);
      for (const connection of targets) connection.close(CLOSE.revoked, req.reason.slice(0, 100) || 'session revoked');
      return { closed: targets.length };
    }),
  };
}
