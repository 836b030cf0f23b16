import { isSafeId } from '@switchboard/ids';
import { TOPICS } from '@switchboard/kafka';
import type { Logger } from '@switchboard/logging';
import { prepared, withTenantTransaction, type Pool, type PoolClient } from '@switchboard/postgres';
import { eventsV1, messagingV1, notificationV1 } from '@switchboard/proto';
import { metrics, SpanKind, withSpan, type Counter } from '@switchboard/telemetry';
import type { Consumer, EachBatchPayload, KafkaMessage, TopicPartitionOffsetAndMetadata } from 'kafkajs';
import type { NotificationConfig } from './config';
import type { DeadLetters } from './dlq';
import type { LiveNotification, NotificationEvents } from './events';
import { notificationIdFor } from './ids';
import type { Peers, PresenceFact } from './peers';
import { Channel, CHANNELS, route, type Decision, type UserFacts } from './routing';
import { dndState } from './schedule';
import { localeChain, preferenceFor, resolveTemplate, type Preferences, type PushDeviceRecord, type SettingsStore, type StoredTemplate, type TenantPolicy } from './settings';
import { render } from './templates';

const { Priority } = notificationV1;
const { MessageKind } = messagingV1;

/** In-app previews stay short; the message itself is one tap away. */
const PREVIEW_LENGTH = 200;

function preview(text: string): string {
  if (text.length <= PREVIEW_LENGTH) return text;
  // Never between the two halves of a character outside the BMP (an emoji): half of one is no character at all, and
  // PostgreSQL refuses it in the batch's JSON.
  const end = isHighSurrogate(text.charCodeAt(PREVIEW_LENGTH - 2)) ? PREVIEW_LENGTH - 2 : PREVIEW_LENGTH - 1;
  return `${text.slice(0, end)}…`;
}

function isHighSurrogate(code: number): boolean {
  return code >= 0xd800 && code <= 0xdbff;
}

/**
 * Message metadata key by which the service that posted a message says it
 * notifies the audience itself (room's announcements go through Notify with
 * their title); the message pipeline then leaves the message alone, so
 * nobody is told twice.
 */
export const NOTIFIED_BY_METADATA = 'notified_by';

/** One notification to create: a source (message event or request) and a user. */
export interface Planned {
  notificationId: string;
  userId: string;
  kind: string;
  urgent: boolean;
  sourceId: string;
  requestId: string;
  roomId: string;
  conversationId: string | undefined;
  messageSeq: number | undefined;
  variables: Record<string, string>;
  data: Record<string, string>;
  expiresAt: Date | undefined;
  createdAt: Date;
  fromMessage: boolean;
  requestedChannels: notificationV1.Channel[];
}

/**
 * `message.mention` for the mentioned, `message.announcement` for
 * announcements, `message.new` for everyone else; the sender and members
 * whose ids are not safe are left out.
 */
export function plannedForMessage(tenantId: string, eventId: string, occurredAt: Date, created: eventsV1.MessageCreated): Planned[] {
  const message = created.message;
  if (!message || message.deleted || message.kind === MessageKind.MESSAGE_KIND_SYSTEM || message.metadata[NOTIFIED_BY_METADATA]) return [];
  const mentioned = new Set(message.mentions);
  const recipients = [...new Set(created.memberIds)].filter((userId) => userId !== message.senderId && isSafeId(userId));
  const text = message.text ? preview(message.text) : 'Sent an attachment';
  return recipients.map((userId) => ({
    notificationId: notificationIdFor(tenantId, eventId, userId),
    userId,
    kind: message.kind === MessageKind.MESSAGE_KIND_ANNOUNCEMENT ? 'message.announcement' : mentioned.has(userId) ? 'message.mention' : 'message.new',
    urgent: false,
    sourceId: eventId,
    requestId: '',
    roomId: '',
    conversationId: message.conversationId,
    messageSeq: message.seq,
    variables: { preview: text, senderId: message.senderId, conversationId: message.conversationId, messageId: message.messageId },
    data: { conversationId: message.conversationId, messageId: message.messageId, seq: String(message.seq), senderId: message.senderId },
    expiresAt: undefined,
    createdAt: occurredAt,
    fromMessage: true,
    requestedChannels: [],
  }));
}

export function plannedForRequest(tenantId: string, occurredAt: Date, request: eventsV1.NotificationRequested, userIds: string[]): Planned[] {
  const excluded = new Set(request.excludeUserIds);
  return [...new Set(userIds)]
    .filter((userId) => isSafeId(userId) && !excluded.has(userId))
    .map((userId) => ({
      notificationId: notificationIdFor(tenantId, request.requestId, userId),
      userId,
      kind: request.kind,
      urgent: request.urgent,
      sourceId: request.requestId,
      requestId: request.requestId,
      roomId: request.roomId,
      conversationId: undefined,
      messageSeq: undefined,
      variables: request.variables,
      data: request.data,
      expiresAt: request.expiresAt,
      createdAt: occurredAt,
      fromMessage: false,
      requestedChannels: request.channels,
    }));
}

