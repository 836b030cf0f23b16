import { status, type handleServerStreamingCall, type handleUnaryCall, type Metadata, type ServerUnaryCall, type ServerWritableStream } from '@grpc/grpc-js';
import { asSwitchboardError, ErrorCode, PermissionDeniedError } from '@switchboard/errors';
import { assertSafeId } from '@switchboard/ids';
import type { Logger } from '@switchboard/logging';
import type { commonV1 } from '@switchboard/proto';
import { extractTraceContext, LATENCY_BUCKETS_SECONDS, metrics, SpanKind, withSpan, type Histogram } from '@switchboard/telemetry';
import { grpcStatusFor, toServiceError } from './errors';
import { verifyInternalCaller } from './internal';
import { checkedRoles, rolesFromMetadata, tenantFromMetadata } from './tenant';

export interface CallContext {
  /** The caller's tenant, from metadata; every resource touched must belong to it. */
  tenant: commonV1.TenantContext;
  /** The acting user's roles from their token; empty for internal callers. */
  roles: string[];
  metadata: Metadata;
  /** Milliseconds left before the caller's deadline (Infinity when it set none). */
  deadlineMs(): number;
  logger: Logger;
}

export type UnaryHandler<Req, Res> = (request: Req, ctx: CallContext) => Promise<Res>;

let duration: Histogram | undefined;

/** Created on first use, after the service's telemetry installed the meter provider. */
function rpcDuration(): Histogram {
  duration ??= metrics.getMeter('switchboard-grpc').createHistogram('rpc_server_duration_seconds', {
    description: 'gRPC server call latency by method and status code',
    advice: { explicitBucketBoundaries: LATENCY_BUCKETS_SECONDS },
  });
  return duration;
}

/**
 * Records one call's time in rpc_server_duration_seconds; also one item of a
 * batch call under the method it stands for (`labels` tell it apart, e.g.
 * via="SendMessages"), so a send's handler time reads the same either way.
 */
export function observeRpc(method: string, code: status, seconds: number, labels: Record<string, string> = {}): void {
  rpcDuration().record(seconds, { ...labels, method, code: status[code] ?? String(code) });
}

/** A user's item inside an internal batch call: who it acts as, as the calling service verified from the user's token. */
export interface BatchItemCaller {
  userId: string;
  deviceId: string;
  roles: readonly string[];
  /** Milliseconds the user still waits (0: the call's own deadline). */
  deadlineMs: number;
}

/**
 * The context one item of an internal batch call runs in: the call's tenant
 * (never the item's choice), acting as the item's user exactly as a
 * SendMessage from that user would (not internal), with the item's roles and
 * deadline. Only an internal caller (its proof checked by `unary`) may speak
 * for users this way; anyone else is refused.
 */
export function batchItemContext(ctx: CallContext, item: BatchItemCaller): CallContext {
  if (!ctx.tenant.internal) throw new PermissionDeniedError('only internal callers may send on behalf of other users in a batch', { field: 'context.internal' });
  const userId = assertSafeId(item.userId, 'items.user_id');
  const deviceId = item.deviceId ? assertSafeId(item.deviceId, 'items.device_id') : '';
  const deadlineAt = item.deadlineMs > 0 ? Date.now() + item.deadlineMs : undefined;
  return {
    tenant: { tenantId: ctx.tenant.tenantId, userId, deviceId, internal: false },
    roles: checkedRoles(item.roles),
    metadata: ctx.metadata,
    deadlineMs: () => Math.min(ctx.deadlineMs(), deadlineAt === undefined ? Infinity : deadlineAt - Date.now()),
    logger: ctx.logger,
  };
}

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
 * `context.tenantId` differs from the metadata's is refused, an internal
 * claim without its proof too), maps typed
 * errors to status codes in one place, and logs what was not expected.
 */
export function unary<Req, Res>(method: string, logger: Logger, handler: UnaryHandler<Req, Res>): handleUnaryCall<Req, Res> {
  return (call: ServerUnaryCall<Req, Res>, callback) => {
    const parent = extractTraceContext(metadataCarrier(call.metadata));
    const started = performance.now();
    const observe = (code: status) => observeRpc(method, code, (performance.now() - started) / 1000);
    void withSpan(method, { kind: SpanKind.SERVER, parent, attributes: { 'rpc.system': 'grpc', 'rpc.method': method } }, async () => {
      try {
        const response = await handler(call.request, callContext(call, method, logger));
        observe(status.OK);
        callback(null, response);
      } catch (thrown) {
        const err = asSwitchboardError(thrown);
        if (err.code === ErrorCode.ERROR_CODE_INTERNAL) logger.error({ err: thrown, method }, 'request failed');
        observe(grpcStatusFor(err.code));
        callback(toServiceError(err));
      }
    });
  };
}

/**
 * A server-streaming call that is only held open, as a link whose end says
 * something (a gateway's process died): the same tenant and internal-proof
 * checks as `unary`, then the handler keeps the call and ends it, or hears
 * from it ('cancelled') that the caller went away. A refused call ends at
 * once with the mapped status.
 */
export function heldOpen<Req, Res>(
  method: string,
  logger: Logger,
  handler: (request: Req, ctx: CallContext, call: ServerWritableStream<Req, Res>) => Promise<void>,
): handleServerStreamingCall<Req, Res> {
  return (call: ServerWritableStream<Req, Res>) => {
    Promise.resolve()
      .then(() => handler(call.request, callContext(call, method, logger), call))
      .catch((thrown: unknown) => {
        const err = asSwitchboardError(thrown);
        if (err.code === ErrorCode.ERROR_CODE_INTERNAL) logger.error({ err: thrown, method }, 'request failed');
        call.emit('error', toServiceError(err));
      });
  };
}

/** Reads and checks the caller's tenant context (see `unary`). */
function callContext<Req>(call: ServerUnaryCall<Req, unknown> | ServerWritableStream<Req, unknown>, method: string, logger: Logger): CallContext {
  const tenant = tenantFromMetadata(call.metadata);
  // Internal callers bypass the user checks: the claim holds only with its proof (mTLS identity or the mesh token).
  if (tenant.internal) verifyInternalCaller(call.metadata, call.getAuthContext().sslPeerCertificate);
  const bodyContext = (call.request as { context?: commonV1.TenantContext } | null)?.context;
  if (bodyContext?.tenantId && bodyContext.tenantId !== tenant.tenantId) {
    throw new PermissionDeniedError('request context names another tenant than the call metadata', { field: 'context.tenant_id' });
  }
  const deadline = call.getDeadline();
  return {
    tenant,
    roles: rolesFromMetadata(call.metadata),
    metadata: call.metadata,
    deadlineMs: () => (deadline instanceof Date ? deadline.getTime() - Date.now() : deadline === Infinity ? Infinity : Number(deadline) - Date.now()),
    logger: logger.child({ method, tenant: tenant.tenantId }),
  };
}
