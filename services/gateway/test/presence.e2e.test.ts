// Presence through the whole mesh: three gateway processes, presence, real
// Redis and NATS, real WebSocket clients. What users notice: who is online,
// with which status, on every device; a crashed gateway or a restarted
// Redis never leaves anyone wrongly online or offline; typing stops by
// itself; nothing crosses tenants.
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, rmSync } from 'node:fs';
import * as path from 'node:path';
import { DEV_JWT_SECRET, SwitchboardClient, mintDevToken } from '@switchboard/client';
import { eventually, freePort, infraEnv, launchService, repoRoot, startMesh, type Mesh, type ServiceProcess } from '@switchboard/devenv';
import { ErrorCode, type SwitchboardError } from '@switchboard/errors';
import { newId } from '@switchboard/ids';
import { eventsV1, roomV1, type framesV1 } from '@switchboard/proto';
import { createRedis, tenantKey } from '@switchboard/redis';

const { PresenceStatus, MembershipChange } = eventsV1;
const GATEWAY_ENV = { GATEWAY_HEARTBEAT_MS: '300', PRESENCE_REFRESH_MS: '1000', PRESENCE_COALESCE_MS: '50' };
const tenant = `t${newId().slice(0, 12)}`;
const user = (name: string) => `${name}-${newId().slice(0, 8)}`;

let mesh: Mesh;
const clients: SwitchboardClient[] = [];
const extraGateways: ServiceProcess[] = [];

interface Device {
  client: SwitchboardClient;
  /** Every presence change pushed to this device, in order. */
  changes: eventsV1.PresenceChanged[];
  typing: framesV1.TypingEvent[];
  occupancy: framesV1.OccupancyEvent[];
  /** Room membership events pushed to this device. */
  membership: eventsV1.RoomMembershipChanged[];
}

async function connect(url: string, userId: string, options: { deviceId?: string; tenantId?: string } = {}): Promise<Device> {
  const client = new SwitchboardClient({
    url,
    token: () => mintDevToken({ secret: DEV_JWT_SECRET, tenantId: options.tenantId ?? tenant, userId, ...(options.deviceId ? { deviceId: options.deviceId } : {}) }),
    reconnect: { enabled: false },
  });
  clients.push(client);
  const device: Device = { client, changes: [], typing: [], occupancy: [], membership: [] };
  client.on('frame', (frame: framesV1.ServerFrame) => {
    if (frame.kind?.$case === 'presence') device.changes.push(...frame.kind.value.changes);
    if (frame.kind?.$case === 'typing') device.typing.push(frame.kind.value);
    if (frame.kind?.$case === 'occupancy') device.occupancy.push(frame.kind.value);
    if (frame.kind?.$case === 'roomEvent' && frame.kind.value.event?.$case === 'membership') device.membership.push(frame.kind.value.event.value);
  });
  await client.connect();
  return device;
}

const gw = (index: number) => mesh.gateways[index]!.url;

/** The latest status a device was told for a user. */
const lastStatus = (device: Device, userId: string) => device.changes.filter((c) => c.userId === userId).at(-1)?.status;

async function presence(device: Device, userIds: string[]) {
  const reply = await device.client.request({ $case: 'getPresence', value: { userIds } });
  return reply.value.presences;
}

async function failure(call: Promise<unknown>): Promise<SwitchboardError> {
  return call.then(
    () => {
      throw new Error('expected the request to fail');
    },
    (err: SwitchboardError) => err,
  );
}

/** Two users who share a direct conversation (so each receives the other's presence). */
async function pair(a: Device, bName: string, b: Device): Promise<string> {
  const ack = await a.client.sendMessage({ recipientUserId: bName, text: 'hello' });
  // Both sides joined: the recipient got the message, so its gateway subscribed the conversation's members.
  await eventually(() => b.client.deliveryStats().delivered > 0 || undefined, 10_000, 'message delivered');
  return ack.conversationId;
}