type Item =
  | { type: 'message'; tenantId: string; eventId: string; occurredAt: Date; value: eventsV1.MessageCreated }
  | { type: 'request'; tenantId: string; eventId: string; occurredAt: Date; value: eventsV1.NotificationRequested }
  | { type: 'receipt'; tenantId: string; occurredAt: Date; value: eventsV1.ReceiptUpdated };

/** What a batch leaves to do after its commit: announce in app, and badge counts that changed. */
interface Committed {
  live: LiveNotification[];
  badges: Map<string, number>;
  hasDueWork: boolean;
}

export interface PipelineOptions {
  consumer: Consumer;
  pool: Pool;
  settings: SettingsStore;
  events: NotificationEvents;
  peers: Peers;
  deadLetters: DeadLetters;
  logger: Logger;
  config: NotificationConfig;
  /** Called when work is due now (push to send), to wake the delivery worker. */
  wake: () => void;
  /** Push platforms with a provider configured here. */
  usable: () => UsablePlatforms;
}

/**
 * Reads `sb.messages` and `sb.notifications` in the service's consumer group
 * and turns them into notifications, batch by batch:
 *
 * 1. decode (an unreadable record goes to the dead-letter topic, it must not
 *    block its partition);
 * 2. per tenant, gather the facts outside any transaction (room members,
 *    presence), then in one transaction: record receipts, route every
 *    (notification, user), store the notifications, one delivery row per
 *    channel with its decision and reason, and the due work;
 * 3. after the commit: publish in-app, confirm it, then resolve the offsets
 *    (committed to Kafka at most every KAFKA_COMMIT_INTERVAL_MS).
 *
 * The batches of one fetch (one per partition, handed to up to three
 * workers at once) are processed together in one pass: one transaction per
 * tenant for all of them instead of one per partition, so a pass's round
 * trips, commit and publish flush are shared by three times the records.
 * Batches that arrive while a pass runs go in the next one.
 *
 * Notification ids derive from the source and the user, so a redelivered
 * record (restart, rebalance) inserts nothing and therefore sends nothing;
 * a crash between the commit and the in-app publish leaves the in-app
 * delivery in flight, and the delivery worker publishes it when its lease
 * lapses.
 */
export class Pipeline {
  private joined = false;
  /** Per topic and partition, the offset after the last record this member processed (what a commit would say). */
  private readonly resolved = new Map<string, TopicPartitionOffsetAndMetadata>();
  private readonly processed: Counter;
  /** Decoded batches waiting for the next pass, each with what settles its eachBatch. */
  private waiting: { items: Item[]; heartbeat: () => Promise<void>; done: (err?: unknown) => void }[] = [];
  private passScheduled = false;
  private passRunning = false;

  constructor(private readonly options: PipelineOptions) {
    this.processed = metrics.getMeter('notification').createCounter('notification_records_total', { description: 'Kafka records processed, by topic and event' });
  }

  async start(): Promise<void> {
    const { consumer, logger } = this.options;
    consumer.on(consumer.events.GROUP_JOIN, (event) => {
      this.joined = true;
      // A new assignment: offsets resolved for partitions held before are no longer this member's to commit.
      this.resolved.clear();
      logger.info({ groupId: event.payload.groupId, assignment: event.payload.memberAssignment }, 'consuming');
    });
    consumer.on(consumer.events.CRASH, (event) => {
      this.joined = false;
      logger.warn({ err: event.payload.error, restart: event.payload.restart }, 'consumer crashed');
    });
    // A new group starts at the log's beginning so nothing is missed; MAX_EVENT_AGE_MS keeps old messages quiet.
    await consumer.subscribe({ topics: [TOPICS.messages, TOPICS.notifications], fromBeginning: true });
    // Offsets are committed at most every KAFKA_COMMIT_INTERVAL_MS rather than after every batch: a record
    // replayed after a crash or rebalance inserts nothing (ids derive from the source), so the interval only bounds
    // how much is read again, and the commits stop costing a Kafka request per batch. kafkajs's autoCommit commits
    // after every batch whatever its interval, so the batch handler commits itself (interval-bound, and at a stop).
    await consumer.run({
      eachBatchAutoResolve: false,
      autoCommit: false,
      autoCommitInterval: this.options.config.KAFKA_COMMIT_INTERVAL_MS,
      partitionsConsumedConcurrently: 3,
      eachBatch: (payload) => this.batch(payload),
    });
  }

  /** For readiness: joined its group, and not crashed since. */
  check(): void {
    if (!this.joined) throw new Error('not consuming: the consumer has not joined its group');
  }

