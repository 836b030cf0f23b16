import { EventEmitter } from 'node:events';
import {
  DeadlineExceededError,
  FrameTooLargeError,
  InternalError,
  InvalidArgumentError,
  SwitchboardError,
  UnauthenticatedError,
  UnavailableError,
} from '@switchboard/errors';
import { newId } from '@switchboard/ids';
import { commonV1, framesV1, messagingV1 } from '@switchboard/proto';
import { backoffDelay } from './backoff';
import {
  BEARER_SUBPROTOCOL_PREFIX,
  decodeServerFrame,
  encodeClientFrame,
  subprotocolFor,
  type Encoding,
  type FrameData,
} from './codec';
import { CloseCode, HandshakeError, errorForClose } from './errors';
import { wsTransport, type Transport, type TransportFactory } from './transport';

export type ClientKind = NonNullable<framesV1.ClientFrame['kind']>;
export type ClientKindCase = ClientKind['$case'];
export type ServerKind = NonNullable<framesV1.ServerFrame['kind']>;
export type ServerKindCase = ServerKind['$case'];

/** Which ServerFrame kind answers each ClientFrame kind (besides `error`). */
export const REPLY_KIND = {
  ping: 'pong',
  sendMessage: 'messageAck',
  getHistory: 'historyPage',
  sync: 'syncPage',
  markDelivered: 'receiptState',
  markRead: 'receiptState',
  listConversations: 'conversationList',
  typing: 'ok',
  setPresence: 'ok',
  subscribeEvents: 'ok',
  unsubscribeEvents: 'ok',
  refreshToken: 'ok',
} as const satisfies Record<ClientKindCase, ServerKindCase>;

/** The reply kind (`{ $case, value }`) a request of kind C resolves with. */
export type ReplyKind<C extends ClientKindCase> = Extract<ServerKind, { $case: (typeof REPLY_KIND)[C] }>;

/** pino-compatible: `logger.warn({ ...fields }, 'message')`. */
export interface ClientLogger {
  debug(obj: object, msg?: string): void;
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
  error(obj: object, msg?: string): void;
}

export interface ReconnectOptions {
  /**
   * Reconnect automatically after a connection that had been welcomed is
   * lost (default true). When false, a server `reconnect` request is only
   * reported ('reconnect-requested'); the server closes at its deadline.
   */
  enabled?: boolean;
  baseDelayMs?: number;
  maxDelayMs?: number;
  /** A connection that lived this long resets the backoff attempts. */
  stableAfterMs?: number;
}

/** A token, or a function asked for one before every (re)connect so refreshed tokens are used. */
export type TokenSource = string | (() => string | Promise<string>);

/**
 * Where the JWT goes on the upgrade: the `Authorization` header (Node), the
 * `access_token` query parameter, or a `bearer.<jwt>` subprotocol entry
 * (browsers, which cannot set headers).
 */
export type TokenPlacement = 'header' | 'query' | 'subprotocol';

export interface SwitchboardClientOptions {
  /** e.g. ws://127.0.0.1:8080/ws */
  url: string;
  token: TokenSource;
  encoding?: Encoding;
  tokenPlacement?: TokenPlacement;
  reconnect?: ReconnectOptions;
  /** Default deadline of a request (default 10000). */
  requestTimeoutMs?: number;
  /** Deadline for the upgrade plus the Welcome (default 10000). */
  connectTimeoutMs?: number;
  /**
   * Slack on top of two heartbeat intervals before a silent connection is
   * declared dead: nothing for `heartbeat_interval_ms * 2 + heartbeatGraceMs`
   * ends it (default 5000).
   */
  heartbeatGraceMs?: number;
  /** The WebSocket implementation (default: `ws`). */
  transport?: TransportFactory;
  logger?: ClientLogger;
  /** Jitter source in [0, 1) (default Math.random); tests pin it. */
  random?: () => number;
}

export interface RequestOptions {
  timeoutMs?: number;
}

