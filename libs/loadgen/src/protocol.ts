import type { ClientSpec, SendTarget } from './transport';

/** A constant-rate stretch of the send schedule. */
export interface RateSegment {
  durationMs: number;
  perMinute: number;
}

export interface WorkerInit {
  type: 'init';
  worker: number;
  transport: 'switchboard' | 'socketio';
  secret: string;
  tenantId: string;
  clients: ClientSpec[];
  /** Connections opened per second by this worker during the ramp. */
  rampPerSecond: number;
  /** Most handshakes this worker has waiting at once. */
  maxPendingConnects: number;
  /** Share of this worker's connections closed and reopened per minute during the load. */
  churnPerMinute: number;
  /** Text bytes per message. */
  messageBytes: number;
}

export interface SenderAssignment {
  /** Index into this worker's clients. */
  local: number;
  /** Index among all senders of the run: message n is sent by sender n % senderCount. */
  sender: number;
  target: SendTarget;
}

export interface LoadStart {
  type: 'load';
  run: string;
  startMs: number;
  segments: RateSegment[];
  senderCount: number;
  senders: SenderAssignment[];
}

export interface WarmUp {
  type: 'warmup';
  run: string;
  senders: SenderAssignment[];
}

export type ToWorker = WorkerInit | { type: 'connect' } | WarmUp | LoadStart | { type: 'report' } | { type: 'close' };

export interface WorkerCounts {
  connectAttempts: number;
  connected: number;
  connectFailed: number;
  open: number;
  sent: number;
  acked: number;
  failed: number;
  /** Sends sent again (same client id) after their device reconnected. */
  resent: number;
  /** Refusals sent again (same client id) after their retry hint (OVERLOADED, RATE_LIMITED). */
  retried: number;
  delivered: number;
  /** Delivered by a sync after a reconnect rather than pushed live. */
  recovered: number;
  duplicates: number;
  reconnects: number;
  warmDelivered: number;
}

export interface WorkerReport {
  type: 'report';
  worker: number;
  counts: WorkerCounts;
  errors: Record<string, number>;
  histograms: { delivery: string; ack: string; connect: string; reconnect: string };
  /** The worker's own CPU time (user+system) in ms since it started: what the load generator itself cost. */
  cpuMs: number;
  rssBytes: number;
  scheduleDone: boolean;
  /** Open connections by the URL they went to (per gateway / instance). */
  openByUrl: Record<string, number>;
}

export type FromWorker =
  | { type: 'ready'; worker: number }
  | { type: 'progress'; worker: number; connected: number; failed: number }
  | { type: 'connected'; worker: number; connected: number; failed: number; errors: Record<string, number> }
  | { type: 'warm'; worker: number; acked: number; failed: number }
  | WorkerReport;

/** The intended send time of every message of a schedule, in order (message n is the n-th). */
export function* schedule(startMs: number, segments: RateSegment[]): Generator<number> {
  let segmentStart = startMs;
  for (const segment of segments) {
    if (segment.perMinute > 0) {
      const interval = 60_000 / segment.perMinute;
      const count = Math.floor(segment.durationMs / interval);
      for (let k = 0; k < count; k += 1) yield segmentStart + k * interval;
    }
    segmentStart += segment.durationMs;
  }
}

export function scheduledCount(segments: RateSegment[]): number {
  return segments.reduce((sum, s) => sum + (s.perMinute > 0 ? Math.floor(s.durationMs / (60_000 / s.perMinute)) : 0), 0);
}