  /**
   * Commits what this member processed, then stops: a batch still running
   * commits its own offsets as it ends (see batch), but when none is running
   * at the stop, nothing would commit the offsets resolved since the last
   * interval (with autoCommit off kafkajs commits nothing by itself), and
   * the partitions' next owner would read them again.
   */
  async stop(): Promise<void> {
    this.joined = false;
    const offsets = [...this.resolved.values()];
    if (offsets.length > 0) {
      await this.options.consumer.commitOffsets(offsets).catch((err: unknown) => this.options.logger.warn({ err }, 'could not commit the processed offsets at the stop; the next owner reads them again (replays insert nothing)'));
    }
    await this.options.consumer.stop();
  }

  private async batch({ batch, resolveOffset, heartbeat, commitOffsetsIfNecessary, uncommittedOffsets, isRunning, isStale }: EachBatchPayload): Promise<void> {
    const items: Item[] = [];
    // Counted per batch, not per record: the counter's attribute hashing showed in the profile.
    const counts = new Map<string, number>();
    for (const message of batch.messages) {
      if (!isRunning() || isStale()) return;
      const item = await this.decode(batch.topic, batch.partition, message, counts);
      if (item) items.push(item);
    }
    for (const [event, count] of counts) this.processed.add(count, { topic: batch.topic, event });
    if (items.length > 0) await this.inPass(items, heartbeat);
    const last = batch.messages[batch.messages.length - 1];
    if (last) {
      resolveOffset(last.offset);
      this.resolved.set(`${batch.topic}:${batch.partition}`, { topic: batch.topic, partition: batch.partition, offset: String(BigInt(last.offset) + 1n) });
    }
    // Stopping: what this member processed is committed now, so the partitions' next owner does not read it again.
    if (!isRunning()) await commitOffsetsIfNecessary(uncommittedOffsets());
    else await commitOffsetsIfNecessary();
    await heartbeat();
  }

