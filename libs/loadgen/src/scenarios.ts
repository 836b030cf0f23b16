import type { LoadOptions } from './run';

/**
 * The documented scenarios (docs/benchmarks.md). Each is a list of runs;
 * `--scale` shrinks connections and rates for a quick look (the e2e test
 * runs them tiny), flags on the command line override any field.
 */
export type Scenario = { description: string; runs: Partial<LoadOptions>[] };

export const SCENARIOS: Record<string, Scenario> = {
  connections: {
    description: 'ramp one gateway to 15,000 authenticated connections: memory per 1,000 and idle CPU',
    runs: (['switchboard', 'socketio'] as const).map((target) => ({ label: `connections-${target}`, target, gateways: 1, connections: 15_000, rampPerSecond: 200, pattern: 'idle' as const, idleS: 30 })),
  },
  direct: {
    description: '10,000 clients (5,000 pairs on two gateways), 100,000 direct messages per minute: latency and loss',
    runs: [{ label: 'direct', target: 'switchboard', gateways: 2, connections: 10_000, pattern: 'direct', perMinute: 100_000, durationS: 60 }],
  },
  fanout: {
    description: 'rooms of 100 and of 1,000 members, members sending to their room',
    runs: [
      { label: 'fanout-100', target: 'switchboard', gateways: 2, connections: 2_000, pattern: 'room', roomSize: 100, perMinute: 1_200, durationS: 60 },
      { label: 'fanout-1000', target: 'switchboard', gateways: 2, connections: 2_000, pattern: 'room', roomSize: 1_000, perMinute: 120, durationS: 60 },
    ],
  },
  spike: {
    description: 'a minute of steady direct messages, a minute at twice the rate, a minute steady again',
    runs: [{ label: 'spike', target: 'switchboard', gateways: 2, connections: 2_000, pattern: 'direct', perMinute: 6_000, durationS: 180, spike: { atS: 60, durationS: 60, factor: 2 } }],
  },
  churn: {
    description: 'direct messages while 10% of the clients reconnect every minute (and sync what they missed)',
    runs: [{ label: 'churn', target: 'switchboard', gateways: 2, connections: 2_000, pattern: 'direct', perMinute: 6_000, durationS: 120, churnPerMinute: 0.1 }],
  },
  scale: {
    description: 'the same direct-message load through 1, 2 and 3 gateways (every pair crosses gateways when there are several)',
    runs: [1, 2, 3].map((gateways) => ({ label: `scale-${gateways}`, target: 'switchboard' as const, gateways, connections: 2_000, pattern: 'direct' as const, perMinute: 6_000, durationS: 60 })),
  },
  soak: {
    description: 'a bounded soak (memory must stay flat); --duration 86400 runs the same for 24 hours',
    runs: [{ label: 'soak', target: 'switchboard', gateways: 2, connections: 2_000, pattern: 'direct', perMinute: 6_000, durationS: 600 }],
  },
  sweep: {
    description: 'latency against offered direct-message load, Switchboard (two gateways) and Socket.IO (two instances): the latency plot',
    runs: [1_200, 3_000, 6_000].flatMap((perMinute) =>
      (['switchboard', 'socketio'] as const).map((target) => ({ label: `sweep-${target}-${perMinute}`, target, gateways: 2, connections: 1_000, pattern: 'direct' as const, perMinute, durationS: 30 })),
    ),
  },
  baseline: {
    description: 'the same direct-message and fan-out load against Switchboard (two gateways) and Socket.IO + redis-adapter (two instances), in one run',
    runs: (['switchboard', 'socketio'] as const).flatMap((target) => [
      { label: `baseline-direct-${target}`, target, gateways: 2, connections: 4_000, pattern: 'direct' as const, perMinute: 6_000, durationS: 60 },
      { label: `baseline-fanout-${target}`, target, gateways: 2, connections: 2_000, pattern: 'room' as const, roomSize: 100, perMinute: 600, durationS: 60 },
    ]),
  },
};

/** Shrinks a run by `factor` (connections stay a whole number of pairs / rooms). */
export function scaled(run: Partial<LoadOptions>, factor: number): Partial<LoadOptions> {
  if (factor === 1) return run;
  const unit = run.pattern === 'room' ? Math.max(2, Math.round((run.roomSize ?? 100) * factor)) : 2;
  const connections = Math.max(unit, Math.round(((run.connections ?? 1000) * factor) / unit) * unit);
  return {
    ...run,
    connections,
    ...(run.pattern === 'room' ? { roomSize: unit } : {}),
    ...(run.perMinute !== undefined ? { perMinute: Math.max(60, Math.round(run.perMinute * factor)) } : {}),
    ...(run.rampPerSecond !== undefined ? { rampPerSecond: Math.max(50, Math.round(run.rampPerSecond * factor)) } : {}),
  };
}
