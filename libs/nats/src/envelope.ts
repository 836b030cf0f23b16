import { headers, type Msg, type NatsConnection } from '@nats-io/transport-node';
import { newId } from '@switchboard/ids';
import { eventsV1 } from '@switchboard/proto';
import { extractTraceContext, injectTraceContext, type Context } from '@switchboard/telemetry';

type EventUnion = NonNullable<eventsV1.Envelope['event']>;
export type EventOf<C extends EventUnion['$case']> = Extract<EventUnion, { $case: C }>['value'];

export function newEnvelope(tenantId: string, event: EventUnion, eventId: string = newId()): eventsV1.Envelope {
  return { eventId, tenantId, occurredAt: new Date(), event };
}

/**
 * Publishes an envelope as protobuf with the trace context and the message id
 * in headers (`Nats-Msg-Id` also makes JetStream drop duplicates).
 */
export function publishEnvelope(nc: NatsConnection, subject: string, envelope: eventsV1.Envelope): void {
  const h = headers();
  for (const [key, value] of Object.entries(injectTraceContext({}))) h.set(key, value);
  h.set('Nats-Msg-Id', envelope.eventId);
  nc.publish(subject, eventsV1.Envelope.encode(envelope).finish(), { headers: h });
}

export interface ReceivedEnvelope {
  envelope: eventsV1.Envelope;
  /** The publisher's trace context, to continue the trace. */
  trace: Context;
}

export function decodeEnvelope(msg: Msg): ReceivedEnvelope {
  const carrier: Record<string, string> = {};
  if (msg.headers) for (const [key, values] of msg.headers) carrier[key.toLowerCase()] = values[0] ?? '';
  return { envelope: eventsV1.Envelope.decode(msg.data), trace: extractTraceContext(carrier) };
}