beforeAll(async () => {
  mesh = await startMesh({
    gateways: 3,
    ports: 'free',
    env: { LOG_LEVEL: 'warn', TYPING_TTL_MS: '800', TYPING_RATE_POINTS: '3', TYPING_RATE_WINDOW_S: '30' },
    gatewayEnv: GATEWAY_ENV,
  });
}, 120_000);

afterAll(async () => {
  await Promise.all(clients.map((c) => c.close().catch(() => undefined)));
  await Promise.all(extraGateways.map((g) => g.stop()));
  await mesh?.stop();
});

it('shows a clean disconnect to the other member at once, with last seen', async () => {
  const [aliceId, bobId] = [user('alice'), user('bob')];
  const alice = await connect(gw(0), aliceId);
  const bob = await connect(gw(1), bobId);
  await pair(alice, bobId, bob);
  expect((await presence(bob, [aliceId]))[0]).toMatchObject({ status: PresenceStatus.PRESENCE_STATUS_AVAILABLE, deviceCount: 1 });

  await alice.client.close();
  await eventually(() => lastStatus(bob, aliceId) === PresenceStatus.PRESENCE_STATUS_OFFLINE, 5000, 'bob sees alice offline');
  const seen = (await presence(bob, [aliceId]))[0]!;
  expect(seen).toMatchObject({ status: PresenceStatus.PRESENCE_STATUS_OFFLINE, deviceCount: 0 });
  expect(seen.lastSeen).toBeInstanceOf(Date);
  // Bob sees the public face: no devices, no chosen status.
  expect(seen.devices).toEqual([]);
});

it('merges three devices with conflicting updates: the latest explicit choice wins, and every device sees it', async () => {
  const frankId = user('frank');
  const graceId = user('grace');
  const phone = await connect(gw(0), frankId, { deviceId: 'phone' });
  const laptop = await connect(gw(1), frankId, { deviceId: 'laptop' });
  const tablet = await connect(gw(2), frankId, { deviceId: 'tablet' });
  const grace = await connect(gw(0), graceId);
  const watched = await grace.client.request({ $case: 'watchPresence', value: { userIds: [frankId] } });
  expect(watched.value.presences[0]).toMatchObject({ userId: frankId, status: PresenceStatus.PRESENCE_STATUS_AVAILABLE, deviceCount: 3 });

  await phone.client.request({ $case: 'setPresence', value: { status: PresenceStatus.PRESENCE_STATUS_BUSY, customMessage: 'In clinic', customMessageExpiresAt: undefined } });
  const reply = await laptop.client.request({ $case: 'setPresence', value: { status: PresenceStatus.PRESENCE_STATUS_AWAY, customMessage: '', customMessageExpiresAt: undefined } });
  // The laptop's choice replaced the phone's as a whole (status and message).
  expect(reply.value.presences[0]).toMatchObject({ status: PresenceStatus.PRESENCE_STATUS_AWAY, manualStatus: PresenceStatus.PRESENCE_STATUS_AWAY, customMessage: '' });
  for (const device of [phone, laptop, tablet, grace]) {
    await eventually(() => lastStatus(device, frankId) === PresenceStatus.PRESENCE_STATUS_AWAY, 5000, 'every device sees away');
  }
  // Changes within the coalescing window reach a device as one: the busy step may be folded into the away one, never reordered.
  const seenByGrace = grace.changes.filter((c) => c.userId === frankId).map((c) => [c.status, c.customMessage]);
  expect(seenByGrace.at(-1)).toEqual([PresenceStatus.PRESENCE_STATUS_AWAY, '']);
  expect([1, 2]).toContain(seenByGrace.length);

  await tablet.client.request({ $case: 'setPresence', value: { status: PresenceStatus.PRESENCE_STATUS_AVAILABLE, customMessage: '', customMessageExpiresAt: undefined } });
  for (const device of [phone, laptop, tablet, grace]) {
    await eventually(() => lastStatus(device, frankId) === PresenceStatus.PRESENCE_STATUS_AVAILABLE, 5000, 'every device sees available');
  }
  await phone.client.close();
  await eventually(async () => (await presence(grace, [frankId]))[0]!.deviceCount === 2 || undefined, 5000, 'one device fewer');
  expect((await presence(laptop, [frankId]))[0]).toMatchObject({ status: PresenceStatus.PRESENCE_STATUS_AVAILABLE, deviceCount: 2 });
});

