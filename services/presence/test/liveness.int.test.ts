// Presence over time and at the gateway boundary, against real Redis and
// NATS with the built service as its own process: gateway leases, refresh
// reconciliation, heartbeats and the reaper, auto-away, expiries, history,
// watch-lists, typing, occupancy and the bad input the issue lists.
import { errorOf, eventually, infraEnv, launchWithClient, type ServiceProcess, natsSeedFile } from '@switchboard/devenv';
import { ErrorCode } from '@switchboard/errors';
import { tenantToMetadata, type PromiseClient } from '@switchboard/grpc';
import { newId } from '@switchboard/ids';
import { connectNats, decodeEnvelope, newEnvelope, publishEnvelope, subjects, SYSTEM_SUBJECTS, type NatsConnection } from '@switchboard/nats';
import { eventsV1, presenceV1 } from '@switchboard/proto';
import { createRedis } from '@switchboard/redis';

const { PresenceStatus } = eventsV1;
const Cause = presenceV1.PresenceChangeCause;
type Client = PromiseClient<presenceV1.PresenceServiceClient>;

function device(deviceId: string): presenceV1.DeviceInfo {
  return { deviceId, platform: presenceV1.DevicePlatform.DEVICE_PLATFORM_IOS, label: 'Phone', appVersion: '2.0', userAgent: 'jest' };
}

const status = (s: eventsV1.PresenceStatus, extra: Partial<presenceV1.SetStatusRequest> = {}): presenceV1.SetStatusRequest => ({
  context: undefined,
  userId: '',
  status: s,
  statusExpiresAt: undefined,
  customMessage: '',
  customMessageExpiresAt: undefined,
  ...extra,
});