  /** Resolves once `items` went through a pass with every batch that arrived in the same turn of the event loop. */
  private inPass(items: Item[], heartbeat: () => Promise<void>): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      this.waiting.push({ items, heartbeat, done: (err) => (err === undefined ? resolve() : reject(err)) });
      this.schedulePass();
    });
  }

  private schedulePass(): void {
    if (this.passScheduled || this.passRunning || this.waiting.length === 0) return;
    this.passScheduled = true;
    // The other workers' batches of the same fetch are handed over in this turn: setImmediate lets them join.
    setImmediate(() => {
      this.passScheduled = false;
      void this.runPass();
    });
  }

  private async runPass(): Promise<void> {
    const group = this.waiting;
    this.waiting = [];
    this.passRunning = true;
    let failure: unknown;
    try {
      const items = group.flatMap((g) => g.items);
      await withSpan('notify batch', { kind: SpanKind.CONSUMER, attributes: { 'messaging.system': 'kafka', 'messaging.batch.message_count': items.length } }, () =>
        this.process(items, group[0]!.heartbeat),
      );
    } catch (err) {
      // Every batch of the pass fails and is read again: a replayed record inserts and sends nothing.
      failure = err ?? new Error('notification pass failed');
    } finally {
      this.passRunning = false;
      for (const g of group) g.done(failure);
      this.schedulePass();
    }
  }

  private async decode(topic: string, partition: number, message: KafkaMessage, counts: Map<string, number>): Promise<Item | undefined> {
    const { logger, deadLetters, config } = this.options;
    if (!message.value) return undefined;
    let envelope: eventsV1.Envelope;
    try {
      // The envelope alone: the pass's span links no producer trace, so the trace headers are not parsed per record.
      envelope = eventsV1.Envelope.decode(message.value);
    } catch (err) {
      logger.error({ err, topic, partition, offset: message.offset }, 'an undecodable record');
      await deadLetters.send('', {
        notificationId: '',
        userId: '',
        channel: 0,
        pushDeviceId: '',
        kind: '',
        reason: `undecodable record: ${(err as Error).message}`,
        attempts: 0,
        sourceTopic: topic,
        sourcePartition: partition,
        sourceOffset: message.offset,
        sourceValue: message.value,
      });
      return undefined;
    }
    const event = envelope.event;
    if (!event || !isSafeId(envelope.tenantId) || !isSafeId(envelope.eventId)) return undefined;
    const occurredAt = envelope.occurredAt ?? new Date();
    counts.set(event.$case, (counts.get(event.$case) ?? 0) + 1);
    switch (event.$case) {
      case 'messageCreated':
        if (Date.now() - occurredAt.getTime() > config.MAX_EVENT_AGE_MS) return undefined;
        return { type: 'message', tenantId: envelope.tenantId, eventId: envelope.eventId, occurredAt, value: event.value };
      case 'notificationRequested':
        // A request that waited longer than this (a new consumer group reading old log) is stale, like an old message.
        if (!isSafeId(event.value.requestId) || Date.now() - occurredAt.getTime() > config.MAX_EVENT_AGE_MS) return undefined;
        return { type: 'request', tenantId: envelope.tenantId, eventId: envelope.eventId, occurredAt, value: event.value };
      case 'receiptUpdated':
        if (!isSafeId(event.value.userId) || !isSafeId(event.value.conversationId)) return undefined;
        return { type: 'receipt', tenantId: envelope.tenantId, occurredAt, value: event.value };
      default:
        return undefined;
    }
  }

  private async process(items: Item[], heartbeat: () => Promise<void>): Promise<void> {
    const byTenant = new Map<string, Item[]>();
    for (const item of items) {
      const list = byTenant.get(item.tenantId) ?? [];
      list.push(item);
      byTenant.set(item.tenantId, list);
    }
    let due = false;
    for (const [tenantId, tenantItems] of byTenant) {
      const committed = await this.processTenant(tenantId, tenantItems);
      await this.afterCommit(tenantId, committed);
      due ||= committed.hasDueWork;
      await heartbeat();
    }
    if (due) this.options.wake();
  }

  /** Expands the audiences and asks presence, then routes and stores everything in one transaction. */
  private async processTenant(tenantId: string, items: Item[]): Promise<Committed> {
    const { peers, pool, logger, deadLetters } = this.options;
    const planned: Planned[] = [];
    const receipts: { item: eventsV1.ReceiptUpdated; at: Date }[] = [];
    for (const item of items) {
      if (item.type === 'message') planned.push(...plannedForMessage(tenantId, item.eventId, item.occurredAt, item.value));
      else if (item.type === 'receipt') receipts.push({ item: item.value, at: item.occurredAt });
      else {
        let userIds = item.value.userIds;
        if (item.value.roomId) {
          try {
            userIds = await peers.roomMembers(tenantId, item.value.roomId);
          } catch (err) {
            // A room that is gone, or room down past the retries: dead-lettered, the partition moves on.
            logger.warn({ err, tenant: tenantId, roomId: item.value.roomId }, 'could not list the room’s members');
            await deadLetters.send(tenantId, {
              notificationId: '',
              userId: '',
              channel: 0,
              pushDeviceId: '',
              kind: item.value.kind,
              reason: `room ${item.value.roomId}: ${(err as Error).message}`,
              attempts: 1,
              sourceTopic: TOPICS.notifications,
              sourcePartition: -1,
              sourceOffset: item.value.requestId,
              sourceValue: Buffer.alloc(0),
            });
            continue;
          }
        }
        planned.push(...plannedForRequest(tenantId, item.occurredAt, item.value, userIds));
      }
    }
    const unique = [...new Map(planned.map((p) => [p.notificationId, p])).values()];
    const users = [...new Set(unique.map((p) => p.userId))];
    const presence = users.length > 0 ? await peers.online(tenantId, users) : new Map<string, PresenceFact>();
    return withTenantTransaction(pool, tenantId, async (db) => {
      await this.recordReceipts(db, tenantId, receipts);
      const committed = await this.store(db, tenantId, unique, presence);
      for (const [userId, unread] of await this.applyReads(db, tenantId, receipts)) committed.badges.set(userId, unread);
      return committed;
    });
  }

  private async recordReceipts(db: PoolClient, tenantId: string, receipts: { item: eventsV1.ReceiptUpdated; at: Date }[]): Promise<void> {
    if (receipts.length === 0) return;
    await db.query(
      `INSERT INTO conversation_receipts (tenant_id, user_id, conversation_id, delivered_seq, read_seq, read_at)
       SELECT $1, r.user_id, r.conversation_id, max(r.delivered_seq), max(r.read_seq), max(r.read_at) FILTER (WHERE r.read_seq > 0)
       FROM unnest($2::text[], $3::text[], $4::bigint[], $5::bigint[], $6::timestamptz[]) AS r(user_id, conversation_id, delivered_seq, read_seq, read_at)
       GROUP BY r.user_id, r.conversation_id
       ON CONFLICT (tenant_id, user_id, conversation_id) DO UPDATE SET
         delivered_seq = GREATEST(conversation_receipts.delivered_seq, EXCLUDED.delivered_seq),
         read_at = CASE WHEN EXCLUDED.read_seq > conversation_receipts.read_seq THEN GREATEST(conversation_receipts.read_at, EXCLUDED.read_at) ELSE conversation_receipts.read_at END,
         read_seq = GREATEST(conversation_receipts.read_seq, EXCLUDED.read_seq)`,
      [
        tenantId,
        receipts.map((r) => r.item.userId),
        receipts.map((r) => r.item.conversationId),
        receipts.map((r) => r.item.deliveredSeq),
        receipts.map((r) => r.item.readSeq),
        receipts.map((r) => r.at),
      ],
    );
  }

  /** A message read in the conversation reads its notification too: badge down, no push or email for it later. */
  private async applyReads(db: PoolClient, tenantId: string, receipts: { item: eventsV1.ReceiptUpdated }[]): Promise<Map<string, number>> {
    const reads = receipts.filter((r) => r.item.readSeq > 0);
    if (reads.length === 0) return new Map();
    const { rows } = await db.query<{ user_id: string }>(
      `UPDATE notifications n SET read_at = now()
       FROM unnest($2::text[], $3::text[], $4::bigint[]) AS r(user_id, conversation_id, read_seq)
       WHERE n.tenant_id = $1 AND n.user_id = r.user_id AND n.conversation_id = r.conversation_id AND n.message_seq <= r.read_seq AND n.read_at IS NULL
       RETURNING n.user_id, n.hidden`,
      [tenantId, reads.map((r) => r.item.userId), reads.map((r) => r.item.conversationId), reads.map((r) => r.item.readSeq)],
    );
    const users = [...new Set(rows.map((r) => r.user_id))];
    return unreadCounts(db, tenantId, users);
  }

  private async store(db: PoolClient, tenantId: string, planned: Planned[], presence: Map<string, PresenceFact>): Promise<Committed> {
    const { settings, config } = this.options;
    const committed: Committed = { live: [], badges: new Map(), hasDueWork: false };
    if (planned.length === 0) return committed;
    const users = [...new Set(planned.map((p) => p.userId))].sort();
    const kinds = [...new Set(planned.map((p) => p.kind))];
    // Replicas process their partitions concurrently and one user's notifications arrive on several of them: the hourly
    // cap counts what other transactions sent only if they hold the user until they commit (sorted: no deadlock).
    await db.query(
      prepared('notification-lock-users', `SELECT pg_advisory_xact_lock(hashtextextended($1 || ':' || u, 0)) FROM unnest($2::text[]) AS u ORDER BY u`, [tenantId, users]),
    );
    const { preferences: prefs, policy, devices, templates } = await settings.routingSettings(db, tenantId, users, kinds);
    // Read after the lock: what other partitions' transactions sent to these users, and what is stored already.
    const { sent, reading, existing } = await batchState(db, tenantId, users, planned, config.ACTIVE_IN_CONVERSATION_MS);
    // Notifications of one transaction arrive in one statement: only the rows inserted now are routed (a redelivery inserts none).
    const fresh = planned.filter((p) => !existing.has(p.notificationId));
    if (fresh.length === 0) return committed;

    const now = new Date();
    const rows: NotificationInsert[] = [];
    const deliveries: DeliveryInsert[] = [];
    for (const p of fresh) {
      const userPrefs = prefs.get(p.userId)!;
      const facts = userFacts(p, userPrefs, policy, devices, templates, presence.get(p.userId), sent, reading, this.options.usable(), now, config.DEFAULT_DAILY_DIGEST_MINUTE);
      const decision = route({ now, kind: p.kind, urgent: p.urgent, fromMessage: p.fromMessage, requestedChannels: p.requestedChannels, expiresAt: p.expiresAt }, facts, policy);
      let inApp = decision.channels.get(Channel.CHANNEL_IN_APP)!;
      let content = { title: '', body: '', data: p.data };
      if (inApp.action === 'send') {
        const chain = localeChain(userPrefs.locale, policy.defaultLocale);
        const template = resolveTemplate(templates, p.kind, Channel.CHANNEL_IN_APP, chain)!;
        try {
          const rendered = render(template.content, p.variables, `${p.kind} in-app template`);
          content = { title: rendered.title, body: rendered.body, data: { ...rendered.data, ...p.data } };
        } catch (err) {
          inApp = { action: 'skip', skipReason: notificationV1.SkipReason.SKIP_REASON_NO_TEMPLATE, reason: `in-app template failed: ${(err as Error).message}` };
          decision.channels.set(Channel.CHANNEL_IN_APP, inApp);
        }
      }
      const silent = inApp.action === 'send' && Boolean(inApp.silent);
      rows.push({ p, title: content.title, body: content.body, data: content.data, hidden: inApp.action !== 'send', silent });
      // Suppressed (reading the conversation): one decision row, on in-app, stands for every channel (GetDeliveryStatus
      // reports it for each); the most common case of a direct message costs one row instead of three.
      for (const channel of decision.suppressed ? [Channel.CHANNEL_IN_APP] : CHANNELS) {
        const d = decision.channels.get(channel)!;
        const pushable = devices.filter((dev) => dev.userId === p.userId && this.options.usable().has(dev.platform));
        deliveries.push(...deliveryRows(p, channel, d, pushable, now, config.INFLIGHT_LEASE_MS));
        if (d.action === 'send' && channel === Channel.CHANNEL_PUSH) {
          sent.set(p.userId, (sent.get(p.userId) ?? 0) + 1);
          committed.hasDueWork = true;
        }
      }
    }
    const counts = await writeBatch(db, tenantId, rows, deliveries, config.KAFKA_GROUP_ID);
    for (const r of rows) {
      if (r.hidden) continue;
      committed.live.push({
        notificationId: r.p.notificationId,
        userId: r.p.userId,
        kind: r.p.kind,
        title: r.title,
        body: r.body,
        data: r.data,
        createdAt: r.p.createdAt,
        priority: r.p.urgent ? Priority.PRIORITY_URGENT : Priority.PRIORITY_NORMAL,
        silent: r.silent,
        badgeCount: counts.get(r.p.userId) ?? 0,
      });
    }
    return committed;
  }

  private async afterCommit(tenantId: string, committed: Committed): Promise<void> {
    const { events, pool, logger } = this.options;
    for (const [userId, unread] of committed.badges) events.badge(tenantId, userId, unread);
    if (committed.live.length === 0) return;
    try {
      await events.created(tenantId, committed.live);
    } catch (err) {
      // Left in flight: the delivery worker publishes them when the lease lapses.
      logger.warn({ err, tenant: tenantId, count: committed.live.length }, 'in-app publish not confirmed; the delivery worker will retry');
      return;
    }
    await confirmInApp(pool, tenantId, committed.live);
  }
}

