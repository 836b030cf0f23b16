import { infraEnv } from '@switchboard/devenv';
import { newId } from '@switchboard/ids';
import { createRedis, tenantKey, type Redis } from '@switchboard/redis';
import { ConnectionSlots, SharedRateLimits, TenantLimitStore, UsageCounters, type TenantLimits } from '../src';

const defaults: TenantLimits = { maxConnections: 3, messagesPerSecondPerUser: 5, messagesPerSecondPerTenant: 8, bytesPerSecondPerTenant: 1000, maxFrameBytes: 4096, maxRoomSize: 10 };
// Two clients stand for two gateway processes sharing one Redis.
let gatewayA: Redis;
let gatewayB: Redis;
const tenant = () => `t${newId().slice(0, 12)}`;

beforeAll(async () => {
  const url = infraEnv()['REDIS_URL']!;
  gatewayA = createRedis(url, 'limits-test-a');
  gatewayB = createRedis(url, 'limits-test-b');
  await Promise.all([gatewayA.connect(), gatewayB.connect()]);
});
afterAll(async () => {
  await Promise.all([gatewayA.quit(), gatewayB.quit()]);
});

describe('tenant limits in Redis', () => {
  it('gives the defaults until a tenant has an override, and every process sees the override', async () => {
    const t = tenant();
    const storeA = new TenantLimitStore(gatewayA, defaults, 1);
    const storeB = new TenantLimitStore(gatewayB, defaults, 1);
    expect(await storeB.get(t)).toEqual(defaults);
    await storeA.set(t, { maxConnections: 50, maxRoomSize: 3 });
    await new Promise((r) => setTimeout(r, 5));
    expect(await storeB.get(t)).toEqual({ ...defaults, maxConnections: 50, maxRoomSize: 3 });
    expect(await storeB.get(tenant())).toEqual(defaults);
    await storeA.set(t, { maxConnections: 0 });
    await new Promise((r) => setTimeout(r, 5));
    expect((await storeB.get(t)).maxConnections).toBe(defaults.maxConnections);
  });

  it('refuses a negative or fractional limit and changes nothing', async () => {
    const t = tenant();
    const store = new TenantLimitStore(gatewayA, defaults, 1);
    await expect(store.set(t, { maxConnections: 10, messagesPerSecondPerUser: -1 })).rejects.toThrow(/messagesPerSecondPerUser/);
    await expect(store.set(t, { maxFrameBytes: 1.5 })).rejects.toThrow(/maxFrameBytes/);
    expect(await store.overrides(t)).toEqual({});
  });
});

describe('shared budgets', () => {
  it('one per-second budget spans both processes, and the refusal says when to retry', async () => {
    const t = tenant();
    const ratesA = new SharedRateLimits(gatewayA);
    const ratesB = new SharedRateLimits(gatewayB);
    const decisions = [];
    for (let i = 0; i < 10; i += 1) decisions.push(await (i % 2 ? ratesA : ratesB).consume('user-messages', t, 'alice', 1, 5));
    expect(decisions.filter((d) => d.allowed)).toHaveLength(5);
    const refused = decisions.find((d) => !d.allowed) as { retryAfterMs: number };
    expect(refused.retryAfterMs).toBeGreaterThan(0);
    expect(refused.retryAfterMs).toBeLessThanOrEqual(1000);
    // Another user of the same tenant, and the same user id in another tenant, have their own budgets.
    expect(await ratesA.consume('user-messages', t, 'bob', 1, 5)).toEqual({ allowed: true });
    expect(await ratesA.consume('user-messages', tenant(), 'alice', 1, 5)).toEqual({ allowed: true });
  });

  it('counts bytes as points', async () => {
    const t = tenant();
    const rates = new SharedRateLimits(gatewayA);
    expect((await rates.consume('tenant-bytes', t, '', 600, 1000)).allowed).toBe(true);
    expect((await rates.consume('tenant-bytes', t, '', 600, 1000)).allowed).toBe(false);
  });

  it('takes several budgets in one round trip, in order, leaving the budgets after a refusal uncharged', async () => {
    const t = tenant();
    const rates = new SharedRateLimits(gatewayA);
    const frame = (bytes: number) => [
      { kind: 'tenant-bytes' as const, tenantId: t, subject: '', points: bytes, perSecond: 1000 },
      { kind: 'tenant-messages' as const, tenantId: t, subject: '', points: 1, perSecond: 3 },
      { kind: 'user-messages' as const, tenantId: t, subject: 'alice', points: 1, perSecond: 2 },
    ];
    expect(await rates.consumeInOrder(frame(100))).toEqual({ allowed: true });
    expect(await rates.consumeInOrder(frame(100))).toEqual({ allowed: true });
    // The user's budget (2/s) refuses the third: it is the third step.
    expect(await rates.consumeInOrder(frame(100))).toMatchObject({ allowed: false, step: 2 });
    // A frame over the bandwidth stops at the first step: the message budgets are not charged by it.
    expect(await rates.consumeInOrder(frame(900))).toMatchObject({ allowed: false, step: 0 });
    // The tenant's budget holds the three messages that reached it; the frame over the bandwidth added none.
    const bob = { kind: 'user-messages' as const, tenantId: t, subject: 'bob', points: 1, perSecond: 2 };
    const tenantMessages = (await gatewayB.get(`sb:{${t}}:rl:tenant-messages:3:`))!;
    expect(Number(tenantMessages)).toBe(3);
    // The same keys as a one-budget consume from another process (one window, whichever call took it).
    const other = new SharedRateLimits(gatewayB);
    expect(await other.consume('tenant-messages', t, '', 1, 3)).toMatchObject({ allowed: false });
    expect(await other.consume('user-messages', t, 'bob', 1, 2)).toEqual({ allowed: true });
    expect(await other.consumeInOrder([bob])).toEqual({ allowed: true });
    const refused = await other.consumeInOrder([bob]);
    expect(refused).toMatchObject({ allowed: false, step: 0 });
    expect((refused as { retryAfterMs: number }).retryAfterMs).toBeGreaterThan(0);
    expect((refused as { retryAfterMs: number }).retryAfterMs).toBeLessThanOrEqual(1000);
  });

  it('keeps limiting with per-process budgets when Redis cannot be reached', async () => {
    // A client whose connection is closed: every Redis call fails at once.
    const unreachable = createRedis(infraEnv()['REDIS_URL']!, 'limits-test-down');
    await unreachable.connect();
    unreachable.disconnect();
    const rates = new SharedRateLimits(unreachable);
    try {
      const t = tenant();
      const decisions = [];
      for (let i = 0; i < 4; i += 1) decisions.push(await rates.consume('user-messages', t, 'alice', 1, 3));
      expect(decisions.map((d) => d.allowed)).toEqual([true, true, true, false]);
    } finally {
      unreachable.disconnect();
    }
  });
});

