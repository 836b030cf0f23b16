// Presence against real Redis and NATS: the built service runs as its own
// process and is called over gRPC like the gateway calls it.
import { errorOf, eventually, infraEnv, launchWithClient, type ServiceProcess, natsSeedFile } from '@switchboard/devenv';
import { ErrorCode } from '@switchboard/errors';
import type { PromiseClient } from '@switchboard/grpc';
import { newId } from '@switchboard/ids';
import { connectNats, decodeEnvelope, subjects, type NatsConnection } from '@switchboard/nats';
import { eventsV1, presenceV1 } from '@switchboard/proto';

const { PresenceStatus } = eventsV1;
type Client = PromiseClient<presenceV1.PresenceServiceClient>;

async function startPresence(env: Record<string, string> = {}): Promise<{ service: ServiceProcess; client: Client }> {
  return launchWithClient('presence', presenceV1.PresenceServiceClient, env);
}



function device(deviceId: string): presenceV1.DeviceInfo {
  return { deviceId, platform: presenceV1.DevicePlatform.DEVICE_PLATFORM_WEB, label: 'Test browser', appVersion: '1.0.0', userAgent: 'jest' };
}

describe('presence service', () => {
  const tenantId = newId();
  const gatewayId = 'gw-test';
  let service: ServiceProcess;
  let client: Client;
  let nats: NatsConnection;
  const as = (userId: string, internal = false) => ({ context: { tenantId, userId, deviceId: '', internal } });
  const internal = { context: { tenantId, userId: '', deviceId: '', internal: true } };

  /** Every PresenceChanged published for a user from now on: on its own subject, or in the tenant's batches (a dropped gateway). */
  async function watch(userId: string): Promise<eventsV1.PresenceChanged[]> {
    const seen: eventsV1.PresenceChanged[] = [];
    const callback = (err: Error | null, msg: Parameters<typeof decodeEnvelope>[0]) => {
      if (err) return;
      const { envelope } = decodeEnvelope(msg);
      if (envelope.tenantId !== tenantId) return;
      if (envelope.event?.$case === 'presenceChanged') seen.push(envelope.event.value);
      if (envelope.event?.$case === 'presenceChangedBatch') seen.push(...envelope.event.value.changes.filter((c) => c.userId === userId));
    };
    nats.subscribe(subjects.presence(tenantId, userId), { callback });
    nats.subscribe(subjects.presenceBatch(tenantId), { callback });
    await nats.flush();
    return seen;
  }

  beforeAll(async () => {
    ({ service, client } = await startPresence());
    nats = await connectNats({ servers: infraEnv().NATS_URL!, nkeySeedFile: natsSeedFile(), name: 'presence-test' });
  });

  afterAll(async () => {
    client?.close();
    await nats?.close();
    expect(await service?.stop()).toBe(0);
  });

  it('merges devices: online while any device is connected, offline with last seen after the last one leaves', async () => {
    const alice = newId();
    const events = await watch(alice);

    const first = await client.connectDevice({ context: undefined, gatewayId, connectionId: 'c1', device: device('laptop') }, as(alice));
    expect(first.presence).toMatchObject({ userId: alice, status: PresenceStatus.PRESENCE_STATUS_AVAILABLE, deviceCount: 1 });
    expect(first.leaseTtlMs).toBeGreaterThan(0);
    expect(first.refreshIntervalMs).toBeLessThan(first.leaseTtlMs);
    const second = await client.connectDevice({ context: undefined, gatewayId, connectionId: 'c2', device: device('phone') }, as(alice));
    expect(second.presence).toMatchObject({ status: PresenceStatus.PRESENCE_STATUS_AVAILABLE, deviceCount: 2 });

    const seenByBob = await client.getPresence({ context: undefined, userIds: [alice], includeDevices: true }, as(newId()));
    expect(seenByBob.presences[0]).toMatchObject({ status: PresenceStatus.PRESENCE_STATUS_AVAILABLE, deviceCount: 2, devices: [] });
    const seenBySelf = await client.getPresence({ context: undefined, userIds: [alice], includeDevices: true }, as(alice));
    expect(seenBySelf.presences[0]!.devices.map((d) => d.device?.deviceId).sort()).toEqual(['laptop', 'phone']);

    const afterOne = await client.disconnectDevice({ context: undefined, gatewayId, connectionId: 'c1', deviceId: 'laptop', reason: 1 }, as(alice));
    expect(afterOne.status).toBe(PresenceStatus.PRESENCE_STATUS_AVAILABLE);
    const stillOnline = await client.getPresence({ context: undefined, userIds: [alice], includeDevices: false }, as(newId()));
    expect(stillOnline.presences[0]).toMatchObject({ status: PresenceStatus.PRESENCE_STATUS_AVAILABLE, deviceCount: 1 });

    const before = Date.now();
    const afterBoth = await client.disconnectDevice({ context: undefined, gatewayId, connectionId: 'c2', deviceId: 'phone', reason: 1 }, as(alice));
    expect(afterBoth.status).toBe(PresenceStatus.PRESENCE_STATUS_OFFLINE);
    const offline = (await client.getPresence({ context: undefined, userIds: [alice], includeDevices: false }, as(newId()))).presences[0]!;
    expect(offline).toMatchObject({ status: PresenceStatus.PRESENCE_STATUS_OFFLINE, deviceCount: 0 });
    expect(offline.lastSeen!.getTime()).toBeGreaterThanOrEqual(before - 1000);
    expect(offline.lastSeen!.getTime()).toBeLessThanOrEqual(Date.now() + 1000);

    // Exactly two changes: online, then offline (the second device and the first disconnect changed nothing watchers see).
    await eventually(() => (events.length >= 2 ? true : undefined));
    await new Promise((r) => setTimeout(r, 200));
    expect(events.map((e) => e.status)).toEqual([PresenceStatus.PRESENCE_STATUS_AVAILABLE, PresenceStatus.PRESENCE_STATUS_OFFLINE]);
    expect(events[1]!.lastSeen).toBeInstanceOf(Date);
    expect(events[1]!.userId).toBe(alice);
  });

  it('answers many users at once, in request order, unknown users offline without last seen', async () => {
    const online = newId();
    const unknown = newId();
    await client.connectDevice({ context: undefined, gatewayId, connectionId: 'c1', device: device('d1') }, as(online));
    const { presences } = await client.getPresence({ context: undefined, userIds: [unknown, online, unknown], includeDevices: false }, internal);
    expect(presences.map((p) => [p.userId, p.status])).toEqual([
      [unknown, PresenceStatus.PRESENCE_STATUS_OFFLINE],
      [online, PresenceStatus.PRESENCE_STATUS_AVAILABLE],
      [unknown, PresenceStatus.PRESENCE_STATUS_OFFLINE],
    ]);
    expect(presences[0]!.lastSeen).toBeUndefined();
  });

  it('keeps an explicit status over activity and announces it', async () => {
    const carol = newId();
    const events = await watch(carol);
    await client.connectDevice({ context: undefined, gatewayId, connectionId: 'c1', device: device('d1') }, as(carol));
    const set = await client.setStatus(
      { context: undefined, userId: '', status: PresenceStatus.PRESENCE_STATUS_BUSY, statusExpiresAt: undefined, customMessage: 'In surgery', customMessageExpiresAt: undefined },
      as(carol),
    );
    expect(set.presence).toMatchObject({ status: PresenceStatus.PRESENCE_STATUS_BUSY, manualStatus: PresenceStatus.PRESENCE_STATUS_BUSY, customMessage: 'In surgery' });
    const seen = (await client.getPresence({ context: undefined, userIds: [carol], includeDevices: false }, as(newId()))).presences[0]!;
    expect(seen).toMatchObject({ status: PresenceStatus.PRESENCE_STATUS_BUSY, customMessage: 'In surgery', manualStatus: PresenceStatus.PRESENCE_STATUS_UNSPECIFIED });
    await eventually(() => events.find((e) => e.status === PresenceStatus.PRESENCE_STATUS_BUSY));

    // Back to following activity.
    const cleared = await client.setStatus(
      { context: undefined, userId: '', status: PresenceStatus.PRESENCE_STATUS_UNSPECIFIED, statusExpiresAt: undefined, customMessage: '', customMessageExpiresAt: undefined },
      as(carol),
    );
    expect(cleared.presence).toMatchObject({ status: PresenceStatus.PRESENCE_STATUS_AVAILABLE, customMessage: '' });
    await eventually(() => (events.at(-1)?.status === PresenceStatus.PRESENCE_STATUS_AVAILABLE && events.length === 3 ? true : undefined));
  });

  it('shows a user who appears offline as offline to others only', async () => {
    const dave = newId();
    await client.connectDevice({ context: undefined, gatewayId, connectionId: 'c1', device: device('d1') }, as(dave));
    await client.setStatus(
      { context: undefined, userId: '', status: PresenceStatus.PRESENCE_STATUS_OFFLINE, statusExpiresAt: undefined, customMessage: '', customMessageExpiresAt: undefined },
      as(dave),
    );
    const toOthers = (await client.getPresence({ context: undefined, userIds: [dave], includeDevices: true }, as(newId()))).presences[0]!;
    expect(toOthers).toMatchObject({ status: PresenceStatus.PRESENCE_STATUS_OFFLINE, deviceCount: 0, devices: [] });
    const toSelf = (await client.getPresence({ context: undefined, userIds: [dave], includeDevices: false }, as(dave))).presences[0]!;
    expect(toSelf).toMatchObject({ status: PresenceStatus.PRESENCE_STATUS_AVAILABLE, manualStatus: PresenceStatus.PRESENCE_STATUS_OFFLINE, deviceCount: 1 });
  });

  it('lets only internal callers set another user’s status', async () => {
    const target = newId();
    const request = { context: undefined, userId: target, status: PresenceStatus.PRESENCE_STATUS_AWAY, statusExpiresAt: undefined, customMessage: '', customMessageExpiresAt: undefined };
    expect((await errorOf(client.setStatus(request, as(newId())))).code).toBe(ErrorCode.ERROR_CODE_PERMISSION_DENIED);
    const set = await client.setStatus(request, internal);
    expect(set.presence).toMatchObject({ userId: target, manualStatus: PresenceStatus.PRESENCE_STATUS_AWAY, status: PresenceStatus.PRESENCE_STATUS_OFFLINE });
    const past = { ...request, statusExpiresAt: new Date(Date.now() - 1000) };
    expect((await errorOf(client.setStatus(past, internal))).code).toBe(ErrorCode.ERROR_CODE_INVALID_ARGUMENT);
  });

  it('keeps tenants apart', async () => {
    const erin = newId();
    await client.connectDevice({ context: undefined, gatewayId, connectionId: 'c1', device: device('d1') }, as(erin));
    const otherTenant = { context: { tenantId: newId(), userId: newId(), deviceId: '', internal: false } };
    const seen = (await client.getPresence({ context: undefined, userIds: [erin], includeDevices: false }, otherTenant)).presences[0]!;
    expect(seen.status).toBe(PresenceStatus.PRESENCE_STATUS_OFFLINE);
    // A body naming another tenant than the metadata is refused.
    const mismatched = client.getPresence({ context: { tenantId: newId(), userId: '', deviceId: '', internal: false }, userIds: [erin], includeDevices: false }, as(erin));
    expect((await errorOf(mismatched)).code).toBe(ErrorCode.ERROR_CODE_PERMISSION_DENIED);
  });

  it('refuses unsafe ids, calls without a user, and gateway calls from users', async () => {
    const unsafe = client.connectDevice({ context: undefined, gatewayId, connectionId: 'c.1>', device: device('d1') }, as(newId()));
    expect((await errorOf(unsafe)).code).toBe(ErrorCode.ERROR_CODE_INVALID_ARGUMENT);
    const unsafeUser = client.getPresence({ context: undefined, userIds: ['a*'], includeDevices: false }, internal);
    expect((await errorOf(unsafeUser)).code).toBe(ErrorCode.ERROR_CODE_INVALID_ARGUMENT);
    const noUser = client.connectDevice({ context: undefined, gatewayId, connectionId: 'c1', device: device('d1') }, internal);
    expect((await errorOf(noUser)).code).toBe(ErrorCode.ERROR_CODE_PERMISSION_DENIED);
    const fromUser = client.refreshLeases({ context: undefined, gatewayId, tenants: [] }, as(newId()));
    expect((await errorOf(fromUser)).code).toBe(ErrorCode.ERROR_CODE_PERMISSION_DENIED);
    const downFromUser = client.gatewayDown({ context: undefined, gatewayId, reason: 'x' }, as(newId()));
    expect((await errorOf(downFromUser)).code).toBe(ErrorCode.ERROR_CODE_PERMISSION_DENIED);
  });

  it('drops many closed connections of several users in one DisconnectDevices call, and refuses a bad batch whole', async () => {
    const [ann, ben, cai] = [newId(), newId(), newId()];
    const events = await watch(ann);
    const gw = 'gw-batch';
    await client.connectDevice({ context: undefined, gatewayId: gw, connectionId: 'a1', device: device('ann-phone') }, as(ann));
    await client.connectDevice({ context: undefined, gatewayId: gw, connectionId: 'b1', device: device('ben-laptop') }, as(ben));
    await client.connectDevice({ context: undefined, gatewayId: gw, connectionId: 'b2', device: device('ben-phone') }, as(ben));
    await client.connectDevice({ context: undefined, gatewayId: gw, connectionId: 'c1', device: device('cai-desk') }, as(cai));
    const reason = presenceV1.DisconnectReason.DISCONNECT_REASON_CLIENT_CLOSED;
    const closed = (userId: string, connectionId: string, deviceId: string) => ({ userId, connectionId, deviceId, reason });

    // Users may not call it; one unsafe id refuses the whole batch and drops nothing.
    const fromUser = client.disconnectDevices({ context: undefined, gatewayId: gw, tenants: [{ tenantId, connections: [closed(ann, 'a1', 'ann-phone')] }] }, as(ann));
    expect((await errorOf(fromUser)).code).toBe(ErrorCode.ERROR_CODE_PERMISSION_DENIED);
    const unsafe = client.disconnectDevices({ context: undefined, gatewayId: gw, tenants: [{ tenantId, connections: [closed(ann, 'a1', 'ann-phone'), closed('b*', 'b1', 'ben-laptop')] }] }, internal);
    expect(await errorOf(unsafe)).toMatchObject({ code: ErrorCode.ERROR_CODE_INVALID_ARGUMENT, field: 'tenants.connections.user_id' });
    const untouched = (await client.getPresence({ context: undefined, userIds: [ann, ben, cai], includeDevices: false }, internal)).presences;
    expect(untouched.map((p) => p.deviceCount)).toEqual([1, 2, 1]);

    // Ann and cai lose their only connection, ben one of two.
    const answer = await client.disconnectDevices(
      { context: undefined, gatewayId: gw, tenants: [{ tenantId, connections: [closed(ann, 'a1', 'ann-phone'), closed(ben, 'b1', 'ben-laptop'), closed(cai, 'c1', 'cai-desk')] }] },
      internal,
    );
    expect(answer).toEqual({ connections: 3, usersOffline: 2 });
    const after = (await client.getPresence({ context: undefined, userIds: [ann, ben, cai], includeDevices: false }, internal)).presences;
    expect(after.map((p) => [p.status, p.deviceCount])).toEqual([
      [PresenceStatus.PRESENCE_STATUS_OFFLINE, 0],
      [PresenceStatus.PRESENCE_STATUS_AVAILABLE, 1],
      [PresenceStatus.PRESENCE_STATUS_OFFLINE, 0],
    ]);
    // Watchers hear ann go offline, as after DisconnectDevice.
    await eventually(() => events.at(-1)?.status === PresenceStatus.PRESENCE_STATUS_OFFLINE || undefined, 5000, 'ann announced offline');
    // The gateway's next full refresh finds nothing stale: only ben's second connection is still listed.
    const { unknown } = await client.refreshLeases({ context: undefined, gatewayId: gw, tenants: [{ tenantId, connectionIds: ['b2'], activeConnectionIds: [] }] }, internal);
    expect(unknown).toEqual([]);
  });

  it('renews a gateway without its connection list: nothing is reconciled away, and only gateways may call it', async () => {
    const dan = newId();
    const gw = 'gw-renew';
    await client.connectDevice({ context: undefined, gatewayId: gw, connectionId: 'd1', device: device('dan-desk') }, as(dan));
    const renewed = await client.renewGateway({ context: undefined, gatewayId: gw, tenants: [{ tenantId, activeConnectionIds: ['d1', 'not-ours'] }] }, internal);
    expect(renewed.leaseTtlMs).toBeGreaterThan(0);
    // Nothing was reconciled away: dan is still online.
    expect((await client.getPresence({ context: undefined, userIds: [dan], includeDevices: false }, internal)).presences[0]).toMatchObject({ status: PresenceStatus.PRESENCE_STATUS_AVAILABLE, deviceCount: 1 });
    const fromUser = client.renewGateway({ context: undefined, gatewayId: gw, tenants: [] }, as(dan));
    expect((await errorOf(fromUser)).code).toBe(ErrorCode.ERROR_CODE_PERMISSION_DENIED);
    const unsafe = client.renewGateway({ context: undefined, gatewayId: 'gw>', tenants: [] }, internal);
    expect((await errorOf(unsafe)).code).toBe(ErrorCode.ERROR_CODE_INVALID_ARGUMENT);
  });

  it('counts the connections of a gateway whose lease lapsed as gone', async () => {
    const shortLease = await startPresence({ LEASE_TTL_MS: '300' });
    try {
      const frank = newId();
      const events = await watch(frank);
      await shortLease.client.connectDevice({ context: undefined, gatewayId: 'gw-lapsing', connectionId: 'c1', device: device('d1') }, as(frank));
      const seen = await eventually(async () => {
        const p = (await shortLease.client.getPresence({ context: undefined, userIds: [frank], includeDevices: false }, internal)).presences[0]!;
        return p.status === PresenceStatus.PRESENCE_STATUS_OFFLINE ? p : undefined;
      });
      expect(seen).toMatchObject({ status: PresenceStatus.PRESENCE_STATUS_OFFLINE, deviceCount: 0 });
      expect(seen.lastSeen).toBeInstanceOf(Date);
      await eventually(() => events.at(-1)?.status === PresenceStatus.PRESENCE_STATUS_OFFLINE);
    } finally {
      shortLease.client.close();
      await shortLease.service.stop();
    }
  });

  it.each([
    ['Redis', { REDIS_URL: 'redis://127.0.0.1:1' }],
    ['NATS', { NATS_URL: 'nats://127.0.0.1:1' }],
  ])('exits non-zero when %s cannot be reached at start', async (dependency, env) => {
    const failed = await startPresence(env).then(
      () => undefined,
      (err: Error) => err,
    );
    expect(failed?.message).toMatch(/exited with 1/);
    expect(failed?.message).toContain(`cannot reach ${dependency}`);
  });
});