// --- facts ---

export type UsablePlatforms = ReadonlySet<notificationV1.PushPlatform>;

function userFacts(
  p: Planned,
  prefs: Preferences,
  policy: TenantPolicy,
  devices: PushDeviceRecord[],
  templates: StoredTemplate[],
  presence: PresenceFact | undefined,
  sent: Map<string, number>,
  reading: Set<string>,
  usable: UsablePlatforms,
  now: Date,
  defaultDigestMinute: number,
): UserFacts {
  const timeZone = prefs.timeZone || policy.defaultTimeZone;
  const own = devices.filter((d) => d.userId === p.userId);
  const chain = localeChain(prefs.locale, policy.defaultLocale);
  const available = new Set(CHANNELS.filter((channel) => resolveTemplate(templates, p.kind, channel, chain) !== undefined));
  const online = presence?.online ?? false;
  return {
    presenceKnown: presence?.known ?? false,
    online,
    activeInConversation: online && p.conversationId !== undefined && reading.has(`${p.userId}\u0000${p.conversationId}`),
    preference: (channel) => preferenceFor(prefs, p.kind, channel),
    dnd: dndState({ enabled: prefs.dnd.enabled, until: prefs.dnd.until, schedule: prefs.dnd.schedule, timeZone }, now),
    timeZone,
    dailyDigestMinute: prefs.dailyDigestMinute || defaultDigestMinute,
    maxPerHour: prefs.maxPerHour || policy.defaultMaxPerHour,
    sentLastHour: sent.get(p.userId) ?? 0,
    email: prefs.email,
    pushDevices: { usable: own.filter((d) => usable.has(d.platform)).length, total: own.length },
    templates: available,
  };
}

