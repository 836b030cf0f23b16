import { FailedPreconditionError, InvalidArgumentError, PermissionDeniedError, QuotaExceededError, UnavailableError } from '@switchboard/errors';
import { assertSafeId, newId } from '@switchboard/ids';
import type { Logger } from '@switchboard/logging';
import {
  decodeEnvelope,
  DeliverPolicy,
  ensureEventStream,
  EVENT_STREAM,
  EVENT_STREAM_SUBJECT,
  eventStreamClients,
  newEnvelope,
  parseEventPattern,
  parseEventTopic,
  patternCovers,
  patternMatches,
  publishEnvelopeToStream,
  subjects,
  type EventTokens,
  type JetStreamClient,
  type JetStreamManager,
  type JsMsg,
  type NatsConnection,
} from '@switchboard/nats';
import type { eventsV1, framesV1, gatewayV1 } from '@switchboard/proto';
import type { Counter, Meter } from '@switchboard/telemetry';
import { encodeServerFrame, type Encoding } from './codec';
import type { GatewayConfig } from './config';
import type { Connection } from './connection';

/** An event as stored in the stream, decoded once and encoded at most once per encoding for all its recipients. */
interface StoredEvent {
  tenantId: string;
  topic: EventTokens;
  event: eventsV1.BroadcastEvent;
  encoded: Partial<Record<Encoding, string | Buffer>>;
}

interface EventSubscription {
  connection: Connection;
  pattern: string;
  tokens: EventTokens;
  /** Highest stream sequence delivered through this subscription: nothing at or below it is pushed again. */
  lastSeq: number;
  /** While its replay runs: the live events that matched, pushed once the replay has caught up. */
  held: StoredEvent[] | undefined;
  removed: boolean;
}

/** The subscriptions of one tenant with the same pattern: matched once per event. */
interface PatternEntry {
  tokens: EventTokens;
  subscriptions: Set<EventSubscription>;
}

/** `type/subtype` with optional parameters, printable ASCII (RFC 6838 names). */
const CONTENT_TYPE = /^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,63}\/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,63}(\s*;[ -~]*)?$/;
const MAX_CONTENT_TYPE_LENGTH = 127;
const DEFAULT_CONTENT_TYPE = 'application/octet-stream';
/** Envelope fields and headers (trace context, message id) around a payload, allowed on top of it in the stream. */
const ENVELOPE_OVERHEAD_BYTES = 8 * 1024;
/** Events fetched from the stream per round trip while replaying. */
const REPLAY_BATCH = 256;
/** A replay fetch that returns nothing within this (events deleted by retention meanwhile) ends the replay. */
const REPLAY_FETCH_EXPIRES_MS = 5000;

/**
 * Live event broadcasting (docs/architecture.md, "Live events"). Every
 * event is stored first in the JetStream stream SB_EVENTS; each gateway
 * tails the whole stream with one ordered consumer (from the newest event at
 * its start) and matches each event against the patterns its connections
 * subscribed, per tenant, so every push carries the event's stream
 * sequence. A subscription with `replay_after_seq` first reads the stored
 * events after that sequence with its own short-lived ordered consumer
 * (filtered on the tenant and pattern) while the live events that match it
 * wait, then sends the waiting ones it did not replay: in order, no gap, no
 * duplicate.
 */
export class EventBroadcast {
  private js!: JetStreamClient;
  private jsm!: JetStreamManager;
  private tail: { close(): Promise<void | Error> } | undefined;
  /** tenant → pattern → subscriptions: an event is matched against its own tenant's distinct patterns only. */
  private readonly byTenant = new Map<string, Map<string, PatternEntry>>();
  private readonly byConnection = new Map<Connection, Map<string, EventSubscription>>();
  private readonly delivered: Counter;
  private readonly published: Counter;

  constructor(
    private readonly nats: NatsConnection,
    private readonly config: GatewayConfig,
    private readonly logger: Logger,
    meter: Meter,
  ) {
    if (config.EVENT_STREAM_DUPLICATE_WINDOW_MS > config.EVENT_STREAM_MAX_AGE_MS) {
      throw new Error(`EVENT_STREAM_DUPLICATE_WINDOW_MS (${config.EVENT_STREAM_DUPLICATE_WINDOW_MS}) must not exceed EVENT_STREAM_MAX_AGE_MS (${config.EVENT_STREAM_MAX_AGE_MS})`);
    }
    this.delivered = meter.createCounter('gateway_events_delivered_total', { description: 'Broadcast events pushed to sockets, live or replayed' });
    this.published = meter.createCounter('gateway_events_published_total', { description: 'PublishEvent calls stored in the event stream (duplicate: a retried request_id)' });
  }

