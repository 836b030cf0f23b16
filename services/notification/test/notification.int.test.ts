// Notification against real PostgreSQL, NATS and Kafka: the built service runs
// as its own process, consumes records produced here to `sb.messages`, and is
// read back over gRPC and NATS.
import { freePort, infraEnv, launchService, type ServiceProcess, natsSeedFile } from '@switchboard/devenv';
import { ErrorCode, SwitchboardError } from '@switchboard/errors';
import { createClient, type PromiseClient } from '@switchboard/grpc';
import { newId } from '@switchboard/ids';
import { createIdempotentProducer, createKafka, envelopeRecord, TOPICS, type Producer } from '@switchboard/kafka';
import { connectNats, decodeEnvelope, newEnvelope, subjects, type NatsConnection } from '@switchboard/nats';
import { eventsV1, messagingV1, notificationV1 } from '@switchboard/proto';

type Client = PromiseClient<notificationV1.NotificationServiceClient>;

async function startNotification(env: Record<string, string> = {}): Promise<{ service: ServiceProcess; client: Client }> {
  const grpcPort = await freePort();
  const service = await launchService({
    service: 'notification',
    // Its own consumer group, reading only recent records: this test's service handles this test's records.
    env: { ...infraEnv(), LOG_LEVEL: 'warn', GRPC_PORT: String(grpcPort), KAFKA_GROUP_ID: `notification-test-${newId()}`, MAX_EVENT_AGE_MS: '600000', ...env },
    opsPort: await freePort(),
    readyTimeoutMs: 45_000,
  });
  return { service, client: createClient(notificationV1.NotificationServiceClient, `127.0.0.1:${grpcPort}`) };
}

async function errorOf(call: Promise<unknown>): Promise<SwitchboardError> {
  try {
    await call;
  } catch (err) {
    return err as SwitchboardError;
  }
  throw new Error('expected the call to fail');
}

async function eventually<T>(read: () => Promise<T | undefined>, timeoutMs = 15_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await read();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 50));
  }
}