export interface DisconnectedEvent {
  code: number;
  reason: string;
  willReconnect: boolean;
}

export interface ReconnectingEvent {
  /** Consecutive failed connections so far (1 = first retry); 0 for a server-requested reconnect. */
  attempt: number;
  delayMs: number;
}

export interface ReconnectRequestedEvent {
  reason: string;
  reconnectWithinMs: number;
  /** The jittered delay the client picked in [0, reconnectWithinMs). */
  delayMs: number;
}

export interface ClosedEvent {
  /** Why the client stopped, unless close() was called. */
  error?: SwitchboardError;
}

export interface ClientEvents {
  welcome: [welcome: framesV1.Welcome];
  /** A pushed message (MessageEvent). */
  message: [message: messagingV1.Message];
  /** Every pushed ServerFrame (empty request id), including welcome and reconnect. */
  frame: [frame: framesV1.ServerFrame];
  'reconnect-requested': [event: ReconnectRequestedEvent];
  disconnected: [event: DisconnectedEvent];
  reconnecting: [event: ReconnectingEvent];
  /** The client stopped for good: close(), session revoked (4003), a fatal refusal, or a loss with reconnect disabled. */
  closed: [event: ClosedEvent];
  /**
   * Undecodable frames, error pushes, a fatal end. Only emitted when someone
   * listens (otherwise logged), so a bad frame never throws.
   */
  error: [error: Error];
}

export type ClientState = 'idle' | 'connecting' | 'open' | 'reconnecting' | 'closed';

export interface SendMessageInput {
  /** Exactly one of conversationId or recipientUserId. */
  conversationId?: string;
  /** A direct message; the conversation is created on first message. */
  recipientUserId?: string;
  text: string;
  /** Generated when absent. Reuse it when retrying the same message: the retry is then idempotent. */
  clientMessageId?: string;
  attachments?: messagingV1.Attachment[];
  mentions?: string[];
  metadata?: Record<string, string>;
}

export interface GetHistoryInput {
  conversationId: string;
  /** Forward: seq > fromSeq; backward: seq < fromSeq (0 = from the newest). */
  fromSeq?: number;
  direction?: messagingV1.Direction;
  limit?: number;
}

export interface SyncInput {
  positions?: commonV1.ConversationPosition[];
  resumeToken?: string;
  limit?: number;
}

export interface ListConversationsInput {
  pageSize?: number;
  pageToken?: string;
}

type Timer = ReturnType<typeof setTimeout>;

interface PendingRequest {
  kind: ClientKindCase;
  expected: ServerKindCase;
  resolve: (kind: ServerKind) => void;
  reject: (err: Error) => void;
  timer: Timer;
}

/** One WebSocket connection's state; the client has at most one current. */
interface Connection {
  transport: Transport;
  welcome: framesV1.Welcome | undefined;
  connectTimer: Timer | undefined;
  watchdog: Timer | undefined;
  stableTimer: Timer | undefined;
  keepalive: ReturnType<typeof setInterval> | undefined;
  /** Why the client itself ended it, to word the disconnect. */
  endedBy: 'dead' | undefined;
  refusal: HandshakeError | undefined;
  lastError: Error | undefined;
  /** Error frame received before the Welcome (the reason a close follows). */
  earlyError: SwitchboardError | undefined;
  settleOpen: (err: Error | undefined) => void;
  /** Set once the client let go of it (close(), a requested reconnect): its later events are ignored. */
  retired: boolean;
  closedWaiters: (() => void)[];
}

const RETIRE_TIMEOUT_MS = 2000;

/**
 * A Switchboard gateway connection: typed requests correlated by request id,
 * pushes as events, reconnection with exponential backoff and full jitter,
 * server-requested reconnects (drain), and dead-connection detection.
 */
export class SwitchboardClient extends EventEmitter<ClientEvents> {
  readonly encoding: Encoding;
  private readonly options: SwitchboardClientOptions;
  private readonly transportFactory: TransportFactory;
  private readonly random: () => number;
  private readonly reconnectEnabled: boolean;
  private readonly baseDelayMs: number;
  private readonly maxDelayMs: number;
  private readonly stableAfterMs: number;

