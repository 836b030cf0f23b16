import { status, type handleBidiStreamingCall, type handleServerStreamingCall, type handleUnaryCall, type Metadata, type ServerDuplexStream, type ServerUnaryCall, type ServerWritableStream } from '@grpc/grpc-js';
import { asSwitchboardError, ErrorCode, InvalidArgumentError, PermissionDeniedError, type SwitchboardError } from '@switchboard/errors';
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

/** One request of a call-per-message stream (see `unaryStream`): a unary request with its id and deadline. */
export interface StreamedRequest<Req> {
  id: number;
  /** Milliseconds the request may take, as a unary call's deadline; required. */
  deadlineMs: number;
  request?: Req | undefined;
}

/** Its answer: the same id, and the unary response or the error the unary call would have failed with. */
export interface StreamedResponse<Res> {
  id: number;
  outcome?: { $case: 'response'; value: Res } | { $case: 'error'; value: ReturnType<SwitchboardError['toProto']> } | undefined;
}

/** Open call-per-message streams of this process, ended by `endStreams` when the server shuts down. */
const openStreams = new Set<() => void>();

/** Ends every open `unaryStream` once its requests in flight are answered (GrpcServer.shutdown), so a graceful shutdown is not held up by idle streams. */
export function endStreams(): void {
  for (const end of [...openStreams]) end();
}

/**
 * A bidi stream whose every request is one call of a unary handler: the
 * stream's metadata is checked once like `unary` (tenant, internal proof),
 * each request gets that context with its own deadline, the same
 * body-tenant check and the same error mapping, and is answered with its id
 * when its handler settles (requests run concurrently). What a stream saves
 * is the per-call transport work (an HTTP/2 stream, headers, metadata, a
 * deadline timer on both sides); the handler cannot tell the difference.
 * Each request's handler time is recorded under `method`. No span per
 * request: a stream outlives any one trace, and batch items carry their own
 * trace context.
 */
export function unaryStream<Req, Res>(method: string, logger: Logger, handler: UnaryHandler<Req, Res>): handleBidiStreamingCall<StreamedRequest<Req>, StreamedResponse<Res>> {
  return (call: ServerDuplexStream<StreamedRequest<Req>, StreamedResponse<Res>>) => {
    let base: CallContext;
    try {
      base = callContext(call, method, logger);
    } catch (thrown) {
      call.emit('error', toServiceError(asSwitchboardError(thrown)));
      return;
    }
    let inFlight = 0;
    let ending = false;
    let closed = false;
    const finish = () => {
      if (closed) return;
      closed = true;
      openStreams.delete(end);
      call.end();
    };
    const end = () => {
      ending = true;
      if (inFlight === 0) finish();
    };
    openStreams.add(end);
    call.on('cancelled', () => {
      closed = true;
      openStreams.delete(end);
    });
    call.on('error', () => {
      closed = true;
      openStreams.delete(end);
    });
    call.on('end', end);
    call.on('data', (streamed: StreamedRequest<Req>) => {
      if (ending) return; // after the server's end the caller hears the stream end and fails what it still waits for
      inFlight += 1;
      const started = performance.now();
      void (async (): Promise<StreamedResponse<Res>['outcome']> => {
        try {
          if (!(streamed.deadlineMs > 0)) throw new InvalidArgumentError('each streamed request needs a deadline_ms above 0', { field: 'deadline_ms' });
          const bodyContext = (streamed.request as { context?: commonV1.TenantContext } | undefined)?.context;
          if (bodyContext?.tenantId && bodyContext.tenantId !== base.tenant.tenantId) {
            throw new PermissionDeniedError('request context names another tenant than the call metadata', { field: 'context.tenant_id' });
          }
          const deadlineAt = Date.now() + streamed.deadlineMs;
          const response = await handler(streamed.request as Req, { ...base, deadlineMs: () => deadlineAt - Date.now() });
          observeRpc(method, status.OK, (performance.now() - started) / 1000);
          return { $case: 'response', value: response };
        } catch (thrown) {
          const err = asSwitchboardError(thrown);
          if (err.code === ErrorCode.ERROR_CODE_INTERNAL) logger.error({ err: thrown, method }, 'request failed');
          observeRpc(method, grpcStatusFor(err.code), (performance.now() - started) / 1000);
          return { $case: 'error', value: err.toProto() };
        }
      })().then((outcome) => {
        inFlight -= 1;
        if (!closed) call.write({ id: streamed.id, outcome });
        if (ending && inFlight === 0) finish();
      });
    });
  };
}

/** Reads and checks the caller's tenant context (see `unary`). */
function callContext<Req>(
  call: ServerUnaryCall<Req, unknown> | ServerWritableStream<Req, unknown> | ServerDuplexStream<unknown, unknown>,
  method: string,
  logger: Logger,
): CallContext {
  const tenant = tenantFromMetadata(call.metadata);
  // Internal callers bypass the user checks: the claim holds only with its proof (mTLS identity or the mesh token).
  if (tenant.internal) verifyInternalCaller(call.metadata, call.getAuthContext().sslPeerCertificate);
  const bodyContext = ('request' in call ? (call.request as { context?: commonV1.TenantContext } | null) : null)?.context;
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
