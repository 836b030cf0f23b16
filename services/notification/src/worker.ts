import type { Logger } from '@switchboard/logging';
import { withTenantTransaction, type Pool, type PoolClient } from '@switchboard/postgres';
import { notificationV1 } from '@switchboard/proto';
import { metrics, type Counter } from '@switchboard/telemetry';
import type { NotificationConfig } from './config';
import type { DeadLetters } from './dlq';
import type { LiveNotification, NotificationEvents } from './events';
import { digestIdFor } from './ids';
import { deliveryRows, insertDeliveries, sentLastHour, unreadCounts } from './pipeline';
import type { EmailMessage, Outcome, Providers, PushMessage } from './providers';
import { Channel, emailWhenDue, heldWhenDue, retryDelay, SkipReason, type Decision, type NotificationFacts, type UserFacts } from './routing';
import { dndState } from './schedule';
import { localeChain, preferenceFor, resolveTemplate, type Preferences, type PushDeviceRecord, type SettingsStore, type TenantPolicy } from './settings';
import { DIGEST_KIND, render } from './templates';

const { AttemptOutcome, Priority } = notificationV1;

interface Key {
  tenantId: string;
  notificationId: string;
  channel: notificationV1.Channel;
  target: string;
}

interface Row {
  user_id: string;
  state: string;
  digest: string;
  attempts: number;
  next_attempt_at: Date | null;
  kind: string;
  priority: number;
  title: string;
  body: string;
  data: Record<string, string>;
  variables: Record<string, string>;
  read_at: Date | null;
  expires_at: Date | null;
  created_at: Date;
  conversation_id: string | null;
  message_seq: string | null;
  hidden: boolean;
  silent: boolean;
  /** When the delivery row last changed: for a row in flight, when its attempt began. */
  updated_at: Date;
}

type Job =
  | { type: 'inApp'; live: LiveNotification }
  | { type: 'push'; device: PushDeviceRecord; message: PushMessage }
  | { type: 'email'; message: EmailMessage }
  /** Could not even be prepared (e.g. the template no longer renders): fails for good. */
  | { type: 'fail'; reason: string };

interface Prepared {
  key: Key;
  userId: string;
  kind: string;
  attempt: number;
  job: Job;
}

export interface WorkerOptions {
  pool: Pool;
  settings: SettingsStore;
  events: NotificationEvents;
  providers: Providers;
  deadLetters: DeadLetters;
  logger: Logger;
  config: NotificationConfig;
}

/** How long a push provider may keep a notification for an offline device, unless it expires sooner. */
const DEFAULT_PUSH_TTL_S = 3 * 24 * 3600;
const DIGEST_LINES = 20;

/**
 * Does the work the pipeline scheduled: pushes and emails that are due,
 * email fallbacks whose delay passed, notifications held for do-not-disturb
 * or a digest, retries after a transient failure, and in-app publishes whose
 * lease lapsed (a crash between commit and publish).
 *
 * Each item is claimed from `delivery_queue` with SKIP LOCKED and a lease
 * (any number of replicas share the work), then in the tenant's transaction
 * its delivery row is checked (already done: nothing), re-decided where time
 * matters (read meanwhile? still do-not-disturb?), and marked in flight with
 * a new attempt row before the provider is called; the outcome is written
 * after. So a send happens only from a row that is not done yet — the
 * idempotency key is (notification, channel, device) — and an attempt cut
 * short by a crash is visible as interrupted and retried with the same
 * provider-side collapse id / Topic / Message-ID.
 */
export class DeliveryWorker {
  private running = false;
  private loop: Promise<void> | undefined;
  private wakeUp: (() => void) | undefined;
  private woken = false;
  private readonly attemptsCounter: Counter;

  constructor(private readonly options: WorkerOptions) {
    this.attemptsCounter = metrics.getMeter('notification').createCounter('notification_delivery_attempts_total', { description: 'Delivery attempts by channel and outcome' });
  }

  start(): void {
    this.running = true;
    this.loop = this.run();
  }

  wake(): void {
    this.woken = true;
    this.wakeUp?.();
  }

  async stop(): Promise<void> {
    this.running = false;
    this.wake();
    await this.loop;
  }

