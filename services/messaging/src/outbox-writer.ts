import { newId } from '@switchboard/ids';
import type { PoolClient } from '@switchboard/postgres';
import { eventsV1 } from '@switchboard/proto';
import { injectTraceContext } from '@switchboard/telemetry';
import { sqlString } from './sql';

interface OutboxEvent {
  tenantId: string;
  eventId: string;
  natsSubject: string;
  kafkaTopic: string;
  kafkaKey: string;
  payload: Buffer;
  headers: string;
}

/**
 * The outbox insert of a send batch ($1: the events as a JSON array, payloads
 * in base64), prepared with SQL PREPARE so that it shares its round trip
 * with COMMIT (`writeAndCommit`). In order, so the relay (which reads by id)
 * publishes in the order of the sends.
 */
export const OUTBOX_BATCH_PREPARE = `PREPARE messaging_outbox_batch(jsonb) AS
  INSERT INTO outbox (tenant_id, event_id, nats_subject, kafka_topic, kafka_key, payload, headers)
  SELECT e.tenant_id, e.event_id, e.nats_subject, e.kafka_topic, e.kafka_key, decode(e.payload, 'base64'), e.headers::jsonb
  FROM jsonb_to_recordset($1) AS e(position int, tenant_id text, event_id text, nats_subject text, kafka_topic text, kafka_key text, payload text, headers text)
  ORDER BY e.position`;

/**
 * The outbox events of one transaction, collected while it runs and written
 * with one INSERT just before its commit: a batch of sends costs one round
 * trip for its events, not one per event.
 */
export class OutboxWriter {
  private readonly events: OutboxEvent[] = [];

  get size(): number {
    return this.events.length;
  }

  /**
   * `traceHeaders` is the trace context of the request the event belongs to
   * (JSON), when it is not the active one: a batch commits the sends of many
   * requests.
   */
  add(tenantId: string, natsSubject: string, kafkaTopic: string, kafkaKey: string, event: NonNullable<eventsV1.Envelope['event']>, traceHeaders?: string): void {
    const eventId = newId();
    const envelope: eventsV1.Envelope = { eventId, tenantId, occurredAt: new Date(), event };
    this.events.push({
      tenantId,
      eventId,
      natsSubject,
      kafkaTopic,
      kafkaKey,
      payload: Buffer.from(eventsV1.Envelope.encode(envelope).finish()),
      // The trace context of the request that committed the event.
      headers: traceHeaders ?? JSON.stringify(injectTraceContext({})),
    });
  }

  /**
   * Writes the collected events and commits the caller's transaction in one
   * round trip (with the statement `OUTBOX_BATCH_PREPARE` prepared on this
   * connection); the caller wakes the relay after it.
   */
  async writeAndCommit(db: PoolClient): Promise<void> {
    if (this.events.length === 0) {
      await db.query('COMMIT');
      return;
    }
    const rows = this.events.map((event, index) => ({
      position: index + 1,
      tenant_id: event.tenantId,
      event_id: event.eventId,
      nats_subject: event.natsSubject,
      kafka_topic: event.kafkaTopic,
      kafka_key: event.kafkaKey,
      payload: event.payload.toString('base64'),
      headers: event.headers,
    }));
    await db.query(`EXECUTE messaging_outbox_batch(${sqlString(JSON.stringify(rows))}); COMMIT`);
    this.events.length = 0;
  }

  /** Writes the collected events in the caller's transaction; the caller wakes the relay after commit. */
  async write(db: PoolClient): Promise<void> {
    if (this.events.length === 0) return;
    const column = <K extends keyof OutboxEvent>(key: K) => this.events.map((event) => event[key]);
    await db.query({
      // Prepared once per connection (named): every send batch runs it.
      name: 'messaging-outbox-insert',
      // Ordered, so the relay (which reads by id) publishes in the order of the sends.
      text: `INSERT INTO outbox (tenant_id, event_id, nats_subject, kafka_topic, kafka_key, payload, headers)
       SELECT tenant_id, event_id, nats_subject, kafka_topic, kafka_key, payload, headers
       FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bytea[], $7::jsonb[])
            WITH ORDINALITY AS e(tenant_id, event_id, nats_subject, kafka_topic, kafka_key, payload, headers, position)
       ORDER BY position`,
      values: [column('tenantId'), column('eventId'), column('natsSubject'), column('kafkaTopic'), column('kafkaKey'), column('payload'), column('headers')],
    });
    this.events.length = 0;
  }
}