  /** Creates or updates the stream to this gateway's settings, then starts tailing it. */
  async start(): Promise<void> {
    ({ js: this.js, jsm: this.jsm } = await eventStreamClients(this.nats));
    const ensured = await ensureEventStream(this.jsm, {
      maxAgeMs: this.config.EVENT_STREAM_MAX_AGE_MS,
      maxBytes: this.config.EVENT_STREAM_MAX_BYTES,
      duplicateWindowMs: this.config.EVENT_STREAM_DUPLICATE_WINDOW_MS,
      maxMessageBytes: this.config.EVENT_MAX_PAYLOAD_BYTES + ENVELOPE_OVERHEAD_BYTES,
      replicas: this.config.EVENT_STREAM_REPLICAS,
    });
    this.logger.info({ stream: EVENT_STREAM, outcome: ensured.outcome, changed: ensured.changed, lastSeq: ensured.info.state.last_seq }, 'event stream ready');
    // Ordered: the client re-creates it from the last sequence seen after a NATS restart, so live delivery has no gap.
    const consumer = await this.js.consumers.get(EVENT_STREAM, {
      name_prefix: `gateway_${this.config.GATEWAY_ID}`,
      filter_subjects: [EVENT_STREAM_SUBJECT],
      deliver_policy: DeliverPolicy.New,
    });
    const messages = await consumer.consume();
    this.tail = messages;
    void (async () => {
      for await (const msg of messages) this.onLive(msg);
    })().catch((err) => this.logger.error({ err }, 'the event stream tail stopped'));
  }

  async stop(): Promise<void> {
    await this.tail?.close();
  }

  // ---------------------------------------------------------------- publish

  /** PublishEvent: validates, stores in the stream (once per request_id), answers the stored event. */
  async publish(tenantId: string, request: gatewayV1.PublishEventRequest, deadlineMs: number): Promise<gatewayV1.PublishEventResponse> {
    parseEventTopic(request.topic, 'topic');
    const payload = request.payload ?? Buffer.alloc(0);
    if (payload.length > this.config.EVENT_MAX_PAYLOAD_BYTES) {
      throw new InvalidArgumentError(`payload is ${payload.length} bytes; an event carries at most ${this.config.EVENT_MAX_PAYLOAD_BYTES}`, { field: 'payload' });
    }
    const contentType = request.contentType || DEFAULT_CONTENT_TYPE;
    if (contentType.length > MAX_CONTENT_TYPE_LENGTH || !CONTENT_TYPE.test(contentType)) {
      throw new InvalidArgumentError(`content_type must be a MIME type such as application/json (type/subtype, at most ${MAX_CONTENT_TYPE_LENGTH} printable characters)`, { field: 'content_type' });
    }
    // The stream drops a repeated Nats-Msg-Id within its duplicate window; the tenant keeps two tenants' ids apart.
    const eventId = request.requestId ? `${tenantId}:${assertSafeId(request.requestId, 'request_id')}` : newId();
    const envelope = newEnvelope(tenantId, { $case: 'broadcastEvent', value: { topic: request.topic, payload, contentType, streamSeq: 0 } }, eventId);
    let ack;
    try {
      ack = await publishEnvelopeToStream(this.js, subjects.event(tenantId, request.topic), envelope, {
        stream: EVENT_STREAM,
        timeoutMs: Math.max(100, Math.min(deadlineMs, this.config.BACKEND_DEADLINE_MS)),
      });
    } catch (err) {
      throw new UnavailableError('the event stream did not confirm the event; retry with the same request_id', { cause: err, retryAfterMs: 1000 });
    }
    this.published.add(1, { duplicate: String(ack.duplicate) });
    if (!ack.duplicate) return { event: { topic: request.topic, payload, contentType, streamSeq: ack.seq }, duplicate: false };
    // A retry: answer what was stored the first time (the retry's own fields are not stored).
    const stored = await this.jsm.streams.getMessage(EVENT_STREAM, { seq: ack.seq });
    if (!stored) throw new UnavailableError(`the event stored first for this request_id (stream_seq ${ack.seq}) is no longer in the stream`, { retryAfterMs: 1000 });
    const original = decodeEnvelope(stored).envelope.event;
    if (original?.$case !== 'broadcastEvent') throw new Error(`stream sequence ${ack.seq} holds no broadcast event`);
    return { event: { ...original.value, streamSeq: ack.seq }, duplicate: true };
  }