describe('connection slots', () => {
  it('admits at most the limit across processes, frees a slot on release, and lets slots of a dead process lapse', async () => {
    const t = tenant();
    const slotsA = new ConnectionSlots(gatewayA, 300);
    const slotsB = new ConnectionSlots(gatewayB, 300);
    const results = await Promise.all(['c1', 'c2', 'c3', 'c4', 'c5'].map((id, i) => (i % 2 ? slotsA : slotsB).acquire(t, id, 3)));
    expect(results.filter((r) => r.admitted)).toHaveLength(3);
    expect(await slotsA.held(t)).toBe(3);
    const admitted = ['c1', 'c2', 'c3', 'c4', 'c5'].filter((_, i) => results[i]!.admitted);
    await slotsB.release(t, admitted[0]!);
    expect((await slotsA.acquire(t, 'c6', 3)).admitted).toBe(true);
    // Nobody renews: the slots lapse and the tenant may connect again.
    await new Promise((r) => setTimeout(r, 350));
    expect(await slotsA.held(t)).toBe(0);
    expect((await slotsB.acquire(t, 'c7', 3)).admitted).toBe(true);
  });

  it('keeps renewed slots', async () => {
    const t = tenant();
    const slots = new ConnectionSlots(gatewayA, 300);
    await slots.acquire(t, 'c1', 3);
    for (let i = 0; i < 4; i += 1) {
      await new Promise((r) => setTimeout(r, 100));
      await slots.renew(new Map([[t, ['c1']]]));
    }
    expect(await slots.held(t)).toBe(1);
  });

  it('renews thousands of slots in one call and never brings back a released one', async () => {
    const t = tenant();
    const slots = new ConnectionSlots(gatewayA, 2000);
    const ids = Array.from({ length: 2500 }, (_, i) => `conn${i}`);
    for (let i = 0; i < ids.length; i += 500) await Promise.all(ids.slice(i, i + 500).map((id) => slots.acquire(t, id, 10_000)));
    await slots.release(t, 'conn7');
    // Renewed past the original lapse: every slot but the released one is still held.
    for (let i = 0; i < 4; i += 1) {
      await new Promise((r) => setTimeout(r, 600));
      await slots.renew(new Map([[t, ids]]));
    }
    expect(await slots.held(t)).toBe(ids.length - 1);
    expect(await gatewayA.zscore(tenantKey(t, 'conns'), 'conn7')).toBeNull();
  });
});

describe('usage counters', () => {
  it('sum what every process counted', async () => {
    const t = tenant();
    const usageA = new UsageCounters(gatewayA);
    const usageB = new UsageCounters(gatewayB);
    usageA.add(t, 'messages', 3);
    usageB.add(t, 'messages', 4);
    usageB.add(t, 'rejected:rate_user');
    await Promise.all([usageA.flush(), usageB.flush()]);
    const usage = await usageA.read(t);
    expect(usage.counters).toEqual({ messages: 7, 'rejected:rate_user': 1 });
    expect(usage.since).toBeInstanceOf(Date);
  });
});
