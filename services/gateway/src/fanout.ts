import { audienceConversationsOf } from '@switchboard/ids';
import { decodeEnvelope, subjects, type NatsConnection, type Subscription } from '@switchboard/nats';
import type { PromiseClient } from '@switchboard/grpc';
import type { Logger } from '@switchboard/logging';
import { framesV1, messagingV1, type eventsV1 } from '@switchboard/proto';
import type { HotCounter } from '@switchboard/telemetry';
import { encodeServerFrame, type Encoding } from './codec';
import type { Connection } from './connection';
import type { ConversationSubscriptions, Rooms } from './rooms';
import { TimerWheel } from './timer-wheel';

type Messaging = PromiseClient<messagingV1.MessagingServiceClient>;

/** What the presence link adds to the fan-out (services/gateway/src/presence.ts). */
export interface FanoutHooks {
  conversationsListed(connection: Connection, conversations: messagingV1.Conversation[]): void;
  conversationJoined(connection: Connection, conversation: messagingV1.Conversation | undefined): void;
  conversationLeft(connection: Connection, conversationId: string): void;
  /** Another user joined or left a conversation the connection is in. */
  memberChanged(connection: Connection, conversationId: string, userId: string, member: boolean): void;
  /** Event kinds the fan-out itself does not handle. */
  onEvent(subject: string, envelope: eventsV1.Envelope, targets: Connection[]): void;
}

interface Interest {
  subscription: Subscription;
  connections: Set<Connection>;
}

/**
 * Routes NATS events to this gateway's sockets. One NATS subscription per
 * subject however many local connections want it (reference counted), one
 * decode per event, one encode per encoding; per connection and conversation
 * deliveries are de-duplicated and gap-filled by sequence from messaging.
 */
export class Fanout implements ConversationSubscriptions {
  private readonly interests = new Map<string, Interest>();
  private readonly inFlight = new Map<string, Promise<unknown>>();
  hooks: FanoutHooks | undefined;
  /** Receipt windows of all connections on one timer. */
  private readonly receiptWindows: TimerWheel<Connection>;
  /**
   * A message pushed to many sockets is encoded once per encoding and the
   * same bytes go to each (the event's decoded message object is shared by
   * every target of one dispatch, so it keys the cache).
   */
  private readonly encodedMessages = new WeakMap<messagingV1.Message, Partial<Record<Encoding, string | Buffer>>>();

  constructor(
    private readonly nats: NatsConnection,
    private readonly messaging: Messaging,
    private readonly logger: Logger,
    private readonly delivered: HotCounter,
    private readonly backendDeadlineMs: number,
    private readonly receiptWindowMs: number,
    private readonly rooms: Rooms,
  ) {
    this.receiptWindows = new TimerWheel(Math.max(10, Math.floor(receiptWindowMs / 2)));
  }

  get subjectCount(): number {
    return this.interests.size;
  }

  /** Subscribes a new connection to its user subject and its conversations; resolves once NATS has the subscriptions. */
  async attach(connection: Connection): Promise<void> {
    this.add(subjects.user(connection.tenantId, connection.userId), connection);
    // Tenant-wide audiences of the token's roles, including those nothing was broadcast to yet.
    for (const conversationId of audienceConversationsOf(connection.identity.roles)) this.join(connection, conversationId);
    let pageToken = '';
    // A user in very many conversations still gets a bounded start-up cost.
    for (let page = 0; page < 50; page += 1) {
      const result = await this.messaging.listConversations(
        { context: undefined, page: { pageSize: 200, pageToken } },
        connection.callOptions(this.backendDeadlineMs),
      );
      for (const conversation of result.conversations) this.join(connection, conversation.conversationId);
      this.hooks?.conversationsListed(connection, result.conversations);
      pageToken = result.page?.nextPageToken ?? '';
      if (!pageToken) break;
    }
    await this.nats.flush();
  }

  detach(connection: Connection): void {
    this.receiptWindows.cancel(connection);
    this.remove(subjects.user(connection.tenantId, connection.userId), connection);
    for (const conversationId of connection.conversations) {
      this.remove(subjects.conversation(connection.tenantId, conversationId), connection);
    }
    connection.conversations.clear();
  }

  /** Reference-counted subscription of one connection to a subject (one NATS subscription per subject per gateway). */
  subscribe(subject: string, connection: Connection): void {
    this.add(subject, connection);
  }

  unsubscribe(subject: string, connection: Connection): void {
    this.remove(subject, connection);
  }

  connectionsOn(subject: string): Connection[] {
    return [...(this.interests.get(subject)?.connections ?? [])];
  }

  private join(connection: Connection, conversationId: string): void {
    if (connection.conversations.has(conversationId)) return;
    connection.conversations.add(conversationId);
    this.add(subjects.conversation(connection.tenantId, conversationId), connection);
  }

