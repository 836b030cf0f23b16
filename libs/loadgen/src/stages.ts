/**
 * Per-stage timings from the services' own Prometheus histograms, read
 * before and after the load so that only the load window counts: the
 * gateway's frame → reply time of `sendMessage` (admission done, through
 * messaging and back) and messaging's `SendMessage` handler time (the
 * commit). Set against the client's ack latency they say where a send
 * waited: before the gateway handled it, between gateway and messaging, or
 * in the commit.
 */
export interface StageSpec {
  /** Process name (as in the target's process list). */
  process: string;
  metric: string;
  /** Label that selects the series, e.g. `kind="sendMessage"`. */
  label: string;
  /** What the stage is, for the summary. */
  what: string;
}

export const STAGES: StageSpec[] = [
  { process: 'gateway-1', metric: 'gateway_frame_duration_seconds', label: 'kind="sendMessage"', what: 'gateway-1: sendMessage frame handled -> reply' },
  { process: 'messaging', metric: 'rpc_server_duration_seconds', label: 'method="SendMessage"', what: 'messaging: SendMessage handler' },
];

export interface HistogramSnapshot {
  /** Cumulative counts by upper bound (seconds; Infinity last). */
  buckets: Map<number, number>;
  sum: number;
  count: number;
}

export interface StageTiming {
  what: string;
  count: number;
  meanMs: number;
  /** Upper bound of the bucket holding the percentile (the histograms are coarse). */
  p50AtMostMs: number;
  p99AtMostMs: number;
}

/** Sums every series of `metric` whose labels contain `label` (all outcomes together). */
export function parseHistogram(text: string, metric: string, label: string): HistogramSnapshot {
  const snapshot: HistogramSnapshot = { buckets: new Map(), sum: 0, count: 0 };
  for (const line of text.split('\n')) {
    if (!line.startsWith(metric) || !line.includes(label)) continue;
    const value = Number(line.slice(line.lastIndexOf(' ') + 1));
    if (line.startsWith(`${metric}_bucket`)) {
      const le = /le="([^"]+)"/.exec(line)?.[1];
      if (le === undefined) continue;
      const bound = le === '+Inf' ? Infinity : Number(le);
      snapshot.buckets.set(bound, (snapshot.buckets.get(bound) ?? 0) + value);
    } else if (line.startsWith(`${metric}_sum`)) snapshot.sum += value;
    else if (line.startsWith(`${metric}_count`)) snapshot.count += value;
  }
  return snapshot;
}

export function stageTiming(what: string, before: HistogramSnapshot, after: HistogramSnapshot): StageTiming {
  const count = after.count - before.count;
  const bounds = [...after.buckets.keys()].sort((a, b) => a - b);
  const at = (q: number) => {
    for (const bound of bounds) {
      if ((after.buckets.get(bound) ?? 0) - (before.buckets.get(bound) ?? 0) >= q * count) return bound === Infinity ? Infinity : bound * 1000;
    }
    return Infinity;
  };
  return { what, count, meanMs: count > 0 ? Math.round(((after.sum - before.sum) / count) * 1e6) / 1000 : 0, p50AtMostMs: at(0.5), p99AtMostMs: at(0.99) };
}

export async function scrape(opsPort: number): Promise<string> {
  try {
    return await (await fetch(`http://127.0.0.1:${opsPort}/metrics`)).text();
  } catch {
    return '';
  }
}
