// The benchmark scenarios in miniature, so the tools never rot: real mesh
// processes (or the Socket.IO baseline on real Redis and PostgreSQL), real
// tokens, real sockets from worker processes on several loopback addresses.
// No timing assertions: every count must add up and nothing may be lost.
import { runLoad, type LoadResult } from '../src';

const quiet = () => undefined;

function expectCountsAddUp(result: LoadResult, fanout: number): void {
  const m = result.messages;
  expect(result.ramp.failed).toBe(0);
  expect(result.ramp.connected).toBe(result.options.connections);
  expect(m.sent).toBe(m.scheduled);
  expect(result.errors).toEqual({});
  expect(m.failed).toBe(0);
  expect(m.acked).toBe(m.sent);
  expect(m.expectedDeliveries).toBe(m.acked * fanout);
  expect(m.delivered).toBe(m.expectedDeliveries);
  expect(m.lost).toBe(0);
  expect(m.duplicates).toBe(0);
  // Every delivery was measured (one histogram entry each).
  expect(m.latency.count).toBe(m.delivered);
}

describe('load generator scenarios (miniature)', () => {
  jest.setTimeout(180_000);

  // With churn: a churned sender sends again, with the same client ids, what its dropped connection left
  // without an ack (and what was scheduled while it was away), so every send is acknowledged exactly once.
  it('direct messages through two Switchboard gateways while clients reconnect: every message is acknowledged and reaches its recipient once (live or by sync)', async () => {
    const result = await runLoad({
      label: 'e2e-direct',
      target: 'switchboard',
      gateways: 2,
      connections: 20,
      pattern: 'direct',
      perMinute: 600,
      durationS: 8,
      idleS: 1,
      sourceAddresses: 2,
      churnPerMinute: 1,
      log: quiet,
    });
    expectCountsAddUp(result, 1);
    expect(result.messages.scheduled).toBe(80);
    expect(result.edges.map((e) => e.connections)).toEqual([10, 10]);
    expect(result.churn.reconnects).toBeGreaterThan(0);
  });

  it('the Socket.IO baseline, direct and rooms, driven by the same generator', async () => {
    const direct = await runLoad({ label: 'e2e-sio-direct', target: 'socketio', gateways: 2, connections: 20, pattern: 'direct', perMinute: 600, durationS: 4, idleS: 1, log: quiet });
    expectCountsAddUp(direct, 1);
    const rooms = await runLoad({ label: 'e2e-sio-room', target: 'socketio', gateways: 2, connections: 20, pattern: 'room', roomSize: 10, perMinute: 120, durationS: 4, idleS: 1, log: quiet });
    expectCountsAddUp(rooms, 9);
  });

  it('connections only: one gateway reports its memory and idle CPU for the connections it holds', async () => {
    const result = await runLoad({ label: 'e2e-idle', target: 'switchboard', gateways: 1, connections: 30, pattern: 'idle', idleS: 1, workers: 3, sourceAddresses: 3, log: quiet });
    expect(result.ramp.connected).toBe(30);
    expect(result.edges).toHaveLength(1);
    expect(result.edges[0]!.connections).toBe(30);
    expect(result.edges[0]!.rssAfterBytes).toBeGreaterThan(0);
    expect(result.loadgen.workers).toBe(3);
  });
});
