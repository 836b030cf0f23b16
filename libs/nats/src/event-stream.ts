import {
  DiscardPolicy,
  jetstream,
  jetstreamManager,
  JetStreamApiError,
  RetentionPolicy,
  StorageType,
  type JetStreamClient,
  type JetStreamManager,
  type StreamConfig,
  type StreamInfo,
} from '@nats-io/jetstream';
import type { NatsConnection } from '@nats-io/transport-node';

/**
 * The JetStream stream that persists every tenant's broadcast events
 * (`sb.<tenant>.evt.<topic…>`): live delivery reads it (so every event
 * carries its stream sequence) and replay reads it by sequence. One stream
 * for all tenants; the tenant is the subject's second token and every reader
 * filters on its own tenant's subjects.
 */
export const EVENT_STREAM = 'SB_EVENTS';
export const EVENT_STREAM_SUBJECT = 'sb.*.evt.>';

export interface EventStreamSettings {
  /** Events older than this are deleted. */
  maxAgeMs: number;
  /** Above this the oldest events are deleted (discard old). */
  maxBytes: number;
  /** A publish repeating a message id within this window is stored once. */
  duplicateWindowMs: number;
  /** Largest stored message (event, envelope and headers). */
  maxMessageBytes: number;
  /** Copies in a JetStream cluster (1 on a single server). */
  replicas: number;
}

const NANOS_PER_MS = 1_000_000;

/** The stream's configuration for these settings (limits retention, file storage, discard old). */
export function eventStreamConfig(settings: EventStreamSettings): Partial<StreamConfig> & { name: string } {
  return {
    name: EVENT_STREAM,
    description: 'Switchboard broadcast events of every tenant (sb.<tenant>.evt.<topic>), for live delivery with sequence numbers and replay',
    subjects: [EVENT_STREAM_SUBJECT],
    retention: RetentionPolicy.Limits,
    storage: StorageType.File,
    discard: DiscardPolicy.Old,
    max_age: settings.maxAgeMs * NANOS_PER_MS,
    max_bytes: settings.maxBytes,
    max_msg_size: settings.maxMessageBytes,
    duplicate_window: settings.duplicateWindowMs * NANOS_PER_MS,
    num_replicas: settings.replicas,
  };
}

/** The settings that differ between the stream as it is and as configured (empty: nothing to update). */
function drift(current: StreamConfig, wanted: ReturnType<typeof eventStreamConfig>): string[] {
  const keys = ['subjects', 'max_age', 'max_bytes', 'max_msg_size', 'duplicate_window', 'num_replicas', 'discard', 'description'] as const;
  return keys.filter((key) => JSON.stringify(current[key]) !== JSON.stringify(wanted[key]));
}

/** NATS' answer when a stream of that name exists with another configuration. */
const STREAM_NAME_IN_USE = 10058;

export interface EnsuredStream {
  info: StreamInfo;
  /** `created`, `updated` (with the settings that changed) or `unchanged`. */
  outcome: 'created' | 'updated' | 'unchanged';
  changed: string[];
}

/**
 * Creates the event stream, or brings an existing one to these settings;
 * safe for every gateway to call at start, at once: creating with an
 * identical configuration is a no-op for NATS, and a gateway that loses the
 * race (or finds older settings) updates instead.
 */
export async function ensureEventStream(jsm: JetStreamManager, settings: EventStreamSettings): Promise<EnsuredStream> {
  const wanted = eventStreamConfig(settings);
  let existing: StreamInfo | undefined;
  try {
    existing = await jsm.streams.info(EVENT_STREAM);
  } catch (err) {
    if (!(err instanceof JetStreamApiError && err.code === 10059)) throw err;
  }
  if (!existing) {
    try {
      return { info: await jsm.streams.add(wanted), outcome: 'created', changed: [] };
    } catch (err) {
      if (!(err instanceof JetStreamApiError && err.code === STREAM_NAME_IN_USE)) throw err;
      existing = await jsm.streams.info(EVENT_STREAM);
    }
  }
  const changed = drift(existing.config, wanted);
  if (changed.length === 0) return { info: existing, outcome: 'unchanged', changed };
  const update = Object.fromEntries(changed.map((key) => [key, wanted[key as keyof typeof wanted]])) as Partial<StreamConfig>;
  return { info: await jsm.streams.update(EVENT_STREAM, update), outcome: 'updated', changed };
}

/** The JetStream client and manager of a connection, without the `$JS.API.INFO` probe (the gateway's NATS user may not call it). */
export async function eventStreamClients(nc: NatsConnection): Promise<{ js: JetStreamClient; jsm: JetStreamManager }> {
  return { js: jetstream(nc), jsm: await jetstreamManager(nc, { checkAPI: false }) };
}
