import { hostname } from 'node:os';
import { env, infraSettings, loadConfig, serviceSettings, z } from '@switchboard/config';
import { limitSettings } from '@switchboard/limits';

export const DEV_JWT_SECRET = 'switchboard-dev-secret-change-me';

export function readConfig(source: NodeJS.ProcessEnv = process.env) {
  return loadConfig(
    {
      ...serviceSettings({ grpcPort: 50051, opsPort: 9101, shutdownDeadlineMs: 30_000 }),
      ...infraSettings.nats(),
      ...infraSettings.redis(),
      ...limitSettings(),
      /** WebSocket port (path /ws). */
      PORT: env.port(8080),
      GATEWAY_ID: z.string().regex(/^[A-Za-z0-9_-]{1,64}$/, 'expected 1-64 characters of A-Z, a-z, 0-9, _ or -').default(`${hostname().replace(/[^A-Za-z0-9_-]/g, '-').slice(0, 40)}-${process.pid}`),
      MESSAGING_ADDR: env.string('127.0.0.1:50052'),
      PRESENCE_ADDR: env.string('127.0.0.1:50053'),
      /** Room: users' room operations (room_request frames). */
      ROOM_ADDR: env.string('127.0.0.1:50054'),
      /** HS256 shared secret; used when JWT_JWKS_URL is not set. */
      JWT_SECRET: env.string(DEV_JWT_SECRET),
      /** RS256/ES256 keys from a JWKS endpoint (rotated keys are picked up on their own). */
      JWT_JWKS_URL: env.optionalString(),
      /** Least time between two JWKS fetches triggered by unknown key ids (a rotated-in key waits at most this long). */
      JWT_JWKS_COOLDOWN_MS: env.positiveInt(30_000),
      JWT_ISSUER: env.optionalString(),
      JWT_AUDIENCE: env.optionalString(),
      JWT_CLOCK_TOLERANCE_S: env.positiveInt(30),
      /** Longest a fetched JWKS is trusted: a key removed from the set stops working within this. */
      JWT_JWKS_CACHE_MAX_AGE_MS: env.positiveInt(5 * 60_000),
      /** After its token expires a connection has this long to send refresh_token before it closes with 4001. */
      TOKEN_EXPIRY_GRACE_MS: env.positiveInt(30_000),
      /** PEM certificate chain and key: the WebSocket port speaks TLS 1.3 (wss://) when both are set. */
      TLS_CERT_FILE: env.optionalString(),
      TLS_KEY_FILE: env.optionalString(),
      /** A client must complete its TLS handshake and upgrade request within this (slowloris). */
      HANDSHAKE_TIMEOUT_MS: env.positiveInt(10_000),
      /** Frames one connection may send per second; beyond it RATE_LIMITED, beyond twice it close 4008. */
      CONNECTION_FRAMES_PER_SECOND: env.positiveInt(200),
      /** Bytes waiting in a connection's send buffer above which typing and presence pushes are shed. */
      SEND_BUFFER_SHED_BYTES: env.positiveInt(256 * 1024),
      /** Above this every push is dropped, the client's frames wait unread, and it is told to resync when it catches up. */
      SEND_BUFFER_MAX_BYTES: env.positiveInt(1024 * 1024),
      /** Tenants always reported by name in per-tenant metrics; others take the free places up to TENANT_METRIC_LIMIT, then "(other)". */
      METRICS_TENANTS: env.list([]),
      TENANT_METRIC_LIMIT: env.positiveInt(20),
      /** Origins allowed at the handshake (browser clients); empty allows any. */
      ALLOWED_ORIGINS: env.list([]),
      /**
       * Offer permessage-deflate (clients choose). Off by default: measured at
       * ~95 MB per 1,000 connections once used, even bounded as below
       * (docs/benchmarks.md); turn on where bandwidth costs more than memory.
       */
      WS_COMPRESSION: env.boolean(false),
      /** Frames smaller than this are sent uncompressed. */
      WS_COMPRESSION_THRESHOLD_BYTES: env.positiveInt(1024),
      /** zlib window (2^bits bytes) kept per compressing connection: 9-15; smaller is less memory, less compression. */
      WS_COMPRESSION_WINDOW_BITS: z.coerce.number().int().min(9).max(15).default(10),
      /** Largest frame accepted; larger ones close the connection with 1009. */
      MAX_FRAME_BYTES: env.positiveInt(64 * 1024),
      HEARTBEAT_INTERVAL_MS: env.positiveInt(25_000),
      /** How often this gateway tells the mesh it is alive. */
      GATEWAY_HEARTBEAT_MS: env.positiveInt(250),
      /** How often this gateway renews its presence lease and reports its connections' activity, in one call (RenewGateway, or RefreshLeases). */
      PRESENCE_REFRESH_MS: env.positiveInt(5000),
      /**
       * Every this many refreshes the call (RefreshLeases) lists every
       * connection, for presence to reconcile (register what it lost, drop what
       * this gateway no longer has); the others (RenewGateway) carry only the
       * activity since the previous one. A
       * resync request, a failed registration or a failed detach makes the next
       * refresh a full one.
       */
      PRESENCE_FULL_REFRESH_EVERY: env.positiveInt(6),
      /** Most closed connections one DisconnectDevices call carries; more closing at once go in calls one after another. */
      PRESENCE_DETACH_BATCH: env.positiveInt(1000),
      /** Presence changes to one connection within this window go out as one frame. */
      PRESENCE_COALESCE_MS: env.positiveInt(100),
      /** Conversations with more members than this give occupancy counts instead of per-member presence. */
      PRESENCE_OCCUPANCY_THRESHOLD: env.positiveInt(50),
      /** Clients are told to reconnect within this window, spread at random. */
      RECONNECT_JITTER_MS: env.positiveInt(5000),
      /** Pushes to one connection within this window leave as one WebSocket message (0: within one event-loop turn). */
      FRAME_COALESCE_MS: z.coerce.number().int().min(0).max(50).default(2),
      /** Receipt updates to one connection within this window go out as one frame. */
      RECEIPT_COALESCE_MS: env.positiveInt(100),
      /** Deadline for the gRPC calls a frame makes. */
      BACKEND_DEADLINE_MS: env.positiveInt(5000),
      /**
       * Sends of this process waiting for messaging at once. Beyond it a send
       * is refused at once with OVERLOADED (load shedding) instead of joining
       * a queue that would outlast its deadline.
       */
      MAX_PENDING_SENDS: env.positiveInt(2000),
      /** The retry hint of such a refusal. */
      OVERLOAD_RETRY_AFTER_MS: env.positiveInt(500),
      /** Broadcast events (JetStream stream SB_EVENTS, set by every gateway at start): events older than this are deleted. */
      EVENT_STREAM_MAX_AGE_MS: env.positiveInt(24 * 3600_000),
      /** Bytes the event stream keeps across all tenants; above it the oldest events are deleted. */
      EVENT_STREAM_MAX_BYTES: env.positiveInt(1024 * 1024 * 1024),
      /** A PublishEvent retried with the same request_id within this window is stored once. */
      EVENT_STREAM_DUPLICATE_WINDOW_MS: env.positiveInt(2 * 60_000),
      /** Copies of the event stream in a JetStream cluster (1 on a single NATS server). */
      EVENT_STREAM_REPLICAS: z.coerce.number().int().min(1).max(5).default(1),
      /** Largest payload of one broadcast event (PublishEvent refuses larger ones). */
      EVENT_MAX_PAYLOAD_BYTES: env.positiveInt(16 * 1024),
      /** Event patterns one connection may subscribe at once (subscribe_events beyond it is QUOTA_EXCEEDED). */
      EVENT_SUBSCRIPTIONS_PER_CONNECTION: env.positiveInt(32),
      /** Stored events one subscribe_events may replay; a replay_after_seq further back is refused with FAILED_PRECONDITION. */
      EVENT_REPLAY_MAX_EVENTS: env.positiveInt(1000),
      /**
       * SendMessages calls to messaging in flight at once. Sends arriving
       * while they run leave together in the next call (one batch per
       * tenant), so under load a send costs an item, not a gRPC call.
       */
      MESSAGING_SEND_CALLS: env.positiveInt(8),
      /** Most sends in one SendMessages call (messaging accepts up to 1,000). */
      MESSAGING_SEND_BATCH_MAX: z.coerce.number().int().min(1).max(1000).default(256),
    },
    source,
  );
}

export type GatewayConfig = ReturnType<typeof readConfig>;