  private stateValue: ClientState = 'idle';
  private current: Connection | undefined;
  private connecting: Promise<framesV1.Welcome> | undefined;
  /** True between close() (or a terminal loss) and the next connect(). */
  private stopped = false;
  private attempts = 0;
  private reconnectTimer: Timer | undefined;
  private drainTimer: Timer | undefined;
  private drainDeadline = 0;
  private requestCounter = 0;
  /**
   * Requests awaiting their reply. They are rejected with UnavailableError
   * when the connection drops; an outbox that re-sends them on the next
   * connection would hook into {@link failPending}.
   */
  private readonly pending = new Map<string, PendingRequest>();

  constructor(options: SwitchboardClientOptions) {
    super();
    this.options = options;
    this.encoding = options.encoding ?? 'json';
    this.transportFactory = options.transport ?? wsTransport();
    this.random = options.random ?? Math.random;
    this.reconnectEnabled = options.reconnect?.enabled ?? true;
    this.baseDelayMs = options.reconnect?.baseDelayMs ?? 250;
    this.maxDelayMs = options.reconnect?.maxDelayMs ?? 10_000;
    this.stableAfterMs = options.reconnect?.stableAfterMs ?? 10_000;
  }

  get state(): ClientState {
    return this.stateValue;
  }

  /** The Welcome of the current connection, when there is one. */
  get welcome(): framesV1.Welcome | undefined {
    return this.current?.welcome;
  }

  get connected(): boolean {
    return this.stateValue === 'open';
  }

  /**
   * Opens the connection and resolves with the Welcome. Makes one attempt:
   * rejects with HandshakeError (with the HTTP status) when the upgrade is
   * refused, or with another SwitchboardError when the connection cannot be
   * made or closes before its Welcome. Automatic reconnection only starts
   * once a connection has been welcomed.
   */
  connect(): Promise<framesV1.Welcome> {
    if (this.stateValue === 'open' && this.current?.welcome) return Promise.resolve(this.current.welcome);
    if (this.connecting) return this.connecting;
    if (this.stateValue === 'reconnecting') return this.nextWelcome();
    this.stopped = false;
    this.setState('connecting');
    const attempt = this.openConnection().then(
      (welcome) => {
        this.connecting = undefined;
        return welcome;
      },
      (err: unknown) => {
        this.connecting = undefined;
        if (!this.stopped) this.setState('idle');
        throw err;
      },
    );
    this.connecting = attempt;
    return attempt;
  }

  /** Closes with 1000, rejects pending requests, stops every timer. Resolves once the socket is closed. */
  async close(): Promise<void> {
    if (this.stopped && !this.current) return;
    this.stopped = true;
    this.clearClientTimers();
    const conn = this.current;
    this.current = undefined;
    this.failPending(new UnavailableError('client closed'));
    let closing: Promise<void> = Promise.resolve();
    if (conn) {
      const wasOpen = conn.welcome !== undefined;
      closing = this.retire(conn, CloseCode.NORMAL, 'client closed');
      conn.settleOpen(new UnavailableError('client closed'));
      if (wasOpen) this.emit('disconnected', { code: CloseCode.NORMAL, reason: 'client closed', willReconnect: false });
    }
    this.finish(undefined);
    await closing;
  }

