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
import { isSafeId, newId } from '@switchboard/ids';
import { commonV1, framesV1, messagingV1, type eventsV1 } from '@switchboard/proto';
import { backoffDelay, DEFAULT_BACKOFF, retryDelay } from './backoff';
import {
  BEARER_SUBPROTOCOL_PREFIX,
  decodeServerFrame,
  encodeClientFrame,
  subprotocolFor,
  type Encoding,
  type FrameData,
} from './codec';
import { CloseCode, HandshakeError, errorForClose, isRetryableError } from './errors';
import { Outbox, type PendingSend } from './outbox';
import { Sequencer } from './sequencer';
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
  setPresence: 'presenceState',
  subscribeEvents: 'ok',
  unsubscribeEvents: 'ok',
  refreshToken: 'ok',
  roomRequest: 'roomReply',
  watchPresence: 'presenceState',
  unwatchPresence: 'presenceState',
  getPresence: 'presenceState',
  enterConversation: 'occupancyState',
  leaveConversation: 'occupancyState',
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
  /**
   * Where the app's view of each conversation stands: the highest `seq` it
   * already has with nothing missing below (as {@link SwitchboardClient.positions}
   * returned it before). Messages at or below are not delivered again, and
   * the first connect already resumes (`sync`) from these positions.
   * Without it, the first connect does not sync and a conversation starts
   * at the first message the client sees of it.
   */
  initialPositions?: ReadonlyMap<string, number> | Readonly<Record<string, number>>;
  /** Most unacknowledged sends kept (default 1000); beyond, sendMessage rejects with OutboxFullError. */
  outboxLimit?: number;
  /** Default of {@link SendOptions.maxAttempts} (default 10). */
  sendMaxAttempts?: number;
  /** Default of {@link SendOptions.deadlineMs} (default 300000). */
  sendDeadlineMs?: number;
  /** `limit` of each resume `sync` page (default 200, the service's cap). */
  syncPageSize?: number;
}

export interface RequestOptions {
  timeoutMs?: number;
}

/** Options of one sendMessage. `timeoutMs` bounds each attempt. */
export interface SendOptions extends RequestOptions {
  /** Attempts (frames sent) before it rejects with SendNotAcknowledgedError('attempts') (default: sendMaxAttempts). */
  maxAttempts?: number;
  /** After this many ms from the call it rejects with SendNotAcknowledgedError('deadline') (default: sendDeadlineMs). */
  deadlineMs?: number;
}

export interface SyncedEvent {
  /** Sync pages fetched. */
  pages: number;
  /** Messages in those pages (those the app already had were dropped as duplicates). */
  messages: number;
}

/** Counters of the in-order delivery, since the client was created. */
export interface DeliveryStats {
  /** Messages handed to the app ('message' events). */
  delivered: number;
  /** Messages dropped because the app already had them. */
  duplicates: number;
  /** Messages held right now behind a gap. */
  held: number;
  /** get_history requests made to fill gaps. */
  historyFetches: number;
  /** sync pages fetched to resume. */
  syncPages: number;
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
  /**
   * A message of a conversation, handed over in `seq` order and exactly
   * once: live pushes, gaps filled from history and what the resume sync
   * fetched all come through here.
   */
  message: [message: messagingV1.Message];
  /**
   * A broadcast event of a pattern this connection subscribed to
   * (`subscribeEvents`), replayed or live, with its `streamSeq`.
   */
  event: [event: eventsV1.BroadcastEvent];
  /** The resume sync after a (re)connect delivered everything the server had missed for this device. */
  synced: [event: SyncedEvent];
  /** Every pushed ServerFrame (empty request id) as it arrived, unordered: including welcome, reconnect and raw message pushes. */
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
  /** Pauses of the sync and gap-fill loops on this connection; they end (false) when it ends. */
  delays: Set<{ timer: Timer; done: (elapsed: boolean) => void }>;
}