  private add(subject: string, connection: Connection): void {
    let interest = this.interests.get(subject);
    if (!interest) {
      const subscription = this.nats.subscribe(subject, {
        callback: (err, msg) => {
          if (err) return this.logger.warn({ err, subject }, 'subscription failed');
          this.dispatch(subject, msg);
        },
      });
      interest = { subscription, connections: new Set() };
      this.interests.set(subject, interest);
    }
    interest.connections.add(connection);
  }

  private remove(subject: string, connection: Connection): void {
    const interest = this.interests.get(subject);
    if (!interest) return;
    interest.connections.delete(connection);
    if (interest.connections.size === 0) {
      interest.subscription.unsubscribe();
      this.interests.delete(subject);
    }
  }

  private dispatch(subject: string, msg: Parameters<typeof decodeEnvelope>[0]): void {
    const interest = this.interests.get(subject);
    if (!interest || interest.connections.size === 0) return;
    let envelope: eventsV1.Envelope;
    try {
      envelope = decodeEnvelope(msg).envelope;
    } catch (err) {
      this.logger.warn({ err, subject }, 'dropping an undecodable event');
      return;
    }
    const event = envelope.event;
    const targets = [...interest.connections].filter((c) => c.tenantId === envelope.tenantId);
    switch (event?.$case) {
      case 'messageCreated': {
        const message = event.value.message;
        if (!message) return;
        for (const connection of targets) this.deliverInOrder(connection, message);
        return;
      }
      case 'conversationMembershipChanged': {
        const change = event.value;
        for (const connection of targets) void this.onMembership(connection, change);
        return;
      }
      case 'receiptUpdated': {
        for (const connection of targets) this.queueReceipt(connection, event.value);
        return;
      }
      case 'roomMembershipChanged': {
        this.rooms.onMembership(subject === subjects.user(envelope.tenantId, event.value.userId), targets, event.value, this);
        return;
      }
      case 'roomUpdated': {
        this.rooms.onRoomUpdated(targets, event.value, this);
        return;
      }
      case 'notificationCreated': {
        // A notification service that crashed mid-publish sends some again with the same id: each device sees it once.
        const fresh = targets.filter((connection) => connection.firstSight(event.value.notificationId));
        this.broadcast(fresh, { requestId: '', kind: { $case: 'notification', value: { notification: event.value, badgeCount: event.value.badgeCount } } });
        return;
      }
      case 'badgeCountChanged': {
        // Reading on one device lowers the badge on all of them.
        this.broadcast(targets, { requestId: '', kind: { $case: 'notification', value: { notification: undefined, badgeCount: event.value.unread } } });
        return;
      }
      default:
        this.hooks?.onEvent(subject, envelope, targets);
        return;
    }
  }

  /**
   * Receipts are coalesced per connection: within the window only the latest
   * watermark per (conversation, user) is kept and all go out as one frame, so
   * a sender whose message was delivered to fifty devices gets one frame, not fifty.
   */
  private queueReceipt(connection: Connection, receipt: eventsV1.ReceiptUpdated): void {
    const key = `${receipt.conversationId}:${receipt.userId}`;
    if (connection.pendingReceipts) {
      const previous = connection.pendingReceipts.get(key);
      connection.pendingReceipts.set(key, {
        ...receipt,
        deliveredSeq: Math.max(receipt.deliveredSeq, previous?.deliveredSeq ?? 0),
        readSeq: Math.max(receipt.readSeq, previous?.readSeq ?? 0),
      });
      return;
    }
    connection.pendingReceipts = new Map([[key, receipt]]);
    this.receiptWindows.schedule(connection, Date.now() + this.receiptWindowMs, () => {
      const receipts = [...(connection.pendingReceipts?.values() ?? [])];
      connection.pendingReceipts = undefined;
      if (receipts.length > 0) connection.push({ requestId: '', kind: { $case: 'receipt', value: { receipts } } });
    });
  }

  /** Sends one frame to many connections, encoding it once per encoding. */
  private broadcast(targets: Connection[], frame: framesV1.ServerFrame): void {
    const encoded = new Map<Encoding, string | Buffer>();
    for (const connection of targets) {
      let data = encoded.get(connection.encoding);
      if (data === undefined) {
        data = encodeServerFrame(frame, connection.encoding);
        encoded.set(connection.encoding, data);
      }
      connection.push(frame, data);
    }
  }

  private async onMembership(connection: Connection, change: eventsV1.ConversationMembershipChanged): Promise<void> {
    if (change.userId !== connection.userId) return;
    if (!change.member) {
      this.leaveConversation(connection, change.conversationId);
      connection.push({
        requestId: '',
        kind: { $case: 'conversation', value: { conversation: messagingV1.Conversation.fromPartial({ tenantId: connection.tenantId, conversationId: change.conversationId, kind: change.kind }), member: false } },
      });
      return;
    }
    await this.joinConversation(connection, change.conversationId);
  }