it('takes the users of a SIGKILLed gateway offline for their watchers, and a restarted gateway leaves no stale device', async () => {
  const carolId = user('carol');
  const daveId = user('dave');
  const carol = await connect(gw(2), carolId, { deviceId: 'desk' });
  const dave = await connect(gw(0), daveId);
  await dave.client.request({ $case: 'watchPresence', value: { userIds: [carolId] } });
  expect((await presence(dave, [carolId]))[0]!.status).toBe(PresenceStatus.PRESENCE_STATUS_AVAILABLE);

  await mesh.gateways[2]!.process.kill();
  await eventually(() => lastStatus(dave, carolId) === PresenceStatus.PRESENCE_STATUS_OFFLINE, 10_000, 'dave sees carol offline');
  expect((await presence(dave, [carolId]))[0]).toMatchObject({ status: PresenceStatus.PRESENCE_STATUS_OFFLINE, deviceCount: 0 });
  void carol;

  // The same gateway id comes back: carol reconnects through it and counts once.
  const { gateway: restarted, url } = await launchExtraGateway('gateway-3-restarted', 'gateway-3', { SHUTDOWN_DEADLINE_MS: '4000' });
  const carolAgain = await connect(url, carolId, { deviceId: 'desk' });
  await eventually(() => lastStatus(dave, carolId) === PresenceStatus.PRESENCE_STATUS_AVAILABLE, 5000, 'dave sees carol back');
  expect((await presence(carolAgain, [carolId]))[0]).toMatchObject({ status: PresenceStatus.PRESENCE_STATUS_AVAILABLE, deviceCount: 1 });
  await restarted.stop();
  await eventually(() => lastStatus(dave, carolId) === PresenceStatus.PRESENCE_STATUS_OFFLINE, 5000, 'a drained gateway takes carol offline');
});

it('fans a SIGKILLed gateway’s batched OFFLINE changes out exactly: each dropped user once to each watcher, users online elsewhere untouched, no other tenant', async () => {
  const { gateway: doomed, url: doomedUrl } = await launchExtraGateway('gateway-doomed', `gateway-doomed-${newId().slice(0, 6)}`);
  const dropped = [user('ward1'), user('ward2'), user('ward3')];
  const roaming = user('roaming');
  for (const id of dropped) await connect(doomedUrl, id);
  // On the doomed gateway and, with a second device, on a live one: stays online.
  await connect(doomedUrl, roaming, { deviceId: 'phone' });
  await connect(gw(1), roaming, { deviceId: 'laptop' });
  const everyone = [...dropped, roaming];
  const charge = await connect(gw(0), user('charge'));
  const partial = await connect(gw(1), user('partial'));
  await charge.client.request({ $case: 'watchPresence', value: { userIds: everyone } });
  await partial.client.request({ $case: 'watchPresence', value: { userIds: [dropped[0]!, roaming] } });
  // Another tenant with the same user ids, one of them online: it must hear nothing of the crash.
  const otherTenant = `t${newId().slice(0, 12)}`;
  await connect(gw(0), dropped[0]!, { tenantId: otherTenant });
  const outsider = await connect(gw(0), user('outsider'), { tenantId: otherTenant });
  await outsider.client.request({ $case: 'watchPresence', value: { userIds: everyone } });
  expect((await presence(charge, everyone)).map((p) => p.status)).toEqual(everyone.map(() => PresenceStatus.PRESENCE_STATUS_AVAILABLE));
  // Let pushes of the set-up (current presence, the watchers' own connects) land before counting.
  await new Promise((r) => setTimeout(r, 300));
  const seen = [charge, partial, outsider].map((d) => d.changes.length);

  await doomed.kill();
  await eventually(() => dropped.every((id) => lastStatus(charge, id) === PresenceStatus.PRESENCE_STATUS_OFFLINE) || undefined, 10_000, 'charge sees every ward offline');
  await eventually(() => lastStatus(partial, dropped[0]!) === PresenceStatus.PRESENCE_STATUS_OFFLINE || undefined, 10_000, 'partial sees ward1 offline');
  // Anything duplicated or misrouted would arrive within this.
  await new Promise((r) => setTimeout(r, 500));
  const [chargeAfter, partialAfter, outsiderAfter] = [charge, partial, outsider].map((d, i) => d.changes.slice(seen[i]));
  const offlineOf = (changes: eventsV1.PresenceChanged[]) => changes.filter((c) => c.status === PresenceStatus.PRESENCE_STATUS_OFFLINE).map((c) => c.userId).sort();
  expect(offlineOf(chargeAfter!)).toEqual([...dropped].sort());
  expect(offlineOf(partialAfter!)).toEqual([dropped[0]]);
  // Only the users a connection watches reach it, and the roaming user, still on the laptop, does not change.
  expect(partialAfter!.map((c) => c.userId).filter((id) => id !== dropped[0])).toEqual([]);
  expect(chargeAfter!.filter((c) => c.userId === roaming)).toEqual([]);
  expect(outsiderAfter).toEqual([]);
  expect(await presence(charge, [roaming])).toMatchObject([{ status: PresenceStatus.PRESENCE_STATUS_AVAILABLE, deviceCount: 1 }]);
  expect(await presence(outsider, [dropped[0]!])).toMatchObject([{ status: PresenceStatus.PRESENCE_STATUS_AVAILABLE }]);
});

