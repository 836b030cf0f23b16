import type { ClientDuplexStream, ServiceError } from '@grpc/grpc-js';
import { DeadlineExceededError, InternalError, SwitchboardError, UnavailableError } from '@switchboard/errors';
import { fromServiceError, GrpcStatus, tenantToMetadata, type PromiseClient } from '@switchboard/grpc';
import type { messagingV1 } from '@switchboard/proto';
import { injectTraceContext } from '@switchboard/telemetry';
import type { Identity } from './auth';

type Messaging = PromiseClient<messagingV1.MessagingServiceClient>;
type Ack = messagingV1.MessageAck;
type Batch = messagingV1.SendMessagesRequest;
type BatchResponse = messagingV1.SendMessagesResponse;
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
 *
 * The batches travel on one long-lived SendMessagesStream per tenant
 * (SendStream below), so even a batch of one costs a stream message, not a
 * call. When a stream breaks, the batches it carried fail as their calls
 * would have (each send gets the error; clients retry with the same client
 * message id) and the next batch opens a new stream. A messaging that does
 * not serve the stream yet (UNIMPLEMENTED, a rolling deploy) gets unary
 * SendMessages calls from then on, the refused batches included.
 */
export class MessagingSends {
  private readonly queues = new Map<string, QueuedSend[]>();
  private inFlight = 0;
  private flushScheduled = false;
  /** One open stream per tenant that sent lately. */
  private readonly streams = new Map<string, SendStream>();
  /** False once messaging answered UNIMPLEMENTED to the stream: unary calls from then on. */
  private streaming = true;
  private readonly idleSweep: NodeJS.Timeout;

  constructor(
    private readonly messaging: Messaging,
    private readonly limits: SendBatchLimits,
    /** A tenant's stream that carried nothing for this long is ended. */
    private readonly streamIdleMs = 60_000,
  ) {
    this.idleSweep = setInterval(() => this.endIdleStreams(), Math.max(1000, streamIdleMs / 2)).unref();
  }

  /** Ends every stream (gateway shutdown); batches still waiting fail as UNAVAILABLE. */
  close(): void {
    clearInterval(this.idleSweep);
    this.streaming = false;
    for (const stream of this.streams.values()) stream.end();
    this.streams.clear();
  }

  private endIdleStreams(): void {
    const idleSince = Date.now() - this.streamIdleMs;
    for (const [tenantId, stream] of this.streams) {
      if (stream.idle(idleSince)) {
        stream.end();
        this.streams.delete(tenantId);
      }
    }
  }

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
      const { results } = await this.sendBatch(
        tenantId,
        { context, items: live.map(({ item, deadlineAt }) => ({ ...item, deadlineMs: Math.max(1, deadlineAt - now) })) },
        Math.max(...live.map((queued) => queued.deadlineAt - now)),
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

  /** One batch on the tenant's stream (opened if needed), or as a unary call once messaging refused streams. */
  private async sendBatch(tenantId: string, batch: Batch, deadlineMs: number): Promise<BatchResponse> {
    if (this.streaming) {
      let stream = this.streams.get(tenantId);
      if (!stream || stream.closed) {
        stream = new SendStream(this.messaging.raw, tenantId);
        this.streams.set(tenantId, stream);
      }
      try {
        return await stream.send(batch, deadlineMs);
      } catch (err) {
        if (this.streams.get(tenantId) === stream && stream.closed) this.streams.delete(tenantId);
        if (!(err instanceof StreamUnimplemented)) throw err;
        // Nothing was served: the batch goes again, as the unary call this messaging knows.
        this.streaming = false;
      }
    }
    return this.messaging.sendMessages(batch, { context: batch.context!, deadlineMs });
  }
}

/** The stream was refused as unknown (a messaging without SendMessagesStream): nothing of it was served. */
class StreamUnimplemented extends Error {}

interface PendingBatch {
  resolve(response: BatchResponse): void;
  reject(err: unknown): void;
  timer: NodeJS.Timeout;
}

/**
 * A tenant's SendMessagesStream: batches go out with an id, answers come
 * back by id in any order. Each batch has its own deadline timer (the
 * deadline its unary call would have had). When the stream ends or fails,
 * every batch still waiting fails with the stream's error.
 */
class SendStream {
  private readonly call: ClientDuplexStream<messagingV1.SendMessagesStreamRequest, messagingV1.SendMessagesStreamResponse>;
  private readonly pending = new Map<number, PendingBatch>();
  private nextId = 1;
  private lastUsed = Date.now();
  closed = false;

  constructor(client: messagingV1.MessagingServiceClient, tenantId: string) {
    // The tenant and the internal proof, once; no trace context: the stream outlives any one send, and each item carries its own.
    this.call = client.sendMessagesStream(tenantToMetadata({ tenantId, userId: '', deviceId: '', internal: true }));
    this.call.on('data', (answer: messagingV1.SendMessagesStreamResponse) => this.answer(answer));
    this.call.on('error', (err: ServiceError) => {
      this.fail(err.code === GrpcStatus.UNIMPLEMENTED ? new StreamUnimplemented(err.details) : fromServiceError(err));
    });
    // A clean end (messaging shut down, or this side ended it): what still waits was not answered.
    this.call.on('status', () => this.fail(new UnavailableError('messaging closed the send stream before answering; the send may not have been stored, retry it with the same client message id')));
  }

  /** No batch waits and none was sent since `since`. */
  idle(since: number): boolean {
    return this.pending.size === 0 && this.lastUsed < since;
  }

  send(request: Batch, deadlineMs: number): Promise<BatchResponse> {
    if (this.closed) return Promise.reject(new UnavailableError('the send stream to messaging is closed; retry the send'));
    this.lastUsed = Date.now();
    const id = this.nextId;
    this.nextId = this.nextId >= 0xffffffff ? 1 : this.nextId + 1;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new DeadlineExceededError(`deadline exceeded: messaging did not answer the batch within ${deadlineMs} ms`));
      }, deadlineMs);
      this.pending.set(id, { resolve, reject, timer });
      this.call.write({ id, deadlineMs: Math.max(1, Math.ceil(deadlineMs)), request });
    });
  }

  /** Half-closes: messaging answers what it has, then ends the stream. */
  end(): void {
    if (this.closed) return;
    this.closed = true;
    this.call.end();
  }

  private answer(answer: messagingV1.SendMessagesStreamResponse): void {
    const batch = this.pending.get(answer.id);
    if (!batch) return; // past its deadline: its sends were already told
    this.pending.delete(answer.id);
    clearTimeout(batch.timer);
    const outcome = answer.outcome;
    if (outcome?.$case === 'response') batch.resolve(outcome.value);
    else if (outcome?.$case === 'error') batch.reject(SwitchboardError.fromProto(outcome.value));
    else batch.reject(new InternalError('messaging answered a streamed batch without its outcome'));
  }

  private fail(err: unknown): void {
    this.closed = true;
    for (const batch of this.pending.values()) {
      clearTimeout(batch.timer);
      batch.reject(err);
    }
    this.pending.clear();
  }
}
