import { Metadata, type CallOptions as GrpcCallOptions, type Client, type ClientUnaryCall, type ServiceError } from '@grpc/grpc-js';
import type { commonV1 } from '@switchboard/proto';
import { injectTraceContext } from '@switchboard/telemetry';
import { fromServiceError } from './errors';
import { rolesToMetadata, tenantToMetadata } from './tenant';
import { channelCredentials } from './tls';

export interface CallOptions {
  /** The tenant context the call acts for. */
  context: commonV1.TenantContext;
  /** The acting user's roles from their token (see rolesToMetadata). */
  roles?: readonly string[];
  /** Default 5 s: every call has a deadline. */
  deadlineMs?: number;
}

type UnaryMethod<Req, Res> = (
  request: Req,
  metadata: Metadata,
  options: Partial<GrpcCallOptions>,
  callback: (error: ServiceError | null, response: Res) => void,
) => ClientUnaryCall;

/** A generated grpc-js client's unary methods as promise-returning functions that throw typed errors. */
export type PromiseClient<C> = {
  [K in keyof C as C[K] extends UnaryMethod<any, any> ? K : never]: C[K] extends UnaryMethod<infer Req, infer Res>
    ? (request: Req, options: CallOptions) => Promise<Res>
    : never;
} & { close(): void; raw: C };

const DEFAULT_DEADLINE_MS = 5000;

/** What every call carries: the tenant context (with the internal proof), the roles and the active trace context. */
export function callMetadata(options: Pick<CallOptions, 'context' | 'roles'>): Metadata {
  const metadata = rolesToMetadata(options.roles ?? [], tenantToMetadata(options.context));
  for (const [key, value] of Object.entries(injectTraceContext({}))) metadata.set(key, value);
  return metadata;
}

/**
 * Creates a client for a generated service. Each call carries the tenant
 * metadata and the trace context, has a deadline, and rejects with a
 * SwitchboardError mapped from the status.
 */
export function createClient<C extends Client>(
  Ctor: new (address: string, creds: ReturnType<typeof channelCredentials>, options?: object) => C,
  address: string,
): PromiseClient<C> {
  const client = new Ctor(address, channelCredentials(), {
    'grpc.keepalive_time_ms': 30_000,
    'grpc.keepalive_timeout_ms': 10_000,
    'grpc.enable_retries': 1,
  });
  return new Proxy({} as PromiseClient<C>, {
    get(_target, prop) {
      if (prop === 'close') return () => client.close();
      if (prop === 'raw') return client;
      const method = (client as unknown as Record<string | symbol, unknown>)[prop];
      if (typeof method !== 'function') return undefined;
      return (request: unknown, options: CallOptions) =>
        new Promise((resolve, reject) => {
          const metadata = callMetadata(options);
          const deadline = Date.now() + (options.deadlineMs ?? DEFAULT_DEADLINE_MS);
          (method as UnaryMethod<unknown, unknown>).call(client, request, metadata, { deadline }, (error, response) => {
            if (error) reject(fromServiceError(error));
            else resolve(response);
          });
        });
    },
  });
}
