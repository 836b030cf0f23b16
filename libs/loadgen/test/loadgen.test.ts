// Pure logic of the load generator: the send schedule, the spike profile,
// the per-conversation sequence tracking, the message body, the plots, and
// the per-stage timings read from the services' histograms.
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { decodeBody, encodeBody, plot, schedule, scheduledCount, segmentsOf, SeqTracker, type LoadResult } from '../src';
import { parseHistogram, stageTiming } from '../src/stages';

describe('send schedule', () => {
  it('spaces messages evenly at the segment rate and counts them exactly', () => {
    const times = [...schedule(1000, [{ durationMs: 1000, perMinute: 600 }])];
    expect(times).toHaveLength(10);
    expect(times[0]).toBe(1000);
    expect(times[1]).toBe(1100);
    expect(scheduledCount([{ durationMs: 1000, perMinute: 600 }])).toBe(10);
  });

  it('cuts a spike at twice the rate into the steady profile', () => {
    const segments = segmentsOf({ perMinute: 60, durationS: 180, spike: { atS: 60, durationS: 60, factor: 2 } });
    expect(segments).toEqual([
      { durationMs: 60_000, perMinute: 60 },
      { durationMs: 60_000, perMinute: 120 },
      { durationMs: 60_000, perMinute: 60 },
    ]);
    expect(scheduledCount(segments)).toBe(60 + 120 + 60);
    const times = [...schedule(0, segments)];
    expect(times[60]).toBe(60_000);
    expect(times[61]).toBe(60_500);
  });
});

describe('stage timings', () => {
  const metrics = (ok: number[], failed: number[], sum: number) =>
    [
      '# HELP gateway_frame_duration_seconds Time from a client frame to its reply',
      ...[0.01, 0.05, 0.5, '+Inf'].map((le, i) => `gateway_frame_duration_seconds_bucket{kind="sendMessage",outcome="ok",le="${le}"} ${ok[i]}`),
      ...[0.01, 0.05, 0.5, '+Inf'].map((le, i) => `gateway_frame_duration_seconds_bucket{kind="sendMessage",outcome="UNAVAILABLE",le="${le}"} ${failed[i]}`),
      `gateway_frame_duration_seconds_bucket{kind="ping",outcome="ok",le="0.01"} 999`,
      `gateway_frame_duration_seconds_sum{kind="sendMessage",outcome="ok"} ${sum}`,
      `gateway_frame_duration_seconds_count{kind="sendMessage",outcome="ok"} ${ok[3]}`,
      `gateway_frame_duration_seconds_count{kind="sendMessage",outcome="UNAVAILABLE"} ${failed[3]}`,
    ].join('\n');

  it('counts only the load window, every outcome of the selected series, and reports the bucket holding each percentile', () => {
    const before = parseHistogram(metrics([10, 10, 10, 10], [0, 0, 0, 0], 0.05), 'gateway_frame_duration_seconds', 'kind="sendMessage"');
    // 100 more calls: 60 under 10 ms, 39 more under 50 ms, one refusal after 0.5 s.
    const after = parseHistogram(metrics([70, 109, 109, 109], [0, 0, 0, 1], 1.05), 'gateway_frame_duration_seconds', 'kind="sendMessage"');
    const timing = stageTiming('send', before, after);
    expect(timing).toEqual({ what: 'send', count: 100, meanMs: 10, p50AtMostMs: 10, p99AtMostMs: 50 });
  });
});

describe('sequence tracker', () => {
  it('starts where the device joined, refuses repeats and closes gaps filled later', () => {
    const tracker = new SeqTracker();
    expect(tracker.see(5)).toBe(true);
    expect(tracker.see(5)).toBe(false);
    expect(tracker.see(7)).toBe(true);
    expect(tracker.contiguous).toBe(5);
    expect(tracker.see(6)).toBe(true);
    expect(tracker.contiguous).toBe(7);
    expect(tracker.see(6)).toBe(false);
  });
});

describe('message body', () => {
  it('round-trips the run, the number and the intended time, padded to the size asked for', () => {
    const text = encodeBody({ run: 'r1', n: 42, intendedMs: 1234.5 }, 100);
    expect(text).toHaveLength(100);
    expect(decodeBody(text)).toEqual({ run: 'r1', n: 42, intendedMs: 1234.5 });
    expect(decodeBody('hello')).toBeUndefined();
  });
});

describe('plots', () => {
  it('renders latency against load and memory against connections as SVG files', async () => {
    const result = (target: 'switchboard' | 'socketio', pattern: 'direct' | 'idle', perMinute: number, p99: number) =>
      ({
        label: pattern === 'idle' ? `connections-${target}` : `sweep-${target}-${perMinute}`,
        options: { target, pattern, perMinute, gateways: 2 },
        messages: { latency: { p50Ms: p99 / 2, p99Ms: p99 } },
        samples: [
          { t: 1, connected: 100, edgeRssBytes: 120 * 2 ** 20, load1: 1 },
          { t: 2, connected: 200, edgeRssBytes: 125 * 2 ** 20, load1: 1 },
        ],
      }) as unknown as LoadResult;
    const dir = mkdtempSync(path.join(tmpdir(), 'plots-'));
    const files = await plot(
      [result('switchboard', 'direct', 6000, 20), result('switchboard', 'direct', 12000, 40), result('socketio', 'direct', 6000, 10), result('switchboard', 'idle', 0, 0)],
      dir,
    );
    expect(files.map((f) => path.basename(f)).sort()).toEqual(['benchmarks-latency.svg', 'benchmarks-memory.svg']);
    for (const file of files) {
      const svg = readFileSync(file, 'utf8');
      expect(svg.startsWith('<svg')).toBe(true);
      expect(svg).toContain('switchboard');
    }
  });
});
