import { connectOrUnavailable, type Pool, type PoolClient } from '@switchboard/postgres';
import type { messagingV1 } from '@switchboard/proto';
import type { Histogram } from '@switchboard/telemetry';
import type { SendRequest } from './store';

const DEADLOCK_DETECTED = '40P01';

type Ack = messagingV1.MessageAck;

interface Pending {
  request: SendRequest;
  resolve(ack: Ack): void;
  reject(err: unknown): void;
}

type Outcome = { ok: true; ack: Ack } | { ok: false; error: unknown; lostRace: boolean };

/**
 * Group commit for sends. A send runs at once when a transaction slot is
 * free, so a quiet system adds no latency; when every slot is busy, the sends
 * that queue up meanwhile run together in the next transaction: one commit
 * (one WAL flush) for many messages. Each send has its own savepoint, so one
 * failing send (not a member, a lost client-id race) never fails the others.
 */
export class SendBatcher {
  private readonly queue: Pending[] = [];
  private inFlight = 0;
  /** Conversations (lock keys) with a batch running. */
  private readonly busy = new Set<string>();

  constructor(
    private readonly pool: Pool,
    private readonly limits: { maxConcurrent: number; maxBatch: number },
    private readonly sendIn: (db: PoolClient, request: SendRequest) => Promise<Ack>,
    private readonly originalOf: (request: SendRequest) => Promise<Ack | undefined>,
    private readonly batchSize?: Histogram,
  ) {}

  submit(request: SendRequest): Promise<Ack> {
    return new Promise((resolve, reject) => {
      this.queue.push({ request, resolve, reject });
      this.pump();
    });
  }

  /**
   * Starts batches while slots are free. A conversation is in at most one
   * running batch: its later sends wait for the next one instead of blocking
   * on the conversation's row lock inside another transaction (which would
   * turn concurrent batches into a convoy).
   */
  private pump(): void {
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
      void this.run(batch).finally(() => {
        for (const key of keys) this.busy.delete(key);
        this.inFlight -= 1;
        this.pump();
      });
    }
  }

  /** One send under its own savepoint; a deadlock victim is tried once more (its locks were released by the rollback). */
  private async attempt(db: PoolClient, request: SendRequest): Promise<Outcome> {
    for (let attempt = 1; ; attempt += 1) {
      await db.query('SAVEPOINT send');
      try {
        await db.query(`SELECT set_config('app.tenant_id', $1, true)`, [request.tenantId]);
        const ack = await this.sendIn(db, request);
        await db.query('RELEASE SAVEPOINT send');
        return { ok: true, ack };
      } catch (error) {
        await db.query('ROLLBACK TO SAVEPOINT send');
        const { code, constraint } = error as { code?: string; constraint?: string };
        if (code === DEADLOCK_DETECTED && attempt < 2) continue;
        return { ok: false, error, lostRace: constraint === 'messages_client_message_id' };
      }
    }
  }

  private async run(batch: Pending[]): Promise<void> {
    this.batchSize?.record(batch.length);
    // Lock conversations in one order across concurrent batches, so two
    // batches never wait on each other in a cycle. The sort is stable: sends
    // to one conversation keep their order.
    const ordered = [...batch].sort((a, b) => (lockKey(a.request) < lockKey(b.request) ? -1 : lockKey(a.request) > lockKey(b.request) ? 1 : 0));
    let db: PoolClient;
    try {
      db = await connectOrUnavailable(this.pool);
    } catch (err) {
      for (const pending of batch) pending.reject(err);
      return;
    }
    const outcomes: Outcome[] = [];
    try {
      await db.query('BEGIN');
      for (const { request } of ordered) {
        outcomes.push(await this.attempt(db, request));
      }
      await db.query('COMMIT');
    } catch (err) {
      await db.query('ROLLBACK').catch(() => undefined);
      db.release();
      // Nothing of this batch was committed; every sender may retry with the same client id.
      for (const pending of batch) pending.reject(err);
      return;
    }
    db.release();
    await Promise.all(
      ordered.map(async (pending, index) => {
        const outcome = outcomes[index]!;
        if (outcome.ok) return pending.resolve(outcome.ack);
        if (!outcome.lostRace) return pending.reject(outcome.error);
        // A concurrent retry of the same send committed first: answer with its ack.
        try {
          const original = await this.originalOf(pending.request);
          if (original) pending.resolve(original);
          else pending.reject(outcome.error);
        } catch (err) {
          pending.reject(err);
        }
      }),
    );
  }
}

function lockKey({ tenantId, target, message }: SendRequest): string {
  return 'conversationId' in target ? `${tenantId}/c/${target.conversationId}` : `${tenantId}/d/${[message.senderId, target.recipientUserId].sort().join(':')}`;
}