  // ---------------------------------------------------------------- subscriptions

  /**
   * subscribe_events: the pattern must be covered by the token's `events`
   * claim; within the tenant of the token only. With `replayAfterSeq` > 0
   * the stored events after it are pushed (in order) before this resolves,
   * then the live ones.
   */
  async subscribe(connection: Connection, pattern: string, replayAfterSeq: number): Promise<void> {
    const tokens = parseEventPattern(pattern, 'pattern');
    const allowed = connection.identity.eventPatterns;
    if (!allowed.some((claim) => patternCovers(parseEventPattern(claim, 'events'), tokens))) {
      throw new PermissionDeniedError(
        allowed.length === 0
          ? 'this connection may subscribe to no events: its token has no events claim'
          : `the token's events claim (${allowed.join(', ')}) does not cover ${pattern}`,
        { field: 'pattern' },
      );
    }
    const mine = this.byConnection.get(connection);
    const existing = mine?.get(pattern);
    if (existing && replayAfterSeq === 0) return;
    if (!existing && (mine?.size ?? 0) >= this.config.EVENT_SUBSCRIPTIONS_PER_CONNECTION) {
      throw new QuotaExceededError(`a connection holds at most ${this.config.EVENT_SUBSCRIPTIONS_PER_CONNECTION} event subscriptions; unsubscribe one first`, { field: 'pattern' });
    }
    // Only a live one is put back if the new replay is refused (a replaying one's held events are gone).
    const restorable = existing && !existing.held ? existing : undefined;
    if (existing) this.remove(existing);
    const subscription: EventSubscription = { connection, pattern, tokens, lastSeq: replayAfterSeq, held: replayAfterSeq > 0 ? [] : undefined, removed: false };
    this.add(subscription);
    if (replayAfterSeq === 0) return;
    try {
      await this.replay(subscription, replayAfterSeq);
    } catch (err) {
      // A refused or failed replay changes nothing: no new subscription, the one it was to replace stays (live).
      this.remove(subscription);
      if (restorable && connection.open) {
        restorable.removed = false;
        this.add(restorable);
      }
      throw err;
    }
    if (subscription.removed) return;
    const held = subscription.held ?? [];
    subscription.held = undefined;
    for (const stored of held) this.deliver(subscription, stored);
    // The replayed events leave before the reply: what follows the `ok` is live.
    connection.flushPushes();
  }

  /** unsubscribe_events: delivery for this pattern stops at once; unknown patterns are a no-op. */
  unsubscribe(connection: Connection, pattern: string): void {
    const subscription = this.byConnection.get(connection)?.get(pattern);
    if (subscription) this.remove(subscription);
  }

  /** The connection closed. */
  detach(connection: Connection): void {
    for (const subscription of [...(this.byConnection.get(connection)?.values() ?? [])]) this.remove(subscription);
  }

  private add(subscription: EventSubscription): void {
    const { connection, pattern } = subscription;
    let mine = this.byConnection.get(connection);
    if (!mine) this.byConnection.set(connection, (mine = new Map()));
    mine.set(pattern, subscription);
    let patterns = this.byTenant.get(connection.tenantId);
    if (!patterns) this.byTenant.set(connection.tenantId, (patterns = new Map()));
    let entry = patterns.get(pattern);
    if (!entry) patterns.set(pattern, (entry = { tokens: subscription.tokens, subscriptions: new Set() }));
    entry.subscriptions.add(subscription);
  }

  private remove(subscription: EventSubscription): void {
    subscription.removed = true;
    subscription.held = undefined;
    const { connection, pattern } = subscription;
    const mine = this.byConnection.get(connection);
    if (mine?.get(pattern) === subscription) {
      mine.delete(pattern);
      if (mine.size === 0) this.byConnection.delete(connection);
    }
    const patterns = this.byTenant.get(connection.tenantId);
    const entry = patterns?.get(pattern);
    if (!patterns || !entry) return;
    entry.subscriptions.delete(subscription);
    if (entry.subscriptions.size > 0) return;
    patterns.delete(pattern);
    if (patterns.size === 0) this.byTenant.delete(connection.tenantId);
  }

