import { newId } from '@switchboard/ids';
import type { PoolClient } from '@switchboard/postgres';
import { eventsV1 } from '@switchboard/proto';
import { injectTraceContext } from '@switchboard/telemetry';

/**
 * The table every service's outbox uses (created by the service's own
 * migration, in its own schema):
 *
 *   outbox (id bigserial PRIMARY KEY, tenant_id text, event_id text,
 *           nats_subject text, kafka_topic text, kafka_key text, payload bytea,
 *           headers jsonb, created_at timestamptz DEFAULT now(),
 *           nats_published_at timestamptz, kafka_published_at timestamptz)
 *   + partial indexes on (id) WHERE nats_published_at IS NULL / kafka_published_at IS NULL
 */
export interface OutboxEvent {
  tenantId: string;
  /** Empty: Kafka only. */
  natsSubject: string;
  /** Empty: NATS only. */
  kafkaTopic: string;
  /** Order holds per key (a conversation, a room, a user). */
  kafkaKey: string;
  event: NonNullable<eventsV1.Envelope['event']>;
  /** The envelope's time; now when unset. */
  occurredAt?: Date;
}

/**
 * Writes events to the outbox in the caller's transaction, so they exist if
 * and only if the change commits. The caller wakes the relay after commit.
 * Returns the event ids, in order.
 */
export async function enqueue(db: PoolClient, events: OutboxEvent[]): Promise<string[]> {
  if (events.length === 0) return [];
  const headers = JSON.stringify(injectTraceContext({}));
  const ids: string[] = [];
  const columns: unknown[][] = [[], [], [], [], [], [], []];
  for (const event of events) {
    const eventId = newId();
    ids.push(eventId);
    const envelope: eventsV1.Envelope = { eventId, tenantId: event.tenantId, occurredAt: event.occurredAt ?? new Date(), event: event.event };
    const values = [event.tenantId, eventId, event.natsSubject, event.kafkaTopic, event.kafkaKey, Buffer.from(eventsV1.Envelope.encode(envelope).finish()), headers];
    values.forEach((value, i) => columns[i]!.push(value));
  }
  // One statement for the batch; a sink with nothing to send is marked done at once.
  await db.query(
    `INSERT INTO outbox (tenant_id, event_id, nats_subject, kafka_topic, kafka_key, payload, headers, nats_published_at, kafka_published_at)
     SELECT t, e, s, k, key, p, h::jsonb, CASE WHEN s = '' THEN now() END, CASE WHEN k = '' THEN now() END
     FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bytea[], $7::text[]) WITH ORDINALITY AS u(t, e, s, k, key, p, h, n)
     ORDER BY n`,
    columns,
  );
  return ids;
}