it('shows a newly joined room member’s presence to the members at once, and nothing more of a member once removed', async () => {
  const [annId, benId, camId] = [user('ann'), user('ben'), user('cam')];
  const ann = await connect(gw(0), annId);
  const ben = await connect(gw(1), benId);
  const cam = await connect(gw(1), camId);
  const setStatus = (device: Device, status: eventsV1.PresenceStatus, customMessage: string) =>
    device.client.request({ $case: 'setPresence', value: { status, customMessage, customMessageExpiresAt: undefined } });
  const joined = (device: Device, roomId: string, userId: string) => device.membership.some((m) => m.roomId === roomId && m.userId === userId && m.change === MembershipChange.MEMBERSHIP_CHANGE_JOINED);
  await setStatus(cam, PresenceStatus.PRESENCE_STATUS_BUSY, 'On call');

  const created = await ann.client.room({
    $case: 'createRoom',
    value: roomV1.CreateRoomRequest.fromPartial({ name: 'Ward round', visibility: roomV1.RoomVisibility.ROOM_VISIBILITY_PRIVATE, memberIds: [benId] }),
  });
  const roomId = (created.value as roomV1.CreateRoomResponse).room!.roomId;
  // Each member's gateway subscribed it to the room once it saw its own join, and showed it the other members as they are.
  await eventually(() => joined(ann, roomId, annId) && joined(ben, roomId, benId), 10_000, 'ann and ben in the room');
  await eventually(() => lastStatus(ann, benId) === PresenceStatus.PRESENCE_STATUS_AVAILABLE && lastStatus(ben, annId) === PresenceStatus.PRESENCE_STATUS_AVAILABLE, 10_000, 'ann and ben see each other');
  expect(ann.changes.filter((c) => c.userId === camId)).toEqual([]);

  await ann.client.room({ $case: 'addMembers', value: roomV1.AddMembersRequest.fromPartial({ roomId, userIds: [camId] }) });
  // Cam changed nothing: the members are shown cam's presence as it is, and cam theirs.
  for (const member of [ann, ben]) {
    await eventually(() => member.changes.some((c) => c.userId === camId && c.status === PresenceStatus.PRESENCE_STATUS_BUSY && c.customMessage === 'On call'), 10_000, 'cam’s presence at a member');
  }
  await eventually(() => lastStatus(cam, annId) === PresenceStatus.PRESENCE_STATUS_AVAILABLE && lastStatus(cam, benId) === PresenceStatus.PRESENCE_STATUS_AVAILABLE, 10_000, 'the members’ presence at cam');
  // And cam's changes follow live.
  await setStatus(cam, PresenceStatus.PRESENCE_STATUS_AWAY, 'Back at 3');
  await eventually(() => lastStatus(ann, camId) === PresenceStatus.PRESENCE_STATUS_AWAY, 10_000, 'ann sees cam away');

  await ann.client.room({ $case: 'removeMember', value: roomV1.RemoveMemberRequest.fromPartial({ roomId, userId: camId }) });
  await eventually(() => ann.membership.some((m) => m.userId === camId && m.change === MembershipChange.MEMBERSHIP_CHANGE_REMOVED), 10_000, 'ann sees the removal');
  await setStatus(cam, PresenceStatus.PRESENCE_STATUS_BUSY, 'After removal');
  // Published after cam's change by the same presence process: once ann has ben's, cam's would have arrived too.
  await setStatus(ben, PresenceStatus.PRESENCE_STATUS_BUSY, 'Marker');
  await eventually(() => ann.changes.some((c) => c.userId === benId && c.customMessage === 'Marker'), 10_000, 'ann sees ben’s marker');
  expect(ann.changes.filter((c) => c.userId === camId && c.customMessage === 'After removal')).toEqual([]);
  expect(lastStatus(ann, camId)).toBe(PresenceStatus.PRESENCE_STATUS_AWAY);
});