  /**
   * Reads the stored events after `afterSeq` that match the subscription
   * (its tenant's subject, its pattern) with an ordered consumer made for
   * this replay. It reads exactly the events stored when the consumer was
   * made: everything stored later reached the tail after the subscription
   * was registered, so it is among the held live events.
   */
  private async replay(subscription: EventSubscription, afterSeq: number): Promise<void> {
    const { connection, pattern } = subscription;
    const consumer = await this.js.consumers.get(EVENT_STREAM, {
      name_prefix: `replay_${this.config.GATEWAY_ID}`,
      filter_subjects: [subjects.event(connection.tenantId, pattern, true)],
      deliver_policy: DeliverPolicy.StartSequence,
      opt_start_seq: afterSeq + 1,
    });
    try {
      let remaining = (await consumer.info(true)).num_pending;
      if (remaining > this.config.EVENT_REPLAY_MAX_EVENTS) {
        throw new FailedPreconditionError(
          `${remaining} stored events match ${pattern} after stream_seq ${afterSeq}, more than the ${this.config.EVENT_REPLAY_MAX_EVENTS} a replay delivers: replay from a later seq, or subscribe without replay`,
          { field: 'replay_after_seq' },
        );
      }
      while (remaining > 0 && !subscription.removed && connection.open) {
        const batch = await consumer.fetch({ max_messages: Math.min(remaining, REPLAY_BATCH), expires: REPLAY_FETCH_EXPIRES_MS });
        let received = 0;
        for await (const msg of batch) {
          received += 1;
          remaining -= 1;
          const stored = this.storedEvent(msg);
          if (stored && !subscription.removed) this.deliver(subscription, stored);
        }
        if (received === 0) break;
      }
    } finally {
      await consumer.delete().catch(() => undefined);
    }
  }

  // ---------------------------------------------------------------- delivery

  private storedEvent(msg: JsMsg): StoredEvent | undefined {
    // sb.<tenant>.evt.<topic…>: the subject names the tenant and topic the stream filtered on.
    const tokens = msg.subject.split('.');
    const tenantId = tokens[1]!;
    try {
      const { envelope } = decodeEnvelope(msg);
      if (envelope.event?.$case !== 'broadcastEvent' || envelope.tenantId !== tenantId) {
        this.logger.warn({ subject: msg.subject, seq: msg.seq }, 'dropping a stored event that is no broadcast event of its subject\'s tenant');
        return undefined;
      }
      const topic = tokens.slice(3);
      return { tenantId, topic, event: { ...envelope.event.value, topic: topic.join('.'), streamSeq: msg.seq }, encoded: {} };
    } catch (err) {
      this.logger.warn({ err, subject: msg.subject, seq: msg.seq }, 'dropping an undecodable stored event');
      return undefined;
    }
  }

  /** A live event from the tail: to every subscription of its tenant whose pattern matches; once per connection. */
  private onLive(msg: JsMsg): void {
    const patterns = this.byTenant.get(msg.subject.split('.')[1]!);
    if (!patterns) return;
    const stored = this.storedEvent(msg);
    if (!stored) return;
    const pushed = new Set<Connection>();
    for (const entry of patterns.values()) {
      if (!patternMatches(entry.tokens, stored.topic)) continue;
      for (const subscription of entry.subscriptions) {
        if (subscription.held) subscription.held.push(stored);
        // Several matching patterns of one connection: one push.
        else if (pushed.has(subscription.connection)) subscription.lastSeq = Math.max(subscription.lastSeq, stored.event.streamSeq);
        else if (this.deliver(subscription, stored)) pushed.add(subscription.connection);
      }
    }
  }

  private deliver(subscription: EventSubscription, stored: StoredEvent): boolean {
    if (stored.event.streamSeq <= subscription.lastSeq) return false;
    subscription.lastSeq = stored.event.streamSeq;
    const { connection } = subscription;
    const frame: framesV1.ServerFrame = { requestId: '', kind: { $case: 'event', value: { event: stored.event } } };
    const encoded = (stored.encoded[connection.encoding] ??= encodeServerFrame(frame, connection.encoding));
    connection.push(frame, encoded);
    this.delivered.add(1);
    return true;
  }
}