/** Push and email notifications that went to each user in the past hour (the rate cap's count). */
export async function sentLastHour(db: PoolClient, tenantId: string, users: string[]): Promise<Map<string, number>> {
  const { rows } = await db.query<{ user_id: string; sent: number }>(
    `SELECT user_id, count(*)::int AS sent FROM deliveries
     WHERE tenant_id = $1 AND user_id = ANY($2::text[]) AND target = '' AND counted_at > now() - interval '1 hour'
     GROUP BY user_id`,
    [tenantId, users],
  );
  return new Map(rows.map((r) => [r.user_id, r.sent]));
}

/**
 * What a batch must read after locking its users, in one round trip:
 *
 * - `sent`: push and email that went to each user in the past hour (the
 *   rate cap's count);
 * - `reading`: "reading the conversation" — messaging reported the user's
 *   read watermark in this conversation moving within the last
 *   ACTIVE_IN_CONVERSATION_MS of the message (a device has it open and
 *   acknowledges what it shows); with presence's online check this stands in
 *   for conversation occupancy;
 * - `existing`: notifications already stored (a redelivered record), looked
 *   up by primary key so the plan does not depend on the tenant's statistics.
 */
export async function batchState(db: PoolClient, tenantId: string, users: string[], planned: Planned[], windowMs: number) {
  const pairs = planned.filter((p) => p.conversationId);
  const { rows } = await db.query<{ sent: Record<string, number>; reading: [string, string][]; existing: string[] }>(
    prepared(
      'notification-batch-state',
      `SELECT
         (SELECT coalesce(json_object_agg(s.user_id, s.sent), '{}') FROM (
            SELECT user_id, count(*) AS sent FROM deliveries
            WHERE tenant_id = $1 AND user_id = ANY($2::text[]) AND target = '' AND counted_at > now() - interval '1 hour'
            GROUP BY user_id) s) AS sent,
         (SELECT coalesce(jsonb_agg(DISTINCT jsonb_build_array(r.user_id, r.conversation_id)), '[]') FROM conversation_receipts r
            JOIN unnest($3::text[], $4::text[], $5::timestamptz[]) AS p(user_id, conversation_id, at) ON p.user_id = r.user_id AND p.conversation_id = r.conversation_id
            WHERE r.tenant_id = $1 AND r.read_at >= p.at - make_interval(secs => $6::double precision / 1000)) AS reading,
         (SELECT coalesce(json_agg(n.notification_id), '[]') FROM unnest($7::text[]) AS i(notification_id)
            JOIN notifications n ON n.tenant_id = $1 AND n.notification_id = i.notification_id) AS existing`,
      [tenantId, users, pairs.map((p) => p.userId), pairs.map((p) => p.conversationId), pairs.map((p) => p.createdAt), windowMs, planned.map((p) => p.notificationId)],
    ),
  );
  const row = rows[0]!;
  return {
    sent: new Map(Object.entries(row.sent)),
    reading: new Set(row.reading.map(([userId, conversationId]) => `${userId}\u0000${conversationId}`)),
    existing: new Set(row.existing),
  };
}