it('delivers typing to the conversation only, stops it by itself, limits it, and refuses conversations the user is not in', async () => {
  const [henryId, ivyId, outsiderId] = [user('henry'), user('ivy'), user('outsider')];
  const henry = await connect(gw(0), henryId);
  const ivy = await connect(gw(1), ivyId);
  const outsider = await connect(gw(1), outsiderId);
  const conversationId = await pair(henry, ivyId, ivy);

  const entered = await ivy.client.request({ $case: 'enterConversation', value: { conversationId } });
  expect(entered.value.occupancy).toMatchObject({ conversationId, onlineCount: 1, connectionCount: 1 });
  await eventually(() => henry.occupancy.some((o) => o.occupancies.some((x) => x.conversationId === conversationId && x.onlineCount === 1)), 5000, 'henry sees occupancy');

  await henry.client.request({ $case: 'typing', value: { conversationId, typing: true } });
  await eventually(() => ivy.typing.some((t) => t.userId === henryId && t.typing), 5000, 'ivy sees henry typing');
  // Henry never sends the stop: it ends by itself.
  await eventually(() => ivy.typing.at(-1)?.typing === false, 5000, 'typing stops by itself');
  expect(ivy.typing.map((t) => [t.conversationId, t.userId, t.typing])).toEqual([
    [conversationId, henryId, true],
    [conversationId, henryId, false],
  ]);
  expect(henry.typing).toEqual([]);
  expect(outsider.typing).toEqual([]);

  const notMember = await failure(outsider.client.request({ $case: 'typing', value: { conversationId, typing: true } }));
  expect(notMember.code).toBe(ErrorCode.ERROR_CODE_NOT_FOUND);
  const notMemberEnter = await failure(outsider.client.request({ $case: 'enterConversation', value: { conversationId } }));
  expect(notMemberEnter.code).toBe(ErrorCode.ERROR_CODE_NOT_FOUND);

  await henry.client.request({ $case: 'typing', value: { conversationId, typing: true } });
  await henry.client.request({ $case: 'typing', value: { conversationId, typing: true } });
  const limited = await failure(henry.client.request({ $case: 'typing', value: { conversationId, typing: true } }));
  expect(limited.code).toBe(ErrorCode.ERROR_CODE_RATE_LIMITED);
  // The connection lives on.
  expect((await henry.client.ping()).rttMs).toBeGreaterThanOrEqual(0);
  await new Promise((r) => setTimeout(r, 300));
  expect(ivy.typing.filter((t) => t.typing)).toHaveLength(3);
});