  /**
   * Sends a ClientFrame of this kind with a fresh request id and resolves
   * with the reply kind. Rejects with the server's error (a SwitchboardError
   * with its code), DeadlineExceededError on timeout, UnavailableError when
   * not connected or when the connection drops before the answer, and
   * FrameTooLargeError (without sending) above the Welcome's max_frame_bytes.
   */
  request<K extends ClientKind>(kind: K, options: RequestOptions = {}): Promise<ReplyKind<K['$case']>> {
    const conn = this.current;
    if (!conn?.welcome || this.stateValue !== 'open') {
      return Promise.reject(new UnavailableError('not connected'));
    }
    const requestId = String(++this.requestCounter);
    const frame: framesV1.ClientFrame = { requestId, kind };
    let data: string | Uint8Array;
    try {
      data = encodeClientFrame(frame, this.encoding);
    } catch (err) {
      return Promise.reject(new InvalidArgumentError(`cannot encode ${kind.$case}`, { cause: err }));
    }
    const size = typeof data === 'string' ? utf8Length(data) : data.byteLength;
    const max = conn.welcome.maxFrameBytes;
    if (max > 0 && size > max) {
      return Promise.reject(new FrameTooLargeError(`${kind.$case} frame is ${size} bytes, the limit is ${max}`, { field: 'frame' }));
    }
    const timeoutMs = options.timeoutMs ?? this.options.requestTimeoutMs ?? 10_000;
    return new Promise<ReplyKind<K['$case']>>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(requestId);
        reject(new DeadlineExceededError(`${kind.$case} (request ${requestId}) got no answer within ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending.set(requestId, {
        kind: kind.$case,
        expected: REPLY_KIND[kind.$case as ClientKindCase],
        resolve: resolve as (kind: ServerKind) => void,
        reject,
        timer,
      });
      try {
        conn.transport.send(data);
      } catch (err) {
        this.settle(requestId, new UnavailableError('send failed', { cause: err }));
      }
    });
  }

  /** Sends a message; resolves with its acknowledgement once it is committed. */
  async sendMessage(input: SendMessageInput, options?: RequestOptions): Promise<messagingV1.MessageAck> {
    const hasConversation = !!input.conversationId;
    const hasRecipient = !!input.recipientUserId;
    if (hasConversation === hasRecipient) {
      throw new InvalidArgumentError('give exactly one of conversationId or recipientUserId', { field: 'target' });
    }
    const target: framesV1.SendMessage['target'] = hasConversation
      ? { $case: 'conversationId', value: input.conversationId! }
      : { $case: 'recipientUserId', value: input.recipientUserId! };
    const reply = await this.request(
      {
        $case: 'sendMessage',
        value: {
          target,
          clientMessageId: input.clientMessageId ?? newId(),
          text: input.text,
          attachments: input.attachments ?? [],
          mentions: input.mentions ?? [],
          metadata: input.metadata ?? {},
        },
      },
      options,
    );
    return reply.value;
  }

  async getHistory(input: GetHistoryInput, options?: RequestOptions): Promise<framesV1.HistoryPage> {
    const reply = await this.request(
      {
        $case: 'getHistory',
        value: {
          conversationId: input.conversationId,
          fromSeq: input.fromSeq ?? 0,
          direction: input.direction ?? messagingV1.Direction.DIRECTION_UNSPECIFIED,
          limit: input.limit ?? 0,
        },
      },
      options,
    );
    return reply.value;
  }

  async sync(input: SyncInput = {}, options?: RequestOptions): Promise<framesV1.SyncPage> {
    const reply = await this.request(
      {
        $case: 'sync',
        value: { positions: input.positions ?? [], resumeToken: input.resumeToken ?? '', limit: input.limit ?? 0 },
      },
      options,
    );
    return reply.value;
  }

  async markDelivered(conversationId: string, seq: number, options?: RequestOptions): Promise<framesV1.ReceiptState> {
    const reply = await this.request({ $case: 'markDelivered', value: { conversationId, seq } }, options);
    return reply.value;
  }

  async markRead(conversationId: string, seq: number, options?: RequestOptions): Promise<framesV1.ReceiptState> {
    const reply = await this.request({ $case: 'markRead', value: { conversationId, seq } }, options);
    return reply.value;
  }

  async listConversations(input: ListConversationsInput = {}, options?: RequestOptions): Promise<framesV1.ConversationList> {
    const reply = await this.request(
      {
        $case: 'listConversations',
        value: { page: { pageSize: input.pageSize ?? 0, pageToken: input.pageToken ?? '' } },
      },
      options,
    );
    return reply.value;
  }

  /** A protocol-level round trip; `rttMs` is measured on the client's clock. */
  async ping(options?: RequestOptions): Promise<framesV1.Pong & { rttMs: number }> {
    const sent = Date.now();
    const reply = await this.request({ $case: 'ping', value: { clientTimeMs: sent } }, options);
    return { ...reply.value, rttMs: Date.now() - sent };
  }

  // --- connection lifecycle ---

  private async openConnection(): Promise<framesV1.Welcome> {
    let token: string;
    try {
      const source = this.options.token;
      token = typeof source === 'string' ? source : await source();
    } catch (err) {
      throw new UnauthenticatedError('the token provider failed', { cause: err });
    }
    if (this.stopped) throw new UnavailableError('client closed');

    const protocols = [subprotocolFor(this.encoding)];
    const headers: Record<string, string> = {};
    let url = this.options.url;
    switch (this.options.tokenPlacement ?? 'header') {
      case 'header':
        headers.Authorization = `Bearer ${token}`;
        break;
      case 'query': {
        let u: URL;
        try {
          u = new URL(url);
        } catch (err) {
          throw new InvalidArgumentError(`invalid url ${url}`, { field: 'url', cause: err });
        }
        u.searchParams.set('access_token', token);
        url = u.toString();
        break;
      }
      case 'subprotocol':
        protocols.push(`${BEARER_SUBPROTOCOL_PREFIX}${token}`);
        break;
    }

    return new Promise<framesV1.Welcome>((resolve, reject) => {
      let settled = false;
      const conn: Connection = {
        transport: undefined as unknown as Transport,
        welcome: undefined,
        connectTimer: undefined,
        watchdog: undefined,
        stableTimer: undefined,
        keepalive: undefined,
        endedBy: undefined,
        refusal: undefined,
        lastError: undefined,
        earlyError: undefined,
        retired: false,
        closedWaiters: [],
        settleOpen: (err) => {
          if (settled) return;
          settled = true;
          clearTimer(conn.connectTimer);
          conn.connectTimer = undefined;
          if (err) reject(err);
          else resolve(conn.welcome!);
        },
      };
      this.current = conn;
      const connectTimeoutMs = this.options.connectTimeoutMs ?? 10_000;
      conn.connectTimer = setTimeout(() => {
        conn.connectTimer = undefined;
        conn.lastError = new DeadlineExceededError(`no Welcome within ${connectTimeoutMs} ms`);
        conn.transport.terminate();
      }, connectTimeoutMs);
      try {
        conn.transport = this.transportFactory(
          { url, protocols, headers },
          {
            open: () => this.options.logger?.debug({ url: this.options.url }, 'websocket open, awaiting welcome'),
            message: (data, isBinary) => this.onMessage(conn, data, isBinary),
            ping: () => {
              if (conn === this.current && conn.welcome) this.armWatchdog(conn);
            },
            refused: (status, body) => {
              conn.refusal = HandshakeError.fromResponse(status, body);
            },
            error: (err) => {
              conn.lastError = err;
              if (conn === this.current) this.options.logger?.debug({ err }, 'websocket error');
            },
            close: (code, reason) => this.onClose(conn, code, reason),
          },
        );
      } catch (err) {
        clearTimer(conn.connectTimer);
        this.current = undefined;
        settled = true;
        reject(new InvalidArgumentError(`cannot open ${this.options.url}`, { cause: err }));
      }
    });
  }

  private onMessage(conn: Connection, data: FrameData, isBinary: boolean): void {
    if (conn !== this.current) return;
    if (conn.welcome) this.armWatchdog(conn);
    let frame: framesV1.ServerFrame;
    try {
      frame = decodeServerFrame(data, isBinary, this.encoding);
    } catch (err) {
      this.report(err as Error);
      return;
    }
    if (!conn.welcome) {
      this.onFirstFrame(conn, frame);
      return;
    }
    if (frame.requestId) this.onReply(frame);
    else this.onPush(conn, frame);
  }

  private onFirstFrame(conn: Connection, frame: framesV1.ServerFrame): void {
    const kind = frame.kind;
    if (kind?.$case === 'welcome') {
      this.onWelcome(conn, kind.value, frame);
    } else if (kind?.$case === 'error') {
      // The close that follows explains itself better with this.
      conn.earlyError = SwitchboardError.fromProto(kind.value);
    } else {
      this.options.logger?.warn({ kind: kind?.$case }, 'frame before welcome ignored');
    }
  }

  private onWelcome(conn: Connection, welcome: framesV1.Welcome, frame: framesV1.ServerFrame): void {
    conn.welcome = welcome;
    this.setState('open');
    this.armWatchdog(conn);
    conn.stableTimer = setTimeout(() => {
      conn.stableTimer = undefined;
      this.attempts = 0;
    }, this.stableAfterMs);
    if (!conn.transport.observesPings && welcome.heartbeatIntervalMs > 0) {
      // The transport hides the server's pings: make traffic the watchdog can see.
      conn.keepalive = setInterval(() => {
        this.ping({ timeoutMs: welcome.heartbeatIntervalMs * 2 }).catch(() => undefined);
      }, welcome.heartbeatIntervalMs);
    }
    this.options.logger?.debug({ connectionId: welcome.connectionId, gatewayId: welcome.gatewayId }, 'welcomed');
    conn.settleOpen(undefined);
    this.emit('welcome', welcome);
    this.emit('frame', frame);
  }

  private onReply(frame: framesV1.ServerFrame): void {
    const kind = frame.kind;
    if (!kind) {
      this.settle(frame.requestId, new InternalError('reply of a kind this client does not know'));
      return;
    }
    if (kind.$case === 'error') {
      if (!this.settle(frame.requestId, SwitchboardError.fromProto(kind.value))) {
        this.report(SwitchboardError.fromProto(kind.value));
      }
      return;
    }
    const entry = this.pending.get(frame.requestId);
    if (!entry) {
      this.options.logger?.debug({ requestId: frame.requestId, kind: kind.$case }, 'reply to no pending request (late or unknown)');
      return;
    }
    if (kind.$case !== entry.expected) {
      this.settle(frame.requestId, new InternalError(`${entry.kind} answered with ${kind.$case}, expected ${entry.expected}`));
      return;
    }
    this.settle(frame.requestId, undefined, kind);
  }

  private onPush(conn: Connection, frame: framesV1.ServerFrame): void {
    const kind = frame.kind;
    this.emit('frame', frame);
    switch (kind?.$case) {
      case 'message':
        if (kind.value.message) this.emit('message', kind.value.message);
        break;
      case 'reconnect':
        this.onReconnectRequested(conn, kind.value);
        break;
      case 'error':
        // An error about no request in particular (e.g. a frame it could not parse).
        this.report(SwitchboardError.fromProto(kind.value));
        break;
      case undefined:
        this.options.logger?.debug({}, 'push of a kind this client does not know ignored');
        break;
      default:
        break;
    }
  }

  private onReconnectRequested(conn: Connection, request: framesV1.Reconnect): void {
    const within = Math.max(0, request.reconnectWithinMs);
    const delayMs = within > 0 ? Math.min(Math.floor(this.random() * within), within - 1) : 0;
    this.emit('reconnect-requested', { reason: request.reason, reconnectWithinMs: within, delayMs });
    if (!this.reconnectEnabled || this.drainTimer) return;
    this.drainDeadline = Date.now() + delayMs;
    this.drainTimer = setTimeout(() => {
      this.drainTimer = undefined;
      if (conn !== this.current || this.stopped) return;
      // Our move: let go of this connection and open the next one now. Not a failure, so no backoff.
      this.current = undefined;
      this.clearConnectionTimers(conn);
      void this.retire(conn, CloseCode.NORMAL, 'reconnect requested');
      this.failPending(new UnavailableError('connection closed to reconnect (server requested)'));
      this.emit('disconnected', { code: CloseCode.NORMAL, reason: 'reconnect requested', willReconnect: true });
      this.scheduleReconnect(0, false);
    }, delayMs);
  }

  private onClose(conn: Connection, code: number, reason: string): void {
    const waiters = conn.closedWaiters.splice(0);
    for (const done of waiters) done();
    if (conn.retired || conn !== this.current) return;
    this.current = undefined;
    this.clearConnectionTimers(conn);

    if (!conn.welcome) {
      // A failed attempt: whoever started it (connect() or the reconnect loop) decides what next.
      conn.settleOpen(conn.refusal ?? conn.earlyError ?? this.attemptError(conn, code, reason));
      return;
    }

    const wordedReason = conn.endedBy === 'dead' ? 'no heartbeat from the server' : reason;
    this.failPending(new UnavailableError(`connection closed (${code}${wordedReason ? `: ${wordedReason}` : ''}) before the answer`));
    const drainPending = this.drainTimer !== undefined;
    const willReconnect = !this.stopped && this.reconnectEnabled && code !== CloseCode.SESSION_REVOKED;
    this.options.logger?.info({ code, reason: wordedReason, willReconnect }, 'disconnected');
    this.emit('disconnected', { code, reason: wordedReason, willReconnect });
    if (!willReconnect) {
      clearTimer(this.drainTimer);
      this.drainTimer = undefined;
      this.finish(errorForClose(code, wordedReason));
      return;
    }
    if (drainPending) {
      // The server closed before our jittered moment: keep the moment, still no backoff.
      clearTimer(this.drainTimer);
      this.drainTimer = undefined;
      this.scheduleReconnect(Math.max(0, this.drainDeadline - Date.now()), false);
      return;
    }
    this.scheduleReconnect(undefined, true);
  }

  private attemptError(conn: Connection, code: number, reason: string): Error {
    if (conn.lastError instanceof SwitchboardError) return conn.lastError;
    if (code !== CloseCode.ABNORMAL) return errorForClose(code, reason);
    const cause = conn.lastError;
    return new UnavailableError(`cannot connect to ${this.options.url}${cause ? `: ${cause.message}` : ''}`, cause ? { cause } : {});
  }

  /** Plans the next attempt; a failure-driven one uses (and advances) the backoff, a requested one does not. */
  private scheduleReconnect(delayOverride: number | undefined, countsAsFailure: boolean): void {
    clearTimer(this.reconnectTimer);
    let attempt = 0;
    let delayMs = delayOverride ?? 0;
    if (countsAsFailure) {
      attempt = ++this.attempts;
      delayMs = delayOverride ?? backoffDelay(attempt - 1, this.baseDelayMs, this.maxDelayMs, this.random);
    }
    this.setState('reconnecting');
    this.options.logger?.info({ attempt, delayMs }, 'reconnecting');
    this.emit('reconnecting', { attempt, delayMs });
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = undefined;
      void this.reconnectNow();
    }, delayMs);
  }

  private async reconnectNow(): Promise<void> {
    if (this.stopped) return;
    try {
      await this.openConnection();
    } catch (err) {
      if (this.stopped) return;
      const error = err instanceof SwitchboardError ? err : new UnavailableError('reconnect failed', { cause: err });
      if (this.isFatal(error)) {
        this.options.logger?.error({ err: error }, 'giving up reconnecting');
        this.finish(error);
        return;
      }
      this.options.logger?.warn({ err: error }, 'reconnect attempt failed');
      this.scheduleReconnect(undefined, true);
    }
  }

  /** Failures that another attempt cannot fix. */
  private isFatal(err: SwitchboardError): boolean {
    const staticToken = typeof this.options.token === 'string';
    if (err instanceof HandshakeError) {
      if (err.status === 401) return staticToken;
      return err.status >= 400 && err.status < 500 && err.status !== 408 && err.status !== 429;
    }
    return err.code === commonV1.ErrorCode.ERROR_CODE_PERMISSION_DENIED || (staticToken && err.code === commonV1.ErrorCode.ERROR_CODE_UNAUTHENTICATED);
  }

  private armWatchdog(conn: Connection): void {
    const interval = conn.welcome?.heartbeatIntervalMs ?? 0;
    if (interval <= 0) return; // the server does not ping: nothing to expect
    clearTimer(conn.watchdog);
    const limit = interval * 2 + (this.options.heartbeatGraceMs ?? 5000);
    conn.watchdog = setTimeout(() => {
      conn.watchdog = undefined;
      if (conn !== this.current) return;
      this.options.logger?.warn({ silentForMs: limit }, 'no frame or ping from the server: connection presumed dead');
      conn.endedBy = 'dead';
      conn.transport.terminate();
    }, limit);
  }

  /** Lets go of a connection: closes it politely, terminating it if the closing handshake does not finish in time. */
  private retire(conn: Connection, code: number, reason: string): Promise<void> {
    conn.retired = true;
    this.clearConnectionTimers(conn);
    return new Promise<void>((resolve) => {
      const force = setTimeout(() => conn.transport.terminate(), RETIRE_TIMEOUT_MS);
      conn.closedWaiters.push(() => {
        clearTimeout(force);
        resolve();
      });
      try {
        conn.transport.close(code, reason);
      } catch {
        conn.transport.terminate();
      }
    });
  }

  private failPending(err: Error): void {
    for (const id of [...this.pending.keys()]) this.settle(id, err);
  }

  /** Resolves or rejects one pending request; false when there was none with this id. */
  private settle(requestId: string, err: Error | undefined, reply?: ServerKind): boolean {
    const entry = this.pending.get(requestId);
    if (!entry) return false;
    this.pending.delete(requestId);
    clearTimeout(entry.timer);
    if (err) entry.reject(err);
    else entry.resolve(reply!);
    return true;
  }

  private finish(error: SwitchboardError | undefined): void {
    this.stopped = true;
    this.clearClientTimers();
    this.attempts = 0;
    this.setState('closed');
    if (error) this.report(error);
    this.emit('closed', error ? { error } : {});
  }

  private nextWelcome(): Promise<framesV1.Welcome> {
    return new Promise((resolve, reject) => {
      const onWelcome = (welcome: framesV1.Welcome) => {
        this.off('closed', onClosed);
        resolve(welcome);
      };
      const onClosed = (event: ClosedEvent) => {
        this.off('welcome', onWelcome);
        reject(event.error ?? new UnavailableError('client closed'));
      };
      this.once('welcome', onWelcome);
      this.once('closed', onClosed);
    });
  }

  private report(err: Error): void {
    if (this.listenerCount('error') > 0) this.emit('error', err);
    else this.options.logger?.warn({ err }, err.message);
  }

  private setState(state: ClientState): void {
    this.stateValue = state;
  }

  private clearConnectionTimers(conn: Connection): void {
    clearTimer(conn.connectTimer);
    clearTimer(conn.watchdog);
    clearTimer(conn.stableTimer);
    if (conn.keepalive) clearInterval(conn.keepalive);
    conn.connectTimer = conn.watchdog = conn.stableTimer = conn.keepalive = undefined;
  }

  private clearClientTimers(): void {
    clearTimer(this.reconnectTimer);
    clearTimer(this.drainTimer);
    this.reconnectTimer = this.drainTimer = undefined;
  }
}

/** UTF-8 byte length of a string, without allocating (and without Node's Buffer, for browser builds). */
function utf8Length(text: string): number {
  let bytes = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c < 0x80) bytes += 1;
    else if (c < 0x800) bytes += 2;
    else if (c >= 0xd800 && c <= 0xdbff && i + 1 < text.length && (text.charCodeAt(i + 1) & 0xfc00) === 0xdc00) {
      bytes += 4;
      i++;
    } else bytes += 3;
  }
  return bytes;
}

function clearTimer(timer: Timer | undefined): void {
  if (timer !== undefined) clearTimeout(timer);
}
