import { setTimeout as sleep } from 'node:timers/promises';
import { natsHeaders, type NatsConnection } from '@switchboard/nats';
import type { Producer } from '@switchboard/kafka';
import type { Logger } from '@switchboard/logging';
import { PgClient, type Pool } from '@switchboard/postgres';
import type { Meter } from '@switchboard/telemetry';

type ObservableGauge = ReturnType<Meter['createObservableGauge']>;

interface OutboxRow {
  id: string;
  event_id: string;
  nats_subject: string;
  kafka_topic: string;
  kafka_key: string;
  payload: Buffer;
  headers: Record<string, string>;
}

export interface OutboxRelayOptions {
  /** The owning service: names the relay's database connection. */
  service: string;
  /**
   * The PostgreSQL advisory lock only the leader holds. Advisory locks are
   * per database, not per schema: every service sharing a database needs its own key.
   */
  leaderLockKey: number;
  /** Reaches the service's `outbox` table (the pool's search path names its schema). */
  pool: Pool;
  databaseUrl: string;
  nats: NatsConnection;
  producer: Producer;
  logger: Logger;
  /**
   * The service's `<service>_outbox_pending` gauge (created by the service, so
   * its name is a literal the chart's metric checks can read); the relay
   * observes events not yet published into it, per sink.
   */
  pendingGauge: ObservableGauge;
  pollMs: number;
  batchSize?: number;
  /**
   * How long the Kafka sink waits after a wake-up before it reads, so that
   * the events of many commits leave in one produce request (and one
   * UPDATE) instead of one each. Kafka is the durable log, not the live
   * path (NATS is drained at once), so this costs no delivery latency.
   */
  kafkaLingerMs?: number;
}

/**
 * Any number of replicas run a relay; the one holding the advisory lock
 * publishes, so order per key holds.
 *
 * Carries every committed outbox event to NATS (live fan-out) and Kafka
 * (durable log), each with its own cursor so that a Kafka outage never delays
 * live delivery. An event is marked published only after the server
 * confirmed it (NATS flush, Kafka ack), so a crash in between republishes it:
 * delivery is at least once and consumers de-duplicate by event id and seq.
 */
export class OutboxRelay {
  private running = false;
  private leader: PgClient | undefined;
  /** Set when the leader connection dropped, so the sinks stop until leadership is regained. */
  private leaderLost = false;
  private lastCleanUp = 0;
  private readonly wakers = new Set<() => void>();
  private readonly woken = { nats: false, kafka: false };
  private loops: Promise<void>[] = [];
  private readonly batchSize: number;
  private readonly pending = { nats: 0, kafka: 0 };

  constructor(private readonly options: OutboxRelayOptions) {
    this.batchSize = options.batchSize ?? 256;
    options.pendingGauge.addCallback((result) => {
      result.observe(this.pending.nats, { sink: 'nats' });
      result.observe(this.pending.kafka, { sink: 'kafka' });
    });
  }

  /** Ends the waits of a replica that is not the leader (wake-ups are for the leader's sinks). */
  private stopping = new AbortController();

  start(): void {
    this.running = true;
    this.stopping = new AbortController();
    this.loops = [this.leadership()];
  }

  async stop(): Promise<void> {
    this.running = false;
    this.stopping.abort();
    this.wake();
    await Promise.allSettled(this.loops);
    await this.leader?.end().catch(() => undefined);
  }

  /** This replica holds the leader lock and runs the sinks: its own commits need no wake-up over NATS. */
  get leads(): boolean {
    return this.leader !== undefined && !this.leaderLost;
  }

  /** Work is waiting: run the sinks now rather than at the next poll (from this process or, over NATS, another replica). */
  wake(): void {
    // A sink busy publishing is not waiting; the flag makes it go round again instead of sleeping.
    this.woken.nats = true;
    this.woken.kafka = true;
    for (const waker of this.wakers) waker();
  }

  private async idle(ms: number, sink?: 'nats' | 'kafka'): Promise<void> {
    if (sink && this.woken[sink]) {
      this.woken[sink] = false;
      return;
    }
    await new Promise<void>((resolve) => {
      const done = () => {
        clearTimeout(timer);
        this.wakers.delete(done);
        resolve();
      };
      const timer = setTimeout(done, ms);
      this.wakers.add(done);
    });
  }

  /** Holds the leader lock on a dedicated connection and runs the sinks while it does. */
  private async leadership(): Promise<void> {
    const { logger } = this.options;
    while (this.running) {
      const client = new PgClient({ connectionString: this.options.databaseUrl, application_name: `${this.options.service}-outbox-relay` });
      // Set when this process ends the connection itself, which is no loss to report.
      let ending = false;
      let lost: (reason: unknown) => void = () => undefined;
      const connectionLost = new Promise<void>((resolve) => {
        lost = (reason) => {
          if (!ending) logger.warn({ err: reason }, 'outbox relay lost its database connection');
          resolve();
        };
      });
      client.on('error', lost);
      client.on('end', () => lost('connection ended'));
      try {
        await client.connect();
        const { rows } = await client.query<{ locked: boolean }>('SELECT pg_try_advisory_lock($1) AS locked', [this.options.leaderLockKey]);
        if (!rows[0]?.locked) {
          ending = true;
          await client.end();
          // Another replica leads: ask again later, whatever wake-ups arrive meanwhile.
          await sleep(2000, undefined, { signal: this.stopping.signal }).catch(() => undefined);
          continue;
        }
        this.leader = client;
        logger.info('outbox relay is the leader');
        const sinks = [this.drain('nats', (rows) => this.publishNats(rows)), this.drain('kafka', (rows) => this.publishKafka(rows))];
        await Promise.race([connectionLost, Promise.all(sinks)]);
        this.leaderLost = true;
        this.wake();
        await Promise.allSettled(sinks);
        this.leaderLost = false;
      } catch (err) {
        if (this.running) logger.warn({ err }, 'outbox relay cannot lead yet');
      } finally {
        this.leader = undefined;
        ending = true;
        await client.end().catch(() => undefined);
      }
      if (this.running) await this.idle(1000);
    }
  }

