// What the notification service tells Kafka it has read: at most every
// KAFKA_COMMIT_INTERVAL_MS while it runs (not after every batch), and all of
// it when it stops, so a replica that takes its partitions over after a
// deploy does not read them again. Real Kafka, PostgreSQL and NATS, the real
// service process.
import { newId } from '@switchboard/ids';
import { createKafka } from '@switchboard/kafka';
import { infraEnv } from '@switchboard/devenv';
import { eventually, Infra, launch, messageCreated, TOPICS } from './support/harness';

describe('the notification service’s consumed offsets', () => {
  const infra = new Infra();
  const admin = createKafka({ brokers: infraEnv().KAFKA_BROKERS!, clientId: 'notification-offsets-test' }).admin();

  beforeAll(async () => {
    await Promise.all([infra.start(), admin.connect()]);
  });

  afterAll(async () => {
    await Promise.all([infra.stop(), admin.disconnect()]);
  });

  /**
   * Produces records for a new tenant and returns, for each partition they
   * went to, the offset after the last of them. Only those partitions: the
   * topic also holds earlier suites' records, and a new group reading from
   * the beginning may still be working through another partition's backlog
   * when this tenant's records are stored (a partition is read in order, so
   * where they are stored, everything before them was processed).
   */
  async function produce(t: string, count: number): Promise<Map<number, number>> {
    const highs = async () => new Map((await admin.fetchTopicOffsets(TOPICS.messages)).map((p) => [p.partition, Number(p.high)]));
    const before = await highs();
    const sender = newId();
    const records = Array.from({ length: count }, () => messageCreated(t, sender, [sender, newId()]));
    await infra.produce(TOPICS.messages, ...records);
    return new Map([...(await highs())].filter(([partition, high]) => high > (before.get(partition) ?? 0)));
  }

  /** The group's committed offsets on sb.messages, per partition (-1: none). */
  async function committed(groupId: string): Promise<Map<number, number>> {
    const [topic] = await admin.fetchOffsets({ groupId, topics: [TOPICS.messages] });
    return new Map(topic!.partitions.map((p) => [p.partition, Number(p.offset)]));
  }

  const stored = async (t: string) => Number((await infra.tenantQuery<{ n: string }>(t, `SELECT count(*) AS n FROM notifications`))[0]!.n);

  it('commits everything it processed when it stops, however long its commit interval', async () => {
    const groupId = `notification-offsets-${newId()}`;
    // Ten minutes: no interval commit can happen during this test, only the one at the stop.
    const service = await launch('notification', { KAFKA_GROUP_ID: groupId, MAX_EVENT_AGE_MS: '600000', KAFKA_COMMIT_INTERVAL_MS: '600000', PRESENCE_ADDR: '127.0.0.1:1' });
    try {
      const t = newId();
      const ends = await produce(t, 12);
      await eventually(async () => (await stored(t)) === 12, 60_000, 'twelve notifications stored');
      // Processed but not yet committed: the interval has not passed.
      const before = await committed(groupId);
      expect([...ends].some(([partition, end]) => (before.get(partition) ?? -1) < end)).toBe(true);
      expect(await service.process.stop()).toBe(0);
      const after = await committed(groupId);
      for (const [partition, end] of ends) expect(after.get(partition)).toBeGreaterThanOrEqual(end);
    } finally {
      await service.process.kill();
    }
  }, 120_000);

  it('commits while running within its interval, so a killed replica leaves little to read again', async () => {
    const groupId = `notification-offsets-${newId()}`;
    const service = await launch('notification', { KAFKA_GROUP_ID: groupId, MAX_EVENT_AGE_MS: '600000', KAFKA_COMMIT_INTERVAL_MS: '500', PRESENCE_ADDR: '127.0.0.1:1' });
    try {
      const t = newId();
      const ends = await produce(t, 12);
      await eventually(async () => (await stored(t)) === 12, 60_000, 'twelve notifications stored');
      // Batches keep coming (one record at a time, another tenant's), and with them the interval's commits.
      await eventually(
        async () => {
          await new Promise((resolve) => setTimeout(resolve, 200));
          await produce(newId(), 1);
          const now = await committed(groupId);
          return [...ends].every(([partition, end]) => (now.get(partition) ?? -1) >= end) || undefined;
        },
        30_000,
        'the first records committed while running',
      );
    } finally {
      // SIGKILL: no commit at a stop; whatever is committed came from the interval.
      await service.process.kill();
    }
  }, 120_000);
});
