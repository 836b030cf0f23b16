import { newId } from '@switchboard/ids';
import type { PoolClient } from '@switchboard/postgres';
import { eventsV1 } from '@switchboard/proto';
import { injectTraceContext } from '@switchboard/telemetry';

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
 * The outbox events of one transaction, collected while it runs and written
 * with one INSERT just before its commit: a batch of sends costs one round
 * trip for its events, not one per event.
 */
export class OutboxWriter {
  private readonly events: OutboxEvent[] = [];

  get size(): number {
    return this.events.length;
  }

  add(tenantId: string, natsSubject: string, kafkaTopic: string, kafkaKey: string, event: NonNullable<eventsV1.Envelope['event']>): void {
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
      headers: JSON.stringify(injectTraceContext({})),
    });
  }

  /** Moves the events of `other` (a send that succeeded inside a batch) into this one. */
  absorb(other: OutboxWriter): void {
    this.events.push(...other.events.splice(0));
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