export async function unreadCounts(db: PoolClient, tenantId: string, users: string[]): Promise<Map<string, number>> {
  if (users.length === 0) return new Map();
  const { rows } = await db.query<{ user_id: string; unread: number }>(
    prepared(
      'notification-unread-counts',
      `SELECT u.user_id, count(n.notification_id)::int AS unread FROM unnest($2::text[]) AS u(user_id)
     LEFT JOIN notifications n ON n.tenant_id = $1 AND n.user_id = u.user_id AND n.read_at IS NULL AND NOT n.hidden AND (n.expires_at IS NULL OR n.expires_at > now())
     GROUP BY u.user_id`,
      [tenantId, users],
    ),
  );
  return new Map(rows.map((r) => [r.user_id, r.unread]));
}

// --- rows ---

export interface NotificationInsert {
  p: Planned;
  title: string;
  body: string;
  data: Record<string, string>;
  hidden: boolean;
  silent: boolean;
}

export interface DeliveryInsert {
  notificationId: string;
  channel: notificationV1.Channel;
  target: string;
  userId: string;
  state: string;
  skipReason: number;
  reason: string;
  digest: string;
  nextAttemptAt: Date | null;
  attempts: number;
  countedAt: Date | null;
  /** Put on the work queue at this time. */
  dueAt: Date | null;
}

/** The rows one channel decision becomes: a decision row, plus one per device when push goes now. */
export function deliveryRows(p: Pick<Planned, 'notificationId' | 'userId'>, channel: notificationV1.Channel, d: Decision, pushable: PushDeviceRecord[], now: Date, leaseMs: number): DeliveryInsert[] {
  const base = { notificationId: p.notificationId, channel, target: '', userId: p.userId, skipReason: 0, digest: '', nextAttemptAt: null, attempts: 0, countedAt: null, dueAt: null };
  switch (d.action) {
    case 'skip':
      return [{ ...base, state: 'skipped', skipReason: d.skipReason, reason: d.reason }];
    case 'defer':
      // Waiting for the fallback delay is pending; held for do-not-disturb is deferred.
      return [{ ...base, state: d.hold === 'fallback' ? 'pending' : 'deferred', reason: d.reason, nextAttemptAt: d.dueAt ?? null, dueAt: d.dueAt ?? now }];
    case 'digest':
      return [{ ...base, state: 'deferred', skipReason: d.skipReason, reason: d.reason, digest: d.period, nextAttemptAt: d.dueAt, dueAt: d.dueAt }];
    case 'send':
      if (channel === Channel.CHANNEL_IN_APP) {
        // In flight from the start: published right after the commit, or by the worker once the lease lapses.
        return [{ ...base, state: 'inflight', reason: d.reason, attempts: 1, dueAt: new Date(now.getTime() + leaseMs) }];
      }
      if (channel === Channel.CHANNEL_PUSH) {
        return [
          { ...base, state: 'routed', reason: d.reason, countedAt: now },
          ...pushable.map((device) => ({ ...base, target: device.pushDeviceId, state: 'pending', reason: d.reason, dueAt: now, nextAttemptAt: now })),
        ];
      }
      return [{ ...base, state: 'pending', reason: d.reason, dueAt: now, nextAttemptAt: now }];
  }
}

/**
 * The deliveries and their place on the work queue, from parameters $1
 * (tenant), $2 (owner) and $3 (the rows as JSON, as `DeliveryInsert`s): one
 * statement's CTEs. Rows go as one JSON document rather than an array per
 * column: the driver's text escaping of a dozen arrays cost more CPU than
 * anything else the service did per notification.
 */
