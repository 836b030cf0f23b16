import { readFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type RequestListener, type Server } from 'node:http';
import { createServer as createTlsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import type { Duplex } from 'node:stream';
import { WebSocketServer, type RawData, type WebSocket } from 'ws';
import { SwitchboardError } from '@switchboard/errors';
import { newId } from '@switchboard/ids';
import type { Logger } from '@switchboard/logging';
import { HotCounter, type Meter } from '@switchboard/telemetry';
import { tokenFromRequest, type Identity, type TokenVerifier } from './auth';
import { decodeClientFrame, SUBPROTOCOLS, type Encoding } from './codec';
import type { GatewayConfig } from './config';
import { Coalescer } from './coalescer';
import { CLOSE, Connection } from './connection';
import type { Fanout } from './fanout';
import type { FrameHandler } from './frames';
import type { GatewayLimits, Refusal } from './limits';
import { SendBuffer } from './send-buffer';
import { refreshToken } from './session';
import { validateClientFrame } from './validate';
import { deviceFromRequest, disconnectReason, type PresenceLink } from './presence';

const WS_PATH = '/ws';
/** Tenants reported by name in gateway_tenant_connections; the others add up under "(other)", never a valid tenant id. */
const TENANT_METRIC_LIMIT = 20;

/**
 * The WebSocket side of the gateway: refuses bad handshakes before a socket
 * exists (origin, protocol version, token), keeps connections alive with
 * pings, hands frames to the FrameHandler and events from the Fanout, and
 * drains by asking clients to reconnect elsewhere.
 */
export class GatewayServer {
  readonly connections = new Set<Connection>();
  /** Open connections per tenant, kept as they open and close: a scrape reads it instead of walking every connection. */
  private readonly connectionsByTenant = new Map<string, number>();
  private readonly http: Server;
  private readonly wss: WebSocketServer;
  private heartbeat: NodeJS.Timeout | undefined;
  private limitsTick: NodeJS.Timeout | undefined;
  private readonly sendBuffer: SendBuffer;
  private draining = false;
  private readonly coalescer: Coalescer;
  private readonly rejected;
  private readonly frames;
  /** Presence registration and delivery (set by main; absent in tools that run a bare server). */
  presence: PresenceLink | undefined;
  /** Event subscriptions, dropped when a connection closes (set by main). */
  events: { detach(connection: Connection): void } | undefined;

  constructor(
    private readonly config: GatewayConfig,
    private readonly verifier: TokenVerifier,
    private readonly fanout: Fanout,
    private readonly handler: FrameHandler,
    private readonly logger: Logger,
    meter: Meter,
    private readonly limits: GatewayLimits,
  ) {
    this.http = createHttpServer(config, (_req, res) => {
      res.writeHead(426, { 'content-type': 'text/plain' }).end(`connect with a WebSocket to ${WS_PATH}\n`);
    });
    this.sendBuffer = new SendBuffer(
      config.SEND_BUFFER_SHED_BYTES,
      config.SEND_BUFFER_MAX_BYTES,
      meter.createCounter('gateway_pushes_dropped_total', { description: 'Pushes dropped for slow readers: shed (typing, presence over the shed mark) or behind (over the high-water mark, resync follows)' }),
    );
    this.wss = new WebSocketServer({
      noServer: true,
      maxPayload: config.MAX_FRAME_BYTES,
      // The version was chosen (and checked) before the upgrade; ws only echoes it.
      handleProtocols: (protocols) => [...protocols].find((p) => p in SUBPROTOCOLS) ?? false,
      perMessageDeflate: config.WS_COMPRESSION
        ? {
            threshold: config.WS_COMPRESSION_THRESHOLD_BYTES,
            // No context takeover and a small window: compression memory per
            // connection stays a few KB instead of the ~300 KB zlib defaults cost.
            serverNoContextTakeover: true,
            clientNoContextTakeover: true,
            serverMaxWindowBits: config.WS_COMPRESSION_WINDOW_BITS,
            zlibDeflateOptions: { level: 3, memLevel: 4 },
            // Bounds the zlib work queued at once across all connections.
            concurrencyLimit: 10,
          }
        : false,
    });
    // Node's headersTimeout does not cover a socket that never sends a byte: every
    // socket must reach its upgrade within HANDSHAKE_TIMEOUT_MS or is destroyed.
    // The timer and its close listener go at the upgrade: kept, they stayed referenced by every open socket.
    const pending = new WeakMap<object, () => void>();
    this.http.on(config.TLS_CERT_FILE ? 'secureConnection' : 'connection', (socket: Duplex) => {
      const timer = setTimeout(() => socket.destroy(), config.HANDSHAKE_TIMEOUT_MS);
      timer.unref();
      const clear = () => clearTimeout(timer);
      pending.set(socket, clear);
      socket.once('close', clear);
    });
    this.http.on('upgrade', (req, socket, head) => {
      const clear = pending.get(socket);
      if (clear) {
        clear();
        socket.removeListener('close', clear);
        pending.delete(socket);
      }
      void this.upgrade(req, socket, head);
    });
    this.coalescer = new Coalescer(config.FRAME_COALESCE_MS);
    this.rejected = meter.createCounter('gateway_handshakes_rejected_total', { description: 'Refused WebSocket handshakes by reason' });
    this.frames = new HotCounter(meter, 'gateway_frames_received_total', { description: 'Client frames received by kind' }, 'kind');
    meter.createObservableGauge('gateway_connections', { description: 'Open WebSocket connections on this gateway' }).addCallback((result) => {
      result.observe(this.connections.size);
    });
    // For the per-tenant dashboard; the label stays bounded: the largest tenants by name, the rest as "(other)".
    meter.createObservableGauge('gateway_tenant_connections', { description: `Open WebSocket connections on this gateway by tenant (the ${TENANT_METRIC_LIMIT} largest; the rest as "(other)")` }).addCallback((result) => {
      const ranked = [...this.connectionsByTenant].sort((a, b) => b[1] - a[1]);
      for (const [tenant, count] of ranked.slice(0, TENANT_METRIC_LIMIT)) result.observe(count, { tenant });
      const rest = ranked.slice(TENANT_METRIC_LIMIT).reduce((sum, [, count]) => sum + count, 0);
      if (rest > 0) result.observe(rest, { tenant: '(other)' });
    });
  }

  /** `wss` when the WebSocket port speaks TLS. */
  get scheme(): 'ws' | 'wss' {
    return this.config.TLS_CERT_FILE ? 'wss' : 'ws';
  }

  get isDraining(): boolean {
    return this.draining;
  }

  async listen(): Promise<number> {
    await new Promise<void>((resolve, reject) => {
      this.http.once('error', (err) => reject(new Error(`WebSocket port ${this.config.PORT} on ${this.config.HOST}: ${err.message}`, { cause: err })));
      this.http.listen(this.config.PORT, this.config.HOST, resolve);
    });
    this.heartbeat = setInterval(() => this.tick(), this.config.HEARTBEAT_INTERVAL_MS);
    this.limitsTick = setInterval(() => void this.limits.tick(this.connections), 1000);
    return (this.http.address() as AddressInfo).port;
  }

  /** Every interval: a connection that did not answer the last ping is dead. One timer for all connections. */
  private tick(): void {
    for (const connection of this.connections) {
      if (!connection.alive) {
        this.logger.debug({ connection: connection.id }, 'no pong: terminating');
        connection.socket.terminate();
        continue;
      }
      connection.alive = false;
      connection.socket.ping();
    }
  }

  private refuse(socket: Duplex, status: number, reason: string, metricReason: string): void {
    this.rejected.add(1, { reason: metricReason });
    const body = `${reason}\n`;
    socket.end(
      `HTTP/1.1 ${status} ${STATUS_TEXT[status] ?? 'Error'}\r\nConnection: close\r\nContent-Type: text/plain\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`,
    );
  }

  private async upgrade(req: IncomingMessage, socket: Duplex, head: Buffer): Promise<void> {
    socket.on('error', (err) => this.logger.debug({ err }, 'socket error during handshake'));
    const url = new URL(req.url ?? '/', 'http://gateway');
    if (url.pathname !== WS_PATH) return this.refuse(socket, 404, `no WebSocket endpoint at ${url.pathname}; use ${WS_PATH}`, 'path');
    if (this.draining) return this.refuse(socket, 503, 'gateway is draining; connect to another one', 'draining');
    const origin = req.headers.origin;
    if (origin && this.config.ALLOWED_ORIGINS.length > 0 && !this.config.ALLOWED_ORIGINS.includes(origin)) {
      return this.refuse(socket, 403, `origin ${origin} is not allowed`, 'origin');
    }
    const offered = (req.headers['sec-websocket-protocol'] ?? '').split(',').map((p) => p.trim()).filter(Boolean);
    const versions = offered.filter((p) => !p.startsWith('bearer.'));
    const chosen = versions.find((p) => p in SUBPROTOCOLS);
    if (versions.length > 0 && !chosen) {
      return this.refuse(socket, 400, `unsupported subprotocol ${versions.join(', ')}; this gateway speaks ${Object.keys(SUBPROTOCOLS).join(', ')}`, 'subprotocol');
    }
    const encoding: Encoding = chosen ? SUBPROTOCOLS[chosen]! : 'json';
    const token = tokenFromRequest(req, offered);
    if (!token) return this.refuse(socket, 401, 'missing token: send Authorization: Bearer <jwt>', 'unauthenticated');
    let identity: Identity;
    try {
      identity = await this.verifier.verify(token);
    } catch (err) {
      const reason = err instanceof SwitchboardError ? err.message : 'invalid token';
      return this.refuse(socket, 401, reason, 'unauthenticated');
    }
    let device: ReturnType<typeof deviceFromRequest>;
    try {
      device = deviceFromRequest(url, identity, req.headers['user-agent']);
    } catch (err) {
      return this.refuse(socket, 400, (err as Error).message, 'device');
    }
    this.wss.handleUpgrade(req, socket, head, (ws) => void this.accept(ws, identity, encoding, device));
  }

  private async accept(ws: WebSocket, identity: Identity, encoding: Encoding, device: ReturnType<typeof deviceFromRequest>): Promise<void> {
    const connection = new Connection(newId(), ws, { ...identity, deviceId: device.deviceId ?? `conn-${newId().slice(0, 12)}` }, encoding);
    connection.coalescer = this.coalescer;
    connection.sendBuffer = this.sendBuffer;
    connection.counted = this.limits.counted;
    // Frames wait unread while the tenant's connection slot is taken (a Redis round trip).
    ws.pause();
    const admission = await this.limits.admitConnection(connection);
    if (!admission.admitted) {
      // Read again so the closing handshake completes.
      ws.resume();
      connection.close(CLOSE.tenantConnections, admission.reason);
      return;
    }
    if (ws.readyState !== ws.OPEN) {
      this.limits.release(connection);
      return;
    }
    this.connections.add(connection);
    this.connectionsByTenant.set(connection.tenantId, (this.connectionsByTenant.get(connection.tenantId) ?? 0) + 1);
    // Made when first needed: a child logger per idle connection was 6% of the gateway's heap (docs/benchmarks.md).
    const log = () => this.logger.child({ connection: connection.id, tenant: identity.tenantId, user: identity.userId });
    ws.on('pong', () => (connection.alive = true));
    ws.on('error', (err) => log().debug({ err }, 'socket error'));
    ws.on('close', (code, reason) => {
      this.connections.delete(connection);
      const left = (this.connectionsByTenant.get(connection.tenantId) ?? 1) - 1;
      if (left > 0) this.connectionsByTenant.set(connection.tenantId, left);
      else this.connectionsByTenant.delete(connection.tenantId);
      connection.clearExpiry();
      this.limits.release(connection);
      this.limits.forget(connection);
      this.fanout.detach(connection);
      this.events?.detach(connection);
      void this.presence?.detach(connection, disconnectReason(code));
      log().debug({ code, reason: reason.toString() }, 'closed');
    });
    this.presence?.prepare(connection, device.info);
    // Frames that arrive while subscriptions are set up wait for them.
    const ready = this.fanout.attach(connection).then(() => this.presence?.attach(connection));
    ws.on('message', (data: RawData, isBinary: boolean) => {
      connection.alive = true;
      void ready.then(() => this.onFrame(connection, data as Buffer, isBinary)).catch(() => undefined);
    });
    ws.resume();
    connection.scheduleExpiry(this.config.TOKEN_EXPIRY_GRACE_MS, () => connection.close(CLOSE.tokenExpired, 'token expired'));
    try {
      await ready;
    } catch (err) {
      log().error({ err }, 'could not set up subscriptions');
      connection.close(CLOSE.internal, 'backend unavailable, reconnect later');
      return;
    }
    connection.send({
      requestId: '',
      kind: {
        $case: 'welcome',
        value: {
          connectionId: connection.id,
          gatewayId: this.config.GATEWAY_ID,
          userId: identity.userId,
          tenantId: identity.tenantId,
          deviceId: connection.identity.deviceId,
          heartbeatIntervalMs: this.config.HEARTBEAT_INTERVAL_MS,
          maxFrameBytes: await this.limits.maxFrameBytes(identity.tenantId),
          tokenExpiresAt: identity.expiresAt,
        },
      },
    });
  }

  private async onFrame(connection: Connection, data: Buffer, isBinary: boolean): Promise<void> {
    let frame;
    try {
      frame = decodeClientFrame(data, isBinary, connection.encoding);
    } catch (err) {
      this.frames.add(1, 'invalid');
      // Undecodable frames count against the connection's budgets too (a garbage flood is still a flood).
      const refused = (await this.limits.admitFrame(connection, data.length)) ?? (await this.limits.admitShared(connection, data.length, undefined));
      if (refused) return this.refuseFrame(connection, '', refused);
      this.limits.invalidFrame(connection);
      const error = err instanceof SwitchboardError ? err.toProto() : { code: 1, message: 'invalid frame', field: '', retryAfterMs: 0 };
      connection.send({ requestId: '', kind: { $case: 'error', value: error } });
      return;
    }
    this.frames.add(1, frame.kind!.$case);
    const refused = await this.limits.admitFrame(connection, data.length);
    if (refused) return this.refuseFrame(connection, frame.requestId, refused);
    try {
      validateClientFrame(frame.kind!);
    } catch (err) {
      // An invalid frame still counts against the tenant's bandwidth; a bandwidth refusal comes first, as it did when it was checked before validation.
      const limited = await this.limits.admitShared(connection, data.length, undefined);
      if (limited) return this.refuseFrame(connection, frame.requestId, limited);
      this.limits.invalidFrame(connection);
      return this.refuseFrame(connection, frame.requestId, { error: err as SwitchboardError });
    }
    // The tenant's bandwidth and, for a message, the tenant's and the user's message budgets: one Redis round trip.
    const limited = await this.limits.admitShared(connection, data.length, frame);
    if (limited) return this.refuseFrame(connection, frame.requestId, limited);
    if (frame.kind!.$case === 'refreshToken') {
      try {
        await refreshToken(connection, frame.kind!.value.token, this.verifier, this.config.TOKEN_EXPIRY_GRACE_MS, () => connection.close(CLOSE.tokenExpired, 'token expired'));
        connection.send({ requestId: frame.requestId, kind: { $case: 'ok', value: {} } });
      } catch (err) {
        this.refuseFrame(connection, frame.requestId, { error: err as SwitchboardError });
      }
      return;
    }
    await this.handler.handle(connection, frame);
  }

  /** Answers a refused frame with its error (retry_after_ms for rate limits) and closes the connection when the refusal says so. */
  private refuseFrame(connection: Connection, requestId: string, refusal: Refusal): void {
    connection.send({ requestId, kind: { $case: 'error', value: refusal.error.toProto() } });
    if (refusal.close) connection.close(refusal.close.code, refusal.close.reason);
  }

  /** Connections of one user (all tenants' users are distinct by tenant id). */
  connectionsOf(tenantId: string, userId: string): Connection[] {
    return [...this.connections].filter((c) => c.tenantId === tenantId && c.userId === userId);
  }

  /**
   * Stops taking connections, tells every client to reconnect within the
   * jitter window (they spread over the other gateways), and closes what is
   * left with 1012 at the deadline.
   */
  async drain(deadlineMs: number, announce: () => void = () => undefined): Promise<void> {
    this.draining = true;
    announce();
    const window = Math.min(this.config.RECONNECT_JITTER_MS, Math.floor(deadlineMs / 2));
    for (const connection of this.connections) {
      connection.send({ requestId: '', kind: { $case: 'reconnect', value: { reason: 'gateway draining', reconnectWithinMs: window } } });
    }
    const deadline = Date.now() + deadlineMs;
    while (this.connections.size > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    for (const connection of this.connections) connection.close(CLOSE.serviceRestart, 'gateway restarting; reconnect');
  }

  async close(): Promise<void> {
    clearInterval(this.heartbeat);
    clearInterval(this.limitsTick);
    await this.limits.tick(this.connections);
    for (const connection of this.connections) connection.socket.terminate();
    await new Promise<void>((resolve) => this.http.close(() => resolve()));
    this.http.closeAllConnections();
  }
}

/**
 * The server under the WebSocket port: TLS 1.3 only when a certificate is
 * configured. A client must finish its TLS handshake and its upgrade request
 * within HANDSHAKE_TIMEOUT_MS, so half-open handshakes (slowloris) cannot
 * hold sockets.
 */
function createHttpServer(config: GatewayConfig, listener: RequestListener): Server {
  const timeouts = { headersTimeout: config.HANDSHAKE_TIMEOUT_MS, requestTimeout: config.HANDSHAKE_TIMEOUT_MS, connectionsCheckingInterval: Math.min(1000, config.HANDSHAKE_TIMEOUT_MS) };
  if (config.TLS_CERT_FILE && config.TLS_KEY_FILE) {
    return createTlsServer(
      { ...timeouts, cert: readFileSync(config.TLS_CERT_FILE), key: readFileSync(config.TLS_KEY_FILE), minVersion: 'TLSv1.3', handshakeTimeout: config.HANDSHAKE_TIMEOUT_MS },
      listener,
    );
  }
  return createServer(timeouts, listener);
}

const STATUS_TEXT: Record<number, string> = {
  400: 'Bad Request',
  401: 'Unauthorized',
  403: 'Forbidden',
  404: 'Not Found',
  503: 'Service Unavailable',
};
