import { type handleUnaryCall, type Metadata, type ServerUnaryCall } from '@grpc/grpc-js';
import { asSwitchboardError, ErrorCode, PermissionDeniedError } from '@switchboard/errors';
import type { Logger } from '@switchboard/logging';
import type { commonV1 } from '@switchboard/proto';
import { extractTraceContext, SpanKind, withSpan } from '@switchboard/telemetry';
import { toServiceError } from './errors';
import { tenantFromMetadata } from './tenant';

export interface CallContext {
  /** The caller's tenant, from metadata; every resource touched must belong to it. */
  tenant: commonV1.TenantContext;
  metadata: Metadata;
  /** Milliseconds left before the caller's deadline (Infinity when it set none). */
  deadlineMs(): number;
  logger: Logger;
}

export type UnaryHandler<Req, Res> = (request: Req, ctx: CallContext) => Promise<Res>;

function metadataCarrier(metadata: Metadata): Record<string, string> {
  const carrier: Record<string, string> = {};
  for (const [key, value] of Object.entries(metadata.getMap())) {
    if (typeof value === 'string') carrier[key] = value;
  }
  return carrier;
}

/**
 * Wraps a promise-returning handler as a grpc-js unary handler: continues the
 * caller's trace, reads and checks the tenant context (a body whose
 * `context.tenantId` differs from the metadata's is refused), maps typed
 * errors to status codes in one place, and logs what was not expected.
 */
export function unary<Req, Res>(method: string, logger: Logger, handler: UnaryHandler<Req, Res>): handleUnaryCall<Req, Res> {
  return (call: ServerUnaryCall<Req, Res>, callback) => {
    const parent = extractTraceContext(metadataCarrier(call.metadata));
    void withSpan(method, { kind: SpanKind.SERVER, parent, attributes: { 'rpc.system': 'grpc', 'rpc.method': method } }, async () => {
      try {
        const tenant = tenantFromMetadata(call.metadata);
        const bodyContext = (call.request as { context?: commonV1.TenantContext } | null)?.context;
        if (bodyContext?.tenantId && bodyContext.tenantId !== tenant.tenantId) {
          throw new PermissionDeniedError('request context names another tenant than the call metadata', { field: 'context.tenant_id' });
        }
        const deadline = call.getDeadline();
        const ctx: CallContext = {
          tenant,
          metadata: call.metadata,
          deadlineMs: () => (deadline instanceof Date ? deadline.getTime() - Date.now() : deadline === Infinity ? Infinity : Number(deadline) - Date.now()),
          logger: logger.child({ method, tenant: tenant.tenantId }),
        };
        callback(null, await handler(call.request, ctx));
      } catch (thrown) {
        const err = asSwitchboardError(thrown);
        if (err.code === ErrorCode.ERROR_CODE_INTERNAL) logger.error({ err: thrown, method }, 'request failed');
        callback(toServiceError(err));
      }
    });
  };
}
