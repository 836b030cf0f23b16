import type { JetStreamClient, PubAck } from '@nats-io/jetstream';
import { headers, type Msg, type MsgHdrs, type NatsConnection } from '@nats-io/transport-node';
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
  nc.publish(subject, eventsV1.Envelope.encode(envelope).finish(), { headers: envelopeHeaders(envelope) });
}

/** The trace context of the active span and the envelope's id as `Nats-Msg-Id`. */
function envelopeHeaders(envelope: eventsV1.Envelope): MsgHdrs {
  const h = headers();
  for (const [key, value] of Object.entries(injectTraceContext({}))) h.set(key, value);
  h.set('Nats-Msg-Id', envelope.eventId);
  return h;
}

/**
 * Publishes an envelope into a JetStream stream and waits for the stream's
 * acknowledgement (its sequence; `duplicate` when the envelope's id was
 * stored already within the stream's duplicate window). Same headers as
 * {@link publishEnvelope}; `stream` makes the server refuse a subject some
 * other stream would take.
 */
export function publishEnvelopeToStream(js: JetStreamClient, subject: string, envelope: eventsV1.Envelope, options: { stream: string; timeoutMs: number }): Promise<PubAck> {
  return js.publish(subject, eventsV1.Envelope.encode(envelope).finish(), {
    headers: envelopeHeaders(envelope),
    msgID: envelope.eventId,
    expect: { streamName: options.stream },
    timeout: options.timeoutMs,
  });
}

export interface ReceivedEnvelope {
  envelope: eventsV1.Envelope;
  /** The publisher's trace context, to continue the trace. */
  trace: Context;
}

export function decodeEnvelope(msg: Pick<Msg, 'headers' | 'data'>): ReceivedEnvelope {
  const carrier: Record<string, string> = {};
  if (msg.headers) for (const [key, values] of msg.headers) carrier[key.toLowerCase()] = values[0] ?? '';
  return { envelope: eventsV1.Envelope.decode(msg.data), trace: extractTraceContext(carrier) };
}