it('refuses bad presence frames with specific errors and changes nothing', async () => {
  const judyId = user('judy');
  const judy = await connect(gw(0), judyId);
  await judy.client.request({ $case: 'setPresence', value: { status: PresenceStatus.PRESENCE_STATUS_BUSY, customMessage: 'Surgery', customMessageExpiresAt: undefined } });
  const cases: [framesV1.SetPresence, string][] = [
    [{ status: 42 as eventsV1.PresenceStatus, customMessage: '', customMessageExpiresAt: undefined }, 'status'],
    [{ status: PresenceStatus.PRESENCE_STATUS_AWAY, customMessage: 'y'.repeat(500), customMessageExpiresAt: undefined }, 'custom_message'],
    [{ status: PresenceStatus.PRESENCE_STATUS_AWAY, customMessage: '<b>back soon</b>', customMessageExpiresAt: undefined }, 'custom_message'],
  ];
  for (const [value, field] of cases) {
    const err = await failure(judy.client.request({ $case: 'setPresence', value }));
    expect(err).toMatchObject({ code: ErrorCode.ERROR_CODE_INVALID_ARGUMENT, field });
  }
  const unsafe = await failure(judy.client.request({ $case: 'getPresence', value: { userIds: ['x.>'] } }));
  expect(unsafe.code).toBe(ErrorCode.ERROR_CODE_INVALID_ARGUMENT);
  const own = (await presence(judy, [judyId]))[0]!;
  expect(own).toMatchObject({ status: PresenceStatus.PRESENCE_STATUS_BUSY, customMessage: 'Surgery' });
});

it('never shows presence across tenants, even for the same user ids', async () => {
  const sharedId = user('kate');
  const otherTenant = `t${newId().slice(0, 12)}`;
  const kate = await connect(gw(1), sharedId);
  const stranger = await connect(gw(0), user('stranger'), { tenantId: otherTenant });
  const namesake = await connect(gw(0), sharedId, { tenantId: otherTenant });
  const watched = await stranger.client.request({ $case: 'watchPresence', value: { userIds: [sharedId] } });
  // Only the other tenant's namesake (online) is visible, never kate.
  expect(watched.value.presences[0]).toMatchObject({ userId: sharedId, status: PresenceStatus.PRESENCE_STATUS_AVAILABLE, customMessage: '' });
  await kate.client.request({ $case: 'setPresence', value: { status: PresenceStatus.PRESENCE_STATUS_BUSY, customMessage: 'Tenant A only', customMessageExpiresAt: undefined } });
  await eventually(() => lastStatus(kate, sharedId) === PresenceStatus.PRESENCE_STATUS_BUSY, 5000, 'kate sees herself busy');
  await kate.client.close();
  await new Promise((r) => setTimeout(r, 500));
  expect(stranger.changes.filter((c) => c.customMessage === 'Tenant A only' || c.status !== PresenceStatus.PRESENCE_STATUS_AVAILABLE)).toEqual([]);
  expect((await presence(stranger, [sharedId]))[0]).toMatchObject({ status: PresenceStatus.PRESENCE_STATUS_AVAILABLE, customMessage: '' });
  void namesake;
});

it('rebuilds presence from the gateways’ live connections after Redis restarts empty', async () => {
  const leoId = user('leo');
  const miaId = user('mia');
  const leo = await connect(gw(0), leoId, { deviceId: 'ward-pc' });
  const mia = await connect(gw(1), miaId);
  expect((await presence(mia, [leoId]))[0]!.status).toBe(PresenceStatus.PRESENCE_STATUS_AVAILABLE);

  restartRedisEmpty();
  // Right after the restart presence knows nobody; within seconds the gateways have re-registered everyone.
  await eventually(
    async () => {
      try {
        const [seen] = await presence(mia, [leoId]);
        return seen!.status === PresenceStatus.PRESENCE_STATUS_AVAILABLE && seen!.deviceCount === 1;
      } catch {
        return false;
      }
    },
    20_000,
    'leo online again',
  );
  const own = await leo.client.request({ $case: 'getPresence', value: { userIds: [leoId] } });
  expect(own.value.presences[0]).toMatchObject({ status: PresenceStatus.PRESENCE_STATUS_AVAILABLE, deviceCount: 1 });
  // And a clean disconnect still works on the rebuilt state.
  await leo.client.close();
  await eventually(async () => (await presence(mia, [leoId]))[0]!.status === PresenceStatus.PRESENCE_STATUS_OFFLINE, 5000, 'leo offline');
});