  private async run(): Promise<void> {
    const { config, logger } = this.options;
    while (this.running) {
      let claimed: Key[] = [];
      try {
        this.woken = false;
        claimed = await this.claim();
        await runLimited(claimed, config.WORKER_CONCURRENCY, (key) => this.handle(key));
      } catch (err) {
        logger.warn({ err }, 'delivery worker pass failed');
      }
      if (claimed.length >= config.WORKER_BATCH || this.woken) continue;
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, config.WORKER_POLL_MS);
        this.wakeUp = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this.wakeUp = undefined;
    }
  }

  /** Takes due items across tenants and moves their due time a lease ahead. */
  private async claim(): Promise<Key[]> {
    const { rows } = await this.options.pool.query<{ tenant_id: string; notification_id: string; channel: number; target: string }>(
      `WITH due AS (
         SELECT tenant_id, notification_id, channel, target FROM delivery_queue
         WHERE owner = $3 AND due_at <= now() ORDER BY due_at LIMIT $1 FOR UPDATE SKIP LOCKED)
       UPDATE delivery_queue q SET due_at = now() + make_interval(secs => $2::double precision / 1000)
       FROM due WHERE q.tenant_id = due.tenant_id AND q.notification_id = due.notification_id AND q.channel = due.channel AND q.target = due.target
       RETURNING q.tenant_id, q.notification_id, q.channel, q.target`,
      [this.options.config.WORKER_BATCH, this.options.config.INFLIGHT_LEASE_MS, this.options.config.KAFKA_GROUP_ID],
    );
    return rows.map((r) => ({ tenantId: r.tenant_id, notificationId: r.notification_id, channel: r.channel, target: r.target }));
  }

  private async handle(key: Key): Promise<void> {
    const { pool, logger } = this.options;
    try {
      const prepared = await withTenantTransaction(pool, key.tenantId, (db) => this.prepare(db, key));
      if (!prepared) return;
      const outcome = await this.perform(prepared);
      this.attemptsCounter.add(1, { channel: Channel[key.channel] ?? String(key.channel), outcome: outcome.kind });
      await this.record(prepared, outcome);
    } catch (err) {
      // The queue row keeps its lease: the item comes back when it lapses.
      logger.warn({ err, ...key }, 'delivery step failed; retried after the lease');
    }
  }

  // --- prepare: decide, and open an attempt ---

  private async prepare(db: PoolClient, key: Key): Promise<Prepared | undefined> {
    // A digest folds every held item of the user and channel: one folder at a time, and the lock is taken before
    // any row lock so that folders of the same digest wait for each other instead of deadlocking.
    const { rows: peek } = await db.query<{ user_id: string; state: string; digest: string }>(
      `SELECT user_id, state, digest FROM deliveries WHERE tenant_id = $1 AND notification_id = $2 AND channel = $3 AND target = $4`,
      [key.tenantId, key.notificationId, key.channel, key.target],
    );
    if (peek[0]?.state === 'deferred' && peek[0].digest) {
      await db.query(`SELECT pg_advisory_xact_lock(hashtextextended($1, 0))`, [`digest:${key.tenantId}:${peek[0].user_id}:${key.channel}`]);
    }
    const { rows } = await db.query<Row>(
      `SELECT d.user_id, d.state, d.digest, d.attempts, d.next_attempt_at, n.kind, n.priority, n.title, n.body, n.data, n.variables, n.read_at,
              n.expires_at, n.created_at, n.conversation_id, n.message_seq, n.hidden, n.silent, d.updated_at
       FROM deliveries d JOIN notifications n ON n.tenant_id = d.tenant_id AND n.notification_id = d.notification_id
       WHERE d.tenant_id = $1 AND d.notification_id = $2 AND d.channel = $3 AND d.target = $4
       FOR UPDATE OF d`,
      [key.tenantId, key.notificationId, key.channel, key.target],
    );
    const row = rows[0];
    if (!row || !['pending', 'deferred', 'inflight'].includes(row.state)) {
      await dequeue(db, key);
      return undefined;
    }
    if (row.state === 'inflight') {
      // The previous attempt never reported back (the process died mid-send). The worker opened its attempts before
      // sending; the pipeline's in-app publish has none until confirmed, so that attempt is recorded here, from the
      // time its delivery row went in flight.
      await db.query(
        `INSERT INTO delivery_attempts (tenant_id, notification_id, channel, target, attempt, push_device_id, started_at, finished_at, outcome, provider_response)
         VALUES ($1, $2, $3, $4, $5, $6, $7, now(), ${AttemptOutcome.ATTEMPT_OUTCOME_TRANSIENT_FAILURE}, 'interrupted: the service stopped before the outcome was recorded')
         ON CONFLICT (tenant_id, notification_id, channel, target, attempt) DO UPDATE SET finished_at = now(), outcome = EXCLUDED.outcome, provider_response = EXCLUDED.provider_response
         WHERE delivery_attempts.outcome = 0`,
        [key.tenantId, key.notificationId, key.channel, key.target, row.attempts, key.channel === Channel.CHANNEL_PUSH ? key.target : '', row.updated_at],
      );
    }
    const { settings, config } = this.options;
    const [prefs, policy] = await Promise.all([settings.preferences(db, key.tenantId, [row.user_id]).then((m) => m.get(row.user_id)!), settings.policy(db, key.tenantId)]);
    const now = new Date();
    const n: NotificationFacts = {
      now,
      kind: row.kind,
      urgent: row.priority === Priority.PRIORITY_URGENT,
      fromMessage: row.conversation_id !== null,
      requestedChannels: [],
      expiresAt: row.expires_at ?? undefined,
    };

    if (key.channel === Channel.CHANNEL_IN_APP) return this.open(db, key, row, { type: 'inApp', live: await this.live(db, key, row) });

    if (row.state === 'deferred' && row.digest) {
      await this.fold(db, key, row, prefs, policy);
      return undefined;
    }

    if (key.target === '') {
      // A channel decision that came due: email fallback, or push/email held for do-not-disturb.
      const user = await this.userFacts(db, key, row, prefs, policy, now);
      let decision: Decision;
      if (row.state === 'deferred') decision = heldWhenDue(key.channel, n, user, policy, { read: row.read_at !== null, deliveredOnDevice: false });
      else if (row.attempts === 0) decision = emailWhenDue(n, user, policy, { read: row.read_at !== null, deliveredOnDevice: await this.deliveredOnDevice(db, key.tenantId, row) });
      else decision = { action: 'send', reason: '' };
      if (decision.action !== 'send') {
        await this.apply(db, key, row, decision, now);
        return undefined;
      }
      if (key.channel === Channel.CHANNEL_PUSH) {
        const devices = (await settings.devicesOf(db, key.tenantId, [row.user_id])).filter((d) => this.options.providers.push.has(d.platform));
        if (devices.length === 0) {
          await this.apply(db, key, row, { action: 'skip', skipReason: SkipReason.SKIP_REASON_NO_DESTINATION, reason: 'no usable push device when it came due' }, now);
          return undefined;
        }
        await db.query(`DELETE FROM delivery_queue WHERE tenant_id = $1 AND notification_id = $2 AND channel = $3 AND target = ''`, [key.tenantId, key.notificationId, key.channel]);
        await db.query(
          `UPDATE deliveries SET state = 'routed', reason = $5, counted_at = now(), next_attempt_at = NULL, updated_at = now()
           WHERE tenant_id = $1 AND notification_id = $2 AND channel = $3 AND target = $4`,
          [key.tenantId, key.notificationId, key.channel, key.target, decision.reason || 'push now'],
        );
        await insertDeliveries(db, key.tenantId, deliveryRows({ notificationId: key.notificationId, userId: row.user_id }, key.channel, { action: 'send', reason: decision.reason }, devices, now, config.INFLIGHT_LEASE_MS).filter((d) => d.target !== ''), config.KAFKA_GROUP_ID);
        setImmediate(() => this.wake());
        return undefined;
      }
      // Email goes now.
      if (!this.options.providers.email) {
        await this.apply(db, key, row, { action: 'skip', skipReason: SkipReason.SKIP_REASON_NO_PROVIDER, reason: 'no SMTP server configured' }, now);
        return undefined;
      }
      if (row.attempts === 0) await db.query(`UPDATE deliveries SET counted_at = now() WHERE tenant_id = $1 AND notification_id = $2 AND channel = $3 AND target = ''`, [key.tenantId, key.notificationId, key.channel]);
      const content = await this.content(db, key, row, prefs, policy, Channel.CHANNEL_EMAIL);
      if ('error' in content) return this.open(db, key, row, { type: 'fail', reason: content.error });
      if (!prefs.email) {
        await this.apply(db, key, row, { action: 'skip', skipReason: SkipReason.SKIP_REASON_NO_DESTINATION, reason: 'no email address' }, now);
        return undefined;
      }
      return this.open(db, key, row, { type: 'email', message: { notificationId: key.notificationId, to: prefs.email, subject: content.title, text: content.body, html: content.htmlBody } });
    }

    // One push device.
    const device = (await settings.devicesOf(db, key.tenantId, [row.user_id])).find((d) => d.pushDeviceId === key.target);
    if (!device) {
      await this.apply(db, key, row, { action: 'skip', skipReason: SkipReason.SKIP_REASON_NO_DESTINATION, reason: 'the device was unregistered' }, now);
      return undefined;
    }
    if (!this.options.providers.push.has(device.platform)) {
      await this.apply(db, key, row, { action: 'skip', skipReason: SkipReason.SKIP_REASON_NO_PROVIDER, reason: 'no provider for the device’s platform' }, now);
      return undefined;
    }
    if (n.expiresAt && n.expiresAt <= now) {
      await this.apply(db, key, row, { action: 'skip', skipReason: SkipReason.SKIP_REASON_EXPIRED, reason: 'expired before it could go' }, now);
      return undefined;
    }
    const content = await this.content(db, key, row, prefs, policy, Channel.CHANNEL_PUSH);
    if ('error' in content) return this.open(db, key, row, { type: 'fail', reason: content.error });
    const badge = (await unreadCounts(db, key.tenantId, [row.user_id])).get(row.user_id) ?? 0;
    const ttl = n.expiresAt ? Math.max(1, Math.floor((n.expiresAt.getTime() - now.getTime()) / 1000)) : DEFAULT_PUSH_TTL_S;
    return this.open(db, key, row, {
      type: 'push',
      device,
      message: { notificationId: key.notificationId, kind: row.kind, title: content.title, body: content.body, data: { ...content.data, ...row.data }, urgent: n.urgent, badge, ttlSeconds: ttl },
    });
  }

  /** Marks the row in flight and opens the attempt that the outcome closes. */
  private async open(db: PoolClient, key: Key, row: Row, job: Job): Promise<Prepared> {
    const attempt = row.attempts + 1;
    await db.query(`UPDATE deliveries SET state = 'inflight', attempts = $5, next_attempt_at = NULL, updated_at = now() WHERE tenant_id = $1 AND notification_id = $2 AND channel = $3 AND target = $4`, [
      key.tenantId,
      key.notificationId,
      key.channel,
      key.target,
      attempt,
    ]);
    await db.query(
      `INSERT INTO delivery_attempts (tenant_id, notification_id, channel, target, attempt, push_device_id) VALUES ($1, $2, $3, $4, $5, $6)
       ON CONFLICT (tenant_id, notification_id, channel, target, attempt) DO UPDATE SET started_at = now(), finished_at = NULL, outcome = 0, provider_response = ''`,
      [key.tenantId, key.notificationId, key.channel, key.target, attempt, key.channel === Channel.CHANNEL_PUSH ? key.target : ''],
    );
    return { key, userId: row.user_id, kind: row.kind, attempt, job };
  }

  /** Stores a decision that sends nothing now (held again, digested, skipped). */
  private async apply(db: PoolClient, key: Key, row: Row, decision: Decision, now: Date): Promise<void> {
    const [insert] = deliveryRows({ notificationId: key.notificationId, userId: row.user_id }, key.channel, decision, [], now, this.options.config.INFLIGHT_LEASE_MS);
    await db.query(
      `UPDATE deliveries SET state = $5, skip_reason = $6, reason = $7, digest = $8, next_attempt_at = $9, updated_at = now() WHERE tenant_id = $1 AND notification_id = $2 AND channel = $3 AND target = $4`,
      [key.tenantId, key.notificationId, key.channel, key.target, insert!.state, insert!.skipReason, insert!.reason, insert!.digest, insert!.nextAttemptAt],
    );
    if (insert!.dueAt) await db.query(`UPDATE delivery_queue SET due_at = $5 WHERE tenant_id = $1 AND notification_id = $2 AND channel = $3 AND target = $4`, [key.tenantId, key.notificationId, key.channel, key.target, insert!.dueAt]);
    else await dequeue(db, key);
  }

  private async userFacts(db: PoolClient, key: Key, row: Row, prefs: Preferences, policy: TenantPolicy, now: Date): Promise<UserFacts> {
    const timeZone = prefs.timeZone || policy.defaultTimeZone;
    const sent = await sentLastHour(db, key.tenantId, [row.user_id]);
    return {
      presenceKnown: true,
      online: false,
      activeInConversation: false,
      preference: (channel) => preferenceFor(prefs, row.kind, channel),
      dnd: dndState({ enabled: prefs.dnd.enabled, until: prefs.dnd.until, schedule: prefs.dnd.schedule, timeZone }, now),
      timeZone,
      dailyDigestMinute: prefs.dailyDigestMinute || this.options.config.DEFAULT_DAILY_DIGEST_MINUTE,
      maxPerHour: prefs.maxPerHour || policy.defaultMaxPerHour,
      sentLastHour: sent.get(row.user_id) ?? 0,
      email: prefs.email,
      pushDevices: { usable: 0, total: 0 },
      templates: new Set(),
    };
  }

  /** Message notifications: a device of the user acknowledged the message (messaging's delivered watermark). */
  private async deliveredOnDevice(db: PoolClient, tenantId: string, row: Row): Promise<boolean> {
    if (row.conversation_id === null || row.message_seq === null) return false;
    const { rows } = await db.query<{ delivered: boolean }>(
      `SELECT delivered_seq >= $4 AS delivered FROM conversation_receipts WHERE tenant_id = $1 AND user_id = $2 AND conversation_id = $3`,
      [tenantId, row.user_id, row.conversation_id, row.message_seq],
    );
    return rows[0]?.delivered ?? false;
  }

  private async content(db: PoolClient, key: Key, row: Row, prefs: Preferences, policy: TenantPolicy, channel: notificationV1.Channel) {
    const templates = await this.options.settings.templatesOfKind(db, key.tenantId, [row.kind]);
    const template = resolveTemplate(templates, row.kind, channel, localeChain(prefs.locale, policy.defaultLocale));
    if (!template) return { error: `no ${Channel[channel]} template for ${row.kind}` };
    try {
      return render(template.content, row.variables, `${row.kind} ${Channel[channel]} template`);
    } catch (err) {
      return { error: `template: ${(err as Error).message}` };
    }
  }

  private async live(db: PoolClient, key: Key, row: Row): Promise<LiveNotification> {
    const badge = (await unreadCounts(db, key.tenantId, [row.user_id])).get(row.user_id) ?? 0;
    return {
      notificationId: key.notificationId,
      userId: row.user_id,
      kind: row.kind,
      title: row.title,
      body: row.body,
      data: row.data,
      createdAt: row.created_at,
      priority: row.priority,
      silent: row.silent,
      badgeCount: badge,
    };
  }

  /**
   * A digest came due: every held notification of the user on this channel
   * that is due by now becomes one digest notification ("You have 5 new
   * notifications" and their titles), which then goes like any other.
   */
  private async fold(db: PoolClient, key: Key, row: Row, prefs: Preferences, policy: TenantPolicy): Promise<void> {
    const dueAt = row.next_attempt_at ?? new Date();
    const { rows: items } = await db.query<{ notification_id: string; kind: string; variables: Record<string, string>; created_at: Date }>(
      `SELECT d.notification_id, n.kind, n.variables, n.created_at FROM deliveries d
       JOIN notifications n ON n.tenant_id = d.tenant_id AND n.notification_id = d.notification_id
       WHERE d.tenant_id = $1 AND d.user_id = $2 AND d.channel = $3 AND d.target = '' AND d.state = 'deferred' AND d.digest <> '' AND d.next_attempt_at <= greatest($4::timestamptz, now())
       ORDER BY n.created_at
       FOR UPDATE OF d SKIP LOCKED`,
      [key.tenantId, row.user_id, key.channel, dueAt],
    );
    const kinds = [...new Set(items.map((i) => i.kind))];
    const templates = await this.options.settings.templatesOfKind(db, key.tenantId, kinds);
    const chain = localeChain(prefs.locale, policy.defaultLocale);
    const titles = items.map((item) => {
      const template = resolveTemplate(templates, item.kind, key.channel, chain);
      const title = template ? render(template.content, item.variables, item.kind, true).title : '';
      return title || item.kind;
    });
    const summary = titles.slice(0, DIGEST_LINES).map((t) => `• ${t}`);
    if (titles.length > DIGEST_LINES) summary.push(`… and ${titles.length - DIGEST_LINES} more`);
    const digestId = digestIdFor(key.tenantId, row.user_id, key.channel, dueAt);
    await db.query(
      `INSERT INTO notifications (tenant_id, notification_id, user_id, kind, priority, title, body, data, source_event_id, hidden, variables)
       VALUES ($1, $2, $3, $4, $5, '', '', '{}', $2, true, $6) ON CONFLICT DO NOTHING`,
      [key.tenantId, digestId, row.user_id, DIGEST_KIND, Priority.PRIORITY_NORMAL, JSON.stringify({ count: String(items.length), summary: summary.join('\n') })],
    );
    const now = new Date();
    await insertDeliveries(db, key.tenantId, [
      {
        notificationId: digestId,
        channel: key.channel,
        target: '',
        userId: row.user_id,
        state: 'deferred',
        skipReason: 0,
        reason: `digest of ${items.length} notifications`,
        digest: '',
        nextAttemptAt: now,
        attempts: 0,
        countedAt: null,
        dueAt: now,
      },
    ], this.options.config.KAFKA_GROUP_ID);
    const ids = items.map((i) => i.notification_id);
    await db.query(
      `UPDATE deliveries SET state = 'skipped', skip_reason = ${SkipReason.SKIP_REASON_DIGESTED}, reason = $4 || ' (' || reason || ')', next_attempt_at = NULL, updated_at = now()
       WHERE tenant_id = $1 AND notification_id = ANY($2::text[]) AND channel = $3 AND target = ''`,
      [key.tenantId, ids, key.channel, `folded into digest ${digestId}`],
    );
    await db.query(`DELETE FROM delivery_queue WHERE tenant_id = $1 AND notification_id = ANY($2::text[]) AND channel = $3 AND target = ''`, [key.tenantId, ids, key.channel]);
    setImmediate(() => this.wake());
  }

  // --- perform and record ---

  private async perform(prepared: Prepared): Promise<Outcome> {
    const { job } = prepared;
    switch (job.type) {
      case 'inApp':
        try {
          await this.options.events.created(prepared.key.tenantId, [job.live]);
          return { kind: 'success', response: `published on sb.${prepared.key.tenantId}.user.${job.live.userId}` };
        } catch (err) {
          return { kind: 'transient', response: (err as Error).message };
        }
      case 'push':
        return this.options.providers.push.get(job.device.platform)!.send(job.device.target, job.message);
      case 'email':
        return this.options.providers.email!.send(job.message);
      case 'fail':
        return { kind: 'permanent', response: job.reason };
    }
  }

  private async record(prepared: Prepared, outcome: Outcome): Promise<void> {
    const { key, attempt } = prepared;
    const { config, pool, deadLetters } = this.options;
    const attemptOutcome =
      outcome.kind === 'success'
        ? AttemptOutcome.ATTEMPT_OUTCOME_SUCCESS
        : outcome.kind === 'transient'
          ? outcome.rateLimited
            ? AttemptOutcome.ATTEMPT_OUTCOME_PROVIDER_RATE_LIMITED
            : AttemptOutcome.ATTEMPT_OUTCOME_TRANSIENT_FAILURE
          : AttemptOutcome.ATTEMPT_OUTCOME_PERMANENT_FAILURE;
    let retryAt: Date | undefined;
    let failure: string | undefined;
    if (outcome.kind === 'transient') {
      const delay = retryDelay(attempt, { baseMs: config.RETRY_BASE_MS, maxMs: config.RETRY_MAX_MS, maxAttempts: config.MAX_ATTEMPTS }, Math.random(), outcome.retryAfterMs);
      if (delay === undefined) failure = `gave up after ${attempt} attempts: ${outcome.response}`;
      else retryAt = new Date(Date.now() + delay);
    } else if (outcome.kind === 'permanent') failure = `permanent failure: ${outcome.response}`;
    if (failure) {
      // Dead-lettered before the row is final: a crash in between repeats the record (same id), never loses it.
      await deadLetters.send(key.tenantId, {
        notificationId: key.notificationId,
        userId: prepared.userId,
        channel: key.channel,
        pushDeviceId: key.channel === Channel.CHANNEL_PUSH ? key.target : '',
        kind: prepared.kind,
        reason: failure,
        attempts: attempt,
        sourceTopic: '',
        sourcePartition: 0,
        sourceOffset: '',
        sourceValue: Buffer.alloc(0),
      });
    }
    await withTenantTransaction(pool, key.tenantId, async (db) => {
      await db.query(
        `UPDATE delivery_attempts SET finished_at = now(), outcome = $6, provider_response = $7
         WHERE tenant_id = $1 AND notification_id = $2 AND channel = $3 AND target = $4 AND attempt = $5`,
        [key.tenantId, key.notificationId, key.channel, key.target, attempt, attemptOutcome, outcome.response.slice(0, 500)],
      );
      let state: string;
      let reason: string | undefined;
      let skipReason = 0;
      if (outcome.kind === 'success') state = key.channel === Channel.CHANNEL_IN_APP ? 'delivered' : 'sent';
      else if (outcome.kind === 'gone') {
        state = 'failed';
        skipReason = SkipReason.SKIP_REASON_NO_DESTINATION;
        reason = `the provider says the device is gone (${outcome.response}): unregistered`;
        await db.query(`DELETE FROM push_devices WHERE tenant_id = $1 AND push_device_id = $2`, [key.tenantId, key.target]);
      } else if (retryAt) state = 'pending';
      else {
        state = 'failed';
        reason = failure;
      }
      await db.query(
        `UPDATE deliveries SET state = $5, next_attempt_at = $6, reason = coalesce($7, reason), skip_reason = CASE WHEN $8 > 0 THEN $8 ELSE skip_reason END, updated_at = now()
         WHERE tenant_id = $1 AND notification_id = $2 AND channel = $3 AND target = $4`,
        [key.tenantId, key.notificationId, key.channel, key.target, state, retryAt ?? null, reason ?? null, skipReason],
      );
      if (retryAt) await db.query(`UPDATE delivery_queue SET due_at = $5 WHERE tenant_id = $1 AND notification_id = $2 AND channel = $3 AND target = $4`, [key.tenantId, key.notificationId, key.channel, key.target, retryAt]);
      else await dequeue(db, key);
      if (outcome.kind === 'success' && key.channel === Channel.CHANNEL_PUSH) {
        await db.query(`UPDATE push_devices SET last_success_at = now() WHERE tenant_id = $1 AND push_device_id = $2`, [key.tenantId, key.target]);
      }
    });
    if (outcome.kind === 'success' && key.channel === Channel.CHANNEL_IN_APP) return;
    if (retryAt) setTimeout(() => this.wake(), Math.max(0, retryAt.getTime() - Date.now())).unref();
  }
}

async function dequeue(db: PoolClient, key: Key): Promise<void> {
  await db.query(`DELETE FROM delivery_queue WHERE tenant_id = $1 AND notification_id = $2 AND channel = $3 AND target = $4`, [key.tenantId, key.notificationId, key.channel, key.target]);
}

async function runLimited<T>(items: T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  const lanes = Array.from({ length: Math.min(limit, items.length) }, async () => {
    while (next < items.length) {
      const item = items[next++]!;
      await fn(item);
    }
  });
  await Promise.all(lanes);
}