const RETIRE_TIMEOUT_MS = 2000;
/** The service caps history and sync pages at 200 messages. */
const MAX_PAGE = 200;

/**
 * A Switchboard gateway connection: typed requests correlated by request id,
 * pushes as events, reconnection with exponential backoff and full jitter,
 * server-requested reconnects (drain), and dead-connection detection.
 *
 * On top of it the messaging guarantees (docs/protocol.md, "Ordering and
 * delivery"): messages reach the app per conversation in `seq` order and
 * once (gaps are fetched with get_history before later messages are handed
 * over), every reconnect resumes with `sync` from the positions held, and
 * sends wait in an outbox until acknowledged, retried with the same
 * client_message_id across reconnects.
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

  /** Per-conversation positions and the messages held behind gaps. */
  private readonly sequencer: Sequencer;
  private readonly outbox: Outbox;
  /** Whether a connect must resume with `sync`: after the first welcome, or from the start when initialPositions were given. */
  private resumeOnConnect: boolean;
  /** A resume sync is running on the current connection (gap fills wait for it). */
  private syncing = false;
  /** Sends may go out: connected and past the resume sync's first attempt. */
  private outboxOpen = false;
  /** Gap fills running, per conversation (the token tells a stale loop apart). */
  private readonly fills = new Map<string, object>();
  private readonly counters = { historyFetches: 0, syncPages: 0 };

  constructor(options: SwitchboardClientOptions) {
    super();
    this.options = options;
    this.encoding = options.encoding ?? 'json';
    this.transportFactory = options.transport ?? wsTransport();
    this.random = options.random ?? Math.random;
    this.reconnectEnabled = options.reconnect?.enabled ?? true;
    this.baseDelayMs = options.reconnect?.baseDelayMs ?? DEFAULT_BACKOFF.baseDelayMs;
    this.maxDelayMs = options.reconnect?.maxDelayMs ?? DEFAULT_BACKOFF.maxDelayMs;
    this.stableAfterMs = options.reconnect?.stableAfterMs ?? 10_000;
    this.sequencer = new Sequencer((message) => this.deliver(message), validPositions(options.initialPositions));
    this.resumeOnConnect = options.initialPositions !== undefined;
    const outboxLimit = options.outboxLimit ?? 1000;
    if (!Number.isSafeInteger(outboxLimit) || outboxLimit < 1) {
      throw new InvalidArgumentError('outboxLimit must be a positive integer', { field: 'outboxLimit' });
    }
    this.outbox = new Outbox(outboxLimit, {
      attempt: (request, timeoutMs, deadlineAt) => this.attemptSend(request, timeoutMs, deadlineAt),
      canSend: () => this.outboxOpen && this.stateValue === 'open' && this.current?.welcome !== undefined,
      retryDelay: (attempt, err) => retryDelay(attempt - 1, err.retryAfterMs, this.baseDelayMs, this.maxDelayMs, this.random),
    });
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
   * Per conversation, the highest `seq` handed to the app with nothing
   * missing below it (a copy). Persist it and give it back as
   * `initialPositions` to resume where the app left off.
   */
  positions(): Map<string, number> {
    return this.sequencer.positions();
  }

  /**
   * The sends not acknowledged yet, oldest first. An app that persists them
   * can, after a restart, call sendMessage again with the same
   * `clientMessageId`: the server answers a message it already stored with
   * its original acknowledgement.
   */
  pendingSends(): PendingSend[] {
    return this.outbox.pending();
  }

  deliveryStats(): DeliveryStats {
    return {
      delivered: this.sequencer.counters.delivered,
      duplicates: this.sequencer.counters.duplicates,
      held: this.sequencer.heldCount,
      historyFetches: this.counters.historyFetches,
      syncPages: this.counters.syncPages,
    };
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
        if (!this.stopped) {
          this.setState('idle');
          // Sends made while this first attempt was under way have no connection to wait for.
          this.outbox.failAll(err);
        }
        throw err;
      },
    );
    this.connecting = attempt;
    return attempt;
  }

  /**
   * Closes with 1000, rejects pending requests and unacknowledged sends
   * (SendNotAcknowledgedError 'closed'), stops every timer. Resolves once the
   * socket is closed. Positions (and messages held behind a gap) are kept: a
   * later connect() resumes from them.
   */
  async close(): Promise<void> {
    if (this.stopped && !this.current) return;
    this.stopped = true;
    this.clearClientTimers();
    const conn = this.current;
    this.current = undefined;
    this.connectionLost();
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

  /**
   * Sends a message; resolves with its acknowledgement once it is committed.
   *
   * The send gets its `clientMessageId` (generated when absent) before the
   * first attempt and stays in the outbox until acknowledged: if the
   * connection drops first, it is sent again with the same id after the
   * next connection's resume sync, and the promise resolves with that ack
   * (`duplicate: true` when the first attempt had been committed). Timeouts,
   * rate limits and unavailable backends are retried on the live connection
   * after a backoff. It rejects with the server's error when a retry cannot
   * help (INVALID_ARGUMENT, PERMISSION_DENIED, NOT_FOUND, …), with
   * SendNotAcknowledgedError when its deadline passes, its attempts run out
   * or the client closes, with OutboxFullError when `outboxLimit` sends are
   * pending, and with UnavailableError when the client is neither connected
   * nor connecting. Sends go out in the order they were made; sends in
   * flight together may be committed in any order (await each to order them).
   * A second call with the `clientMessageId` of a pending send shares its promise.
   */
  async sendMessage(input: SendMessageInput, options: SendOptions = {}): Promise<messagingV1.MessageAck> {
    const hasConversation = !!input.conversationId;
    const hasRecipient = !!input.recipientUserId;
    if (hasConversation === hasRecipient) {
      throw new InvalidArgumentError('give exactly one of conversationId or recipientUserId', { field: 'target' });
    }
    if (input.clientMessageId !== undefined && !isSafeId(input.clientMessageId)) {
      throw new InvalidArgumentError('clientMessageId must be 1-128 characters of A-Z, a-z, 0-9, _ or -', { field: 'client_message_id' });
    }
    if (this.stateValue === 'idle' || this.stateValue === 'closed') throw new UnavailableError('not connected');
    const target: framesV1.SendMessage['target'] = hasConversation
      ? { $case: 'conversationId', value: input.conversationId! }
      : { $case: 'recipientUserId', value: input.recipientUserId! };
    return this.outbox.add(
      {
        target,
        clientMessageId: input.clientMessageId ?? newId(),
        text: input.text,
        attachments: input.attachments ?? [],
        mentions: input.mentions ?? [],
        metadata: input.metadata ?? {},
      },
      {
        timeoutMs: options.timeoutMs,
        maxAttempts: options.maxAttempts ?? this.options.sendMaxAttempts ?? 10,
        deadlineMs: options.deadlineMs ?? this.options.sendDeadlineMs ?? 300_000,
      },
    );
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
  /** A room operation (gateway rooms.proto): resolves with the reply case of the same name, or rejects with room's error. */
  async room(request: NonNullable<framesV1.RoomRequest['request']>, options?: RequestOptions): Promise<NonNullable<framesV1.RoomReply['reply']>> {
    const reply = await this.request({ $case: 'roomRequest', value: { request } }, options);
    if (!reply.value.reply) throw new InternalError('room_reply without a reply');
    return reply.value.reply;
  }

  /**
   * Subscribes this connection to broadcast events whose topic matches
   * `pattern` (`*` one token, `>` the rest; covered by the token's `events`
   * claim). With `replayAfterSeq` the stored events after that stream
   * sequence come first (as `event`s, before this resolves), then the live
   * ones. Keep the last `streamSeq` seen and pass it after a reconnect or a
   * `resync`: the subscription lives as long as the connection.
   */
  async subscribeEvents(pattern: string, options: RequestOptions & { replayAfterSeq?: number } = {}): Promise<void> {
    await this.request({ $case: 'subscribeEvents', value: { pattern, replayAfterSeq: options.replayAfterSeq ?? 0 } }, options);
  }

  /** Stops the events of a pattern subscribed with `subscribeEvents` (a pattern not subscribed is no error). */
  async unsubscribeEvents(pattern: string, options?: RequestOptions): Promise<void> {
    await this.request({ $case: 'unsubscribeEvents', value: { pattern } }, options);
  }

  async ping(options?: RequestOptions): Promise<framesV1.Pong & { rttMs: number }> {
    const sent = Date.now();
    const reply = await this.request({ $case: 'ping', value: { clientTimeMs: sent } }, options);
    return { ...reply.value, rttMs: Date.now() - sent };
  }

  // --- in-order delivery, resume, outbox ---

  /** One attempt of an outbox send on the current connection. */
  private async attemptSend(request: framesV1.SendMessage, timeoutMs: number | undefined, deadlineAt: number): Promise<messagingV1.MessageAck> {
    const perAttempt = timeoutMs ?? this.options.requestTimeoutMs ?? 10_000;
    const reply = await this.request({ $case: 'sendMessage', value: request }, { timeoutMs: Math.max(1, Math.min(perAttempt, deadlineAt - Date.now())) });
    return reply.value;
  }

  /** Every message from the server (push, history, sync) enters here; the sequencer decides when the app gets it. */
  private ingest(message: messagingV1.Message): void {
    if (!message.conversationId || !Number.isSafeInteger(message.seq) || message.seq < 1) {
      this.options.logger?.warn({ conversationId: message.conversationId, seq: message.seq }, 'message without a conversation or sequence ignored');
      return;
    }
    // While resuming, a conversation the client has no position for is being synced from its start.
    const outcome = this.sequencer.accept(message, this.syncing ? 0 : undefined);
    if (outcome === 'held') this.fillGap(message.conversationId);
  }

  /** Hands one message to the app; a throwing listener must not stall the conversation. */
  private deliver(message: messagingV1.Message): void {
    try {
      this.emit('message', message);
    } catch (err) {
      this.report(err instanceof Error ? err : new Error(String(err)));
    }
  }

  private onMembership(event: framesV1.ConversationEvent): void {
    const conversationId = event.conversation?.conversationId;
    if (!conversationId) return;
    if (event.member) {
      // A join: the gateway follows with the conversation's messages from the start.
      this.sequencer.startIfUnknown(conversationId, 0);
    } else {
      // Left: what is held there cannot be filled any more (the position stays for a re-join).
      this.fills.delete(conversationId);
      const dropped = this.sequencer.dropHeld(conversationId);
      if (dropped > 0) this.options.logger?.info({ conversationId, dropped }, 'left a conversation with a gap: held messages dropped');
    }
  }

  /** Starts filling a conversation's gap from history, unless a fill runs already or the resume sync will bring it. */
  private fillGap(conversationId: string): void {
    const conn = this.current;
    if (!conn?.welcome || this.stateValue !== 'open' || this.syncing || this.fills.has(conversationId)) return;
    if (!this.sequencer.gap(conversationId)) return;
    const token = {};
    this.fills.set(conversationId, token);
    void this.runFill(conn, conversationId, token).finally(() => {
      if (this.fills.get(conversationId) === token) this.fills.delete(conversationId);
    });
  }

  /**
   * Fetches FORWARD from the position, at most up to the first held message
   * (pages of ≤ 200), until no gap is left; later gaps found meanwhile are
   * filled by the same loop. Retryable failures pause and try again on this
   * connection; a lost connection leaves it to the next resume sync.
   */
  private async runFill(conn: Connection, conversationId: string, token: object): Promise<void> {
    let failures = 0;
    for (;;) {
      if (conn !== this.current || this.fills.get(conversationId) !== token) return;
      const gap = this.sequencer.gap(conversationId);
      if (!gap) return;
      try {
        const page = await this.getHistory({
          conversationId,
          fromSeq: gap.afterSeq,
          direction: messagingV1.Direction.DIRECTION_FORWARD,
          limit: Math.min(MAX_PAGE, gap.beforeSeq - gap.afterSeq - 1),
        });
        this.counters.historyFetches++;
        if (this.fills.get(conversationId) !== token) return;
        for (const message of [...page.messages].sort((a, b) => a.seq - b.seq)) {
          if (message.conversationId === conversationId) this.ingest(message);
        }
        if ((this.sequencer.position(conversationId) ?? 0) <= gap.afterSeq) {
          throw new UnavailableError(`history of ${conversationId} after seq ${gap.afterSeq} does not continue it yet`);
        }
        failures = 0;
      } catch (err) {
        if (conn !== this.current) return; // the next connection's resume sync takes over
        if (!isRetryableError(err)) {
          // Held messages stay held: the next push to the conversation or the next resume tries again.
          this.report(err instanceof Error ? err : new Error(String(err)));
          return;
        }
        this.options.logger?.warn({ err, conversationId, afterSeq: gap.afterSeq }, 'gap fill failed; retrying');
        const pause = retryDelay(failures++, (err as SwitchboardError).retryAfterMs, this.baseDelayMs, this.maxDelayMs, this.random);
        if (!(await this.delay(conn, pause))) return;
      }
    }
  }

  /**
   * Resumes after a (re)connect: `sync` from the positions held, then from
   * each page's resume token while `has_more`, every message through the
   * sequencer (so a live push during the sync is neither lost nor doubled).
   * Then the outbox goes out and any gap left is filled from history.
   */
  private async resume(conn: Connection): Promise<void> {
    this.syncing = true;
    const limit = Math.min(MAX_PAGE, Math.max(1, this.options.syncPageSize ?? MAX_PAGE));
    let failures = 0;
    let pages = 0;
    let messages = 0;
    for (;;) {
      try {
        let resumeToken = '';
        for (;;) {
          const page = await this.sync(resumeToken ? { resumeToken, limit } : { positions: this.positionList(), limit });
          if (conn !== this.current) return;
          this.counters.syncPages++;
          pages++;
          messages += page.messages.length;
          for (const message of page.messages) this.ingest(message);
          if (!page.hasMore) break;
          if (!page.resumeToken) throw new InternalError('sync page has more but no resume token');
          resumeToken = page.resumeToken;
        }
        this.endResume(conn);
        this.emit('synced', { pages, messages });
        this.afterResume(conn);
        return;
      } catch (err) {
        if (conn !== this.current) return; // the next connection resumes again
        // Sends need not wait for a sync that is failing.
        this.openOutbox(conn);
        if (conn !== this.current) return;
        if (!isRetryableError(err)) {
          this.report(err instanceof Error ? err : new Error(String(err)));
          this.endResume(conn);
          this.afterResume(conn);
          return;
        }
        this.options.logger?.warn({ err }, 'resume sync failed; retrying');
        const pause = retryDelay(failures++, (err as SwitchboardError).retryAfterMs, this.baseDelayMs, this.maxDelayMs, this.random);
        if (!(await this.delay(conn, pause))) return;
      }
    }
  }

  private endResume(conn: Connection): void {
    if (conn === this.current) this.syncing = false;
  }

  /** After the resume: unacknowledged sends go out again, and gaps the sync could not close are fetched. */
  private afterResume(conn: Connection): void {
    this.openOutbox(conn);
    if (conn !== this.current) return;
    for (const conversationId of this.sequencer.gappedConversations()) this.fillGap(conversationId);
  }

  private openOutbox(conn: Connection): void {
    if (conn !== this.current || this.outboxOpen) return;
    this.outboxOpen = true;
    this.outbox.pump();
  }

  private positionList(): commonV1.ConversationPosition[] {
    return [...this.sequencer.positions()].map(([conversationId, lastSeq]) => ({ conversationId, lastSeq }));
  }

  /** The current connection is gone (or let go): delivery work tied to it stops; the next one resumes. */
  private connectionLost(): void {
    this.syncing = false;
    this.outboxOpen = false;
    this.fills.clear();
    this.outbox.connectionLost();
  }

  /** Waits on a connection's clock: true when the time passed, false when the connection ended first. */
  private delay(conn: Connection, ms: number): Promise<boolean> {
    if (conn !== this.current) return Promise.resolve(false);
    return new Promise((resolve) => {
      const entry = {
        timer: setTimeout(() => {
          conn.delays.delete(entry);
          resolve(conn === this.current);
        }, ms),
        done: resolve,
      };
      conn.delays.add(entry);
    });
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
        delays: new Set(),
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
    else if (frame.kind?.$case === 'batch') {
      // Coalesced pushes: each in the order the gateway queued them.
      for (const inner of frame.kind.value.frames) this.onPush(conn, inner);
    } else this.onPush(conn, frame);
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
    const resume = this.resumeOnConnect;
    this.resumeOnConnect = true;
    // Sends wait for the resume sync; with nothing to resume they may go at once.
    this.outboxOpen = !resume;
    conn.settleOpen(undefined);
    this.emit('welcome', welcome);
    this.emit('frame', frame);
    if (conn !== this.current) return; // a listener closed it
    if (resume) void this.resume(conn);
    else this.outbox.pump();
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
        if (kind.value.message) this.ingest(kind.value.message);
        break;
      case 'conversation':
        this.onMembership(kind.value);
        break;
      case 'event':
        if (kind.value.event) this.emit('event', kind.value.event);
        break;
      case 'reconnect':
        this.onReconnectRequested(conn, kind.value);
        break;
      case 'tokenExpiring':
        // The token expired: a fresh one within the grace keeps the connection (else it closes with 4001).
        void this.refreshToken(conn);
        break;
      case 'resync':
        // The gateway dropped pushes for us (we read too slowly): catch up by sequence.
        if (conn === this.current && !this.syncing) void this.resume(conn);
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

  private async refreshToken(conn: Connection): Promise<void> {
    const source = this.options.token;
    if (typeof source === 'string' || conn !== this.current) return;
    try {
      await this.request({ $case: 'refreshToken', value: { token: await source() } });
    } catch (err) {
      this.report(err instanceof SwitchboardError ? err : new UnauthenticatedError('token refresh failed', { cause: err }));
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
      this.connectionLost();
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
    this.connectionLost();
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
    this.outbox.failAll(error);
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
    for (const delay of [...conn.delays]) {
      clearTimeout(delay.timer);
      delay.done(false);
    }
    conn.delays.clear();
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

/** initialPositions as entries, checked: safe conversation ids, non-negative integer sequences. */
function validPositions(
  positions: ReadonlyMap<string, number> | Readonly<Record<string, number>> | undefined,
): [string, number][] {
  if (positions === undefined) return [];
  const entries: [string, number][] = positions instanceof Map ? [...positions] : Object.entries(positions);
  for (const [conversationId, seq] of entries) {
    if (!isSafeId(conversationId)) {
      throw new InvalidArgumentError(`initialPositions: ${JSON.stringify(conversationId)} is not a conversation id`, { field: 'initialPositions' });
    }
    if (!Number.isSafeInteger(seq) || seq < 0) {
      throw new InvalidArgumentError(`initialPositions: the position of ${conversationId} must be a non-negative integer`, { field: 'initialPositions' });
    }
  }
  return entries;
}
