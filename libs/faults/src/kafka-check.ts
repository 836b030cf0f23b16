import { newId } from '@switchboard/ids';
import { createKafka, decodeRecord, TOPICS } from '@switchboard/kafka';

export interface KafkaPresence {
  expected: number;
  found: number;
  missing: string[];
  /** Extra copies of expected messages (at-least-once: allowed, counted). */
  duplicates: number;
  /** Records read from the topic. */
  records: number;
  /** First copies of expected messages that came after a higher seq of the same conversation (order per key broken). */
  outOfOrder: number;
  /** Expected messages whose record key is not their conversation id. */
  misKeyed: number;
  samples: string[];
  error?: string;
}

/**
 * Reads `sb.messages` of the suite's own broker from the beginning with a
 * fresh consumer group and reports which of `messageIds` have a
 * MessageCreated record, and how many extra copies there are. Waits up to
 * `timeoutMs` for the last ones (the outbox relay may still be catching up
 * after a Kafka restart), then reads on to the end of the log so that
 * duplicates are counted too.
 */
export async function kafkaPresence(brokers: string, messageIds: Iterable<string>, timeoutMs: number): Promise<KafkaPresence> {
  const wanted = new Set(messageIds);
  const counts = new Map<string, number>();
  let records = 0;
  const consumed = new Map<number, number>();
  const highest = new Map<string, number>();
  const seen = new Set<string>();
  let outOfOrder = 0;
  let misKeyed = 0;
  const samples: string[] = [];
  const kafka = createKafka({ brokers, clientId: 'sb-faults-check' });
  const consumer = kafka.consumer({ groupId: `sb-faults-${newId()}`, sessionTimeout: 10_000, heartbeatInterval: 1000, maxWaitTimeInMs: 250, retry: { retries: 10 } });
  const admin = kafka.admin();
  const result = (error?: string): KafkaPresence => {
    let duplicates = 0;
    for (const count of counts.values()) duplicates += count - 1;
    const missing = [...wanted].filter((id) => !counts.has(id));
    return { expected: wanted.size, found: wanted.size - missing.length, missing, duplicates, records, outOfOrder, misKeyed, samples, ...(error ? { error } : {}) };
  };
  if (wanted.size === 0) return result();
  const deadline = Date.now() + timeoutMs;
  try {
    await consumer.connect();
    await consumer.subscribe({ topic: TOPICS.messages, fromBeginning: true });
    await consumer.run({
      eachMessage: async ({ partition, message: record }) => {
        records += 1;
        consumed.set(partition, Number(record.offset));
        if (!record.value) return;
        let message;
        try {
          const { envelope } = decodeRecord(record.value, record.headers);
          if (envelope.event?.$case !== 'messageCreated') return;
          message = envelope.event.value.message;
        } catch {
          return; // not an envelope: not ours to judge here
        }
        if (!message) return;
        const { messageId, conversationId, seq } = message;
        // Order per key is judged on first copies; later copies are the relay's at-least-once re-sends.
        const firstCopy = !seen.has(messageId);
        seen.add(messageId);
        const before = highest.get(conversationId) ?? 0;
        if (firstCopy) highest.set(conversationId, Math.max(before, seq));
        if (!wanted.has(messageId)) return;
        counts.set(messageId, (counts.get(messageId) ?? 0) + 1);
        if (!firstCopy) return;
        if (seq < before) {
          outOfOrder += 1;
          if (samples.length < 5) samples.push(`${conversationId}#${seq} first appeared after #${before} (partition ${partition}, offset ${record.offset})`);
        }
        const key = record.key?.toString('utf8');
        if (key !== conversationId) {
          misKeyed += 1;
          if (samples.length < 5) samples.push(`${conversationId}#${seq} has record key ${JSON.stringify(key)}`);
        }
      },
    });
    while (counts.size < wanted.size && Date.now() < deadline) await sleep(100);
    // Read on to the end of the log as it is now, so later copies are counted.
    await admin.connect();
    const ends = await admin.fetchTopicOffsets(TOPICS.messages);
    const caughtUp = () => ends.every((p) => Number(p.high) === 0 || (consumed.get(p.partition) ?? -1) >= Number(p.high) - 1);
    const tailDeadline = Math.max(deadline, Date.now() + 10_000);
    while (!caughtUp() && Date.now() < tailDeadline) await sleep(100);
    return result();
  } catch (err) {
    return result((err as Error).message);
  } finally {
    await consumer.disconnect().catch(() => undefined);
    await admin.disconnect().catch(() => undefined);
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
