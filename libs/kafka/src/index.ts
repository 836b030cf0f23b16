import { CompressionTypes, Kafka, logLevel, type Consumer, type IHeaders, type Message, type Producer } from 'kafkajs';
import { eventsV1 } from '@switchboard/proto';
import { extractTraceContext, injectTraceContext, type Context } from '@switchboard/telemetry';

export { Kafka, CompressionTypes, type Consumer, type Producer };

/** Durable topics, keyed so that order holds per key. */
export const TOPICS = {
  /** Keyed by conversation id. */
  messages: 'sb.messages',
  /** Keyed by user id. */
  notifications: 'sb.notifications',
  /** Keyed by topic. */
  events: 'sb.events',
} as const;

export interface KafkaOptions {
  brokers: string;
  clientId: string;
  log?: (level: 'error' | 'warn' | 'info' | 'debug', message: string, extra: Record<string, unknown>) => void;
}

export function createKafka(options: KafkaOptions): Kafka {
  const levels = { [logLevel.ERROR]: 'error', [logLevel.WARN]: 'warn', [logLevel.INFO]: 'info', [logLevel.DEBUG]: 'debug', [logLevel.NOTHING]: 'debug' } as const;
  return new Kafka({
    clientId: options.clientId,
    brokers: options.brokers.split(','),
    connectionTimeout: 3000,
    retry: { initialRetryTime: 200, retries: 8, maxRetryTime: 5000 },
    logLevel: logLevel.WARN,
    logCreator: () => (entry) => {
      const { message, ...extra } = entry.log;
      options.log?.(levels[entry.level], message, { namespace: entry.namespace, ...extra });
    },
  });
}

/**
 * An idempotent producer: retries after a lost acknowledgement do not write
 * a record twice, and order per partition holds.
 */
export function createIdempotentProducer(kafka: Kafka): Producer {
  return kafka.producer({ idempotent: true, maxInFlightRequests: 1, allowAutoTopicCreation: false });
}

/**
 * A member of a service's consumer group. A replica that dies without leaving
 * (SIGKILL, a lost node) keeps its partitions, and holds up every rebalance of
 * the group, until its session times out: the session is what the operator
 * tunes, the heartbeat and the rebalance window follow from it.
 */
export function createGroupConsumer(kafka: Kafka, groupId: string, sessionTimeoutMs: number): Consumer {
  return kafka.consumer({
    groupId,
    sessionTimeout: sessionTimeoutMs,
    heartbeatInterval: Math.max(500, Math.floor(sessionTimeoutMs / 6)),
    rebalanceTimeout: sessionTimeoutMs,
  });
}

/**
 * Leaves the group at shutdown, but waits at most `withinMs`: a disconnect
 * asked during a rebalance waits for that rebalance, which waits for every
 * member — a dead one for its whole session — and the shutdown has a hard
 * deadline. Not waiting is safe: offsets are committed only after their
 * records were applied, so the partitions' next owner replays the rest.
 * Returns false when it gave up.
 */
export async function leaveGroup(consumer: Consumer, withinMs: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const gaveUp = new Promise<false>((resolve) => {
    timer = setTimeout(() => resolve(false), withinMs);
  });
  try {
    return await Promise.race([consumer.disconnect().then(() => true as const), gaveUp]);
  } finally {
    clearTimeout(timer);
  }
}

/** An envelope as a Kafka record: protobuf value, trace context and event id in headers. */
export function envelopeRecord(key: string, envelope: eventsV1.Envelope): Message {
  const headers: IHeaders = { ...injectTraceContext({}), 'sb-event-id': envelope.eventId };
  return { key, value: Buffer.from(eventsV1.Envelope.encode(envelope).finish()), headers };
}

export function decodeRecord(value: Buffer, headers: IHeaders | undefined): { envelope: eventsV1.Envelope; trace: Context } {
  const carrier: Record<string, string> = {};
  for (const [key, raw] of Object.entries(headers ?? {})) {
    const first = Array.isArray(raw) ? raw[0] : raw;
    if (first !== undefined) carrier[key] = first.toString();
  }
  return { envelope: eventsV1.Envelope.decode(value), trace: extractTraceContext(carrier) };
}
