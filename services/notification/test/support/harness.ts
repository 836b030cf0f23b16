// What the notification integration tests share: the real service processes
// (notification, and presence and room where routing needs them), a Kafka
// producer writing records as messaging does, NATS subscriptions as a
// gateway holds them, and small helpers.
import { eventually as waitUntil, freePort, infraEnv, launchService, type ServiceName, type ServiceProcess, natsSeedFile } from '@switchboard/devenv';
import { ErrorCode, type SwitchboardError } from '@switchboard/errors';
import { createClient, type PromiseClient } from '@switchboard/grpc';
import { newId } from '@switchboard/ids';
import { createIdempotentProducer, createKafka, envelopeRecord, TOPICS, type Producer } from '@switchboard/kafka';
import { connectNats, decodeEnvelope, newEnvelope, subjects, type NatsConnection } from '@switchboard/nats';
import { type eventsV1, messagingV1, notificationV1, presenceV1, roomV1 } from '@switchboard/proto';
import { createPool, type Pool } from '@switchboard/postgres';

export type NotificationClient = PromiseClient<notificationV1.NotificationServiceClient>;

export async function launch(service: ServiceName, env: Record<string, string> = {}): Promise<{ process: ServiceProcess; address: string }> {
  const grpcPort = await freePort();
  const processHandle = await launchService({
    service,
    env: { ...infraEnv(), LOG_LEVEL: 'warn', GRPC_PORT: String(grpcPort), ...env },
    opsPort: await freePort(),
    readyTimeoutMs: 45_000,
  });
  return { process: processHandle, address: `127.0.0.1:${grpcPort}` };
}

export { errorOf } from '@switchboard/devenv';

/** The shared poll with this suite's longer default: Kafka consumers take seconds to join. */
export function eventually<T>(read: () => Promise<T | undefined | false> | T | undefined | false, timeoutMs = 30_000, what = 'condition'): Promise<T> {
  return waitUntil(read, timeoutMs, what);
}

export const as = (tenantId: string, userId: string, deviceId = '') => ({ context: { tenantId, userId, deviceId, internal: false } });
export const internal = (tenantId: string) => ({ context: { tenantId, userId: '', deviceId: '', internal: true } });

export class Infra {
  nats!: NatsConnection;
  producer!: Producer;
  pool!: Pool;

  async start(): Promise<this> {
    const env = infraEnv();
    this.nats = await connectNats({ servers: env.NATS_URL!, nkeySeedFile: natsSeedFile(), name: 'notification-test' });
    this.producer = createIdempotentProducer(createKafka({ brokers: env.KAFKA_BROKERS!, clientId: 'notification-test' }));
    await this.producer.connect();
    // Only to move a held item's due time ("an hour passes"): the service's own table, read by its own tests.
    this.pool = createPool({ connectionString: env.DATABASE_URL!, applicationName: 'notification-test', schema: 'notification', max: 2 });
    return this;
  }

  async stop(): Promise<void> {
    await this.producer?.disconnect();
    await this.nats?.close();
    await this.pool?.end();
  }

  async produce(topic: string, ...records: { key: string; envelope: eventsV1.Envelope }[]): Promise<void> {
    await this.producer.send({ topic, acks: -1, messages: records.map((r) => envelopeRecord(r.key, r.envelope)) });
  }

  /** Everything published for a user from now on, as a gateway receives it. */
  async watchUser(tenantId: string, userId: string): Promise<NonNullable<eventsV1.Envelope['event']>[]> {
    const seen: NonNullable<eventsV1.Envelope['event']>[] = [];
    this.nats.subscribe(subjects.user(tenantId, userId), {
      callback: (err, msg) => {
        if (!err) {
          const { event } = decodeEnvelope(msg).envelope;
          if (event) seen.push(event);
        }
      },
    });
    await this.nats.flush();
    return seen;
  }

