// The outbox relay against real PostgreSQL, NATS and Kafka: every committed
// event reaches both sinks in order, the leader is woken by its own commits
// directly and by other replicas' commits over NATS, and neither a missed
// wake-up nor a lost database connection loses an event (at least once).
import { eventually, infraEnv, natsSeedFile } from '@switchboard/devenv';
import { newId } from '@switchboard/ids';
import { createKafka, createIdempotentProducer, type Consumer, type Producer } from '@switchboard/kafka';
import { createLogger } from '@switchboard/logging';
import { connectNats, type NatsConnection } from '@switchboard/nats';
import { createPool, type Pool } from '@switchboard/postgres';
import { metrics } from '@switchboard/telemetry';
import { OutboxRelay, outboxWaker } from '../src';

const env = infraEnv();
const schema = `outbox_test_${newId().slice(0, 8).toLowerCase()}`;
const logger = createLogger({ service: 'outbox-test', level: 'silent' });
const kafka = createKafka({ brokers: env['KAFKA_BROKERS']!, clientId: 'outbox-test' });
let pool: Pool;
let nats: NatsConnection;
let producer: Producer;
const consumers: Consumer[] = [];
let lockKey = 0x7e57_0000 + Math.floor(Math.random() * 0xffff);

/** The relay's own database URL must reach the test schema too (its leader connection only holds the lock). */
const databaseUrl = env['DATABASE_ADMIN_URL']!;

beforeAll(async () => {
  const admin = createPool({ connectionString: databaseUrl, applicationName: 'outbox-test-setup', max: 1 });
  await admin.query(`CREATE SCHEMA ${schema}`);
  await admin.query(`CREATE TABLE ${schema}.outbox (
    id bigserial PRIMARY KEY, tenant_id text NOT NULL, event_id text NOT NULL, nats_subject text NOT NULL, kafka_topic text NOT NULL,
    kafka_key text NOT NULL, payload bytea NOT NULL, headers jsonb NOT NULL DEFAULT '{}', created_at timestamptz NOT NULL DEFAULT now(),
    nats_published_at timestamptz, kafka_published_at timestamptz)`);
  await admin.query(`CREATE INDEX ON ${schema}.outbox (id) WHERE nats_published_at IS NULL`);
  await admin.query(`CREATE INDEX ON ${schema}.outbox (id) WHERE kafka_published_at IS NULL`);
  await admin.end();
  pool = createPool({ connectionString: databaseUrl, applicationName: 'outbox-test', schema, max: 8 });
  nats = await connectNats({ servers: env['NATS_URL']!, name: 'outbox-test', nkeySeedFile: natsSeedFile('tools') });
  producer = createIdempotentProducer(kafka);
  await producer.connect();
});

afterAll(async () => {
  await Promise.all(consumers.map((c) => c.disconnect()));
  await producer.disconnect();
  await nats.close();
  await pool.query(`DROP SCHEMA ${schema} CASCADE`);
  await pool.end();
});

/** A topic and subject of the test's own, and what arrived on each (event ids, in arrival order). */
async function sinks(): Promise<{ subject: string; topic: string; onNats: string[]; onKafka: string[] }> {
  const tag = newId().slice(0, 10).toLowerCase();
  const subject = `sb.test.outbox.${tag}`;
  const topic = `sb.test.outbox.${tag}`;
  const admin = kafka.admin();
  await admin.connect();
  await admin.createTopics({ topics: [{ topic, numPartitions: 1, replicationFactor: 1 }], waitForLeaders: true });
  await admin.disconnect();
  const onNats: string[] = [];
  const onKafka: string[] = [];
  nats.subscribe(subject, { callback: (_err, msg) => void onNats.push(msg.headers?.get('Nats-Msg-Id') ?? '?') });
  await nats.flush();
  const consumer = kafka.consumer({ groupId: `outbox-test-${tag}` });
  consumers.push(consumer);
  await consumer.connect();
  await consumer.subscribe({ topic, fromBeginning: true });
  await consumer.run({ eachMessage: async ({ message }) => void onKafka.push(message.headers?.['sb-event-id']?.toString() ?? '?') });
  return { subject, topic, onNats, onKafka };
}

function relay(pollMs: number): OutboxRelay {
  return new OutboxRelay({
    service: 'outbox-test',
    leaderLockKey: lockKey,
    pool,
    databaseUrl,
    nats,
    producer,
    logger,
    pollMs,
    kafkaLingerMs: 20,
    pendingGauge: metrics.getMeter('outbox-test').createObservableGauge('outbox_test_pending'),
  });
}

