import { DeadlineExceededError, InternalError, SwitchboardError } from '@switchboard/errors';
import type { PromiseClient } from '@switchboard/grpc';
import type { messagingV1 } from '@switchboard/proto';
import { injectTraceContext } from '@switchboard/telemetry';
import type { Identity } from './auth';

type Messaging = PromiseClient<messagingV1.MessagingServiceClient>;
type Ack = messagingV1.MessageAck;
/** A client's send as the frame carries it (the acting user comes from the connection, never from the frame). */
export type ClientSend = Omit<messagingV1.SendMessageRequest, 'context'>;

interface QueuedSend {
  item: Omit<messagingV1.SendMessagesItem, 'deadlineMs'>;
  /** When the client stops waiting (ms since the epoch). */
  deadlineAt: number;
  resolve(ack: Ack): void;
  reject(err: unknown): void;
}

export interface SendBatchLimits {
  /** SendMessages calls in flight at once; sends that arrive meanwhile wait and leave together in the next call. */
  maxCalls: number;
  /** Most sends in one call. */
  maxBatch: number;
}

/**
 * The gateway's sends to messaging, batched per tenant: every send that
 * arrives in one event-loop turn (and, while `maxCalls` calls are in flight,
 * until one returns) leaves in one internal SendMessages call, each item
 * carrying its own user, device, roles, deadline and trace context and
 * getting its own ack or error. A quiet gateway adds no wait (one turn);
 * under load a send costs an item in a batch instead of a gRPC call of its
 * own (an HTTP/2 stream, metadata, a deadline timer, on both sides).
 */
export class MessagingSends {
  private readonly queues = new Map<string, QueuedSend[]>();
  private inFlight = 0;
  private flushScheduled = false;

  constructor(
    private readonly messaging: Messaging,
    private readonly limits: SendBatchLimits,
  ) {}

  /** Sends as the connection's user; resolves with the ack after messaging committed it, rejects with the send's own error. */
  send(identity: Identity, request: ClientSend, deadlineMs: number): Promise<Ack> {
    const { tenantId, userId, deviceId, roles } = identity;
    return new Promise((resolve, reject) => {
      const item = { userId, deviceId, roles: [...roles], traceContext: injectTraceContext({}), request: { context: undefined, ...request } };
      let queue = this.queues.get(tenantId);
      if (!queue) this.queues.set(tenantId, (queue = []));
      queue.push({ item, deadlineAt: Date.now() + deadlineMs, resolve, reject });
      this.schedule();
    });
  }

  private schedule(): void {
    if (this.flushScheduled) return;
    this.flushScheduled = true;
    // After this turn's I/O callbacks: the frames read together leave together.
    setImmediate(() => {
      this.flushScheduled = false;
      this.flush();
    });
  }

  /** Starts calls while there is room, one batch per tenant in turn so that no tenant's queue holds up another's. */
  private flush(): void {
    while (this.inFlight < this.limits.maxCalls && this.queues.size > 0) {
      for (const [tenantId, queue] of this.queues) {
        if (this.inFlight >= this.limits.maxCalls) return;
        const batch = queue.splice(0, this.limits.maxBatch);
        if (queue.length === 0) this.queues.delete(tenantId);
        void this.call(tenantId, batch);
      }
    }
  }

  private async call(tenantId: string, batch: QueuedSend[]): Promise<void> {
    const now = Date.now();
    const live: QueuedSend[] = [];
    for (const queued of batch) {
      if (queued.deadlineAt > now) live.push(queued);
      else queued.reject(new DeadlineExceededError('the send waited past its deadline at the gateway and was not stored; retry it with the same client message id'));
    }
    if (live.length === 0) return;
    this.inFlight += 1;
    try {
      const context = { tenantId, userId: '', deviceId: '', internal: true };
      const { results } = await this.messaging.sendMessages(
        { context, items: live.map(({ item, deadlineAt }) => ({ ...item, deadlineMs: Math.max(1, deadlineAt - now) })) },
        { context, deadlineMs: Math.max(...live.map((queued) => queued.deadlineAt - now)) },
      );
      live.forEach((queued, index) => {
        const outcome = results[index]?.outcome;
        if (outcome?.$case === 'ack') queued.resolve(outcome.value);
        else if (outcome?.$case === 'error') queued.reject(SwitchboardError.fromProto(outcome.value));
        else queued.reject(new InternalError('messaging answered a batch without this send\'s outcome'));
      });
    } catch (err) {
      // The call as a whole failed (messaging unreachable, the deadline): every send of it fails alike, as a call of its own would.
      for (const queued of live) queued.reject(err);
    } finally {
      this.inFlight -= 1;
      if (this.queues.size > 0) this.schedule();
    }
  }
}
