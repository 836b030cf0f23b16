import { DeadlineExceededError, OverloadedError } from '@switchboard/errors';
import { connectOrUnavailable, type Pool, type PoolClient } from '@switchboard/postgres';
import type { messagingV1 } from '@switchboard/proto';
import type { Counter, Histogram } from '@switchboard/telemetry';
import { OutboxWriter } from './outbox-writer';
import type { SendRequest } from './store';

const DEADLOCK_DETECTED = '40P01';
const CLIENT_ID_INDEX = 'messages_client_message_id';

type Ack = messagingV1.MessageAck;

/** A send's outcome in a batch: its ack, or its refusal. */
export type Outcome = { ok: true; ack: Ack } | { ok: false; error: unknown };

/**
 * The sends of one tenant inside a batch transaction whose `app.tenant_id` is
 * that tenant: one outcome per request, in order (a refusal is an outcome,
 * any other error aborts the transaction); their events go to `outbox`.
 */
export type SendAllIn = (db: PoolClient, requests: SendRequest[], outbox: OutboxWriter, opening: string) => Promise<Outcome[]>;

/** What the batcher runs: the store's statements. */
export interface SendStatements {
  /** Prepares the batch statements on a connection (once per connection). */
  prepare(db: PoolClient): Promise<void>;
  /** The sends of one tenant; `opening` is the SQL that shares the round trip of their first statement (BEGIN, the tenant setting). */
  sendAllIn: SendAllIn;
  /** After losing a client-id race: the winner's ack. */
  originalOf(request: SendRequest): Promise<Ack | undefined>;
}

interface Pending {
  request: SendRequest;
  /** When it was queued, and when its caller stops waiting (ms since the epoch; Infinity = never). */
  queuedAt: number;
  deadlineAt: number;
  resolve(ack: Ack): void;
  reject(err: unknown): void;
}

export interface BatchLimits {
  /** Transactions running at once. */
  maxConcurrent: number;
  /** Most sends in one transaction. */
  maxBatch: number;
  /** Most sends waiting for a slot; beyond it a send is refused with OVERLOADED. Unbounded when absent. */
  maxQueued?: number;
  /**
   * A send is refused with OVERLOADED when the oldest waiting send has
   * waited longer than this: the queue is not draining, so a new send would
   * wait as long and more (the length bound alone lets every queued send
   * wait past its deadline when each transaction is slow). No bound when absent.
   */
  maxQueueWaitMs?: number;
  /** The retry hint of that refusal. */
  retryAfterMs?: number;
}

/**
 * Group commit for sends. The sends of one event-loop turn run together as
 * soon as a transaction slot is free, so a quiet system adds no latency;
 * when every slot is busy, the sends that queue up meanwhile run together in
 * the next transaction: one commit (one WAL flush), one send statement per
 * tenant and one outbox insert for many messages.
 *
 * The sends of one tenant are stored by one statement (messaging's store);
 * a send that is refused (not a member, a reused client id) is left out of
 * it without touching the database, so the others commit.
 * A database error aborts the whole transaction: then each send of the batch
 * runs again alone, so one bad send never fails the others, and the rare
 * race (two replicas committing the same client id) answers with the
 * winner's acknowledgement.
 */
export class SendBatcher {
  private readonly queue: Pending[] = [];
  private inFlight = 0;
  private pumpScheduled = false;
  /** Conversations (lock keys) with a batch running. */
  private readonly busy = new Set<string>();

  constructor(
    private readonly pool: Pool,
    private readonly limits: BatchLimits,
    private readonly statements: SendStatements,
    private readonly batchSize?: Histogram,
    private readonly shed?: Counter,
  ) {}

  /**
   * Queues a send. When the queue is at its bound the send is refused at
   * once (OVERLOADED, nothing stored): under overload some sends fail fast
   * and are retried later, instead of every send waiting past its deadline.
   */
  submit(request: SendRequest, deadlineAt = Infinity): Promise<Ack> {
    const now = Date.now();
    // The bound is on sends waiting for a transaction slot: with one free, the sends of this turn start now instead.
    if (this.limits.maxQueued !== undefined && this.queue.length >= this.limits.maxQueued && this.inFlight < this.limits.maxConcurrent) this.pump();
    const full = this.limits.maxQueued !== undefined && this.queue.length >= this.limits.maxQueued;
    const stalled = this.limits.maxQueueWaitMs !== undefined && this.queue.length > 0 && now - this.queue[0]!.queuedAt > this.limits.maxQueueWaitMs;
    if (full || stalled) {
      this.shed?.add(1, { reason: full ? 'queue_full' : 'queue_wait' });
      const why = full ? 'more sends waiting to commit than it queues' : `sends waiting longer than ${this.limits.maxQueueWaitMs} ms to commit`;
      return Promise.reject(new OverloadedError(`messaging has ${why}; try again later`, { retryAfterMs: this.limits.retryAfterMs ?? 500 }));
    }
    return new Promise((resolve, reject) => {
      this.queue.push({ request, queuedAt: now, deadlineAt, resolve, reject });
      this.schedulePump();
    });
  }