it('takes many connections closed at once offline through a few batched calls, keeps a second device of a user online, and leaves nothing of the closed ones in Redis', async () => {
  const closing = Array.from({ length: 150 }, () => user('ward'));
  const twoDevices = user('nurse');
  const watcher = await connect(gw(0), user('charge'));
  // gw(2) was SIGKILLed by an earlier test: the closing side is gw(1).
  const devices = await Promise.all(closing.map((id) => connect(gw(1), id)));
  const nurseLeaving = await connect(gw(1), twoDevices, { deviceId: 'cart' });
  const nurseStaying = await connect(gw(1), twoDevices, { deviceId: 'badge' });
  await watcher.client.request({ $case: 'watchPresence', value: { userIds: [...closing, twoDevices] } });
  expect((await presence(watcher, [...closing, twoDevices])).every((p) => p.status === PresenceStatus.PRESENCE_STATUS_AVAILABLE)).toBe(true);
  const calls = async () => {
    const metrics = await (await fetch(`http://127.0.0.1:${mesh.services.find((s) => s.name === 'presence')!.opsPort}/metrics`)).text();
    const count = (method: string) =>
      [...metrics.matchAll(new RegExp(`^rpc_server_duration_seconds_count\\{[^}]*method="${method}"[^}]*\\} (\\d+)`, 'gm'))].reduce((n, m) => n + Number(m[1]), 0);
    return { single: count('DisconnectDevice'), batched: count('DisconnectDevices') };
  };
  const before = await calls();

  await Promise.all([...devices, nurseLeaving].map((d) => d.client.close()));
  await eventually(() => closing.every((id) => lastStatus(watcher, id) === PresenceStatus.PRESENCE_STATUS_OFFLINE) || undefined, 15_000, 'the watcher sees every closed user offline');
  const seen = await presence(watcher, [...closing, twoDevices]);
  expect(seen.filter((p) => p.status !== PresenceStatus.PRESENCE_STATUS_OFFLINE).map((p) => p.userId)).toEqual([twoDevices]);
  expect(seen.at(-1)).toMatchObject({ status: PresenceStatus.PRESENCE_STATUS_AVAILABLE, deviceCount: 1 });
  // 151 closes: never one call each, and none through the per-connection call.
  const after = await calls();
  expect(after.single - before.single).toBe(0);
  expect(after.batched - before.batched).toBeGreaterThan(0);
  expect(after.batched - before.batched).toBeLessThan(closing.length / 2);

  // Nothing of the closed connections stays: no lease of a closed user, no entry in any gateway's connection list, not in the online set.
  const redis = createRedis(infraEnv().REDIS_URL!, 'mass-close-test');
  try {
    const leases = await Promise.all(closing.map((id) => redis.zcard(tenantKey(tenant, 'presence', 'leases', id))));
    expect(leases.filter((n) => n > 0)).toEqual([]);
    const gatewayKeys = await redis.keys(`${tenantKey(tenant, 'presence', 'gateway')}:*`);
    const listed = (await Promise.all(gatewayKeys.map((key) => redis.hvals(key)))).flat().map((value) => value.split(':')[0]!);
    expect(listed.filter((owner) => closing.includes(owner))).toEqual([]);
    expect(listed.filter((owner) => owner === twoDevices)).toHaveLength(1);
    const online = await redis.zmscore(tenantKey(tenant, 'presence', 'online'), ...closing);
    expect(online.filter((score) => score !== null)).toEqual([]);
  } finally {
    redis.disconnect();
  }
  // The second device still hears its own user's presence (its subscriptions stayed).
  await nurseStaying.client.request({ $case: 'setPresence', value: { status: PresenceStatus.PRESENCE_STATUS_BUSY, customMessage: '', customMessageExpiresAt: undefined } });
  await eventually(() => lastStatus(nurseStaying, twoDevices) === PresenceStatus.PRESENCE_STATUS_BUSY, 5000, 'the staying device sees its user busy');
  await eventually(() => lastStatus(watcher, twoDevices) === PresenceStatus.PRESENCE_STATUS_BUSY, 5000, 'the watcher sees the nurse busy');
}, 60_000);