const DELIVERY_CTES = `
  delivery_rows AS (
    SELECT * FROM json_to_recordset($3::json)
      AS d("notificationId" text, channel smallint, target text, "userId" text, state text, "skipReason" smallint, reason text, digest text,
           "nextAttemptAt" timestamptz, attempts int, "countedAt" timestamptz, "dueAt" timestamptz)
  ), stored_deliveries AS (
    INSERT INTO deliveries (tenant_id, notification_id, channel, target, user_id, state, skip_reason, reason, digest, next_attempt_at, attempts, counted_at)
    SELECT $1, "notificationId", channel, target, "userId", state, "skipReason", reason, digest, "nextAttemptAt", attempts, "countedAt" FROM delivery_rows
    ON CONFLICT DO NOTHING
  ), queued AS (
    INSERT INTO delivery_queue (owner, tenant_id, notification_id, channel, target, due_at)
    SELECT $2, $1, "notificationId", channel, target, "dueAt" FROM delivery_rows WHERE "dueAt" IS NOT NULL
    ON CONFLICT (tenant_id, notification_id, channel, target) DO UPDATE SET due_at = EXCLUDED.due_at
  )`;

/** Delivery rows, and the due ones on the work queue, in one statement. */
export async function insertDeliveries(db: PoolClient, tenantId: string, rows: DeliveryInsert[], owner: string): Promise<void> {
  if (rows.length === 0) return;
  await db.query(prepared('notification-deliveries-insert', `WITH ${DELIVERY_CTES} SELECT 1`, [tenantId, owner, JSON.stringify(rows)]));
}

/**
 * A batch's writes in one statement: the notifications, their delivery rows
 * (a decision with its reason per channel), the due work, and the badge
 * count of every user who sees a new notification. The count is what was
 * unread before this statement plus what it inserted visible (a statement
 * does not see its own inserts; the users are locked by the batch).
 */
export async function writeBatch(db: PoolClient, tenantId: string, rows: NotificationInsert[], deliveries: DeliveryInsert[], owner: string): Promise<Map<string, number>> {
  const { rows: counts } = await db.query<{ user_id: string; unread: number }>(
    prepared(
      'notification-batch-write',
      `WITH ${DELIVERY_CTES}, stored AS (
         INSERT INTO notifications (tenant_id, notification_id, user_id, kind, priority, title, body, data, room_id, request_id, source_event_id, created_at,
                                    expires_at, conversation_id, message_seq, hidden, silent, variables)
         SELECT $1, n.* FROM json_to_recordset($4::json)
           AS n(notification_id text, user_id text, kind text, priority smallint, title text, body text, data jsonb, room_id text, request_id text,
                source_event_id text, created_at timestamptz, expires_at timestamptz, conversation_id text, message_seq bigint, hidden boolean, silent boolean,
                variables jsonb)
         ON CONFLICT DO NOTHING
         RETURNING user_id, hidden, expires_at
       ), shown AS (
         SELECT user_id, count(*)::int AS added FROM stored WHERE NOT hidden AND (expires_at IS NULL OR expires_at > now()) GROUP BY user_id
       )
       SELECT s.user_id, s.added + (
         SELECT count(*)::int FROM notifications n
         WHERE n.tenant_id = $1 AND n.user_id = s.user_id AND n.read_at IS NULL AND NOT n.hidden AND (n.expires_at IS NULL OR n.expires_at > now())) AS unread
       FROM shown s`,
      [
        tenantId,
        owner,
        JSON.stringify(deliveries),
        JSON.stringify(
          rows.map((r) => ({
            notification_id: r.p.notificationId,
            user_id: r.p.userId,
            kind: r.p.kind,
            priority: r.p.urgent ? Priority.PRIORITY_URGENT : Priority.PRIORITY_NORMAL,
            title: r.title,
            body: r.body,
            data: r.data,
            room_id: r.p.roomId,
            request_id: r.p.requestId,
            source_event_id: r.p.sourceId,
            // When the event happened, not when it was consumed: records of different partitions arrive in any order, the history must not.
            created_at: r.p.createdAt,
            expires_at: r.p.expiresAt ?? null,
            conversation_id: r.p.conversationId ?? null,
            message_seq: r.p.messageSeq ?? null,
            hidden: r.hidden,
            silent: r.silent,
            variables: r.p.variables,
          })),
        ),
      ],
    ),
  );
  return new Map(counts.map((r) => [r.user_id, r.unread]));
}

/**
 * Marks in-app deliveries delivered once NATS confirmed the publish, records
 * the attempt as a success and takes them off the work queue: one call of the
 * schema's `confirm_in_app` (one round trip, its own transaction).
 */
export async function confirmInApp(pool: Pool, tenantId: string, live: Pick<LiveNotification, 'notificationId' | 'userId'>[]): Promise<void> {
  await pool.query(
    prepared(
      'notification-confirm-in-app',
      `SELECT confirm_in_app($1, $2::text[], $3::text[])`,
      [tenantId, live.map((n) => n.notificationId), live.map((n) => n.userId)],
    ),
  );
}
