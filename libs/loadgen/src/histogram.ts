import * as hdr from 'hdr-histogram-js';

/** Latencies are recorded in microseconds, from 1 µs up to 10 minutes, 3 significant digits. */
export function newHistogram(): hdr.Histogram {
  return hdr.build({ bitBucketSize: 'packed', lowestDiscernibleValue: 1, highestTrackableValue: 600_000_000, numberOfSignificantValueDigits: 3, useWebAssembly: false });
}

export function recordMs(histogram: hdr.Histogram, ms: number): void {
  histogram.recordValue(Math.min(600_000_000, Math.max(1, Math.round(ms * 1000))));
}

/** Histograms travel between processes in HDR's compressed base64 form. */
export function encodeHistogram(histogram: hdr.Histogram): string {
  return hdr.encodeIntoCompressedBase64(histogram);
}

export function mergeEncoded(encoded: string[]): hdr.Histogram {
  const total = newHistogram();
  for (const text of encoded) total.add(hdr.decodeFromCompressedBase64(text, 'packed', false));
  return total;
}

export interface LatencySummary {
  count: number;
  p50Ms: number;
  p90Ms: number;
  p99Ms: number;
  p999Ms: number;
  maxMs: number;
  meanMs: number;
}

const ms = (micros: number) => Math.round(micros) / 1000;

export function summarize(histogram: hdr.Histogram): LatencySummary {
  if (histogram.totalCount === 0) return { count: 0, p50Ms: 0, p90Ms: 0, p99Ms: 0, p999Ms: 0, maxMs: 0, meanMs: 0 };
  return {
    count: histogram.totalCount,
    p50Ms: ms(histogram.getValueAtPercentile(50)),
    p90Ms: ms(histogram.getValueAtPercentile(90)),
    p99Ms: ms(histogram.getValueAtPercentile(99)),
    p999Ms: ms(histogram.getValueAtPercentile(99.9)),
    maxMs: ms(histogram.maxValue),
    meanMs: ms(histogram.mean),
  };
}

/** Wall-clock milliseconds with sub-millisecond resolution, comparable between processes of one machine. */
export function nowMs(): number {
  return performance.timeOrigin + performance.now();
}
