import { isSafeId } from '@switchboard/ids';
import { decodeRecord, TOPICS } from '@switchboard/kafka';
import type { Logger } from '@switchboard/logging';
import { SpanKind, withSpan } from '@switchboard/telemetry';
import type { Consumer, KafkaMessage } from 'kafkajs';
import { notificationsForMessage } from './compose';
import type { NotificationEvents } from './events';
import type { NotificationStore } from './store';

export interface MessageNotifierOptions {
  consumer: Consumer;
  store: NotificationStore;
  events: NotificationEvents;
  logger: Logger;
  maxEventAgeMs: number;
}

/**
 * Reads `sb.messages` in the service's consumer group and turns each
 * `messageCreated` into in-app notifications. Delivery is at least once: an
 * offset is committed only after its record was stored, a failure is retried
 * by kafkajs, and a redelivered record creates and announces nothing twice.
 */
export class MessageNotifier {
  private joined = false;

  constructor(private readonly options: MessageNotifierOptions) {}

  async start(): Promise<void> {
    const { consumer, logger } = this.options;
    consumer.on(consumer.events.GROUP_JOIN, (event) => {
      this.joined = true;
      logger.info({ groupId: event.payload.groupId, assignment: event.payload.memberAssignment }, `consuming ${TOPICS.messages}`);
    });
    consumer.on(consumer.events.CRASH, (event) => {
      this.joined = false;
      logger.warn({ err: event.payload.error, restart: event.payload.restart }, 'message consumer crashed');
    });
    // A new group starts at the log's beginning so no message is missed; MAX_EVENT_AGE_MS keeps old ones quiet.
    await consumer.subscribe({ topics: [TOPICS.messages], fromBeginning: true });
    await consumer.run({ eachMessage: ({ message }) => this.handle(message) });
  }

  /** For readiness: joined its group, and not crashed since. */
  check(): void {
    if (!this.joined) throw new Error('not consuming: the consumer has not joined its group');
  }

  async stop(): Promise<void> {
    this.joined = false;
    await this.options.consumer.stop();
  }

  private async handle(message: KafkaMessage): Promise<void> {
    const { logger, store, events, maxEventAgeMs } = this.options;
    if (!message.value) return;
    let decoded: ReturnType<typeof decodeRecord>;
    try {
      decoded = decodeRecord(message.value, message.headers);
    } catch (err) {
      // A record nobody can read would block its partition forever: skip it loudly.
      logger.error({ err, offset: message.offset }, 'skipped an undecodable record');
      return;
    }
    const { envelope, trace } = decoded;
    if (envelope.event?.$case !== 'messageCreated') return;
    if (!isSafeId(envelope.tenantId) || !isSafeId(envelope.eventId)) {
      logger.error({ offset: message.offset }, 'skipped a record without a valid tenant or event id');
      return;
    }
    if (Date.now() - (envelope.occurredAt?.getTime() ?? Date.now()) > maxEventAgeMs) return;
    const event = envelope.event.value;
    await withSpan('notify message created', { kind: SpanKind.CONSUMER, parent: trace, attributes: { 'messaging.system': 'kafka' } }, async () => {
      const created = await store.createFromEvent(envelope.tenantId, envelope.eventId, envelope.occurredAt ?? new Date(), notificationsForMessage(event));
      events.created(envelope.tenantId, created);
    });
  }
}