describe('notification service', () => {
  const tenantId = newId();
  let service: ServiceProcess;
  let client: Client;
  let nats: NatsConnection;
  let producer: Producer;
  const as = (userId: string, tenant = tenantId) => ({ context: { tenantId: tenant, userId, deviceId: '', internal: false } });
  const list = (userId: string, fields: Partial<notificationV1.ListNotificationsRequest> = {}, tenant = tenantId) =>
    client.listNotifications({ context: undefined, userId: '', unreadOnly: false, kinds: [], page: undefined, includeSuppressed: false, ...fields }, as(userId, tenant));

  /** A messageCreated envelope as messaging's outbox writes it. */
  function messageCreated(senderId: string, memberIds: string[], fields: Partial<messagingV1.Message> = {}): { key: string; envelope: eventsV1.Envelope } {
    const conversationId = fields.conversationId ?? newId();
    const message: messagingV1.Message = {
      tenantId,
      conversationId,
      messageId: newId(),
      seq: 1,
      senderId,
      clientMessageId: newId(),
      kind: messagingV1.MessageKind.MESSAGE_KIND_TEXT,
      text: 'Lab results for bed 12 are in',
      attachments: [],
      mentions: [],
      createdAt: new Date(),
      editedAt: undefined,
      deleted: false,
      metadata: {},
      ...fields,
    };
    return { key: conversationId, envelope: newEnvelope(tenantId, { $case: 'messageCreated', value: { message, memberIds } }) };
  }

  async function produce(...records: { key: string; envelope: eventsV1.Envelope }[]): Promise<void> {
    await producer.send({ topic: TOPICS.messages, acks: -1, messages: records.map((r) => envelopeRecord(r.key, r.envelope)) });
  }

  /** Notification events published for a user from now on. */
  async function watchUser(userId: string): Promise<NonNullable<eventsV1.Envelope['event']>[]> {
    const seen: NonNullable<eventsV1.Envelope['event']>[] = [];
    nats.subscribe(subjects.user(tenantId, userId), {
      callback: (err, msg) => {
        if (!err) {
          const { event } = decodeEnvelope(msg).envelope;
          if (event) seen.push(event);
        }
      },
    });
    await nats.flush();
    return seen;
  }

  beforeAll(async () => {
    ({ service, client } = await startNotification());
    const env = infraEnv();
    nats = await connectNats({ servers: env.NATS_URL!, nkeySeedFile: natsSeedFile(), name: 'notification-test' });
    producer = createIdempotentProducer(createKafka({ brokers: env.KAFKA_BROKERS!, clientId: 'notification-test' }));
    await producer.connect();
  });

  afterAll(async () => {
    await producer?.disconnect();
    client?.close();
    await nats?.close();
    expect(await service?.stop()).toBe(0);
  });

  it('notifies every member but the sender exactly once, even when the record is delivered twice', async () => {
    const sender = newId();
    const colleague = newId();
    const mentioned = newId();
    const colleagueEvents = await watchUser(colleague);
    const mentionedEvents = await watchUser(mentioned);
    const senderEvents = await watchUser(sender);
    const record = messageCreated(sender, [sender, colleague, mentioned], { mentions: [mentioned] });
    await produce(record);
    await produce(record);
    // A later record on the same key (same partition, consumed in order) proves both copies were handled.
    const marker = newId();
    await produce({ ...messageCreated(sender, [sender, marker]), key: record.key });
    await eventually(async () => ((await list(marker)).notifications.length === 1 ? true : undefined));

    const forColleague = await list(colleague);
    expect(forColleague.notifications).toHaveLength(1);
    expect(forColleague.unreadCount).toBe(1);
    expect(forColleague.notifications[0]).toMatchObject({
      tenantId,
      userId: colleague,
      kind: 'message.new',
      body: 'Lab results for bed 12 are in',
      data: { conversationId: record.key, senderId: sender, seq: '1' },
      readAt: undefined,
    });
    const forMentioned = await list(mentioned);
    expect(forMentioned.notifications.map((n) => n.kind)).toEqual(['message.mention']);
    expect((await list(sender)).notifications).toEqual([]);

    await new Promise((r) => setTimeout(r, 200));
    const created = (events: typeof colleagueEvents) => events.filter((e) => e.$case === 'notificationCreated');
    expect(created(colleagueEvents)).toHaveLength(1);
    expect(created(colleagueEvents)[0]!.value).toMatchObject({ notificationId: forColleague.notifications[0]!.notificationId, userId: colleague, kind: 'message.new' });
    expect(created(mentionedEvents)).toHaveLength(1);
    expect(senderEvents).toEqual([]);
  });

  it('marks read one at a time or all at once, and keeps the badge count', async () => {
    const sender = newId();
    const reader = newId();
    const readerEvents = await watchUser(reader);
    await produce(messageCreated(sender, [sender, reader]), messageCreated(sender, [sender, reader]), messageCreated(sender, [sender, reader]));
    const all = await eventually(async () => {
      const page = await list(reader);
      return page.notifications.length === 3 ? page.notifications : undefined;
    });
    expect((await client.getBadgeCount({ context: undefined, userId: '' }, as(reader))).unreadCount).toBe(3);

    const read = await client.markNotificationRead({ context: undefined, notificationId: all[0]!.notificationId }, as(reader));
    expect(read.unreadCount).toBe(2);
    expect(read.notification!.readAt).toBeInstanceOf(Date);
    const again = await client.markNotificationRead({ context: undefined, notificationId: all[0]!.notificationId }, as(reader));
    expect(again.notification!.readAt).toEqual(read.notification!.readAt);
    expect((await list(reader, { unreadOnly: true })).notifications.map((n) => n.notificationId)).toEqual(all.slice(1).map((n) => n.notificationId));

    // Someone else's notification does not exist for them.
    const stranger = client.markNotificationRead({ context: undefined, notificationId: all[1]!.notificationId }, as(newId()));
    expect((await errorOf(stranger)).code).toBe(ErrorCode.ERROR_CODE_NOT_FOUND);

    const marked = await client.markAllRead({ context: undefined, upTo: undefined, kinds: [] }, as(reader));
    expect(marked).toEqual({ marked: 2, unreadCount: 0 });
    expect((await client.getBadgeCount({ context: undefined, userId: '' }, as(reader))).unreadCount).toBe(0);

    await new Promise((r) => setTimeout(r, 200));
    const badges = readerEvents.filter((e) => e.$case === 'badgeCountChanged').map((e) => e.value);
    expect(badges).toEqual([
      { userId: reader, unread: 2 },
      { userId: reader, unread: 0 },
    ]);
  });

  it('pages through the history newest first', async () => {
    const sender = newId();
    const user = newId();
    for (const text of ['first', 'second', 'third']) {
      await produce(messageCreated(sender, [sender, user], { text }));
      // Distinct event times: the history orders by when things happened.
      await new Promise((r) => setTimeout(r, 5));
    }
    await eventually(async () => ((await list(user)).notifications.length === 3 ? true : undefined));
    const first = await list(user, { page: { pageSize: 2, pageToken: '' } });
    expect(first.notifications.map((n) => n.body)).toEqual(['third', 'second']);
    const second = await list(user, { page: { pageSize: 2, pageToken: first.page!.nextPageToken } });
    expect(second.notifications.map((n) => n.body)).toEqual(['first']);
    expect(second.page!.nextPageToken).toBe('');
    expect((await errorOf(list(user, { page: { pageSize: 2, pageToken: 'garbage' } }))).code).toBe(ErrorCode.ERROR_CODE_INVALID_ARGUMENT);
  });

  it('keeps tenants apart and users to their own notifications', async () => {
    const sender = newId();
    const user = newId();
    await produce(messageCreated(sender, [sender, user]));
    const [own] = await eventually(async () => {
      const page = await list(user);
      return page.notifications.length === 1 ? page.notifications : undefined;
    });
    const tenantB = newId();
    expect((await list(user, {}, tenantB)).notifications).toEqual([]);
    expect((await client.getBadgeCount({ context: undefined, userId: '' }, as(user, tenantB))).unreadCount).toBe(0);
    const crossTenant = client.markNotificationRead({ context: undefined, notificationId: own!.notificationId }, as(user, tenantB));
    expect((await errorOf(crossTenant)).code).toBe(ErrorCode.ERROR_CODE_NOT_FOUND);

    const peek = client.listNotifications({ context: undefined, userId: user, unreadOnly: false, kinds: [], page: undefined, includeSuppressed: false }, as(newId()));
    expect((await errorOf(peek)).code).toBe(ErrorCode.ERROR_CODE_PERMISSION_DENIED);
    const internal = { context: { tenantId, userId: '', deviceId: '', internal: true } };
    expect((await client.getBadgeCount({ context: undefined, userId: user }, internal)).unreadCount).toBe(1);
    expect((await errorOf(client.markNotificationRead({ context: undefined, notificationId: 'no.such' }, as(user)))).code).toBe(ErrorCode.ERROR_CODE_INVALID_ARGUMENT);
    const peekPreferences = client.getPreferences({ context: undefined, userId: user }, as(newId()));
    expect((await errorOf(peekPreferences)).code).toBe(ErrorCode.ERROR_CODE_PERMISSION_DENIED);
  });

  it.each([
    ['PostgreSQL', { DATABASE_URL: 'postgres://switchboard:switchboard@127.0.0.1:1/switchboard' }],
    ['NATS', { NATS_URL: 'nats://127.0.0.1:1' }],
    ['Kafka', { KAFKA_BROKERS: '127.0.0.1:1' }],
  ])('exits non-zero when %s cannot be reached at start', async (dependency, env) => {
    const failed = await startNotification(env).then(
      () => undefined,
      (err: Error) => err,
    );
    expect(failed?.message).toMatch(/exited with 1/);
    expect(failed?.message).toContain(`cannot reach ${dependency}`);
  }, 60_000);
});
