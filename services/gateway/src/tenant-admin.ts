import { PermissionDeniedError, InvalidArgumentError } from '@switchboard/errors';
import { unary, type CallContext } from '@switchboard/grpc';
import { LIMIT_NAMES, type ConnectionSlots, type TenantLimits } from '@switchboard/limits';
import type { Logger } from '@switchboard/logging';
import type { gatewayV1 } from '@switchboard/proto';
import type { GatewayLimits } from './limits';

/** Proto field names of TenantLimits, as `reset` names them. */
const PROTO_NAMES: Record<string, (typeof LIMIT_NAMES)[number]> = {
  max_connections: 'maxConnections',
  messages_per_second_per_user: 'messagesPerSecondPerUser',
  messages_per_second_per_tenant: 'messagesPerSecondPerTenant',
  bytes_per_second_per_tenant: 'bytesPerSecondPerTenant',
  max_frame_bytes: 'maxFrameBytes',
  max_room_size: 'maxRoomSize',
};

const NO_LIMITS: TenantLimits = { maxConnections: 0, messagesPerSecondPerUser: 0, messagesPerSecondPerTenant: 0, bytesPerSecondPerTenant: 0, maxFrameBytes: 0, maxRoomSize: 0 };

/** Limits and usage are for operators and platform systems: a user's context never reaches them. */
function operator(ctx: CallContext): string {
  if (!ctx.tenant.internal) throw new PermissionDeniedError('tenant limits and usage are for internal callers only', { field: 'context.internal' });
  return ctx.tenant.tenantId;
}

/** The tenant-limits part of the gateway's admin API (GetTenantLimits, SetTenantLimits, GetTenantUsage). */
export function tenantAdminService(limits: GatewayLimits, slots: ConnectionSlots, logger: Logger): Partial<gatewayV1.GatewayAdminServiceServer> {
  const describe = async (tenantId: string): Promise<gatewayV1.GetTenantLimitsResponse> => {
    const overrides = await limits.store.overrides(tenantId);
    return { tenantId, defaults: limits.store.defaults, overrides: { ...NO_LIMITS, ...overrides }, effective: { ...limits.store.defaults, ...overrides } };
  };
  return {
    getTenantLimits: unary('GetTenantLimits', logger, async (_req: gatewayV1.GetTenantLimitsRequest, ctx) => describe(operator(ctx))),

    setTenantLimits: unary('SetTenantLimits', logger, async (req: gatewayV1.SetTenantLimitsRequest, ctx) => {
      const tenantId = operator(ctx);
      const changes: Partial<TenantLimits> = {};
      for (const name of LIMIT_NAMES) {
        const value = req.overrides?.[name] ?? 0;
        if (value > 0) changes[name] = value;
      }
      for (const name of req.reset) {
        const limit = PROTO_NAMES[name];
        if (!limit) throw new InvalidArgumentError(`unknown limit ${JSON.stringify(name.slice(0, 64))}; one of ${Object.keys(PROTO_NAMES).join(', ')}`, { field: 'reset' });
        if (changes[limit] !== undefined) throw new InvalidArgumentError(`${name} is both set and reset`, { field: 'reset' });
        changes[limit] = 0;
      }
      await limits.store.set(tenantId, changes);
      ctx.logger.info({ changes }, 'tenant limits changed');
      return { limits: await describe(tenantId) };
    }),

    getTenantUsage: unary('GetTenantUsage', logger, async (_req: gatewayV1.GetTenantUsageRequest, ctx) => {
      const tenantId = operator(ctx);
      const [usage, connections] = await Promise.all([limits.usage.read(tenantId), slots.held(tenantId)]);
      const count = (field: string) => usage.counters[field] ?? 0;
      return {
        tenantId,
        connections,
        connectionsOpened: count('connectionsOpened'),
        frames: count('frames'),
        messages: count('messages'),
        bytesIn: count('bytesIn'),
        bytesOut: count('bytesOut'),
        rejects: Object.entries(usage.counters)
          .filter(([field]) => field.startsWith('rejected:'))
          .map(([field, value]) => ({ reason: field.slice('rejected:'.length), count: value })),
        since: usage.since,
      };
    }),
  };
}
