import type { framesV1, messagingV1 } from '@switchboard/proto';
import { SwitchboardError } from '@switchboard/errors';
import { OutboxFullError, SendNotAcknowledgedError, isRetryableError } from './errors';

/** An unacknowledged send, as {@link Outbox.pending} reports it (for apps that persist their outbox). */
export interface PendingSend {
  clientMessageId: string;
  /** Exactly one of conversationId or recipientUserId is set. */
  conversationId?: string;
  recipientUserId?: string;
  text: string;
  attachments: messagingV1.Attachment[];
  mentions: string[];
  metadata: Record<string, string>;
  /** Frames sent so far (> 0: the message may already be committed). */
  attempts: number;
  /** When sendMessage was called. */
  createdAt: Date;
  /** When the client gives up on it. */
  deadlineAt: Date;
}

export interface OutboxSendOptions {
  /** Deadline of one attempt (default: the client's request timeout). */
  timeoutMs?: number | undefined;
  maxAttempts: number;
  deadlineMs: number;
}

export interface OutboxHooks {
  /** Sends one attempt on the current connection and resolves with the ack. */
  attempt(request: framesV1.SendMessage, timeoutMs: number | undefined, deadlineAt: number): Promise<messagingV1.MessageAck>;
  /** Whether attempts may go out now (connected, and the resume sync is over). */
  canSend(): boolean;
  /** How long to wait before retrying on the same connection after this failed attempt (1-based). */
  retryDelay(attempt: number, err: SwitchboardError): number;
}

type Timer = ReturnType<typeof setTimeout>;

interface Entry {
  request: framesV1.SendMessage;
  timeoutMs: number | undefined;
  maxAttempts: number;
  createdAt: number;
  deadlineAt: number;
  attempts: number;
  /** queued: waits for canSend(); inflight: an attempt is out; backoff: waits for retryTimer. */
  state: 'queued' | 'inflight' | 'backoff';
  lastError: unknown;
  promise: Promise<messagingV1.MessageAck>;
  resolve: (ack: messagingV1.MessageAck) => void;
  reject: (err: Error) => void;
  deadlineTimer: Timer | undefined;
  retryTimer: Timer | undefined;
}

/**
 * Unacknowledged sends, keyed by client_message_id, in the order they were
 * made. Each stays until its ack arrives (and resolves with it), it fails
 * with an error a retry cannot fix, or the client gives up on it
 * ({@link SendNotAcknowledgedError}: deadline, attempts, close). A send whose
 * connection dropped waits for the next connection (the client calls
 * {@link pump} once the resume sync is done); one that failed on a live
 * connection (timeout, rate limit, a backend unavailable) is retried on it
 * after a backoff. Every retry carries the same client_message_id, so the
 * server stores the message at most once.
 */
export class Outbox {
  private readonly entries = new Map<string, Entry>();

  constructor(
    private readonly limit: number,
    private readonly hooks: OutboxHooks,
  ) {}

  get size(): number {
    return this.entries.size;
  }

  /**
   * Adds a send (its `clientMessageId` already set) and dispatches it when it
   * can. A send whose client_message_id is already pending shares that
   * send's promise.
   */
  add(request: framesV1.SendMessage, options: OutboxSendOptions): Promise<messagingV1.MessageAck> {
    const existing = this.entries.get(request.clientMessageId);
    if (existing) return existing.promise;
    if (this.entries.size >= this.limit) return Promise.reject(new OutboxFullError(this.limit));
    const now = Date.now();
    let resolve!: (ack: messagingV1.MessageAck) => void;
    let reject!: (err: Error) => void;
    const promise = new Promise<messagingV1.MessageAck>((res, rej) => {
      resolve = res;
      reject = rej;
    });
    const entry: Entry = {
      request,
      timeoutMs: options.timeoutMs,
      maxAttempts: Math.max(1, options.maxAttempts),
      createdAt: now,
      deadlineAt: now + Math.max(0, options.deadlineMs),
      attempts: 0,
      state: 'queued',
      lastError: undefined,
      promise,
      resolve,
      reject,
      deadlineTimer: undefined,
      retryTimer: undefined,
    };
    entry.deadlineTimer = setTimeout(() => {
      entry.deadlineTimer = undefined;
      this.giveUp(entry, new SendNotAcknowledgedError('deadline', request.clientMessageId, entry.attempts, entry.lastError));
    }, Math.max(0, options.deadlineMs));
    this.entries.set(request.clientMessageId, entry);
    this.pump();
    return promise;
  }