  leaveConversation(connection: Connection, conversationId: string): void {
    if (!connection.conversations.delete(conversationId)) return;
    this.remove(subjects.conversation(connection.tenantId, conversationId), connection);
    this.hooks?.conversationLeft(connection, conversationId);
  }

  memberChanged(connection: Connection, conversationId: string, userId: string, member: boolean): void {
    if (connection.conversations.has(conversationId)) this.hooks?.memberChanged(connection, conversationId, userId, member);
  }

  async joinConversation(connection: Connection, conversationId: string): Promise<void> {
    if (connection.conversations.has(conversationId)) return;
    this.join(connection, conversationId);
    // Everything from the start of a conversation joined during this connection
    // is delivered: what NATS sent before the subscription existed comes from history.
    if (!connection.delivered?.has(conversationId)) (connection.delivered ??= new Map()).set(conversationId, 0);
    try {
      await this.nats.flush();
      const { conversation } = await this.once(`conv/${connection.tenantId}/${connection.userId}/${conversationId}`, () =>
        this.messaging.getConversation(
          { context: undefined, conversationId },
          connection.callOptions(this.backendDeadlineMs),
        ),
      );
      this.hooks?.conversationJoined(connection, conversation);
      // Through the push queue like the messages that follow, so order holds.
      connection.push({ requestId: '', kind: { $case: 'conversation', value: { conversation, member: true } } });
      if (conversation && conversation.lastSeq > 0) {
        await this.chain(connection, conversationId, () => this.fillGap(connection, conversationId, conversation.lastSeq + 1));
      }
    } catch (err) {
      this.logger.warn({ err, conversationId }, 'could not catch up a joined conversation; the client will sync');
    }
  }

  private deliverInOrder(connection: Connection, message: messagingV1.Message): void {
    void this.chain(connection, message.conversationId, async () => {
      const last = connection.delivered?.get(message.conversationId);
      if (last !== undefined && message.seq <= last) return;
      if (last !== undefined && message.seq > last + 1) await this.fillGap(connection, message.conversationId, message.seq);
      this.sendMessage(connection, message);
    });
  }

  /** Fetches and delivers what lies between the last delivered sequence and `beforeSeq` (exclusive). */
  private async fillGap(connection: Connection, conversationId: string, beforeSeq: number): Promise<void> {
    let from = connection.delivered?.get(conversationId) ?? 0;
    while (from + 1 < beforeSeq && connection.open) {
      const limit = Math.min(200, beforeSeq - from - 1);
      const page = await this.once(`history/${connection.tenantId}/${connection.userId}/${conversationId}/${from}/${limit}`, () =>
        this.messaging.getHistory(
          { context: undefined, conversationId, fromSeq: from, direction: messagingV1.Direction.DIRECTION_FORWARD, limit },
          connection.callOptions(this.backendDeadlineMs),
        ),
      );
      for (const message of page.messages) if (message.seq < beforeSeq) this.sendMessage(connection, message);
      const next = connection.delivered?.get(conversationId) ?? from;
      if (next === from || !page.hasMore) break;
      from = next;
    }
  }

  /**
   * Single flight: concurrent identical reads share one call. When a user
   * with many devices here joins a conversation, or their devices see the
   * same gap, messaging answers once, not once per device. The key always
   * includes the user, so membership is checked for whoever reads.
   */
  private once<T>(key: string, call: () => Promise<T>): Promise<T> {
    const running = this.inFlight.get(key) as Promise<T> | undefined;
    if (running) return running;
    const started = call().finally(() => this.inFlight.delete(key));
    this.inFlight.set(key, started);
    return started;
  }

  private sendMessage(connection: Connection, message: messagingV1.Message): void {
    const last = connection.delivered?.get(message.conversationId);
    if (last !== undefined && message.seq <= last) return;
    (connection.delivered ??= new Map()).set(message.conversationId, message.seq);
    const frame: framesV1.ServerFrame = { requestId: '', kind: { $case: 'message', value: { message } } };
    let encoded = this.encodedMessages.get(message);
    if (!encoded) this.encodedMessages.set(message, (encoded = {}));
    connection.push(frame, (encoded[connection.encoding] ??= encodeServerFrame(frame, connection.encoding)));
    this.delivered.add(1);
  }

  private chain(connection: Connection, conversationId: string, step: () => Promise<void>): Promise<void> {
    const chains = (connection.deliveryChains ??= new Map());
    const previous = chains.get(conversationId) ?? Promise.resolve();
    const next = previous.then(step).catch((err: unknown) => {
      this.logger.warn({ err, conversationId, connection: connection.id }, 'delivery failed; the client recovers by sync');
    });
    chains.set(conversationId, next);
    void next.then(() => {
      if (chains.get(conversationId) === next) chains.delete(conversationId);
    });
    return next;
  }
}
