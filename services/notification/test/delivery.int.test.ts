// Notification end to end against real Kafka, PostgreSQL, NATS and Redis,
// the real presence and room services, and local stand-ins for Web Push,
// FCM, APNs and SMTP that check what the real providers check. Each test
// has its own tenant.
import { ErrorCode } from '@switchboard/errors';
import { newId } from '@switchboard/ids';
import { createKafka } from '@switchboard/kafka';
import type { Consumer } from 'kafkajs';
import { infraEnv, type ServiceProcess } from '@switchboard/devenv';
import { eventsV1, notificationV1, roomV1 } from '@switchboard/proto';
import webpush from 'web-push';
import { notificationIdFor, requestIdFor } from '../src/ids';
import {
  as,
  Channel,
  channelReaches,
  DeliveryState,
  errorOf,
  eventually,
  goOnline,
  Infra,
  internal,
  launch,
  messageCreated,
  notificationClient,
  presenceClient,
  receiptUpdated,
  roomClient,
  SkipReason,
  statusOf,
  TOPICS,
  type NotificationClient,
} from './support/harness';
import { ApnsService, FcmService, makeTls, SmtpService, WebPushService, type Subscription } from './support/stand-ins';

const { PushPlatform, Priority, Frequency } = notificationV1;
const DLQ_TOPIC = 'sb.notifications.dlq';
const HOUR = 3600_000;