/** Commits one event in its own transaction, as a service does; returns its event id. */
async function commit(target: { subject: string; topic: string }, key = 'k'): Promise<string> {
  const eventId = newId();
  await pool.query(`INSERT INTO outbox (tenant_id, event_id, nats_subject, kafka_topic, kafka_key, payload) VALUES ('t', $1, $2, $3, $4, $5)`, [
    eventId,
    target.subject,
    target.topic,
    key,
    Buffer.from(eventId),
  ]);
  return eventId;
}

const unmarked = async (topic: string) =>
  Number((await pool.query(`SELECT count(*) FROM outbox WHERE kafka_topic = $1 AND (nats_published_at IS NULL OR kafka_published_at IS NULL)`, [topic])).rows[0].count);

describe('outbox relay', () => {
  afterEach(() => {
    // Each test's relays take a fresh lock, so a relay a failed test left behind cannot lead the next test's.
    lockKey += 1;
  });

  it("carries every committed event to NATS and Kafka once, in commit order, woken by the leader's own commits", async () => {
    const target = await sinks();
    // No poll within the test: only the wake-ups can carry the events.
    const leader = relay(600_000);
    const waker = outboxWaker(leader, nats, `sb.test.outbox.wake.${lockKey}`);
    leader.start();
    await eventually(() => leader.leads, 10_000, 'the relay leads');
    const sent: string[] = [];
    for (let i = 0; i < 40; i += 1) {
      sent.push(await commit(target));
      waker.written();
      // Some commits arrive while a batch is being published, some alone.
      if (i % 7 === 0) await new Promise((r) => setTimeout(r, 15));
    }
    await eventually(() => target.onNats.length >= sent.length && target.onKafka.length >= sent.length, 20_000, 'every event reached both sinks');
    expect(target.onNats).toEqual(sent);
    expect(target.onKafka).toEqual(sent);
    await leader.stop();
    waker.close();
    // The last batch's mark waits for the next read; stopping makes it, so no next leader republishes it.
    expect(await unmarked(target.topic)).toBe(0);
  });

  it("is woken over NATS by the commits of a replica that does not lead", async () => {
    const target = await sinks();
    const wakeSubject = `sb.test.outbox.wake.${lockKey}`;
    const leader = relay(600_000);
    const leaderWaker = outboxWaker(leader, nats, wakeSubject);
    leader.start();
    await eventually(() => leader.leads, 10_000, 'the first relay leads');
    const follower = relay(600_000);
    const followerWaker = outboxWaker(follower, nats, wakeSubject);
    follower.start();
    const sent = [await commit(target)];
    followerWaker.written();
    await eventually(() => target.onNats.length === 1 && target.onKafka.length === 1, 15_000, "the follower's commit was relayed by the leader");
    expect(follower.leads).toBe(false);
    sent.push(await commit(target));
    followerWaker.written();
    await eventually(() => target.onNats.length === 2 && target.onKafka.length === 2, 15_000, 'the second commit too');
    expect(target.onNats).toEqual(sent);
    expect(target.onKafka).toEqual(sent);
    await Promise.all([leader.stop(), follower.stop()]);
    leaderWaker.close();
    followerWaker.close();
  });

  it('loses nothing to a missed wake-up or to lost database connections: the poll and the next leader publish it', async () => {
    const target = await sinks();
    const leader = relay(300);
    leader.start();
    await eventually(() => leader.leads, 10_000, 'the relay leads');
    const sent: string[] = [];
    // Commits nobody announces: only the poll finds them.
    for (let i = 0; i < 5; i += 1) sent.push(await commit(target));
    await eventually(() => target.onNats.length >= 5 && target.onKafka.length >= 5, 15_000, 'the poll carried the unannounced events');
    // The relay's connections (its leader lock and the pool's) are cut while events keep coming, several times.
    for (let round = 0; round < 3; round += 1) {
      for (let i = 0; i < 5; i += 1) {
        sent.push(await commit(target));
        leader.wake();
      }
      await pool.query(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'outbox-test-outbox-relay'`);
      for (let i = 0; i < 5; i += 1) sent.push(await commit(target));
    }
    const missing = () => sent.filter((id) => !target.onNats.includes(id) || !target.onKafka.includes(id));
    await eventually(() => missing().length === 0, 30_000, 'every event reached both sinks');
    // At least once: a batch published before its mark may come again, but in order per key among first arrivals.
    const firstArrivals = (list: string[]) => list.filter((id, i) => list.indexOf(id) === i);
    expect(firstArrivals(target.onNats)).toEqual(sent);
    expect(firstArrivals(target.onKafka)).toEqual(sent);
    await eventually(async () => (await unmarked(target.topic)) === 0, 15_000, 'every row ends marked published');
    await leader.stop();
  });
});