  /** Dispatches every queued send, oldest first, if sends may go out now. */
  pump(): void {
    if (!this.hooks.canSend()) return;
    for (const entry of this.entries.values()) {
      if (entry.state !== 'queued') continue;
      this.dispatch(entry);
      if (!this.hooks.canSend()) return;
    }
  }

  /** The connection is gone: sends waiting to retry on it wait for the next one instead. */
  connectionLost(): void {
    for (const entry of this.entries.values()) {
      if (entry.state !== 'backoff') continue;
      clearTimer(entry.retryTimer);
      entry.retryTimer = undefined;
      entry.state = 'queued';
    }
  }

  /** Rejects every pending send with SendNotAcknowledgedError('closed') and stops their timers. */
  failAll(cause?: unknown): void {
    for (const entry of [...this.entries.values()]) {
      this.giveUp(entry, new SendNotAcknowledgedError('closed', entry.request.clientMessageId, entry.attempts, cause ?? entry.lastError));
    }
  }

  /** Snapshots of the pending sends, oldest first. */
  pending(): PendingSend[] {
    return [...this.entries.values()].map((entry) => {
      const { target, clientMessageId, text, attachments, mentions, metadata } = entry.request;
      return {
        clientMessageId,
        ...(target?.$case === 'conversationId' ? { conversationId: target.value } : {}),
        ...(target?.$case === 'recipientUserId' ? { recipientUserId: target.value } : {}),
        text,
        attachments: [...attachments],
        mentions: [...mentions],
        metadata: { ...metadata },
        attempts: entry.attempts,
        createdAt: new Date(entry.createdAt),
        deadlineAt: new Date(entry.deadlineAt),
      };
    });
  }

  private dispatch(entry: Entry): void {
    entry.state = 'inflight';
    entry.attempts++;
    let attempt: Promise<messagingV1.MessageAck>;
    try {
      attempt = this.hooks.attempt(entry.request, entry.timeoutMs, entry.deadlineAt);
    } catch (err) {
      attempt = Promise.reject(err);
    }
    attempt.then(
      (ack) => {
        if (!this.isCurrent(entry)) return;
        this.remove(entry);
        entry.resolve(ack);
      },
      (err: unknown) => this.onAttemptFailed(entry, err),
    );
  }

  private onAttemptFailed(entry: Entry, err: unknown): void {
    if (!this.isCurrent(entry)) return;
    entry.lastError = err;
    if (!isRetryableError(err)) {
      this.remove(entry);
      entry.reject(err instanceof Error ? err : new Error(String(err)));
      return;
    }
    if (entry.attempts >= entry.maxAttempts) {
      this.giveUp(entry, new SendNotAcknowledgedError('attempts', entry.request.clientMessageId, entry.attempts, err));
      return;
    }
    if (!this.hooks.canSend()) {
      // The connection dropped (or is resuming): the next one retries it, after its sync.
      entry.state = 'queued';
      return;
    }
    // Failed on a live connection: a timeout, a rate limit, a backend that is down. Retry on it after a pause.
    entry.state = 'backoff';
    const delayMs = Math.max(0, this.hooks.retryDelay(entry.attempts, err as SwitchboardError));
    entry.retryTimer = setTimeout(() => {
      entry.retryTimer = undefined;
      if (!this.isCurrent(entry) || entry.state !== 'backoff') return;
      entry.state = 'queued';
      this.pump();
    }, delayMs);
  }

  private giveUp(entry: Entry, err: SendNotAcknowledgedError): void {
    if (!this.isCurrent(entry)) return;
    this.remove(entry);
    entry.reject(err);
  }

  private isCurrent(entry: Entry): boolean {
    return this.entries.get(entry.request.clientMessageId) === entry;
  }

  private remove(entry: Entry): void {
    this.entries.delete(entry.request.clientMessageId);
    clearTimer(entry.deadlineTimer);
    clearTimer(entry.retryTimer);
    entry.deadlineTimer = entry.retryTimer = undefined;
  }
}

function clearTimer(timer: Timer | undefined): void {
  if (timer !== undefined) clearTimeout(timer);
}
