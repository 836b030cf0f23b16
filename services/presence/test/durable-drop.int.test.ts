// A dead gateway's drop that fails part-way is finished, not forgotten:
// real presence processes against real Redis and NATS, one of them talking
// to Redis through a proxy the test cuts — the replica is killed mid-drop,
// or loses Redis mid-drop. Every user must end offline, every watcher must
// hear OFFLINE exactly once, and nothing of the drop may stay in Redis.
import { eventually, infraEnv, launchWithClient, natsSeedFile, startFreezableProxy, type FreezableProxy, type ServiceProcess } from '@switchboard/devenv';
import type { PromiseClient } from '@switchboard/grpc';
import { newId } from '@switchboard/ids';
import { connectNats, decodeEnvelope, type NatsConnection } from '@switchboard/nats';
import { eventsV1, presenceV1 } from '@switchboard/proto';
import { createRedis, type Redis } from '@switchboard/redis';

const { PresenceStatus } = eventsV1;
const Cause = presenceV1.PresenceChangeCause;
type Client = PromiseClient<presenceV1.PresenceServiceClient>;

/** Enough users for six drop batches (500 per script call), so the drop can be cut between them. */
const CROWD = 3000;

describe('a gateway drop that fails part-way', () => {
  const tenantId = newId();
  const presenceKey = (...parts: string[]) => `sb:{${tenantId}}:presence:${parts.join(':')}`;
  const settings = { GATEWAY_HEARTBEAT_TIMEOUT_MS: '600', LEASE_TTL_MS: '60000', GATEWAY_DROP_CLAIM_MS: '2000' };
  const as = (userId: string) => ({ context: { tenantId, userId, deviceId: '', internal: false } });
  const internal = { context: { tenantId, userId: '', deviceId: '', internal: true } };
  const system = { context: { tenantId: 'sys', userId: '', deviceId: '', internal: true } };
  let survivor: { service: ServiceProcess; client: Client };
  let redis: Redis;
  let nats: NatsConnection;
  /** OFFLINE changes heard per user on the tenant's presence subjects (each user's own and the batches). */
  const offlineHeard = new Map<string, number>();

  beforeAll(async () => {
    survivor = await launchWithClient('presence', presenceV1.PresenceServiceClient, settings);
    redis = createRedis(infraEnv().REDIS_URL!, 'durable-drop-test');
    await redis.connect();
    nats = await connectNats({ servers: infraEnv().NATS_URL!, nkeySeedFile: natsSeedFile(), name: 'durable-drop-test' });
    nats.subscribe(`sb.${tenantId}.presence.*`, {
      callback: (err, msg) => {
        if (err) return;
        const event = decodeEnvelope(msg).envelope.event;
        const changes = event?.$case === 'presenceChanged' ? [event.value] : event?.$case === 'presenceChangedBatch' ? event.value.changes : [];
        for (const change of changes) if (change.status === PresenceStatus.PRESENCE_STATUS_OFFLINE) offlineHeard.set(change.userId, (offlineHeard.get(change.userId) ?? 0) + 1);
      },
    });
    await nats.flush();
  });

  afterAll(async () => {
    survivor?.client.close();
    await nats?.close();
    await redis?.quit();
    expect(await survivor?.service.stop()).toBe(0);
  });

  /** A replica whose Redis is reached through a proxy the test controls. */
  async function replicaBehindProxy(): Promise<{ service: ServiceProcess; client: Client; proxy: FreezableProxy }> {
    const proxy = await startFreezableProxy(new URL(infraEnv().REDIS_URL!).host);
    const replica = await launchWithClient('presence', presenceV1.PresenceServiceClient, { ...settings, REDIS_URL: `redis://${proxy.address}` });
    return { ...replica, proxy };
  }

  /** CROWD users with one device on the gateway, and one more who also has a device on another gateway. */
  async function crowdOn(gatewayId: string): Promise<{ crowd: string[]; elsewhere: string; otherGateway: string }> {
    const crowd = Array.from({ length: CROWD }, () => newId());
    const device = (deviceId: string): presenceV1.DeviceInfo => ({ deviceId, platform: presenceV1.DevicePlatform.DEVICE_PLATFORM_WEB, label: 'Browser', appVersion: '1', userAgent: 'jest' });
    for (let i = 0; i < crowd.length; i += 200) {
      await Promise.all(crowd.slice(i, i + 200).map((userId, j) => survivor.client.connectDevice({ context: undefined, gatewayId, connectionId: `c${i + j}`, device: device('d1') }, as(userId))));
    }
    const elsewhere = crowd[CROWD - 1]!;
    const otherGateway = `gw-${newId().slice(0, 8)}`;
    await survivor.client.connectDevice({ context: undefined, gatewayId: otherGateway, connectionId: 'e1', device: device('d2') }, as(elsewhere));
    return { crowd, elsewhere, otherGateway };
  }

  /** The drop's own keys in Redis: its work list, occupancy and outbox, and the claim. */
  async function dropLeftovers(gatewayId: string) {
    const [work, outbox, claim] = await Promise.all([
      redis.hlen(presenceKey('drop', gatewayId)),
      redis.hgetall(presenceKey('drop-outbox', gatewayId)),
      redis.zscore('sb:sys:presence:gateway-drops', gatewayId),
    ]);
    return { work, outbox: Object.values(outbox).map((json) => JSON.parse(json) as (string | number)[]), claim };
  }

  async function statuses(userIds: string[]): Promise<eventsV1.PresenceStatus[]> {
    const result: eventsV1.PresenceStatus[] = [];
    for (let i = 0; i < userIds.length; i += 500) {
      const { presences } = await survivor.client.getPresence({ context: undefined, userIds: userIds.slice(i, i + 500), includeDevices: false }, internal);
      result.push(...presences.map((p) => p.status));
    }
    return result;
  }

  /** What the issue asks of a crash, however the drop went: everyone offline, OFFLINE heard once each, one history entry, nothing stale. */
  async function expectDroppedOnce(gatewayId: string, { crowd, elsewhere, otherGateway }: { crowd: string[]; elsewhere: string; otherGateway: string }): Promise<void> {
    const gone = crowd.slice(0, -1);
    await eventually(async () => (await statuses(gone)).every((s) => s === PresenceStatus.PRESENCE_STATUS_OFFLINE), 30_000, 'every user of the dead gateway offline');
    await eventually(() => gone.every((u) => (offlineHeard.get(u) ?? 0) > 0), 10_000, 'OFFLINE heard for every user');
    await eventually(async () => (await dropLeftovers(gatewayId)).claim === null, 10_000, 'the drop finished');
    // Anything republished twice would arrive within moments of the rest.
    await new Promise((r) => setTimeout(r, 500));
    expect(gone.filter((u) => offlineHeard.get(u) !== 1)).toEqual([]);

    // The user with a device elsewhere stays online and was never announced offline.
    expect((await survivor.client.getPresence({ context: undefined, userIds: [elsewhere], includeDevices: false }, internal)).presences[0]).toMatchObject({
      status: PresenceStatus.PRESENCE_STATUS_AVAILABLE,
      deviceCount: 1,
    });
    expect(offlineHeard.get(elsewhere)).toBeUndefined();

    // Each dropped user's history: connected, then exactly one GATEWAY_DOWN.
    const history = redis.pipeline();
    for (const userId of gone) history.xlen(presenceKey('history', userId));
    expect(new Set((await history.exec())!.map(([, n]) => n))).toEqual(new Set([2]));
    const [latest] = (await survivor.client.getPresenceHistory({ context: undefined, userId: gone[0]!, range: undefined, page: undefined }, internal)).entries;
    expect(latest).toMatchObject({ status: PresenceStatus.PRESENCE_STATUS_OFFLINE, cause: Cause.PRESENCE_CHANGE_CAUSE_GATEWAY_DOWN });

    // Nothing of the drop or of the dead gateway is left: no leases, no online entries, no work, no claim.
    expect(await dropLeftovers(gatewayId)).toEqual({ work: 0, outbox: [], claim: null });
    expect(await redis.keys(`sb:{${tenantId}}:presence:*${gatewayId}*`)).toEqual([]);
    expect(await redis.exists(`sb:sys:presence:gateway-tenants:${gatewayId}`)).toBe(0);
    expect(await redis.exists(...gone.map((u) => presenceKey('leases', u)))).toBe(0);
    expect((await redis.zmscore(presenceKey('online'), ...gone)).filter((score) => score !== null)).toEqual([]);
    await survivor.client.gatewayDown({ context: undefined, gatewayId: otherGateway, reason: 'test' }, system);
  }

  it('is finished by another replica when the one dropping it is killed between a batch’s claim and its publish', async () => {
    const gatewayId = `gw-${newId().slice(0, 8)}`;
    const users = await crowdOn(gatewayId);
    const doomed = await replicaBehindProxy();
    try {
      const dropping = doomed.client.gatewayDown({ context: undefined, gatewayId, reason: 'test' }, system).catch(() => undefined);
      await eventually(() => offlineHeard.size > 0, 20_000, 'the first batch announced');
      // From now on Redis applies what the replica sends, but the replica hears nothing back: the batches in flight
      // are claimed (in the outbox) and never published by it.
      doomed.proxy.freezeReplies();
      let previous = '';
      const stuck = await eventually(
        async () => {
          const now = await dropLeftovers(gatewayId);
          const same = JSON.stringify(now) === previous;
          previous = JSON.stringify(now);
          return same && now.outbox.length > 0 && now;
        },
        10_000,
        'the drop stuck with claimed, unpublished batches',
      );
      await doomed.service.kill();
      // Cut short for real: users left to drop, and the stuck batch's users not yet heard of.
      expect(stuck.work).toBeGreaterThan(0);
      const unpublished = stuck.outbox.flatMap((entry) => entry.slice(1).filter((_, i) => i % 4 === 0) as string[]);
      expect(unpublished.length).toBeGreaterThan(0);
      expect(unpublished.filter((u) => offlineHeard.has(u))).toEqual([]);
      await dropping;
      // The surviving replica's reaper takes the drop over once the dead replica's claim lapses.
      await expectDroppedOnce(gatewayId, users);
    } finally {
      doomed.client.close();
      await doomed.service.kill();
      doomed.proxy.close();
    }
  });

  it('is retried when the replica loses Redis part-way, and finished once Redis is back', async () => {
    const gatewayId = `gw-${newId().slice(0, 8)}`;
    const users = await crowdOn(gatewayId);
    const cutOff = await replicaBehindProxy();
    try {
      const dropping = cutOff.client.gatewayDown({ context: undefined, gatewayId, reason: 'test' }, system).catch((err: unknown) => err);
      const heardBefore = offlineHeard.size;
      await eventually(() => offlineHeard.size > heardBefore, 20_000, 'the first batch announced');
      // Redis unreachable from the replica: its calls in flight fail, its reconnects are refused.
      await cutOff.proxy.refuse();
      await new Promise((r) => setTimeout(r, 1500));
      expect((await dropLeftovers(gatewayId)).work).toBeGreaterThan(0);
      await cutOff.proxy.accept();
      await expectDroppedOnce(gatewayId, users);
      await dropping;
    } finally {
      cutOff.client.close();
      expect(await cutOff.service.stop()).toBe(0);
      cutOff.proxy.close();
    }
  });
});