  /** A query as the service runs it: in a transaction scoped to the tenant (row-level security). */
  async tenantQuery<R extends object>(tenantId: string, sql: string, params: unknown[] = []): Promise<R[]> {
    const db = await this.pool.connect();
    try {
      await db.query('BEGIN');
      await db.query(`SELECT set_config('app.tenant_id', $1, true)`, [tenantId]);
      const { rows } = await db.query<R>(sql, params);
      await db.query('COMMIT');
      return rows;
    } finally {
      db.release();
    }
  }

  /** Time passes for the held work of a tenant: everything it holds comes due now. */
  async comeDue(tenantId: string): Promise<number> {
    const { rowCount } = await this.pool.query(`UPDATE delivery_queue SET due_at = now() WHERE tenant_id = $1 AND due_at > now()`, [tenantId]);
    return rowCount ?? 0;
  }
}

/** A messageCreated envelope as messaging's outbox writes it to `sb.messages`. */
export function messageCreated(
  tenantId: string,
  senderId: string,
  memberIds: string[],
  fields: Partial<messagingV1.Message> = {},
): { key: string; envelope: eventsV1.Envelope; message: messagingV1.Message } {
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
  return { key: conversationId, message, envelope: newEnvelope(tenantId, { $case: 'messageCreated', value: { message, memberIds } }) };
}

/** A receiptUpdated envelope as messaging writes it when a device marks a conversation delivered/read. */
export function receiptUpdated(tenantId: string, conversationId: string, userId: string, deliveredSeq: number, readSeq: number) {
  return { key: conversationId, envelope: newEnvelope(tenantId, { $case: 'receiptUpdated', value: { conversationId, userId, deliveredSeq, readSeq, deviceId: '' } }) };
}

export { TOPICS };

/** A user with a connected device, as the gateway registers it with presence. */
export async function goOnline(presence: PromiseClient<presenceV1.PresenceServiceClient>, tenantId: string, userId: string): Promise<void> {
  const deviceId = newId();
  await presence.connectDevice(
    {
      context: undefined,
      gatewayId: 'test-gateway',
      connectionId: newId(),
      device: { deviceId, platform: presenceV1.DevicePlatform.DEVICE_PLATFORM_WEB, label: 'test', appVersion: '1', userAgent: 'jest' },
    },
    as(tenantId, userId, deviceId),
  );
}

export function presenceClient(address: string) {
  return createClient(presenceV1.PresenceServiceClient, address);
}

export function roomClient(address: string) {
  return createClient(roomV1.RoomServiceClient, address);
}

export function notificationClient(address: string): NotificationClient {
  return createClient(notificationV1.NotificationServiceClient, address);
}

export const Channel = notificationV1.Channel;
export const DeliveryState = notificationV1.DeliveryState;
export const SkipReason = notificationV1.SkipReason;

/** Per channel, what GetDeliveryStatus says, for readable assertions. */
export async function statusOf(client: NotificationClient, tenantId: string, notificationId: string) {
  const status = await client.getDeliveryStatus({ context: undefined, notificationId }, internal(tenantId));
  const by = (channel: notificationV1.Channel) => status.channels.find((c) => c.channel === channel)!;
  return { status, inApp: by(Channel.CHANNEL_IN_APP), push: by(Channel.CHANNEL_PUSH), email: by(Channel.CHANNEL_EMAIL) };
}

/** Waits until a channel of a notification reaches one of the states. */
export async function channelReaches(client: NotificationClient, tenantId: string, notificationId: string, channel: 'inApp' | 'push' | 'email', states: notificationV1.DeliveryState[], timeoutMs = 30_000) {
  return eventually(
    async () => {
      // Not there yet (still on its way through Kafka) is not a failure.
      const s = await statusOf(client, tenantId, notificationId).catch((err: SwitchboardError) => {
        if (err.code === ErrorCode.ERROR_CODE_NOT_FOUND) return undefined;
        throw err;
      });
      return s && states.includes(s[channel].state) ? s : undefined;
    },
    timeoutMs,
    `${channel} of ${notificationId} reaching ${states.map((s) => DeliveryState[s]).join('/')}`,
  );
}