describe('presence liveness and features', () => {
  const tenantId = newId();
  let service: ServiceProcess;
  let client: Client;
  let nats: NatsConnection;
  const as = (userId: string, deviceId = '') => ({ context: { tenantId, userId, deviceId, internal: false } });
  const internal = { context: { tenantId, userId: '', deviceId: '', internal: true } };
  const system = { context: { tenantId: 'sys', userId: '', deviceId: '', internal: true } };

  async function eventsOf(subject: string): Promise<eventsV1.Envelope[]> {
    const seen: eventsV1.Envelope[] = [];
    nats.subscribe(subject, {
      callback: (err, msg) => {
        if (!err) seen.push(decodeEnvelope(msg).envelope);
      },
    });
    await nats.flush();
    return seen;
  }

  /**
   * Every PresenceChanged of a user from now on, on its own subject or in
   * the tenant's batches, in the order they arrived (one connection
   * receives both in publish order; read it by calling the result).
   */
  async function changesOf(userId: string): Promise<() => eventsV1.PresenceChanged[]> {
    const seen: eventsV1.PresenceChanged[] = [];
    const callback = (err: Error | null, msg: Parameters<typeof decodeEnvelope>[0]) => {
      if (err) return;
      const event = decodeEnvelope(msg).envelope.event;
      if (event?.$case === 'presenceChanged') seen.push(event.value);
      if (event?.$case === 'presenceChangedBatch') seen.push(...event.value.changes.filter((c) => c.userId === userId));
    };
    nats.subscribe(subjects.presence(tenantId, userId), { callback });
    nats.subscribe(subjects.presenceBatch(tenantId), { callback });
    await nats.flush();
    return () => seen;
  }

  async function presenceOf(userId: string, caller = internal): Promise<presenceV1.UserPresence> {
    return (await client.getPresence({ context: undefined, userIds: [userId], includeDevices: true }, caller)).presences[0]!;
  }

  beforeAll(async () => {
    ({ service, client } = await launchWithClient('presence', presenceV1.PresenceServiceClient, {
      GATEWAY_HEARTBEAT_TIMEOUT_MS: '600',
      // Refresh interval (a third of it): 2 s.
      LEASE_TTL_MS: '6000',
      TYPING_TTL_MS: '700',
      TYPING_RATE_POINTS: '3',
      HISTORY_RETENTION_MS: String(3600_000),
    }));
    nats = await connectNats({ servers: infraEnv().NATS_URL!, nkeySeedFile: natsSeedFile(), name: 'presence-liveness-test' });
  });

  afterAll(async () => {
    client?.close();
    await nats?.close();
    expect(await service?.stop()).toBe(0);
  });

  it('takes every connection of a gateway offline once its heartbeats stop, and records why', async () => {
    const gatewayId = `gw-${newId().slice(0, 8)}`;
    const users = [newId(), newId(), newId()];
    const beat = () => publishEnvelope(nats, SYSTEM_SUBJECTS.gatewayHeartbeat, newEnvelope('sys', { $case: 'gatewayHeartbeat', value: { gatewayId, connections: 3, draining: false, intervalMs: 100 } }));
    beat();
    const beating = setInterval(beat, 100);
    try {
      for (const [i, userId] of users.entries()) await client.connectDevice({ context: undefined, gatewayId, connectionId: `c${i}`, device: device(`d${i}`) }, as(userId));
      // Beating gateway: its users stay online well past the heartbeat timeout.
      await new Promise((r) => setTimeout(r, 1200));
      for (const userId of users) expect((await presenceOf(userId)).status).toBe(PresenceStatus.PRESENCE_STATUS_AVAILABLE);
    } finally {
      clearInterval(beating);
    }
    const changes = await changesOf(users[0]!);
    for (const userId of users) await eventually(async () => (await presenceOf(userId)).status === PresenceStatus.PRESENCE_STATUS_OFFLINE);
    await eventually(() => changes().some((c) => c.status === PresenceStatus.PRESENCE_STATUS_OFFLINE));
    const history = await client.getPresenceHistory({ context: undefined, userId: users[0]!, range: undefined, page: undefined }, internal);
    expect(history.entries[0]).toMatchObject({ status: PresenceStatus.PRESENCE_STATUS_OFFLINE, cause: Cause.PRESENCE_CHANGE_CAUSE_GATEWAY_DOWN, endedAt: undefined });
    expect(history.entries[1]).toMatchObject({ status: PresenceStatus.PRESENCE_STATUS_AVAILABLE, cause: Cause.PRESENCE_CHANGE_CAUSE_CONNECTED });
    expect(history.entries[1]!.endedAt).toEqual(history.entries[0]!.startedAt);
  });

  it('drops a gateway whose link closed unless it attaches again: its beats no longer count, a gateway that attaches again stays', async () => {
    const dead = `gw-${newId().slice(0, 8)}`;
    const live = `gw-${newId().slice(0, 8)}`;
    const deadUser = newId();
    const liveUser = newId();
    const redis = createRedis(infraEnv().REDIS_URL!, 'presence-link-test');
    await redis.connect();
    const links: ReturnType<Client['raw']['attachGateway']>[] = [];
    const attach = (gatewayId: string) => {
      const call = client.raw.attachGateway({ context: undefined, gatewayId }, tenantToMetadata(system.context));
      call.on('error', () => undefined);
      links.push(call);
      return call;
    };
    const attached = (gatewayId: string) => eventually(async () => (await redis.hget('sb:sys:presence:gateway-links', gatewayId)) !== null, 10_000, `${gatewayId} attached`);
    // Both keep beating throughout, as beats still in flight from a process that just died would: only the links tell them apart.
    const beat = (gatewayId: string) => publishEnvelope(nats, SYSTEM_SUBJECTS.gatewayHeartbeat, newEnvelope('sys', { $case: 'gatewayHeartbeat', value: { gatewayId, connections: 1, draining: false, intervalMs: 100 } }));
    const beating = setInterval(() => {
      beat(dead);
      beat(live);
    }, 100);
    try {
      await client.connectDevice({ context: undefined, gatewayId: dead, connectionId: 'c1', device: device('d1') }, as(deadUser));
      await client.connectDevice({ context: undefined, gatewayId: live, connectionId: 'c1', device: device('d1') }, as(liveUser));
      const deadLink = attach(dead);
      const liveLink = attach(live);
      await attached(dead);
      await attached(live);
      // The kernel closes a dead process's connections; a live gateway whose connection broke attaches again at once.
      deadLink.cancel();
      liveLink.cancel();
      attach(live);
      await eventually(async () => (await presenceOf(deadUser)).status === PresenceStatus.PRESENCE_STATUS_OFFLINE, 10_000, 'the unlinked gateway’s user offline');
      const history = await client.getPresenceHistory({ context: undefined, userId: deadUser, range: undefined, page: undefined }, internal);
      expect(history.entries[0]).toMatchObject({ status: PresenceStatus.PRESENCE_STATUS_OFFLINE, cause: Cause.PRESENCE_CHANGE_CAUSE_GATEWAY_DOWN });
      // Well past the grace and the heartbeat timeout: the gateway that attached again was never dropped.
      await new Promise((r) => setTimeout(r, 1500));
      expect(await presenceOf(liveUser)).toMatchObject({ status: PresenceStatus.PRESENCE_STATUS_AVAILABLE, deviceCount: 1 });
    } finally {
      clearInterval(beating);
      for (const call of links) call.cancel();
      await client.gatewayDown({ context: undefined, gatewayId: live, reason: 'test' }, system);
      await redis.quit();
    }
  });

  it('drops a gateway whose link closed with the connections it registered during the grace too', async () => {
    const gatewayId = `gw-${newId().slice(0, 8)}`;
    const [early, late] = [newId(), newId()];
    await client.connectDevice({ context: undefined, gatewayId, connectionId: 'c1', device: device('d1') }, as(early));
    const redis = createRedis(infraEnv().REDIS_URL!, 'presence-grace-test');
    await redis.connect();
    try {
      const link = client.raw.attachGateway({ context: undefined, gatewayId }, tenantToMetadata(system.context));
      link.on('error', () => undefined);
      await eventually(async () => (await redis.hget('sb:sys:presence:gateway-links', gatewayId)) !== null, 10_000, 'attached');
      link.cancel();
      // Presence reads the gateway's connections as the grace starts; this one comes after that read (or before: either way it goes).
      await eventually(async () => (await redis.hget('sb:sys:presence:gateway-links', gatewayId)) === 'lost', 10_000, 'link lost');
      await client.connectDevice({ context: undefined, gatewayId, connectionId: 'c2', device: device('d1') }, as(late));
      for (const userId of [early, late]) await eventually(async () => (await presenceOf(userId)).status === PresenceStatus.PRESENCE_STATUS_OFFLINE, 10_000, 'offline');
      await eventually(async () => (await redis.zscore('sb:sys:presence:gateway-drops', gatewayId)) === null, 10_000, 'drop finished');
      expect(await redis.keys(`sb:{${tenantId}}:presence:*${gatewayId}*`)).toEqual([]);
    } finally {
      await redis.quit();
    }
  });

  it('ends its gateways’ links when it stops, and that drops nobody: the gateway attaches to another replica', async () => {
    const gatewayId = `gw-${newId().slice(0, 8)}`;
    const userId = newId();
    const beat = () => publishEnvelope(nats, SYSTEM_SUBJECTS.gatewayHeartbeat, newEnvelope('sys', { $case: 'gatewayHeartbeat', value: { gatewayId, connections: 1, draining: false, intervalMs: 100 } }));
    const beating = setInterval(beat, 100);
    const other = await launchWithClient('presence', presenceV1.PresenceServiceClient, { GATEWAY_HEARTBEAT_TIMEOUT_MS: '600', LEASE_TTL_MS: '6000' });
    let relinked: ReturnType<Client['raw']['attachGateway']> | undefined;
    try {
      await client.connectDevice({ context: undefined, gatewayId, connectionId: 'c1', device: device('d1') }, as(userId));
      const link = other.client.raw.attachGateway({ context: undefined, gatewayId }, tenantToMetadata(system.context));
      link.on('error', () => undefined);
      const ended = new Promise<{ code: number }>((resolve) => link.on('status', resolve));
      await new Promise((r) => setTimeout(r, 300));
      // SIGTERM: the replica ends the link itself (status OK) and exits cleanly; the gateway links to the remaining replica.
      expect(await other.service.stop()).toBe(0);
      expect((await ended).code).toBe(0);
      relinked = client.raw.attachGateway({ context: undefined, gatewayId }, tenantToMetadata(system.context));
      relinked.on('error', () => undefined);
      await new Promise((r) => setTimeout(r, 1500));
      expect(await presenceOf(userId)).toMatchObject({ status: PresenceStatus.PRESENCE_STATUS_AVAILABLE, deviceCount: 1 });
    } finally {
      clearInterval(beating);
      relinked?.cancel();
      other.client.close();
      await other.service.stop();
      await client.gatewayDown({ context: undefined, gatewayId, reason: 'test' }, system);
    }
  });

  it('refuses a gateway link from a caller that is not internal, and one without a gateway id', async () => {
    const refused = (context: presenceV1.AttachGatewayRequest['context'], gatewayId: string, metadata = tenantToMetadata(as(newId()).context)) =>
      new Promise<{ code: number; details: string }>((resolve) => {
        const call = client.raw.attachGateway({ context, gatewayId }, metadata);
        call.on('error', () => undefined);
        call.on('status', resolve);
      });
    expect(await refused(undefined, 'gw-1')).toMatchObject({ code: 7, details: expect.stringContaining('AttachGateway') });
    expect(await refused(undefined, 'gw:1', tenantToMetadata(system.context))).toMatchObject({ code: 3, details: expect.stringContaining('gateway_id') });
  });

  it('reconciles a refresh: lost connections are asked for again, connections the gateway no longer has are dropped', async () => {
    const gatewayId = `gw-${newId().slice(0, 8)}`;
    const kept = newId();
    const forgotten = newId();
    await client.connectDevice({ context: undefined, gatewayId, connectionId: 'kept', device: device('d1') }, as(kept));
    await client.connectDevice({ context: undefined, gatewayId, connectionId: 'forgotten', device: device('d1') }, as(forgotten));
    const refresh = () =>
      client.refreshLeases({ context: undefined, gatewayId, tenants: [{ tenantId, connectionIds: ['kept', 'never-registered'], activeConnectionIds: [] }] }, system);
    const first = await refresh();
    expect(first.unknown).toEqual([{ tenantId, connectionIds: ['never-registered'] }]);
    expect((await presenceOf(kept)).status).toBe(PresenceStatus.PRESENCE_STATUS_AVAILABLE);
    // The other connection is younger than a refresh interval: kept for now (it may have been registered after the list was taken).
    expect((await presenceOf(forgotten)).status).toBe(PresenceStatus.PRESENCE_STATUS_AVAILABLE);
    await new Promise((r) => setTimeout(r, 2100));
    await refresh();
    expect((await presenceOf(forgotten)).status).toBe(PresenceStatus.PRESENCE_STATUS_OFFLINE);
    expect((await presenceOf(kept)).status).toBe(PresenceStatus.PRESENCE_STATUS_AVAILABLE);
    const history = await client.getPresenceHistory({ context: undefined, userId: forgotten, range: undefined, page: undefined }, internal);
    expect(history.entries[0]!.cause).toBe(Cause.PRESENCE_CHANGE_CAUSE_LEASE_EXPIRED);
    await client.gatewayDown({ context: undefined, gatewayId, reason: 'test' }, system);
  });

  it('drops a gateway at once on GatewayDown and reports what it dropped', async () => {
    const gatewayId = `gw-${newId().slice(0, 8)}`;
    const alice = newId();
    const bob = newId();
    await client.connectDevice({ context: undefined, gatewayId, connectionId: 'a1', device: device('phone') }, as(alice));
    await client.connectDevice({ context: undefined, gatewayId, connectionId: 'a2', device: device('laptop') }, as(alice));
    await client.connectDevice({ context: undefined, gatewayId, connectionId: 'b1', device: device('phone') }, as(bob));
    await client.connectDevice({ context: undefined, gatewayId: 'gw-other', connectionId: 'b2', device: device('laptop') }, as(bob));
    const before = Date.now();
    const result = await client.gatewayDown({ context: undefined, gatewayId, reason: 'test' }, system);
    const after = Date.now();
    expect(result).toEqual({ connections: 3, usersOffline: 1 });
    const aliceNow = await presenceOf(alice);
    expect(aliceNow.status).toBe(PresenceStatus.PRESENCE_STATUS_OFFLINE);
    const bobNow = await presenceOf(bob);
    expect(bobNow).toMatchObject({ status: PresenceStatus.PRESENCE_STATUS_AVAILABLE, deviceCount: 1 });
    const devicesOf = async (userId: string) =>
      Object.fromEntries(
        (await client.listDevices({ context: undefined, userId, includeDisconnected: true }, internal)).devices.map((d) => [d.device!.deviceId, { status: d.status, disconnectedAt: d.disconnectedAt?.getTime() }]),
      );
    // Each crashed device shows when it went: the moment of the drop, alice's last seen.
    const lastSeen = aliceNow.lastSeen!.getTime();
    expect(lastSeen).toBeGreaterThanOrEqual(before);
    expect(lastSeen).toBeLessThanOrEqual(after);
    expect(await devicesOf(alice)).toEqual({
      phone: { status: PresenceStatus.PRESENCE_STATUS_OFFLINE, disconnectedAt: lastSeen },
      laptop: { status: PresenceStatus.PRESENCE_STATUS_OFFLINE, disconnectedAt: lastSeen },
    });
    // Bob's phone went with the gateway while his laptop stays connected.
    const bobDevices = await devicesOf(bob);
    expect(bobDevices.laptop).toEqual({ status: PresenceStatus.PRESENCE_STATUS_AVAILABLE, disconnectedAt: undefined });
    expect(bobDevices.phone!.status).toBe(PresenceStatus.PRESENCE_STATUS_OFFLINE);
    expect(bobDevices.phone!.disconnectedAt).toBeGreaterThanOrEqual(before);
    expect(bobDevices.phone!.disconnectedAt).toBeLessThanOrEqual(after);
    // A device that connects again has no disconnect time; the other keeps its own.
    await client.connectDevice({ context: undefined, gatewayId: 'gw-other', connectionId: 'a3', device: device('phone') }, as(alice));
    expect(await devicesOf(alice)).toEqual({
      phone: { status: PresenceStatus.PRESENCE_STATUS_AVAILABLE, disconnectedAt: undefined },
      laptop: { status: PresenceStatus.PRESENCE_STATUS_OFFLINE, disconnectedAt: lastSeen },
    });
    await client.gatewayDown({ context: undefined, gatewayId: 'gw-other', reason: 'test' }, system);
  });

  it('keeps a device online that reconnects through another gateway while its crashed gateway is being dropped', async () => {
    const gatewayId = `gw-${newId().slice(0, 8)}`;
    // Enough users for several drop batches, so the reconnect can land between them.
    const crowd = Array.from({ length: 1200 }, () => newId());
    const nurse = newId();
    for (let i = 0; i < crowd.length; i += 100) {
      await Promise.all(crowd.slice(i, i + 100).map((userId, j) => client.connectDevice({ context: undefined, gatewayId, connectionId: `c${i + j}`, device: device('d1') }, as(userId))));
    }
    await client.connectDevice({ context: undefined, gatewayId, connectionId: 'nurse-old', device: device('tablet') }, as(nurse));
    const nurseChanges = await changesOf(nurse);
    const tenantChanges = await eventsOf(`sb.${tenantId}.presence.>`);

    const dropping = client.gatewayDown({ context: undefined, gatewayId, reason: 'test' }, system);
    // The drop is under way once its first users are announced offline; the tablet reconnects then.
    await eventually(() => tenantChanges.some((e) => e.event?.$case === 'presenceChangedBatch' && e.event.value.changes.some((c) => c.status === PresenceStatus.PRESENCE_STATUS_OFFLINE)));
    await client.connectDevice({ context: undefined, gatewayId: 'gw-reconnect', connectionId: 'nurse-new', device: device('tablet') }, as(nurse));
    expect(await dropping).toMatchObject({ connections: crowd.length + 1 });

    // Whichever ran first in Redis, the reconnect's later version wins: online, the history ends online, and
    // watchers heard every recorded change in order — none when the reconnect came first (never offline), else OFFLINE then AVAILABLE.
    expect(await presenceOf(nurse)).toMatchObject({ status: PresenceStatus.PRESENCE_STATUS_AVAILABLE, deviceCount: 1 });
    const history = (await client.getPresenceHistory({ context: undefined, userId: nurse, range: undefined, page: undefined }, internal)).entries;
    expect(history[0]!.status).toBe(PresenceStatus.PRESENCE_STATUS_AVAILABLE);
    const announcedDuringTheRace = history.length - 1;
    await eventually(() => nurseChanges().length === announcedDuringTheRace);
    expect(nurseChanges().map((c) => c.status)).toEqual(announcedDuringTheRace === 0 ? [] : [PresenceStatus.PRESENCE_STATUS_OFFLINE, PresenceStatus.PRESENCE_STATUS_AVAILABLE]);
    const devices = await client.listDevices({ context: undefined, userId: nurse, includeDisconnected: true }, internal);
    expect(devices.devices.map((d) => [d.device?.deviceId, d.status, d.connectionCount, d.disconnectedAt])).toEqual([['tablet', PresenceStatus.PRESENCE_STATUS_AVAILABLE, 1, undefined]]);
    const online = await client.listOnlineUsers({ context: undefined, conversationId: '', page: { pageSize: 500, pageToken: '' } }, internal);
    expect(online.users.map((u) => u.userId)).toContain(nurse);
    expect(online.users.map((u) => u.userId)).not.toContain(crowd[0]);
    await client.gatewayDown({ context: undefined, gatewayId: 'gw-reconnect', reason: 'test' }, system);
  });

  it('announces a dropped gateway’s users as GetPresence shows them: custom message, appear-offline, hidden last seen; a user still connected elsewhere stays online', async () => {
    const gatewayId = `gw-${newId().slice(0, 8)}`;
    const [surgeon, hidden, private_, twoDevices] = [newId(), newId(), newId(), newId()];
    const watcher = newId();
    for (const [i, userId] of [surgeon, hidden, private_, twoDevices].entries()) await client.connectDevice({ context: undefined, gatewayId, connectionId: `c${i}`, device: device('phone') }, as(userId));
    await client.connectDevice({ context: undefined, gatewayId: 'gw-live', connectionId: 'c-live', device: device('laptop') }, as(twoDevices));
    await client.setStatus(status(PresenceStatus.PRESENCE_STATUS_BUSY, { customMessage: 'In surgery' }), as(surgeon));
    await client.setStatus(status(PresenceStatus.PRESENCE_STATUS_OFFLINE), as(hidden));
    const frozen = (await presenceOf(hidden, as(watcher))).lastSeen;
    await client.updatePresenceSettings({ context: undefined, userId: '', settings: { autoAwayAfterMs: 0, hideLastSeen: true } }, as(private_));
    const changes = Object.fromEntries(await Promise.all([surgeon, hidden, private_, twoDevices].map(async (u) => [u, await changesOf(u)] as const)));

    expect(await client.gatewayDown({ context: undefined, gatewayId, reason: 'test' }, system)).toEqual({ connections: 4, usersOffline: 3 });
    await eventually(() => changes[surgeon]!().length > 0 && changes[private_]!().length > 0);
    // What watchers were told is what they read afterwards.
    for (const userId of [surgeon, private_]) {
      const [told] = changes[userId]!();
      const read = await presenceOf(userId, as(watcher));
      expect(told).toMatchObject({ status: PresenceStatus.PRESENCE_STATUS_OFFLINE, deviceCount: 0, customMessage: read.customMessage, lastSeen: read.lastSeen });
      expect(read.status).toBe(PresenceStatus.PRESENCE_STATUS_OFFLINE);
    }
    // A custom message outlives the devices; hidden last seen stays hidden.
    expect(changes[surgeon]!()[0]).toMatchObject({ customMessage: 'In surgery', lastSeen: expect.any(Date) });
    expect(changes[private_]!()[0]!.lastSeen).toBeUndefined();
    // Appearing offline already: nothing new to announce, last seen stays frozen.
    expect(changes[hidden]!()).toEqual([]);
    expect(await presenceOf(hidden, as(watcher))).toMatchObject({ status: PresenceStatus.PRESENCE_STATUS_OFFLINE, lastSeen: frozen });
    // Still connected through another gateway: online, nothing announced.
    expect(await presenceOf(twoDevices, as(watcher))).toMatchObject({ status: PresenceStatus.PRESENCE_STATUS_AVAILABLE, deviceCount: 1 });
    expect(changes[twoDevices]!()).toEqual([]);
    const history = await client.getPresenceHistory({ context: undefined, userId: surgeon, range: undefined, page: undefined }, internal);
    expect(history.entries[0]).toMatchObject({ status: PresenceStatus.PRESENCE_STATUS_OFFLINE, customMessage: 'In surgery', cause: Cause.PRESENCE_CHANGE_CAUSE_GATEWAY_DOWN });
    const online = await client.listOnlineUsers({ context: undefined, conversationId: '', page: { pageSize: 500, pageToken: '' } }, internal);
    expect(online.users.map((u) => u.userId)).toContain(twoDevices);
    expect(online.users.map((u) => u.userId)).not.toContain(surgeon);
    await client.gatewayDown({ context: undefined, gatewayId: 'gw-live', reason: 'test' }, system);
  });

  it('goes away after the inactivity delay, comes back on activity, and lets an explicit status win over both', async () => {
    const gatewayId = `gw-${newId().slice(0, 8)}`;
    const carol = newId();
    const changes = await changesOf(carol);
    await client.updatePresenceSettings({ context: undefined, userId: '', settings: { autoAwayAfterMs: 1000, hideLastSeen: false } }, as(carol));
    expect((await client.getPresenceSettings({ context: undefined, userId: '' }, as(carol))).settings).toEqual({ autoAwayAfterMs: 1000, hideLastSeen: false });
    await client.connectDevice({ context: undefined, gatewayId, connectionId: 'c1', device: device('d1') }, as(carol));
    await eventually(() => changes().at(-1)?.status === PresenceStatus.PRESENCE_STATUS_AWAY);
    expect((await presenceOf(carol)).devices[0]!.status).toBe(PresenceStatus.PRESENCE_STATUS_AWAY);

    await client.refreshLeases({ context: undefined, gatewayId, tenants: [{ tenantId, connectionIds: ['c1'], activeConnectionIds: ['c1'] }] }, system);
    await eventually(() => changes().at(-1)?.status === PresenceStatus.PRESENCE_STATUS_AVAILABLE);

    // Explicit BUSY stays BUSY however idle the devices are.
    await client.setStatus(status(PresenceStatus.PRESENCE_STATUS_BUSY), as(carol));
    await new Promise((r) => setTimeout(r, 1500));
    expect((await presenceOf(carol)).status).toBe(PresenceStatus.PRESENCE_STATUS_BUSY);
    const history = await client.getPresenceHistory({ context: undefined, userId: '', range: undefined, page: undefined }, as(carol));
    expect(history.entries.map((e) => [e.status, e.cause])).toEqual([
      [PresenceStatus.PRESENCE_STATUS_BUSY, Cause.PRESENCE_CHANGE_CAUSE_MANUAL],
      [PresenceStatus.PRESENCE_STATUS_AVAILABLE, Cause.PRESENCE_CHANGE_CAUSE_ACTIVITY],
      [PresenceStatus.PRESENCE_STATUS_AWAY, Cause.PRESENCE_CHANGE_CAUSE_AUTO_AWAY],
      [PresenceStatus.PRESENCE_STATUS_AVAILABLE, Cause.PRESENCE_CHANGE_CAUSE_CONNECTED],
      // Changing the settings while offline is recorded too.
      [PresenceStatus.PRESENCE_STATUS_OFFLINE, Cause.PRESENCE_CHANGE_CAUSE_MANUAL],
    ]);
    // Other users may not read it.
    expect((await errorOf(client.getPresenceHistory({ context: undefined, userId: carol, range: undefined, page: undefined }, as(newId())))).code).toBe(
      ErrorCode.ERROR_CODE_PERMISSION_DENIED,
    );
    await client.gatewayDown({ context: undefined, gatewayId, reason: 'test' }, system);
  });

  it('reverts an expiring status and clears an expiring custom message by itself', async () => {
    const gatewayId = `gw-${newId().slice(0, 8)}`;
    const dave = newId();
    const changes = await changesOf(dave);
    await client.connectDevice({ context: undefined, gatewayId, connectionId: 'c1', device: device('d1') }, as(dave));
    const soon = new Date(Date.now() + 800);
    await client.setStatus(status(PresenceStatus.PRESENCE_STATUS_BUSY, { statusExpiresAt: soon, customMessage: 'On a call', customMessageExpiresAt: soon }), as(dave));
    await eventually(() => changes().some((c) => c.status === PresenceStatus.PRESENCE_STATUS_BUSY && c.customMessage === 'On a call'));
    await eventually(() => changes().at(-1)?.status === PresenceStatus.PRESENCE_STATUS_AVAILABLE && changes().at(-1)?.customMessage === '');
    const history = await client.getPresenceHistory({ context: undefined, userId: dave, range: undefined, page: undefined }, internal);
    expect(history.entries[0]!.cause).toBe(Cause.PRESENCE_CHANGE_CAUSE_EXPIRED);
    await client.gatewayDown({ context: undefined, gatewayId, reason: 'test' }, system);
  });

  it('hides last seen from others when asked, not from the user', async () => {
    const erin = newId();
    await client.connectDevice({ context: undefined, gatewayId: 'gw-x', connectionId: 'e1', device: device('d1') }, as(erin));
    await client.disconnectDevice({ context: undefined, gatewayId: 'gw-x', connectionId: 'e1', deviceId: 'd1', reason: 1 }, as(erin));
    await client.updatePresenceSettings({ context: undefined, userId: '', settings: { autoAwayAfterMs: 0, hideLastSeen: true } }, as(erin));
    expect((await presenceOf(erin, as(newId()))).lastSeen).toBeUndefined();
    expect((await presenceOf(erin, as(erin))).lastSeen).toBeInstanceOf(Date);
  });

  it('keeps a capped watch-list and announces it to the watcher’s gateways', async () => {
    const watcher = newId();
    const userEvents = await eventsOf(subjects.user(tenantId, watcher));
    const [a, b] = [newId(), newId()];
    await client.connectDevice({ context: undefined, gatewayId: 'gw-w', connectionId: 'w1', device: device('d1') }, as(a));
    const watched = await client.watch({ context: undefined, userIds: [a, b, a] }, as(watcher));
    expect(watched.watchedCount).toBe(2);
    expect(watched.presences.map((p) => [p.userId, p.status])).toEqual([
      [a, PresenceStatus.PRESENCE_STATUS_AVAILABLE],
      [b, PresenceStatus.PRESENCE_STATUS_OFFLINE],
    ]);
    await eventually(() => userEvents.some((e) => e.event?.$case === 'presenceWatchChanged' && e.event.value.watching));
    const listed = await client.listWatched({ context: undefined, page: undefined, includePresence: true }, as(watcher));
    expect(listed.users.map((u) => u.userId).sort()).toEqual([a, b].sort());
    expect(listed.users.find((u) => u.userId === a)!.presence!.status).toBe(PresenceStatus.PRESENCE_STATUS_AVAILABLE);
    expect((await client.unwatch({ context: undefined, userIds: [b] }, as(watcher))).watchedCount).toBe(1);

    const tooMany = Array.from({ length: 500 }, () => newId());
    const over = await errorOf(client.watch({ context: undefined, userIds: tooMany }, as(watcher)));
    expect(over.code).toBe(ErrorCode.ERROR_CODE_QUOTA_EXCEEDED);
    // Nothing was added.
    expect((await client.listWatched({ context: undefined, page: undefined, includePresence: false }, as(watcher))).users.map((u) => u.userId)).toEqual([a]);
    await client.gatewayDown({ context: undefined, gatewayId: 'gw-w', reason: 'test' }, system);
  });

  it('publishes typing with an expiry, answers who types, and rate limits starts', async () => {
    const conversationId = newId();
    const [typist, reader] = [newId(), newId()];
    const conv = await eventsOf(subjects.conversation(tenantId, conversationId));
    const started = await client.setTyping({ context: undefined, conversationId, typing: true }, as(typist, 'phone'));
    expect(started.expiresAt!.getTime()).toBeGreaterThan(Date.now());
    const typists = await client.getTyping({ context: undefined, conversationId }, as(reader));
    expect(typists.typists).toEqual([expect.objectContaining({ userId: typist, deviceId: 'phone' })]);
    // The typist does not see themself.
    expect((await client.getTyping({ context: undefined, conversationId }, as(typist))).typists).toEqual([]);
    await eventually(() => conv.find((e) => e.event?.$case === 'typingChanged' && e.event.value.typing));
    const typing = conv.find((e) => e.event?.$case === 'typingChanged')!.event!.value as eventsV1.TypingChanged;
    expect(typing).toMatchObject({ conversationId, userId: typist, deviceId: 'phone', typing: true });
    // It lapses by itself: nothing is left after the TTL.
    await eventually(async () => (await client.getTyping({ context: undefined, conversationId }, as(reader))).typists.length === 0);

    await client.setTyping({ context: undefined, conversationId, typing: true }, as(typist, 'phone'));
    await client.setTyping({ context: undefined, conversationId, typing: true }, as(typist, 'phone'));
    const limited = await errorOf(client.setTyping({ context: undefined, conversationId, typing: true }, as(typist, 'phone')));
    expect(limited.code).toBe(ErrorCode.ERROR_CODE_RATE_LIMITED);
    expect(limited.retryAfterMs).toBeGreaterThan(0);
    // Stopping is never limited.
    expect((await client.setTyping({ context: undefined, conversationId, typing: false }, as(typist, 'phone'))).expiresAt).toBeUndefined();
  });

  it('counts occupancy per conversation, publishes it, and lists online users of a room and a tenant', async () => {
    const gatewayId = `gw-${newId().slice(0, 8)}`;
    const room = newId();
    const conv = await eventsOf(subjects.conversation(tenantId, room));
    const [u1, u2] = [newId(), newId()];
    await client.connectDevice({ context: undefined, gatewayId, connectionId: 'o1', device: device('d1') }, as(u1));
    await client.connectDevice({ context: undefined, gatewayId, connectionId: 'o2', device: device('d2') }, as(u1));
    await client.connectDevice({ context: undefined, gatewayId, connectionId: 'o3', device: device('d1') }, as(u2));
    for (const [conn, user] of [['o1', u1], ['o2', u1], ['o3', u2]] as const) {
      await client.enterConversation({ context: undefined, gatewayId, connectionId: conn, conversationId: room }, as(user));
    }
    const { occupancies } = await client.getOccupancy({ context: undefined, conversationIds: [room, newId()], includeUserIds: true }, internal);
    expect(occupancies[0]).toEqual({ conversationId: room, onlineCount: 2, connectionCount: 3, userIds: [u1, u2].sort() });
    expect(occupancies[1]).toMatchObject({ onlineCount: 0, connectionCount: 0 });
    await eventually(() => conv.some((e) => e.event?.$case === 'occupancyChanged' && e.event.value.connectionCount === 3));
    const inRoom = await client.listOnlineUsers({ context: undefined, conversationId: room, page: undefined }, internal);
    expect(inRoom.users.map((u) => u.userId).sort()).toEqual([u1, u2].sort());
    const inTenant = await client.listOnlineUsers({ context: undefined, conversationId: '', page: { pageSize: 500, pageToken: '' } }, internal);
    expect(inTenant.users.map((u) => u.userId)).toEqual(expect.arrayContaining([u1, u2]));

    // The gateway dies: its connections leave the room too.
    await client.gatewayDown({ context: undefined, gatewayId, reason: 'test' }, system);
    const after = await client.getOccupancy({ context: undefined, conversationIds: [room], includeUserIds: false }, internal);
    expect(after.occupancies[0]).toMatchObject({ onlineCount: 0, connectionCount: 0 });
    const stillListed = await client.listOnlineUsers({ context: undefined, conversationId: '', page: { pageSize: 500, pageToken: '' } }, internal);
    expect(stillListed.users.map((u) => u.userId)).not.toContain(u1);
  });

  it('leaves users who appear offline out of occupancy counts and lists, for everyone but internal callers', async () => {
    const gatewayId = `gw-${newId().slice(0, 8)}`;
    const room = newId();
    const conv = await eventsOf(subjects.conversation(tenantId, room));
    const counts = () => conv.flatMap((e) => (e.event?.$case === 'occupancyChanged' ? [[e.event.value.onlineCount, e.event.value.connectionCount]] : []));
    const [seen, hiding] = [newId(), newId()];
    await client.connectDevice({ context: undefined, gatewayId, connectionId: 'v1', device: device('d1') }, as(seen));
    await client.connectDevice({ context: undefined, gatewayId, connectionId: 'h1', device: device('d1') }, as(hiding));
    await client.connectDevice({ context: undefined, gatewayId, connectionId: 'h2', device: device('d2') }, as(hiding));
    await client.enterConversation({ context: undefined, gatewayId, connectionId: 'v1', conversationId: room }, as(seen));
    await client.enterConversation({ context: undefined, gatewayId, connectionId: 'h1', conversationId: room }, as(hiding));
    const occupancyFor = async (caller: ReturnType<typeof as>) => (await client.getOccupancy({ context: undefined, conversationIds: [room], includeUserIds: true }, caller)).occupancies[0];
    expect(await occupancyFor(as(seen))).toEqual({ conversationId: room, onlineCount: 2, connectionCount: 2, userIds: [seen, hiding].sort() });

    // Appearing offline: the room's count drops for everyone at once, and the user is not listed.
    await client.setStatus(status(PresenceStatus.PRESENCE_STATUS_OFFLINE), as(hiding));
    await eventually(() => JSON.stringify(counts().at(-1)) === JSON.stringify([1, 1]), 5000, 'the lowered count is published');
    expect(await occupancyFor(as(seen))).toEqual({ conversationId: room, onlineCount: 1, connectionCount: 1, userIds: [seen] });
    const listed = await client.listOnlineUsers({ context: undefined, conversationId: room, page: undefined }, as(seen));
    expect(listed.users.map((u) => u.userId)).toEqual([seen]);
    // Internal callers see the truth.
    expect(await occupancyFor(internal)).toEqual({ conversationId: room, onlineCount: 2, connectionCount: 2, userIds: [seen, hiding].sort() });
    // Entering while appearing offline is not counted either.
    const entered = await client.enterConversation({ context: undefined, gatewayId, connectionId: 'h2', conversationId: room }, as(hiding));
    expect(entered.occupancy).toMatchObject({ onlineCount: 1, connectionCount: 1 });

    // Visible again: counted with both of its connections.
    await client.setStatus(status(PresenceStatus.PRESENCE_STATUS_AVAILABLE), as(hiding));
    await eventually(() => JSON.stringify(counts().at(-1)) === JSON.stringify([2, 3]), 5000, 'the raised count is published');
    expect(await occupancyFor(as(seen))).toMatchObject({ onlineCount: 2, connectionCount: 3 });

    // Hidden again, then its gateway dies: the counts end at zero, never below.
    await client.setStatus(status(PresenceStatus.PRESENCE_STATUS_OFFLINE), as(hiding));
    await client.gatewayDown({ context: undefined, gatewayId, reason: 'test' }, system);
    expect(await occupancyFor(as(seen))).toEqual({ conversationId: room, onlineCount: 0, connectionCount: 0, userIds: [] });
    expect(await occupancyFor(internal)).toEqual({ conversationId: room, onlineCount: 0, connectionCount: 0, userIds: [] });
    await client.setStatus(status(PresenceStatus.PRESENCE_STATUS_AVAILABLE), as(hiding));
    expect(await occupancyFor(as(seen))).toMatchObject({ onlineCount: 0, connectionCount: 0 });
  });

  describe('bad input: a specific error and nothing changed', () => {
    const frank = newId();
    beforeAll(async () => {
      await client.connectDevice({ context: undefined, gatewayId: 'gw-bad', connectionId: 'f1', device: device('d1') }, as(frank));
      await client.setStatus(status(PresenceStatus.PRESENCE_STATUS_BUSY, { customMessage: 'Ward round' }), as(frank));
    });
    afterAll(() => client.gatewayDown({ context: undefined, gatewayId: 'gw-bad', reason: 'test' }, system));

    async function unchanged(): Promise<void> {
      expect(await presenceOf(frank, as(frank))).toMatchObject({ status: PresenceStatus.PRESENCE_STATUS_BUSY, customMessage: 'Ward round' });
    }

    it.each([
      ['an unknown state', status(99 as eventsV1.PresenceStatus), 'status', /unknown status/],
      ['a message over the limit', status(PresenceStatus.PRESENCE_STATUS_AWAY, { customMessage: 'x'.repeat(141) }), 'custom_message', /longer than 140/],
      ['a message with markup', status(PresenceStatus.PRESENCE_STATUS_AWAY, { customMessage: 'hi <img src=x onerror=alert(1)>' }), 'custom_message', /markup/],
      ['an expiry in the past', status(PresenceStatus.PRESENCE_STATUS_AWAY, { statusExpiresAt: new Date(Date.now() - 1000) }), 'status_expires_at', /future/],
    ])('%s', async (_name, request, field, message) => {
      const err = await errorOf(client.setStatus(request, as(frank)));
      expect(err.code).toBe(ErrorCode.ERROR_CODE_INVALID_ARGUMENT);
      expect(err.field).toBe(field);
      expect(err.message).toMatch(message);
      await unchanged();
    });

    it('an auto-away delay out of bounds', async () => {
      const err = await errorOf(client.updatePresenceSettings({ context: undefined, userId: '', settings: { autoAwayAfterMs: 5, hideLastSeen: false } }, as(frank)));
      expect(err).toMatchObject({ code: ErrorCode.ERROR_CODE_INVALID_ARGUMENT, field: 'settings.auto_away_after_ms' });
      expect((await client.getPresenceSettings({ context: undefined, userId: '' }, as(frank))).settings!.autoAwayAfterMs).toBe(0);
    });

    it('another tenant’s users: offline, nothing leaked; another tenant in the body: refused', async () => {
      const otherTenant = { context: { tenantId: newId(), userId: newId(), deviceId: '', internal: false } };
      const seen = (await client.getPresence({ context: undefined, userIds: [frank], includeDevices: true }, otherTenant)).presences[0]!;
      expect(seen).toMatchObject({ status: PresenceStatus.PRESENCE_STATUS_OFFLINE, customMessage: '', deviceCount: 0, devices: [] });
      expect(seen.lastSeen).toBeUndefined();
      const watchedElsewhere = await client.watch({ context: undefined, userIds: [frank] }, otherTenant);
      expect(watchedElsewhere.presences[0]!.status).toBe(PresenceStatus.PRESENCE_STATUS_OFFLINE);
      const crossed = client.setStatus({ ...status(PresenceStatus.PRESENCE_STATUS_AWAY), context: { tenantId: newId(), userId: frank, deviceId: '', internal: false } }, as(frank));
      expect((await errorOf(crossed)).code).toBe(ErrorCode.ERROR_CODE_PERMISSION_DENIED);
      await unchanged();
    });

    it('unsafe ids in watch, typing and occupancy', async () => {
      expect((await errorOf(client.watch({ context: undefined, userIds: ['a.b'] }, as(frank)))).code).toBe(ErrorCode.ERROR_CODE_INVALID_ARGUMENT);
      expect((await errorOf(client.watch({ context: undefined, userIds: [] }, as(frank)))).code).toBe(ErrorCode.ERROR_CODE_INVALID_ARGUMENT);
      expect((await errorOf(client.setTyping({ context: undefined, conversationId: 'c>', typing: true }, as(frank)))).code).toBe(ErrorCode.ERROR_CODE_INVALID_ARGUMENT);
      expect((await errorOf(client.getOccupancy({ context: undefined, conversationIds: ['*'], includeUserIds: false }, as(frank)))).code).toBe(
        ErrorCode.ERROR_CODE_INVALID_ARGUMENT,
      );
      await unchanged();
    });
  });
});