describe('notification delivery', () => {
  const infra = new Infra();
  const tls = makeTls();
  const webPush = new WebPushService(tls);
  const fcm = new FcmService(tls);
  const apns = new ApnsService(tls);
  const smtp = new SmtpService();
  const vapid = webpush.generateVAPIDKeys();
  let services: ServiceProcess[] = [];
  let client: NotificationClient;
  let presence: ReturnType<typeof presenceClient>;
  let room: ReturnType<typeof roomClient>;
  let dlq: Consumer;
  const deadLetters: { tenantId: string; entry: eventsV1.NotificationDeadLettered }[] = [];
  // Its own consumer group: only this test's service handles this test's records (it also owns the delivery work).
  const groupId = `notification-test-${newId()}`;

  beforeAll(async () => {
    await Promise.all([infra.start(), webPush.start(), fcm.start(), apns.start(), smtp.start()]);
    const [presenceService, roomService] = await Promise.all([launch('presence'), launch('room')]);
    const notification = await launch('notification', {
      KAFKA_GROUP_ID: groupId,
      MAX_EVENT_AGE_MS: '600000',
      KAFKA_SESSION_TIMEOUT_MS: '6000',
      // A busy test machine must not turn "online" into "presence did not answer".
      PEER_DEADLINE_MS: '10000',
      PRESENCE_ADDR: presenceService.address,
      ROOM_ADDR: roomService.address,
      NODE_EXTRA_CA_CERTS: tls.certPath,
      WEB_PUSH_ALLOWED_HOSTS: '127.0.0.1',
      VAPID_PUBLIC_KEY: vapid.publicKey,
      VAPID_PRIVATE_KEY: vapid.privateKey,
      VAPID_SUBJECT: 'mailto:oncall@example.test',
      FCM_SERVICE_ACCOUNT: fcm.serviceAccount(),
      FCM_ENDPOINT: fcm.origin,
      APNS_KEY: apns.key(),
      APNS_KEY_ID: apns.keyId,
      APNS_TEAM_ID: apns.teamId,
      APNS_PRODUCTION_URL: apns.origin,
      APNS_SANDBOX_URL: apns.origin,
      SMTP_URL: smtp.url,
      EMAIL_FROM: 'Care Team <care@example.test>',
      // Held work is brought forward by the tests ("an hour passes"), so no test waits for a real delay.
      DEFAULT_EMAIL_FALLBACK_MS: String(HOUR),
      RETRY_BASE_MS: '50',
      RETRY_MAX_MS: '200',
      MAX_ATTEMPTS: '3',
      WORKER_POLL_MS: '100',
    });
    services = [notification.process, presenceService.process, roomService.process];
    client = notificationClient(notification.address);
    presence = presenceClient(presenceService.address);
    room = roomClient(roomService.address);
    dlq = createKafka({ brokers: infraEnv().KAFKA_BROKERS!, clientId: 'notification-test-dlq' }).consumer({ groupId: `notification-test-${newId()}` });
    await dlq.connect();
    await dlq.subscribe({ topic: DLQ_TOPIC, fromBeginning: true });
    await dlq.run({
      eachMessage: async ({ message }) => {
        const envelope = eventsV1.Envelope.decode(message.value!);
        if (envelope.event?.$case === 'notificationDeadLettered') deadLetters.push({ tenantId: envelope.tenantId, entry: envelope.event.value });
      },
    });
  }, 120_000);

  afterAll(async () => {
    await dlq?.disconnect();
    client?.close();
    presence?.close();
    room?.close();
    for (const service of services) expect(await service.stop()).toBe(0);
    await Promise.all([infra.stop(), webPush.stop(), fcm.stop(), apns.stop(), smtp.stop()]);
  });

  const list = (tenantId: string, userId: string) =>
    client.listNotifications({ context: undefined, userId: '', unreadOnly: false, kinds: [], page: undefined, includeSuppressed: false }, as(tenantId, userId));

  async function setPolicy(tenantId: string, fields: Partial<notificationV1.TenantPolicy>): Promise<void> {
    await client.updateTenantPolicy(
      {
        context: undefined,
        expectedVersion: 0,
        policy: { tenantId: '', urgentBypassesDnd: false, urgentBypassesRateCap: true, defaultMaxPerHour: 0, defaultLocale: '', defaultTimeZone: '', emailFallbackAfterMs: HOUR, version: 0, ...fields },
      },
      internal(tenantId),
    );
  }

  async function setPreferences(tenantId: string, userId: string, fields: Partial<notificationV1.Preferences>, paths: string[]): Promise<notificationV1.Preferences> {
    const preferences: notificationV1.Preferences = {
      userId: '',
      channelPreferences: [],
      doNotDisturb: undefined,
      timeZone: '',
      locale: '',
      maxPerHour: 0,
      dailyDigestMinute: 0,
      version: 0,
      email: '',
      ...fields,
    };
    return (await client.updatePreferences({ context: undefined, preferences, updateMask: paths, expectedVersion: 0 }, as(tenantId, userId))).preferences!;
  }

  async function registerWebPush(tenantId: string, userId: string, sub: Subscription) {
    return (
      await client.registerPushDevice(
        { context: undefined, deviceId: newId(), platform: PushPlatform.PUSH_PLATFORM_WEB_PUSH, target: { $case: 'webPush', value: { ...sub, expirationTime: undefined } }, appVersion: 'web 1.0' },
        as(tenantId, userId),
      )
    ).device!;
  }

  async function template(tenantId: string, kind: string, channel: notificationV1.Channel, locale: string, fields: Partial<notificationV1.Template>) {
    await client.upsertTemplate(
      {
        context: undefined,
        expectedVersion: 0,
        template: { tenantId: '', key: { kind, channel, locale }, title: '', body: '', htmlBody: '', data: {}, version: 0, updatedBy: '', updatedAt: undefined, ...fields },
      },
      internal(tenantId),
    );
  }

  /** The templates internal teams use for lab results, in English and Spanish. */
  async function labTemplates(tenantId: string): Promise<void> {
    await template(tenantId, 'lab.result_ready', Channel.CHANNEL_IN_APP, 'en', { title: 'Lab result ready', body: 'The result for {{patient}} is ready', data: { link: 'app://labs/{{resultId}}' } });
    await template(tenantId, 'lab.result_ready', Channel.CHANNEL_IN_APP, 'es', { title: 'Resultado listo', body: 'El resultado de {{patient}} está listo', data: { link: 'app://labs/{{resultId}}' } });
    await template(tenantId, 'lab.result_ready', Channel.CHANNEL_PUSH, 'en', { title: 'New lab result', body: 'Open the app to view it' });
    await template(tenantId, 'lab.result_ready', Channel.CHANNEL_EMAIL, 'en', {
      title: 'A lab result is ready',
      body: 'Dear {{name}}, a result is ready. Open the app to view it.',
      htmlBody: '<p>Dear {{name}},</p><p>a result is ready.</p>',
    });
  }

  async function notify(tenantId: string, audience: notificationV1.NotifyRequest['audience'], fields: Partial<notificationV1.NotifyRequest> = {}) {
    return client.notify(
      {
        context: undefined,
        audience,
        excludeUserIds: [],
        kind: 'lab.result_ready',
        variables: { patient: 'J. Pérez', resultId: 'r-1', name: 'Dr. Grey' },
        data: {},
        priority: Priority.PRIORITY_NORMAL,
        idempotencyKey: newId(),
        channels: [],
        expiresAt: undefined,
        ...fields,
      },
      internal(tenantId),
    );
  }

  const idFor = (tenantId: string, requestId: string, userId: string) => notificationIdFor(tenantId, requestId, userId);

  it('routes a message by presence: reading it → nothing, online → in-app, offline → push, still unread → email', async () => {
    const t = newId();
    const [sender, reader, online, offline, mailer, mailerRead, mailerDelivered] = Array.from({ length: 7 }, () => newId());
    const conversationId = newId();
    for (const userId of [reader, online]) await goOnline(presence, t, userId);
    const sub = webPush.subscribe();
    await registerWebPush(t, offline, sub);
    for (const userId of [mailer, mailerRead, mailerDelivered]) await setPreferences(t, userId, { email: `${userId}@example.test` }, ['email']);
    const onlineEvents = await infra.watchUser(t, online);
    const readerEvents = await infra.watchUser(t, reader);

    // The reader's device has the conversation open: messaging reported its read watermark just now.
    const message = messageCreated(t, sender, [sender, reader, online, offline, mailer, mailerRead, mailerDelivered], { conversationId, seq: 4, text: 'Potassium 6.1 for bed 12' });
    await infra.produce(TOPICS.messages, receiptUpdated(t, conversationId, reader, 3, 3), message);
    const id = (userId: string) => notificationIdFor(t, message.envelope.eventId, userId);
    for (const userId of [online, offline, mailer, mailerRead, mailerDelivered]) await channelReaches(client, t, id(userId), 'inApp', [DeliveryState.DELIVERY_STATE_DELIVERED]);

    // Reading the conversation: no notification at all, but the decision is kept for support staff.
    expect((await list(t, reader)).notifications).toEqual([]);
    expect((await client.getBadgeCount({ context: undefined, userId: '' }, as(t, reader))).unreadCount).toBe(0);
    const readerStatus = await statusOf(client, t, id(reader));
    expect(readerStatus.status.suppressed).toBe(true);
    for (const channel of [readerStatus.inApp, readerStatus.push, readerStatus.email]) {
      expect(channel).toMatchObject({ state: DeliveryState.DELIVERY_STATE_SKIPPED, skipReason: SkipReason.SKIP_REASON_ACTIVE_IN_CONVERSATION, reason: expect.stringMatching(/^reading the conversation/) });
    }
    // Recorded once for all channels: the commonest case of a direct message costs one decision row, and no work.
    expect(await infra.tenantQuery(t, `SELECT channel FROM deliveries WHERE notification_id = $1`, [id(reader)])).toEqual([{ channel: Channel.CHANNEL_IN_APP }]);
    expect(await infra.tenantQuery(t, `SELECT 1 FROM delivery_queue WHERE notification_id = $1`, [id(reader)])).toEqual([]);
    const forSupport = await client.listNotifications({ context: undefined, userId: reader, unreadOnly: false, kinds: [], page: undefined, includeSuppressed: true }, internal(t));
    expect(forSupport.notifications.map((n) => n.notificationId)).toEqual([id(reader)]);

    // Online elsewhere in the app: in-app only, live on the user subject with the badge.
    const onlineStatus = await statusOf(client, t, id(online));
    expect(onlineStatus.push).toMatchObject({ state: DeliveryState.DELIVERY_STATE_SKIPPED, skipReason: SkipReason.SKIP_REASON_ONLINE });
    expect(onlineStatus.inApp.reason).toMatch(/^online: in-app/);
    const live = await eventually(() => onlineEvents.find((e) => e.$case === 'notificationCreated'));
    expect(live.value).toMatchObject({ notificationId: id(online), kind: 'message.new', title: 'New message', body: 'Potassium 6.1 for bed 12', badgeCount: 1, silent: false });

    // Offline: pushed, with the push template's words only (no message text leaves the platform).
    const offlineStatus = await channelReaches(client, t, id(offline), 'push', [DeliveryState.DELIVERY_STATE_SENT]);
    expect(offlineStatus.push.reason).toMatch(/^offline: push/);
    expect(offlineStatus.push.attempts).toEqual([expect.objectContaining({ attempt: 1, outcome: notificationV1.AttemptOutcome.ATTEMPT_OUTCOME_SUCCESS, providerResponse: '201' })]);
    const pushed = webPush.for(sub);
    expect(pushed).toHaveLength(1);
    expect(pushed[0]!.payload).toMatchObject({ notificationId: id(offline), title: 'New message', body: 'You have a new message', badge: 1 });
    expect(JSON.stringify(pushed[0]!.payload)).not.toContain('Potassium');
    expect(pushed[0]!.topic).toBe(id(offline));
    expect(offlineStatus.email).toMatchObject({ state: DeliveryState.DELIVERY_STATE_SKIPPED, skipReason: SkipReason.SKIP_REASON_NO_DESTINATION });

    // Email waits for the fallback delay.
    const waiting = await statusOf(client, t, id(mailer));
    expect(waiting.email.state).toBe(DeliveryState.DELIVERY_STATE_PENDING);
    expect(waiting.email.reason).toMatch(/email if still unread and undelivered/);
    expect(waiting.email.nextAttemptAt!.getTime()).toBeGreaterThan(Date.now() + HOUR - 60_000);
    expect(smtp.to(`${mailer}@example.test`)).toEqual([]);

    // Meanwhile one reads it in the app, and another's device receives the message.
    const [unread] = (await list(t, mailerRead)).notifications;
    await client.markNotificationRead({ context: undefined, notificationId: unread!.notificationId }, as(t, mailerRead));
    await infra.produce(TOPICS.messages, receiptUpdated(t, conversationId, mailerDelivered, 4, 0));
    await eventually(async () => (await infra.tenantQuery(t, `SELECT 1 FROM conversation_receipts WHERE user_id = $1 AND delivered_seq = 4`, [mailerDelivered])).length === 1);

    // The delay passes.
    await infra.comeDue(t);
    const mailed = await channelReaches(client, t, id(mailer), 'email', [DeliveryState.DELIVERY_STATE_SENT]);
    expect(mailed.email.reason).toMatch(/unread and undelivered/);
    const [mail] = await eventually(() => (smtp.to(`${mailer}@example.test`).length ? smtp.to(`${mailer}@example.test`) : undefined));
    expect(mail).toMatchObject({ subject: 'You have a new message', from: '"Care Team" <care@example.test>', messageId: `<${id(mailer)}.email@switchboard>` });
    expect(mail!.text).toContain('You have an unread message');
    expect(mail!.text).not.toContain('Potassium');
    expect((await channelReaches(client, t, id(mailerRead), 'email', [DeliveryState.DELIVERY_STATE_SKIPPED])).email.skipReason).toBe(SkipReason.SKIP_REASON_ALREADY_READ);
    expect((await channelReaches(client, t, id(mailerDelivered), 'email', [DeliveryState.DELIVERY_STATE_SKIPPED])).email.skipReason).toBe(SkipReason.SKIP_REASON_DELIVERED_ON_DEVICE);
    expect(smtp.to(`${mailerRead}@example.test`)).toEqual([]);
    expect(smtp.to(`${mailerDelivered}@example.test`)).toEqual([]);
    expect(readerEvents.filter((e) => e.$case === 'notificationCreated')).toEqual([]);
  });

  it('a read receipt in the conversation reads the notification: the badge drops on every device', async () => {
    const t = newId();
    const [sender, user] = [newId(), newId()];
    const events = await infra.watchUser(t, user);
    const first = messageCreated(t, sender, [sender, user], { seq: 1 });
    // Distinct event times: the history is ordered by when things happened.
    await new Promise((r) => setTimeout(r, 5));
    const second = messageCreated(t, sender, [sender, user], { seq: 2, conversationId: first.key });
    await infra.produce(TOPICS.messages, first, second);
    await eventually(async () => ((await list(t, user)).unreadCount === 2 ? true : undefined));
    await infra.produce(TOPICS.messages, receiptUpdated(t, first.key, user, 2, 1));
    const badge = await eventually(() => events.find((e) => e.$case === 'badgeCountChanged'));
    expect(badge.value).toEqual({ userId: user, unread: 1 });
    const page = await list(t, user);
    expect(page.notifications.map((n) => [n.data['seq'], n.readAt !== undefined])).toEqual([
      ['2', false],
      ['1', true],
    ]);
  });

  it('counts every notification of a batch into the badge, and records each in-app publish as one successful attempt', async () => {
    const t = newId();
    const [sender, user] = [newId(), newId()];
    await goOnline(presence, t, user);
    const events = await infra.watchUser(t, user);
    const conversationId = newId();
    const first = [1, 2].map((seq) => messageCreated(t, sender, [sender, user], { conversationId, seq }));
    await infra.produce(TOPICS.messages, ...first);
    await eventually(async () => ((await list(t, user)).unreadCount === 2 ? true : undefined));
    // Three more in one produce: one partition, usually one batch (one statement stores them and counts the badge).
    const more = [3, 4, 5].map((seq) => messageCreated(t, sender, [sender, user], { conversationId, seq }));
    await infra.produce(TOPICS.messages, ...more);
    const live = await eventually(() => {
      const created = events.filter((e) => e.$case === 'notificationCreated').map((e) => e.value as eventsV1.NotificationCreated);
      return created.length >= 5 ? created : undefined;
    });
    // Each device shows what is unread once that notification arrives: never fewer than arrived so far, five at the end.
    const badges = live.map((n) => n.badgeCount);
    expect(badges.every((badge, i) => badge >= i + 1 && badge <= 5)).toBe(true);
    expect(badges[badges.length - 1]).toBe(5);
    expect((await client.getBadgeCount({ context: undefined, userId: '' }, as(t, user))).unreadCount).toBe(5);
    // Support sees one attempt per in-app notification: published on the user's subject, finished, a success.
    for (const message of [...first, ...more]) {
      const status = await channelReaches(client, t, notificationIdFor(t, message.envelope.eventId, user), 'inApp', [DeliveryState.DELIVERY_STATE_DELIVERED]);
      expect(status.inApp.attempts).toEqual([
        expect.objectContaining({ attempt: 1, outcome: notificationV1.AttemptOutcome.ATTEMPT_OUTCOME_SUCCESS, providerResponse: `published on sb.${t}.user.${user}`, finishedAt: expect.any(Date) }),
      ]);
      expect(status.inApp.attempts[0]!.startedAt!.getTime()).toBeLessThanOrEqual(status.inApp.attempts[0]!.finishedAt!.getTime());
    }
    expect(live.map((n) => n.notificationId).sort()).toEqual([...first, ...more].map((m) => notificationIdFor(t, m.envelope.eventId, user)).sort());
  });

  it('takes over an in-app delivery a pipeline left in flight: support sees the interrupted attempt, then the one that went', async () => {
    const t = newId();
    const [user, notificationId] = [newId(), newId()];
    const events = await infra.watchUser(t, user);
    // What a pipeline killed between its commit and its publish leaves: the notification, its in-app delivery in
    // flight (attempt 1 under way, no attempt row yet) and the lease on the work queue, which has lapsed.
    const leftAt = new Date(Date.now() - 60_000);
    await infra.tenantQuery(
      t,
      `INSERT INTO notifications (tenant_id, notification_id, user_id, kind, priority, title, body, source_event_id, created_at)
       VALUES ($1, $2, $3, 'message.new', ${Priority.PRIORITY_NORMAL}, 'New message', 'left in flight', $2, $4)`,
      [t, notificationId, user, leftAt],
    );
    await infra.tenantQuery(
      t,
      `INSERT INTO deliveries (tenant_id, notification_id, channel, target, user_id, state, reason, attempts, created_at, updated_at)
       VALUES ($1, $2, ${Channel.CHANNEL_IN_APP}, '', $3, 'inflight', 'online: in-app', 1, $4, $4)`,
      [t, notificationId, user, leftAt],
    );
    await infra.pool.query(`INSERT INTO delivery_queue (owner, tenant_id, notification_id, channel, target, due_at) VALUES ($1, $2, $3, ${Channel.CHANNEL_IN_APP}, '', now())`, [
      groupId,
      t,
      notificationId,
    ]);

    const status = await channelReaches(client, t, notificationId, 'inApp', [DeliveryState.DELIVERY_STATE_DELIVERED]);
    expect(status.inApp.attempts).toEqual([
      expect.objectContaining({ attempt: 1, outcome: notificationV1.AttemptOutcome.ATTEMPT_OUTCOME_TRANSIENT_FAILURE, providerResponse: expect.stringMatching(/^interrupted:/), startedAt: leftAt }),
      expect.objectContaining({ attempt: 2, outcome: notificationV1.AttemptOutcome.ATTEMPT_OUTCOME_SUCCESS, providerResponse: `published on sb.${t}.user.${user}` }),
    ]);
    const live = await eventually(() => events.find((e) => e.$case === 'notificationCreated'));
    expect(live.value).toMatchObject({ notificationId, body: 'left in flight', badgeCount: 1 });
    expect(await infra.tenantQuery(t, `SELECT 1 FROM delivery_queue WHERE notification_id = $1`, [notificationId])).toEqual([]);
  });

  it('Notify: per-tenant templates with locale fallback, escaping, every audience, and idempotency', async () => {
    const t = newId();
    await labTemplates(t);
    await setPolicy(t, { emailFallbackAfterMs: HOUR });
    const [ana, bob, carl, dana] = Array.from({ length: 4 }, () => newId());
    await setPreferences(t, ana, { locale: 'es-MX' }, ['locale']);
    await setPreferences(t, bob, { email: `${bob}@example.test` }, ['email']);

    const single = await notify(t, { $case: 'userId', value: ana }, { idempotencyKey: 'lab-42' });
    expect(single).toEqual({ requestId: requestIdFor(t, 'internal', 'lab-42'), duplicate: false });
    expect(await notify(t, { $case: 'userId', value: ana }, { idempotencyKey: 'lab-42' })).toEqual({ ...single, duplicate: true });
    const many = await notify(t, { $case: 'users', value: { userIds: [bob, ana] } }, { excludeUserIds: [ana], variables: { patient: 'J. Pérez', resultId: 'r-2', name: '<b>Bob & co</b>' } });
    const { room: created } = await room.createRoom(
      {
        context: undefined,
        name: 'Ward 3',
        topic: '',
        description: '',
        avatarRef: '',
        metadata: {},
        visibility: roomV1.RoomVisibility.ROOM_VISIBILITY_PRIVATE,
        settings: undefined,
        memberIds: [carl, dana],
        ownerId: carl,
        requestId: '',
      },
      internal(t),
    );
    const toRoom = await notify(t, { $case: 'roomId', value: created!.roomId });

    const anaNote = await channelReaches(client, t, idFor(t, single.requestId, ana), 'inApp', [DeliveryState.DELIVERY_STATE_DELIVERED]);
    expect(anaNote.inApp.state).toBe(DeliveryState.DELIVERY_STATE_DELIVERED);
    // es-MX falls back to es.
    expect((await list(t, ana)).notifications.map((n) => [n.title, n.body, n.data['link'], n.requestId])).toEqual([['Resultado listo', 'El resultado de J. Pérez está listo', 'app://labs/r-1', single.requestId]]);
    await channelReaches(client, t, idFor(t, many.requestId, bob), 'inApp', [DeliveryState.DELIVERY_STATE_DELIVERED]);
    expect((await list(t, bob)).notifications.map((n) => n.title)).toEqual(['Lab result ready']);
    for (const member of [carl, dana]) {
      await channelReaches(client, t, idFor(t, toRoom.requestId, member), 'inApp', [DeliveryState.DELIVERY_STATE_DELIVERED]);
      expect((await list(t, member)).notifications.map((n) => [n.title, n.roomId])).toEqual([['Lab result ready', created!.roomId]]);
    }
    // Excluded, and the duplicate request added nothing.
    expect((await list(t, ana)).notifications).toHaveLength(1);

    // The email is escaped where it is HTML and plain where it is text.
    await infra.comeDue(t);
    const [mail] = await eventually(() => (smtp.to(`${bob}@example.test`).length ? smtp.to(`${bob}@example.test`) : undefined));
    expect(mail!.subject).toBe('A lab result is ready');
    expect(mail!.text).toContain('Dear <b>Bob & co</b>, a result is ready.');
    expect(mail!.html).toContain('<p>Dear &lt;b&gt;Bob &amp; co&lt;/b&gt;,</p>');

    // Authors preview with missing variables reported, not failed; delivery resolves locales as above.
    const preview = await client.renderTemplate({ context: undefined, source: { $case: 'key', value: { kind: 'lab.result_ready', channel: Channel.CHANNEL_IN_APP, locale: 'es-AR' } }, variables: {} }, internal(t));
    expect(preview).toMatchObject({ title: 'Resultado listo', missingVariables: ['patient', 'resultId'], resolvedKey: { locale: 'es' } });
    const resolved = await client.getTemplate({ context: undefined, key: { kind: 'lab.result_ready', channel: Channel.CHANNEL_PUSH, locale: 'fr-CA' }, resolve: true }, internal(t));
    expect(resolved.template).toMatchObject({ title: 'New lab result', key: { locale: 'en' }, version: 1 });
  });

  it('pushes through FCM and APNs as their services check it, and prunes tokens they report gone', async () => {
    const t = newId();
    await labTemplates(t);
    const user = newId();
    const [fcmOk, fcmGone] = [fcm.token(), fcm.token()];
    const [apnsOk, apnsGone] = [apns.deviceToken(), apns.deviceToken()];
    fcm.gone.add(fcmGone);
    apns.gone.add(apnsGone);
    const register = (platform: notificationV1.PushPlatform, target: notificationV1.RegisterPushDeviceRequest['target']) =>
      client.registerPushDevice({ context: undefined, deviceId: newId(), platform, target, appVersion: '2.3.1' }, as(t, user));
    await register(PushPlatform.PUSH_PLATFORM_FCM, { $case: 'fcm', value: { token: fcmOk } });
    await register(PushPlatform.PUSH_PLATFORM_FCM, { $case: 'fcm', value: { token: fcmGone } });
    await register(PushPlatform.PUSH_PLATFORM_APNS, { $case: 'apns', value: { deviceToken: apnsOk, topic: apns.topic, environment: notificationV1.ApnsEnvironment.APNS_ENVIRONMENT_PRODUCTION } });
    await register(PushPlatform.PUSH_PLATFORM_APNS, { $case: 'apns', value: { deviceToken: apnsGone, topic: apns.topic, environment: notificationV1.ApnsEnvironment.APNS_ENVIRONMENT_SANDBOX } });
    const goneSub = webPush.subscribe('gone');
    await registerWebPush(t, user, goneSub);
    const listed = await client.listPushDevices({ context: undefined, userId: '' }, as(t, user));
    expect(listed.devices).toHaveLength(5);
    // Secrets stay in: keys left out, tokens shortened.
    expect(JSON.stringify(listed.devices)).not.toContain(fcmOk);
    expect(JSON.stringify(listed.devices)).not.toContain(goneSub.p256dh);

    const { requestId } = await notify(t, { $case: 'userId', value: user }, { priority: Priority.PRIORITY_URGENT });
    const id = idFor(t, requestId, user);
    await channelReaches(client, t, id, 'inApp', [DeliveryState.DELIVERY_STATE_DELIVERED]);
    const status = await eventually(async () => {
      const s = await statusOf(client, t, id);
      return s.push.attempts.filter((a) => a.finishedAt).length === 5 ? s : undefined;
    });
    expect(status.push.state).toBe(DeliveryState.DELIVERY_STATE_SENT);
    const outcomes = status.push.attempts.map((a) => `${notificationV1.AttemptOutcome[a.outcome]} ${a.providerResponse}`).sort();
    expect(outcomes).toEqual(
      [
        'ATTEMPT_OUTCOME_PERMANENT_FAILURE 404 UNREGISTERED',
        'ATTEMPT_OUTCOME_PERMANENT_FAILURE 410 Unregistered',
        'ATTEMPT_OUTCOME_PERMANENT_FAILURE 410 subscription expired',
        'ATTEMPT_OUTCOME_SUCCESS 200',
        'ATTEMPT_OUTCOME_SUCCESS 200',
      ].sort(),
    );
    expect(fcm.received.filter((m) => m.token === fcmOk)).toEqual([
      expect.objectContaining({ notification: { title: 'New lab result', body: 'Open the app to view it' }, android: expect.objectContaining({ priority: 'HIGH', collapse_key: id }) }),
    ]);
    expect(apns.received.filter((m) => m.deviceToken === apnsOk)).toEqual([
      expect.objectContaining({ topic: apns.topic, collapseId: id, priority: '10', body: expect.objectContaining({ aps: expect.objectContaining({ alert: { title: 'New lab result', body: 'Open the app to view it' } }) }) }),
    ]);
    expect([...fcm.rejected, ...apns.rejected, ...webPush.rejected]).toEqual([]);
    // The gone ones are unregistered; the working ones stay.
    const after = await client.listPushDevices({ context: undefined, userId: '' }, as(t, user));
    expect(after.devices.map((d) => d.platform).sort()).toEqual([PushPlatform.PUSH_PLATFORM_FCM, PushPlatform.PUSH_PLATFORM_APNS].sort());
    expect(after.devices.every((d) => d.lastSuccessAt instanceof Date)).toBe(true);
  });

  it('retries with backoff, and ends in the dead-letter topic with the reason', async () => {
    const t = newId();
    await labTemplates(t);
    await setPolicy(t, { emailFallbackAfterMs: HOUR });
    const [flaky, busy, bounce] = [newId(), newId(), newId()];
    const sub = webPush.subscribe({ failFirst: 2 });
    await registerWebPush(t, flaky, sub);
    await setPreferences(t, busy, { email: `busy-${busy}@example.test` }, ['email']);
    await setPreferences(t, bounce, { email: `bounce-${bounce}@example.test` }, ['email']);
    const { requestId } = await notify(t, { $case: 'users', value: { userIds: [flaky, busy, bounce] } });

    const pushed = await channelReaches(client, t, idFor(t, requestId, flaky), 'push', [DeliveryState.DELIVERY_STATE_SENT]);
    expect(pushed.push.attempts.map((a) => a.outcome)).toEqual([
      notificationV1.AttemptOutcome.ATTEMPT_OUTCOME_TRANSIENT_FAILURE,
      notificationV1.AttemptOutcome.ATTEMPT_OUTCOME_TRANSIENT_FAILURE,
      notificationV1.AttemptOutcome.ATTEMPT_OUTCOME_SUCCESS,
    ]);
    expect(webPush.for(sub)).toHaveLength(1);

    await infra.comeDue(t);
    const gaveUp = await channelReaches(client, t, idFor(t, requestId, busy), 'email', [DeliveryState.DELIVERY_STATE_FAILED]);
    expect(gaveUp.email.attempts.map((a) => a.outcome)).toEqual(Array(3).fill(notificationV1.AttemptOutcome.ATTEMPT_OUTCOME_TRANSIENT_FAILURE));
    expect(gaveUp.email.reason).toMatch(/gave up after 3 attempts: 451/);
    const refused = await channelReaches(client, t, idFor(t, requestId, bounce), 'email', [DeliveryState.DELIVERY_STATE_FAILED]);
    expect(refused.email.attempts.map((a) => a.outcome)).toEqual([notificationV1.AttemptOutcome.ATTEMPT_OUTCOME_PERMANENT_FAILURE]);

    const letters = await eventually(() => {
      const mine = deadLetters.filter((d) => d.tenantId === t);
      return mine.length >= 2 ? mine : undefined;
    });
    const entries = letters.map((d) => d.entry).sort((a) => (a.userId === busy ? -1 : 1));
    expect(entries).toEqual([
      expect.objectContaining({ notificationId: idFor(t, requestId, busy), userId: busy, channel: Channel.CHANNEL_EMAIL, kind: 'lab.result_ready', attempts: 3, reason: expect.stringMatching(/gave up after 3 attempts: 451/) }),
      expect.objectContaining({ notificationId: idFor(t, requestId, bounce), userId: bounce, channel: Channel.CHANNEL_EMAIL, attempts: 1, reason: expect.stringMatching(/permanent failure: 550/) }),
    ]);
    expect(smtp.mails.filter((m) => m.to.includes(busy) || m.to.includes(bounce))).toEqual([]);
  });

  describe('preferences', () => {
    /** A window around the current minute in `zone`, and its end as an instant. */
    function windowAroundNow(zone: string): { window: notificationV1.DoNotDisturbWindow; endsAt: Date } {
      const now = new Date();
      const parts = new Intl.DateTimeFormat('en-GB', { timeZone: zone, hour: '2-digit', minute: '2-digit', hourCycle: 'h23' }).formatToParts(now);
      const minute = Number(parts.find((p) => p.type === 'hour')!.value) * 60 + Number(parts.find((p) => p.type === 'minute')!.value);
      const start = (minute - 30 + 1440) % 1440;
      const end = (minute + 60) % 1440;
      now.setSeconds(0, 0);
      return { window: { days: [], startMinute: start, endMinute: end }, endsAt: new Date(now.getTime() + 60 * 60_000) };
    }

    it('holds push for do-not-disturb in the user’s own time zone, and lets it go when it ends', async () => {
      const t = newId();
      await labTemplates(t);
      const [tokyo, chicago] = [newId(), newId()];
      const { window, endsAt } = windowAroundNow('Asia/Tokyo');
      const subs = { tokyo: webPush.subscribe(), chicago: webPush.subscribe() };
      await registerWebPush(t, tokyo, subs.tokyo);
      await registerWebPush(t, chicago, subs.chicago);
      // The same 22:00-ish window: it holds now in Tokyo, not in Chicago (14–15 hours behind).
      for (const [userId, zone] of [
        [tokyo, 'Asia/Tokyo'],
        [chicago, 'America/Chicago'],
      ] as const) {
        await setPreferences(t, userId, { timeZone: zone, doNotDisturb: { enabled: false, enabledUntil: undefined, schedule: [window] } }, ['time_zone', 'do_not_disturb']);
      }
      expect((await client.getPreferences({ context: undefined, userId: '' }, as(t, tokyo))).doNotDisturbActive).toBe(true);
      expect((await client.getPreferences({ context: undefined, userId: '' }, as(t, chicago))).doNotDisturbActive).toBe(false);
      const tokyoEvents = await infra.watchUser(t, tokyo);

      const { requestId } = await notify(t, { $case: 'users', value: { userIds: [tokyo, chicago] } });
      await channelReaches(client, t, idFor(t, requestId, chicago), 'push', [DeliveryState.DELIVERY_STATE_SENT]);
      const held = await channelReaches(client, t, idFor(t, requestId, tokyo), 'push', [DeliveryState.DELIVERY_STATE_DEFERRED]);
      expect(held.push.nextAttemptAt).toEqual(endsAt);
      expect(held.push.reason).toMatch(/do-not-disturb until \d\d:\d\d Asia\/Tokyo/);
      // In-app is stored and announced, silently.
      expect(held.inApp.state).toBe(DeliveryState.DELIVERY_STATE_DELIVERED);
      const live = await eventually(() => tokyoEvents.find((e) => e.$case === 'notificationCreated'));
      expect(live.value).toMatchObject({ silent: true });
      expect(webPush.for(subs.tokyo)).toEqual([]);
      expect(webPush.for(subs.chicago)).toHaveLength(1);

      // The user ends the quiet hours: what was held goes now.
      await setPreferences(t, tokyo, { doNotDisturb: { enabled: false, enabledUntil: undefined, schedule: [] } }, ['do_not_disturb']);
      await channelReaches(client, t, idFor(t, requestId, tokyo), 'push', [DeliveryState.DELIVERY_STATE_SENT]);
      expect(webPush.for(subs.tokyo)).toHaveLength(1);
    });

    it('lets urgent pass do-not-disturb only where the tenant allows it; the manual switch holds and releases', async () => {
      const t = newId();
      await labTemplates(t);
      const user = newId();
      const sub = webPush.subscribe();
      await registerWebPush(t, user, sub);
      const dnd = await client.setDoNotDisturb({ context: undefined, enabled: true, until: undefined }, as(t, user));
      expect(dnd.doNotDisturbActive).toBe(true);

      await setPolicy(t, { urgentBypassesDnd: false });
      const blocked = await notify(t, { $case: 'userId', value: user }, { priority: Priority.PRIORITY_URGENT });
      const held = await channelReaches(client, t, idFor(t, blocked.requestId, user), 'push', [DeliveryState.DELIVERY_STATE_DEFERRED]);
      expect(held.push.reason).toBe('do-not-disturb is on (the tenant does not let urgent pass)');

      await setPolicy(t, { urgentBypassesDnd: true });
      const passes = await notify(t, { $case: 'userId', value: user }, { priority: Priority.PRIORITY_URGENT });
      const normal = await notify(t, { $case: 'userId', value: user });
      const sent = await channelReaches(client, t, idFor(t, passes.requestId, user), 'push', [DeliveryState.DELIVERY_STATE_SENT]);
      expect(sent.push.reason).toMatch(/passes do-not-disturb/);
      await channelReaches(client, t, idFor(t, normal.requestId, user), 'push', [DeliveryState.DELIVERY_STATE_DEFERRED]);
      expect(webPush.for(sub).map((r) => r.payload.notificationId)).toEqual([idFor(t, passes.requestId, user)]);
      expect(webPush.for(sub)[0]!.urgency).toBe('high');

      // Off again: the held ones go.
      await client.setDoNotDisturb({ context: undefined, enabled: false, until: undefined }, as(t, user));
      await channelReaches(client, t, idFor(t, blocked.requestId, user), 'push', [DeliveryState.DELIVERY_STATE_SENT]);
      await channelReaches(client, t, idFor(t, normal.requestId, user), 'push', [DeliveryState.DELIVERY_STATE_SENT]);
      expect(webPush.for(sub)).toHaveLength(3);
    });

    it('batches into an hourly digest, caps the hourly rate, and honours a channel turned off', async () => {
      const t = newId();
      await labTemplates(t);
      const [digest, capped, quiet] = [newId(), newId(), newId()];
      const subs = { digest: webPush.subscribe(), capped: webPush.subscribe(), quiet: webPush.subscribe() };
      await registerWebPush(t, digest, subs.digest);
      await registerWebPush(t, capped, subs.capped);
      await registerWebPush(t, quiet, subs.quiet);
      await setPreferences(
        t,
        digest,
        { timeZone: 'Asia/Kolkata', channelPreferences: [{ kind: '', channel: Channel.CHANNEL_PUSH, enabled: true, frequency: Frequency.FREQUENCY_HOURLY_DIGEST }] },
        ['time_zone', 'channel_preferences'],
      );
      await setPreferences(t, capped, { maxPerHour: 2 }, ['max_per_hour']);
      await setPreferences(t, quiet, { channelPreferences: [{ kind: 'lab.result_ready', channel: Channel.CHANNEL_PUSH, enabled: false, frequency: Frequency.FREQUENCY_UNSPECIFIED }] }, ['channel_preferences']);

      const requests = [];
      for (const patient of ['A. Adams', 'B. Brown', 'C. Chen']) {
        requests.push((await notify(t, { $case: 'users', value: { userIds: [digest, capped, quiet] } }, { variables: { patient, resultId: patient, name: 'x' } })).requestId);
      }
      // Kolkata is UTC+5:30: its top of the hour is at :30 UTC.
      const held = await Promise.all(requests.map((r) => channelReaches(client, t, idFor(t, r, digest), 'push', [DeliveryState.DELIVERY_STATE_DEFERRED])));
      const next = held[0]!.push.nextAttemptAt!;
      expect(next.getUTCMinutes()).toBe(30);
      expect(next.getTime()).toBeGreaterThan(Date.now());
      expect(next.getTime()).toBeLessThanOrEqual(Date.now() + HOUR);
      expect(held.every((s) => s.push.skipReason === SkipReason.SKIP_REASON_DIGESTED)).toBe(true);

      const cappedStates = await Promise.all(requests.map((r) => channelReaches(client, t, idFor(t, r, capped), 'push', [DeliveryState.DELIVERY_STATE_SENT, DeliveryState.DELIVERY_STATE_DEFERRED])));
      // The three requests travel on different partitions: which one hits the cap is whichever comes third.
      expect(cappedStates.map((s) => s.push.state).sort()).toEqual([DeliveryState.DELIVERY_STATE_SENT, DeliveryState.DELIVERY_STATE_SENT, DeliveryState.DELIVERY_STATE_DEFERRED].sort());
      expect(cappedStates.find((s) => s.push.state === DeliveryState.DELIVERY_STATE_DEFERRED)!.push).toMatchObject({ skipReason: SkipReason.SKIP_REASON_RATE_CAP, reason: expect.stringMatching(/rate cap of 2/) });
      for (const r of requests) expect((await statusOf(client, t, idFor(t, r, quiet))).push).toMatchObject({ state: DeliveryState.DELIVERY_STATE_SKIPPED, skipReason: SkipReason.SKIP_REASON_PREFERENCE });

      // The hour turns: one digest push instead of three.
      expect(webPush.for(subs.digest)).toEqual([]);
      await infra.comeDue(t);
      const [digestPush] = await eventually(() => (webPush.for(subs.digest).length ? webPush.for(subs.digest) : undefined));
      expect(digestPush!.payload.title).toBe('You have 3 new notifications');
      expect(digestPush!.payload.body.split('\n')).toEqual(['• New lab result', '• New lab result', '• New lab result']);
      for (const r of requests) {
        const folded = await channelReaches(client, t, idFor(t, r, digest), 'push', [DeliveryState.DELIVERY_STATE_SKIPPED]);
        expect(folded.push.reason).toMatch(/^folded into digest /);
      }
      const [cappedDigest] = await eventually(() => (webPush.for(subs.capped).length === 3 ? [webPush.for(subs.capped)[2]!] : undefined));
      expect(cappedDigest!.payload.title).toBe('You have 1 new notifications');
      expect(webPush.for(subs.quiet)).toEqual([]);
    });
  });

  it('refuses bad input with a specific error, and sends and changes nothing', async () => {
    const t = newId();
    const other = newId();
    await labTemplates(t);
    const user = newId();
    const code = async (call: Promise<unknown>) => (await errorOf(call)).code;
    const before = await setPreferences(t, user, { email: 'user@example.test', timeZone: 'Europe/Berlin' }, ['email', 'time_zone']);

    // Notify: unknown kind, a malformed one, missing variables, not internal, another tenant, another tenant's room.
    const unknown = await errorOf(notify(t, { $case: 'userId', value: user }, { kind: 'lab.never_heard_of' }));
    expect([unknown.code, unknown.message]).toEqual([ErrorCode.ERROR_CODE_NOT_FOUND, 'no template for kind lab.never_heard_of']);
    expect(await code(notify(t, { $case: 'userId', value: user }, { kind: 'Lab Result!' }))).toBe(ErrorCode.ERROR_CODE_INVALID_ARGUMENT);
    const missing = await errorOf(notify(t, { $case: 'userId', value: user }, { variables: { resultId: 'r' } }));
    expect(missing.code).toBe(ErrorCode.ERROR_CODE_INVALID_ARGUMENT);
    expect(missing.message).toMatch(/missing variables for lab.result_ready .*template: patient/);
    const asUser = client.notify(
      { context: undefined, audience: { $case: 'userId', value: user }, excludeUserIds: [], kind: 'lab.result_ready', variables: {}, data: {}, priority: 0, idempotencyKey: 'k', channels: [], expiresAt: undefined },
      as(t, user),
    );
    expect(await code(asUser)).toBe(ErrorCode.ERROR_CODE_PERMISSION_DENIED);
    expect(await code(notify(t, { $case: 'userId', value: user }, { context: { tenantId: other, userId: '', deviceId: '', internal: true } }))).toBe(ErrorCode.ERROR_CODE_PERMISSION_DENIED);
    const { room: foreign } = await room.createRoom(
      { context: undefined, name: 'Elsewhere', topic: '', description: '', avatarRef: '', metadata: {}, visibility: roomV1.RoomVisibility.ROOM_VISIBILITY_PRIVATE, settings: undefined, memberIds: [user], ownerId: user, requestId: '' },
      internal(other),
    );
    expect(await code(notify(t, { $case: 'roomId', value: foreign!.roomId }))).toBe(ErrorCode.ERROR_CODE_NOT_FOUND);
    expect(await code(notify(t, undefined))).toBe(ErrorCode.ERROR_CODE_INVALID_ARGUMENT);
    expect(await code(notify(t, { $case: 'userId', value: 'bad.id' }))).toBe(ErrorCode.ERROR_CODE_INVALID_ARGUMENT);

    // Templates: unsafe HTML placeholders and helpers are refused.
    expect(await code(template(t, 'lab.result_ready', Channel.CHANNEL_EMAIL, 'de', { title: 'x', body: 'x', htmlBody: '<p>{{{name}}}</p>' }))).toBe(ErrorCode.ERROR_CODE_INVALID_ARGUMENT);
    expect(await code(template(t, 'lab.result_ready', Channel.CHANNEL_IN_APP, 'de', { title: '{{lookup this "constructor"}}', body: 'x' }))).toBe(ErrorCode.ERROR_CODE_INVALID_ARGUMENT);

    // Push devices: bad keys, an endpoint that is no push service, a malformed token.
    const good = webPush.subscribe();
    const web = (value: Partial<notificationV1.WebPushSubscription>) =>
      errorOf(client.registerPushDevice({ context: undefined, deviceId: 'd1', platform: PushPlatform.PUSH_PLATFORM_WEB_PUSH, target: { $case: 'webPush', value: { ...good, expirationTime: undefined, ...value } }, appVersion: '' }, as(t, user)));
    expect((await web({ p256dh: Buffer.alloc(65, 4).toString('base64url') })).field).toBe('web_push.p256dh');
    expect((await web({ p256dh: 'not base64!' })).field).toBe('web_push.p256dh');
    expect((await web({ auth: Buffer.alloc(8).toString('base64url') })).field).toBe('web_push.auth');
    expect((await web({ endpoint: 'https://attacker.example/collect' })).field).toBe('web_push.endpoint');
    expect((await web({ endpoint: 'http://127.0.0.1/push' })).field).toBe('web_push.endpoint');
    const badFcm = client.registerPushDevice({ context: undefined, deviceId: 'd2', platform: PushPlatform.PUSH_PLATFORM_FCM, target: { $case: 'fcm', value: { token: 'x' } }, appVersion: '' }, as(t, user));
    expect((await errorOf(badFcm)).field).toBe('fcm.token');
    const mismatch = client.registerPushDevice({ context: undefined, deviceId: 'd3', platform: PushPlatform.PUSH_PLATFORM_APNS, target: { $case: 'fcm', value: { token: fcm.token() } }, appVersion: '' }, as(t, user));
    expect(await code(mismatch)).toBe(ErrorCode.ERROR_CODE_INVALID_ARGUMENT);

    // Preferences: not an email address, not a time zone, another tenant's user, another user.
    for (const email of ['not-an-email', 'a@b', 'a b@example.test', 'Name <a@example.test>']) {
      expect((await errorOf(setPreferences(t, user, { email }, ['email']))).field).toBe('preferences.email');
    }
    expect((await errorOf(setPreferences(t, user, { timeZone: 'Mars/Olympus' }, ['time_zone']))).field).toBe('preferences.time_zone');
    const crossTenant = client.updatePreferences(
      { context: { tenantId: other, userId: user, deviceId: '', internal: false }, preferences: { ...before, email: 'evil@example.test' }, updateMask: ['email'], expectedVersion: 0 },
      as(t, user),
    );
    expect(await code(crossTenant)).toBe(ErrorCode.ERROR_CODE_PERMISSION_DENIED);
    const otherUser = client.updatePreferences({ context: undefined, preferences: { ...before, userId: newId(), email: 'evil@example.test' }, updateMask: ['email'], expectedVersion: 0 }, as(t, user));
    expect(await code(otherUser)).toBe(ErrorCode.ERROR_CODE_PERMISSION_DENIED);
    expect(await code(client.updatePreferences({ context: undefined, preferences: before, updateMask: [], expectedVersion: 99 }, as(t, user)))).toBe(ErrorCode.ERROR_CODE_CONFLICT);

    // Nothing changed, nothing was sent.
    const after = await client.getPreferences({ context: undefined, userId: '' }, as(t, user));
    expect(after.preferences).toEqual(before);
    expect((await client.getPreferences({ context: undefined, userId: '' }, as(other, user))).preferences!.email).toBe('');
    expect((await client.listPushDevices({ context: undefined, userId: '' }, as(t, user))).devices).toEqual([]);
    expect(await infra.tenantQuery(t, `SELECT 1 FROM notify_requests`)).toEqual([]);
    expect(await infra.tenantQuery(other, `SELECT 1 FROM notify_requests`)).toEqual([]);
    expect((await list(t, user)).notifications).toEqual([]);
    expect(deadLetters.filter((d) => d.tenantId === t)).toEqual([]);
  });
});
