import { createHash } from 'node:crypto';
import { envelopeRecord, type Kafka, type Producer } from '@switchboard/kafka';
import type { Logger } from '@switchboard/logging';
import { newEnvelope } from '@switchboard/nats';
import type { eventsV1 } from '@switchboard/proto';

/**
 * Creates the topics the service writes to when they are missing, with the
 * partitions and replication asked for (idempotent: an existing topic is
 * left as it is), instead of relying on broker auto-creation.
 */
export async function ensureTopics(kafka: Kafka, topics: { topic: string; numPartitions: number; replicationFactor: number }[], logger: Logger): Promise<void> {
  const admin = kafka.admin();
  await admin.connect();
  try {
    const existing = new Set(await admin.listTopics());
    const missing = topics.filter((t) => !existing.has(t.topic));
    if (missing.length === 0) return;
    const created = await admin.createTopics({ topics: missing, waitForLeaders: true });
    logger.info({ topics: missing.map((t) => t.topic), created }, 'created Kafka topics');
  } finally {
    await admin.disconnect();
  }
}

/**
 * The dead-letter topic: deliveries that failed for good and input records
 * that could not be processed, each with the reason. Keyed by user id; the
 * envelope id is derived from what failed, so a repeat after a crash is
 * recognisable as the same record.
 */
export class DeadLetters {
  constructor(
    private readonly producer: Producer,
    private readonly topic: string,
    private readonly logger: Logger,
  ) {}

  async send(tenantId: string, entry: eventsV1.NotificationDeadLettered): Promise<void> {
    const id = createHash('sha256')
      .update([tenantId, entry.notificationId, entry.channel, entry.pushDeviceId, entry.sourceTopic, entry.sourcePartition, entry.sourceOffset].join('\u0000'))
      .digest('hex')
      .slice(0, 32);
    const envelope = newEnvelope(tenantId || 'unknown', { $case: 'notificationDeadLettered', value: entry }, id);
    await this.producer.send({ topic: this.topic, acks: -1, messages: [envelopeRecord(entry.userId || entry.sourceTopic || 'unknown', envelope)] });
    this.logger.warn({ tenant: tenantId, notificationId: entry.notificationId, channel: entry.channel, reason: entry.reason }, 'dead-lettered');
  }
}
