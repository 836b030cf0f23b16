import { asSwitchboardError, ErrorCode, OverloadedError, UnsupportedError } from '@switchboard/errors';
import type { PromiseClient } from '@switchboard/grpc';
import type { Logger } from '@switchboard/logging';
import type { framesV1, messagingV1 } from '@switchboard/proto';
import { LATENCY_BUCKETS_SECONDS, type Histogram, type Meter } from '@switchboard/telemetry';
import type { Connection } from './connection';
import type { Rooms } from './rooms';
import type { PresenceLink } from './presence';
import type { EventBroadcast } from './events';
import { MessagingSends, type SendBatchLimits } from './send-batch';

type Messaging = PromiseClient<messagingV1.MessagingServiceClient>;
type ClientKind = NonNullable<framesV1.ClientFrame['kind']>;
type ServerKind = NonNullable<framesV1.ServerFrame['kind']>;

/**
 * Turns each client frame into the gRPC call that serves it and answers with
 * the reply (same request_id) or an error frame. A failing frame never ends
 * the connection.
 */
export class FrameHandler {
  private readonly duration: Histogram;
  /** Serves the presence frames (set by main). */
  presence: PresenceLink | undefined;
  /** Serves the event subscription frames (set by main). */
  events: EventBroadcast | undefined;
  /** Sends waiting for messaging's answer. */
  private pendingSends = 0;
  /** Sends leave for messaging in per-tenant batches (send-batch.ts). */
  private readonly sends: MessagingSends;

  constructor(
    private readonly messaging: Messaging,
    private readonly logger: Logger,
    private readonly backendDeadlineMs: number,
    meter: Meter,
    private readonly rooms: Rooms,
    private readonly shedding: { maxPendingSends: number; retryAfterMs: number } = { maxPendingSends: Infinity, retryAfterMs: 500 },
    sendBatch: SendBatchLimits = { maxCalls: 8, maxBatch: 256 },
  ) {
    this.sends = new MessagingSends(messaging, sendBatch);
    this.duration = meter.createHistogram('gateway_frame_duration_seconds', {
      description: 'Time from a client frame to its reply, by frame kind and outcome',
      advice: { explicitBucketBoundaries: LATENCY_BUCKETS_SECONDS },
    });
  }

  /** Ends the send streams to messaging (shutdown, after the WebSockets drained). */
  close(): void {
    this.sends.close();
  }

  async handle(connection: Connection, frame: framesV1.ClientFrame): Promise<void> {
    const started = performance.now();
    const kind = frame.kind!.$case;
    // Any frame but a ping is the user being active (resets auto-away).
    if (kind !== 'ping') this.presence?.markActive(connection);
    try {
      const reply = await this.reply(connection, frame.kind!);
      connection.send({ requestId: frame.requestId, kind: reply });
      this.duration.record((performance.now() - started) / 1000, { kind, outcome: 'ok' });
    } catch (thrown) {
      const err = asSwitchboardError(thrown);
      if (err.code === ErrorCode.ERROR_CODE_INTERNAL) this.logger.error({ err: thrown, kind }, 'frame failed');
      connection.send({ requestId: frame.requestId, kind: { $case: 'error', value: err.toProto() } });
      this.duration.record((performance.now() - started) / 1000, { kind, outcome: ErrorCode[err.code] ?? 'error' });
    }
  }

  private async reply(connection: Connection, kind: ClientKind): Promise<ServerKind> {
    const options = connection.callOptions(this.backendDeadlineMs);
    switch (kind.$case) {
      case 'ping':
        return { $case: 'pong', value: { clientTimeMs: kind.value.clientTimeMs, serverTimeMs: Date.now() } };
      case 'sendMessage': {
        if (this.pendingSends >= this.shedding.maxPendingSends) {
          // Load shedding: refused now (nothing stored), not after the backend deadline.
          throw new OverloadedError('this gateway has more sends waiting for messaging than it queues; try again later', { retryAfterMs: this.shedding.retryAfterMs });
        }
        const { target, ...rest } = kind.value;
        this.pendingSends += 1;
        try {
          const ack = await this.sends.send(connection.identity, { kind: 0, target, ...rest }, this.backendDeadlineMs);
          return { $case: 'messageAck', value: ack };
        } finally {
          this.pendingSends -= 1;
        }
      }
      case 'getHistory': {
        const page = await this.messaging.getHistory({ context: undefined, ...kind.value }, options);
        return { $case: 'historyPage', value: page };
      }
      case 'sync': {
        const page = await this.messaging.sync({ context: undefined, ...kind.value }, options);
        return { $case: 'syncPage', value: { messages: page.messages, resumeToken: page.resumeToken, hasMore: page.hasMore } };
      }
      case 'markDelivered': {
        const { deliveredSeq, readSeq } = await this.messaging.markDelivered({ context: undefined, ...kind.value }, options);
        return { $case: 'receiptState', value: { conversationId: kind.value.conversationId, deliveredSeq, readSeq } };
      }
      case 'markRead': {
        const { deliveredSeq, readSeq } = await this.messaging.markRead({ context: undefined, ...kind.value }, options);
        return { $case: 'receiptState', value: { conversationId: kind.value.conversationId, deliveredSeq, readSeq } };
      }
      case 'listConversations': {
        const result = await this.messaging.listConversations({ context: undefined, page: kind.value.page }, options);
        return { $case: 'conversationList', value: { conversations: result.conversations, page: result.page } };
      }
      case 'roomRequest':
        return { $case: 'roomReply', value: await this.rooms.handle(kind.value, options) };
      case 'typing':
      case 'setPresence':
      case 'watchPresence':
      case 'unwatchPresence':
      case 'getPresence':
      case 'enterConversation':
      case 'leaveConversation':
        if (!this.presence) throw new UnsupportedError(`${kind.$case} frames need presence, which this gateway runs without`, { field: kind.$case });
        return this.presence.reply(connection, kind);
      case 'subscribeEvents':
        if (!this.events) throw new UnsupportedError('subscribe_events frames need the event stream, which this gateway runs without', { field: kind.$case });
        await this.events.subscribe(connection, kind.value.pattern, kind.value.replayAfterSeq);
        return { $case: 'ok', value: {} };
      case 'unsubscribeEvents':
        if (!this.events) throw new UnsupportedError('unsubscribe_events frames need the event stream, which this gateway runs without', { field: kind.$case });
        this.events.unsubscribe(connection, kind.value.pattern);
        return { $case: 'ok', value: {} };
      case 'refreshToken':
        // Served by GatewayServer (session.ts): it changes the connection, not a backend.
        throw new UnsupportedError('refresh_token is served by the gateway itself', { field: kind.$case });
    }
  }
}
