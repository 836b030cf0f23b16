import { createLogger } from '@switchboard/logging';
import { Lifecycle, OpsServer } from '../src';

const logger = createLogger({ service: 'test', level: 'silent' });

describe('OpsServer', () => {
  let healthy = true;
  const ops = new OpsServer({
    host: '127.0.0.1',
    port: 0,
    logger,
    checkTimeoutMs: 200,
    checks: [
      { name: 'database', check: () => (healthy ? undefined : Promise.reject(new Error('connection refused'))) },
      { name: 'slow', check: () => new Promise((resolve) => setTimeout(resolve, healthy ? 0 : 1000)) },
    ],
  });
  let port = 0;
  beforeAll(async () => {
    port = await ops.start();
  });
  afterAll(() => ops.stop());

  it('is alive but not ready while its servers are still starting', async () => {
    expect((await fetch(`http://127.0.0.1:${port}/healthz`)).status).toBe(200);
    const res = await fetch(`http://127.0.0.1:${port}/readyz`);
    expect(res.status).toBe(503);
    expect(((await res.json()) as { checks: Record<string, string> }).checks.serving).toBe('servers are still starting');
    ops.setServing();
  });

  it('is alive and ready while every dependency answers', async () => {
    expect((await fetch(`http://127.0.0.1:${port}/healthz`)).status).toBe(200);
    const res = await fetch(`http://127.0.0.1:${port}/readyz`);
    // Status and body together: a failure names the check that failed.
    expect({ status: res.status, body: await res.json() }).toEqual({ status: 200, body: { status: 'ready', checks: { database: 'ok', slow: 'ok' } } });
  });

  it('is not ready, naming the failing dependency, and ready again once it answers', async () => {
    healthy = false;
    const res = await fetch(`http://127.0.0.1:${port}/readyz`);
    expect(res.status).toBe(503);
    expect(await res.json()).toEqual({ status: 'not ready', checks: { database: 'connection refused', slow: 'no answer within 200 ms' } });
    expect((await fetch(`http://127.0.0.1:${port}/healthz`)).status).toBe(200);
    healthy = true;
    expect((await fetch(`http://127.0.0.1:${port}/readyz`)).status).toBe(200);
  });

  it('is not ready once draining', async () => {
    ops.setDraining();
    const res = await fetch(`http://127.0.0.1:${port}/readyz`);
    expect(res.status).toBe(503);
    expect(((await res.json()) as { checks: Record<string, string> }).checks.draining).toBe('service is shutting down');
  });
});

describe('Lifecycle', () => {
  it('stops parts in reverse order of start, and keeps going past a failing one', async () => {
    const order: string[] = [];
    const lifecycle = new Lifecycle({ logger, shutdownDeadlineMs: 1000, exitProcess: false });
    lifecycle.onShutdown('database', () => void order.push('database'));
    lifecycle.onShutdown('broken', () => Promise.reject(new Error('boom')));
    lifecycle.onShutdown('server', () => void order.push('server'));
    await lifecycle.shutdown('test');
    expect(order).toEqual(['server', 'database']);
    expect(lifecycle.isStopping).toBe(true);
  });

  it('names the part that was still stopping when the deadline passed', async () => {
    const errors: { fields: Record<string, unknown>; message: string }[] = [];
    const recording = { ...logger, info: () => undefined, debug: () => undefined, error: (fields: Record<string, unknown>, message: string) => void errors.push({ fields, message }) };
    const lifecycle = new Lifecycle({ logger: recording as unknown as typeof logger, shutdownDeadlineMs: 50, exitProcess: false });
    lifecycle.onShutdown('kafka consumer', () => new Promise(() => undefined));
    lifecycle.onShutdown('server', () => undefined);
    void lifecycle.shutdown('test');
    await new Promise((r) => setTimeout(r, 150));
    expect(errors).toEqual([{ fields: expect.objectContaining({ stuck: 'kafka consumer', deadlineMs: 50 }), message: 'shutdown deadline passed while stopping kafka consumer: exiting' }]);
  });
});