  /**
   * Batches start at the end of the event-loop turn, not on each submit: the
   * sends that arrived in one turn (the items of one SendMessages call) share
   * a transaction and a statement instead of taking a free slot each.
   */
  private schedulePump(): void {
    if (this.pumpScheduled) return;
    this.pumpScheduled = true;
    setImmediate(() => {
      this.pumpScheduled = false;
      this.pump();
    });
  }

  /** Sends whose callers stopped waiting are dropped unstored: committing them would only delay the sends still awaited. */
  private dropAbandoned(now: number): void {
    if (!this.queue.some((pending) => pending.deadlineAt <= now)) return;
    const kept: Pending[] = [];
    for (const pending of this.queue) {
      if (pending.deadlineAt > now) kept.push(pending);
      else {
        this.shed?.add(1, { reason: 'deadline' });
        pending.reject(new DeadlineExceededError('the send waited past its deadline and was not stored; retry it with the same client message id'));
      }
    }
    this.queue.splice(0, this.queue.length, ...kept);
  }

  /**
   * Starts batches while slots are free. A conversation is in at most one
   * running batch: its later sends wait for the next one instead of blocking
   * on the conversation's row lock inside another transaction (which would
   * turn concurrent batches into a convoy).
   */
  private pump(): void {
    if (this.inFlight < this.limits.maxConcurrent) this.dropAbandoned(Date.now());
    while (this.inFlight < this.limits.maxConcurrent && this.queue.length > 0) {
      const batch: Pending[] = [];
      const keys = new Set<string>();
      const waiting: Pending[] = [];
      for (const pending of this.queue) {
        const key = lockKey(pending.request);
        if (batch.length < this.limits.maxBatch && !this.busy.has(key)) {
          batch.push(pending);
          keys.add(key);
        } else {
          // Stays queued in order: later sends of a conversation never overtake earlier ones.
          waiting.push(pending);
        }
      }
      if (batch.length === 0) return;
      this.queue.splice(0, this.queue.length, ...waiting);
      for (const key of keys) this.busy.add(key);
      this.inFlight += 1;
      this.batchSize?.record(batch.length);
      // Lock conversations in one order across concurrent batches, so two
      // batches never wait on each other in a cycle. The sort is stable:
      // sends to one conversation keep their order, and a tenant's sends
      // are adjacent (one set_config per tenant).
      const ordered = batch.sort((a, b) => compare(lockKey(a.request), lockKey(b.request)));
      void this.run(ordered).finally(() => {
        for (const key of keys) this.busy.delete(key);
        this.inFlight -= 1;
        this.pump();
      });
    }
  }

  private async run(batch: Pending[], attempt = 1): Promise<void> {
    let db: PoolClient;
    try {
      db = await connectOrUnavailable(this.pool);
    } catch (err) {
      for (const pending of batch) pending.reject(err);
      return;
    }
    const outbox = new OutboxWriter();
    const outcomes: Outcome[] = [];
    try {
      await this.statements.prepare(db);
      // The batch is sorted by lock key, so each tenant's sends are adjacent: one run (one statement) per tenant,
      // whose round trip also scopes the transaction to the tenant (and, for the first, opens it).
      for (let start = 0; start < batch.length; ) {
        const tenantId = batch[start]!.request.tenantId;
        let end = start + 1;
        while (end < batch.length && batch[end]!.request.tenantId === tenantId) end += 1;
        const scope = `SELECT set_config('app.tenant_id', ${db.escapeLiteral(tenantId)}, true); `;
        const requests = batch.slice(start, end).map((pending) => pending.request);
        outcomes.push(...(await this.statements.sendAllIn(db, requests, outbox, start === 0 ? `BEGIN; ${scope}` : scope)));
        start = end;
      }
      // The events and the commit: one more round trip.
      await outbox.writeAndCommit(db);
    } catch (error) {
      await db.query('ROLLBACK').catch(() => undefined);
      db.release();
      await this.recover(batch, error, attempt);
      return;
    }
    db.release();
    batch.forEach((pending, index) => {
      const outcome = outcomes[index]!;
      if (outcome.ok) pending.resolve(outcome.ack);
      else pending.reject(outcome.error);
    });
  }

  /** Nothing of the batch was committed (or the commit's outcome is unknown): each send again, alone. */
  private async recover(batch: Pending[], error: unknown, attempt: number): Promise<void> {
    if (batch.length > 1) {
      for (const pending of batch) await this.run([pending]);
      return;
    }
    const pending = batch[0]!;
    const { code, constraint } = error as { code?: string; constraint?: string };
    // A deadlock victim's locks were released by the rollback: once more.
    if (code === DEADLOCK_DETECTED && attempt < 2) return this.run(batch, attempt + 1);
    if (constraint !== CLIENT_ID_INDEX) return pending.reject(error);
    // A concurrent retry of the same send committed first: answer with its ack.
    try {
      const original = await this.statements.originalOf(pending.request);
      if (original) pending.resolve(original);
      else pending.reject(error);
    } catch (err) {
      pending.reject(err);
    }
  }
}

function compare(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

function lockKey({ tenantId, target, message }: SendRequest): string {
  return 'conversationId' in target ? `${tenantId}/c/${target.conversationId}` : `${tenantId}/d/${[message.senderId, target.recipientUserId].sort().join(':')}`;
}