  private async drain(sink: 'nats' | 'kafka', publish: (rows: OutboxRow[]) => Promise<void>): Promise<void> {
    const column = sink === 'nats' ? 'nats_published_at' : 'kafka_published_at';
    let failures = 0;
    // Published (the server confirmed them) but not yet marked: the next read marks them in the same statement, so
    // a batch costs one round trip to PostgreSQL instead of two. A crash before that mark republishes them, which
    // at-least-once delivery allows (consumers de-duplicate by event id and seq).
    let unmarked: string[] = [];
    while (this.running && !this.leaderLost) {
      this.woken[sink] = false;
      try {
        // Named: prepared once per connection, not parsed and planned on every wake-up. The UPDATE's rows are not
        // visible to the SELECT of the same statement (one snapshot), hence the exclusion.
        const { rows } = await this.options.pool.query<OutboxRow>({
          name: `outbox-mark-and-read-${sink}`,
          text: `WITH marked AS (UPDATE outbox SET ${column} = now() WHERE id = ANY($2::bigint[]))
           SELECT id, event_id, nats_subject, kafka_topic, kafka_key, payload, headers FROM outbox
           WHERE ${column} IS NULL AND NOT (id = ANY($2::bigint[])) ORDER BY id LIMIT $1`,
          values: [this.batchSize, unmarked],
        });
        unmarked = [];
        this.pending[sink] = rows.length;
        if (rows.length > 0) {
          await publish(rows);
          unmarked = rows.map((row) => row.id);
          failures = 0;
          if (rows.length === this.batchSize) continue;
        }
        await this.cleanUp(sink);
        // Idle, the last batch's mark waits for the next wake-up or poll.
        await this.idle(this.options.pollMs, sink);
        // Woken (or polled): let the commits of the linger window gather first (a backlog above goes round without it).
        if (sink === 'kafka' && this.options.kafkaLingerMs) await new Promise((r) => setTimeout(r, this.options.kafkaLingerMs));
      } catch (err) {
        failures += 1;
        this.options.logger.warn({ err, sink, failures }, 'outbox relay could not publish; retrying');
        await this.idle(Math.min(100 * 2 ** failures, 5000));
      }
    }
    // Stopping or no longer leading: what the servers confirmed may be marked by anyone, so spare the next leader
    // republishing it (if this fails, it is republished: at least once).
    if (unmarked.length > 0) {
      await this.options.pool
        .query({ name: `outbox-mark-${sink}`, text: `UPDATE outbox SET ${column} = now() WHERE id = ANY($1::bigint[])`, values: [unmarked] })
        .catch((err: unknown) => this.options.logger.warn({ err, sink }, 'outbox relay could not mark published events; the next leader publishes them again'));
    }
  }

  private async publishNats(rows: OutboxRow[]): Promise<void> {
    const { nats } = this.options;
    for (const row of rows) {
      // A Kafka-only event (no subject) is written already marked published for NATS; this guards older rows.
      if (!row.nats_subject) continue;
      const h = natsHeaders();
      for (const [key, value] of Object.entries(row.headers)) h.set(key, value);
      h.set('Nats-Msg-Id', row.event_id);
      nats.publish(row.nats_subject, row.payload, { headers: h });
    }
    // The server has the whole batch once the flush round trip returns.
    await nats.flush();
  }

  private async publishKafka(rows: OutboxRow[]): Promise<void> {
    const byTopic = new Map<string, { key: string; value: Buffer; headers: Record<string, string> }[]>();
    for (const row of rows) {
      if (!row.kafka_topic) continue;
      const records = byTopic.get(row.kafka_topic) ?? [];
      records.push({ key: row.kafka_key, value: row.payload, headers: { ...row.headers, 'sb-event-id': row.event_id } });
      byTopic.set(row.kafka_topic, records);
    }
    if (byTopic.size === 0) return;
    await this.options.producer.sendBatch({ acks: -1, topicMessages: [...byTopic].map(([topic, messages]) => ({ topic, messages })) });
  }

  /** Published rows are kept briefly for inspection, then removed. */
  private async cleanUp(sink: 'nats' | 'kafka'): Promise<void> {
    if (sink !== 'nats' || Date.now() - this.lastCleanUp < 30_000) return;
    this.lastCleanUp = Date.now();
    await this.options.pool.query(
      `DELETE FROM outbox WHERE nats_published_at IS NOT NULL AND kafka_published_at IS NOT NULL AND created_at < now() - interval '5 minutes'`,
    );
  }
}