it('keeps a device that closes and reconnects at once online: the batched close drops only its old connection', async () => {
  const pagerId = user('pager');
  const watcher = await connect(gw(0), user('desk'));
  const first = await connect(gw(1), pagerId, { deviceId: 'pager' });
  await watcher.client.request({ $case: 'watchPresence', value: { userIds: [pagerId] } });
  await first.client.close();
  const again = await connect(gw(1), pagerId, { deviceId: 'pager' });
  // Once the old connection's close has reached presence, exactly the new one is left, and the user is online through it.
  const redis = createRedis(infraEnv().REDIS_URL!, 'reconnect-test');
  try {
    await eventually(async () => (await redis.zcard(tenantKey(tenant, 'presence', 'leases', pagerId))) === 1 || undefined, 10_000, 'one lease left');
  } finally {
    redis.disconnect();
  }
  expect((await presence(watcher, [pagerId]))[0]).toMatchObject({ status: PresenceStatus.PRESENCE_STATUS_AVAILABLE, deviceCount: 1 });
  // The reconnected device still receives its own user's presence.
  await again.client.request({ $case: 'setPresence', value: { status: PresenceStatus.PRESENCE_STATUS_AWAY, customMessage: '', customMessageExpiresAt: undefined } });
  await eventually(() => lastStatus(again, pagerId) === PresenceStatus.PRESENCE_STATUS_AWAY, 5000, 'the device sees its user away');
});

/** Free ports that are also distinct from each other (the OS may hand the same free port out twice in a row). */
/** Another gateway process on the mesh (stopped after the file), and its WebSocket URL. */
async function launchExtraGateway(name: string, gatewayId: string, env: Record<string, string> = {}): Promise<{ gateway: ServiceProcess; url: string }> {
  const [opsPort, wsPort, grpcPort] = await distinctFreePorts(3);
  const gateway = await launchService({
    service: 'gateway',
    name,
    env: {
      ...infraEnv(),
      LOG_LEVEL: 'warn',
      ...GATEWAY_ENV,
      PORT: String(wsPort),
      GRPC_PORT: String(grpcPort),
      GATEWAY_ID: gatewayId,
      MESSAGING_ADDR: mesh.addresses.messaging,
      PRESENCE_ADDR: mesh.addresses.presence,
      ...env,
    },
    opsPort,
  });
  extraGateways.push(gateway);
  return { gateway, url: `ws://127.0.0.1:${wsPort}/ws` };
}

async function distinctFreePorts(count: number): Promise<number[]> {
  const ports = new Set<number>();
  while (ports.size < count) ports.add(await freePort());
  return [...ports];
}

/** SIGKILL (nothing saved), drop the snapshot, start it again: Redis comes back empty. */
function restartRedisEmpty(): void {
  const dir = path.join(repoRoot, '.data', 'infra', 'redis');
  const pid = Number(readFileSync(path.join(dir, 'redis.pid'), 'utf8').trim());
  process.kill(pid, 'SIGKILL');
  spawnSync('bash', ['-c', `while kill -0 ${pid} 2>/dev/null; do sleep 0.05; done`]);
  if (existsSync(path.join(dir, 'dump.rdb'))) rmSync(path.join(dir, 'dump.rdb'));
  const up = spawnSync('bash', [path.join(repoRoot, 'libs', 'devenv', 'infra', 'infra.sh'), 'up'], { env: process.env, encoding: 'utf8' });
  if (up.status !== 0) throw new Error(`infra.sh up failed: ${up.stderr}`);
}
