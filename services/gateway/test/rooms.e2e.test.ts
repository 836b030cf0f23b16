// Rooms through the whole mesh: users' room operations over the WebSocket
// (room_request → room_reply / error frames) and live membership (members
// see join/leave/role events; a removed member, and everyone when the room is
// deleted, stops receiving the room's traffic at once).
import { DEV_JWT_SECRET, SwitchboardClient, mintDevToken } from '@switchboard/client';
import { eventually, infraEnv, startMesh, type Mesh, natsSeedFile } from '@switchboard/devenv';
import { ErrorCode, type SwitchboardError } from '@switchboard/errors';
import { newId } from '@switchboard/ids';
import { connectNats, newEnvelope, publishEnvelope, subjects, type NatsConnection } from '@switchboard/nats';
import { eventsV1, messagingV1, roomV1, type framesV1 } from '@switchboard/proto';

const { MembershipChange: C, RoomRole: R } = eventsV1;
const tenant = `t${newId().slice(0, 12)}`;
const user = (name: string) => `${name}-${newId().slice(0, 8)}`;

let mesh: Mesh;
let nats: NatsConnection;
const clients: SwitchboardClient[] = [];

/** A connected client with everything pushed to it recorded. */
async function connect(gateway: number, userId: string): Promise<{ client: SwitchboardClient; pushes: framesV1.ServerFrame[] }> {
  const client = new SwitchboardClient({
    url: mesh.gateways[gateway]!.url,
    token: () => mintDevToken({ secret: DEV_JWT_SECRET, tenantId: tenant, userId }),
    encoding: gateway === 0 ? 'json' : 'proto',
  });
  clients.push(client);
  const pushes: framesV1.ServerFrame[] = [];
  client.on('frame', (frame: framesV1.ServerFrame) => {
    if (!frame.requestId) pushes.push(frame);
  });
  await client.connect();
  return { client, pushes };
}

const roomEvents = (pushes: framesV1.ServerFrame[]) =>
  pushes.flatMap((frame) => (frame.kind?.$case === 'roomEvent' && frame.kind.value.event ? [frame.kind.value.event] : []));
const membershipEvents = (pushes: framesV1.ServerFrame[], roomId: string) =>
  roomEvents(pushes).flatMap((event) => (event.$case === 'membership' && event.value.roomId === roomId ? [event.value] : []));
const messagesIn = (pushes: framesV1.ServerFrame[], roomId: string) =>
  pushes.flatMap((frame) => (frame.kind?.$case === 'message' && frame.kind.value.message?.conversationId === roomId ? [frame.kind.value.message] : []));

/**
 * A message on the room's conversation subject, as messaging's relay publishes
 * it: the gateways' room subscriptions are what this exercises.
 */
function publishRoomMessage(roomId: string, seq: number, text: string): void {
  publishEnvelope(
    nats,
    subjects.conversation(tenant, roomId),
    newEnvelope(tenant, {
      $case: 'messageCreated',
      value: {
        message: messagingV1.Message.fromPartial({ tenantId: tenant, conversationId: roomId, messageId: newId(), seq, senderId: 'system', clientMessageId: newId(), kind: 1, text, createdAt: new Date() }),
        memberIds: [],
      },
    }),
  );
}

async function roomCall<C extends NonNullable<framesV1.RoomRequest['request']>['$case']>(
  client: SwitchboardClient,
  $case: C,
  value: Omit<Extract<NonNullable<framesV1.RoomRequest['request']>, { $case: C }>['value'], 'context'>,
) {
  const reply = await client.room({ $case, value: { context: undefined, ...value } } as unknown as NonNullable<framesV1.RoomRequest['request']>);
  expect(reply.$case).toBe($case);
  return reply.value as Extract<NonNullable<framesV1.RoomReply['reply']>, { $case: C }>['value'];
}

async function roomError(call: Promise<unknown>): Promise<SwitchboardError> {
  return call.then(
    () => {
      throw new Error('expected the room request to fail');
    },
    (err: SwitchboardError) => err,
  );
}

beforeAll(async () => {
  mesh = await startMesh({ gateways: 2, ports: 'free' });
  nats = await connectNats({ servers: infraEnv().NATS_URL!, nkeySeedFile: natsSeedFile(), name: 'rooms-e2e' });
}, 120_000);

afterAll(async () => {
  for (const client of clients) await client.close();
  await nats?.close();
  await mesh?.stop();
});

const createRoom = (name: string, fields: Partial<roomV1.CreateRoomRequest> = {}) => ({
  name,
  topic: '',
  description: '',
  avatarRef: '',
  metadata: {},
  visibility: roomV1.RoomVisibility.ROOM_VISIBILITY_PRIVATE,
  settings: undefined,
  memberIds: [],
  ownerId: '',
  requestId: '',
  ...fields,
});

describe('room operations over the WebSocket', () => {
  it('creates, invites by link and joins through room_request frames, with specific errors that leave the socket open', async () => {
    const [owner, guest] = [user('owner'), user('guest')];
    const { client: ownerClient } = await connect(0, owner);
    const { client: guestClient, pushes: guestPushes } = await connect(1, guest);

    const { room } = await roomCall(ownerClient, 'createRoom', createRoom('Ward 7 huddle'));
    expect(room).toMatchObject({ tenantId: tenant, ownerId: owner, createdBy: owner, memberCount: 1 });

    // Markup in a name, an empty request, a private room seen from outside, another tenant's id: each its own error.
    const markup = await roomError(roomCall(ownerClient, 'createRoom', createRoom('<img src=x onerror=alert(1)>')));
    expect([markup.code, markup.field]).toEqual([ErrorCode.ERROR_CODE_INVALID_ARGUMENT, 'name']);
    const empty = await roomError(ownerClient.room(undefined as never));
    expect([empty.code, empty.field]).toEqual([ErrorCode.ERROR_CODE_INVALID_ARGUMENT, 'room_request']);
    const hidden = await roomError(roomCall(guestClient, 'getRoom', { roomId: room!.roomId }));
    expect(hidden.code).toBe(ErrorCode.ERROR_CODE_NOT_FOUND);
    const forged = await roomError(roomCall(guestClient, 'getRoom', { context: { tenantId: 'other', userId: owner, deviceId: '', internal: true }, roomId: room!.roomId } as never));
    expect(forged.code).toBe(ErrorCode.ERROR_CODE_NOT_FOUND);

    const { invite, token } = await roomCall(ownerClient, 'createInviteLink', { roomId: room!.roomId, role: R.ROOM_ROLE_GUEST, expiresAt: new Date(Date.now() + 3_600_000), maxUses: 1 });
    expect(invite).toMatchObject({ kind: roomV1.InviteKind.INVITE_KIND_LINK, maxUses: 1, useCount: 0 });
    const preview = await roomCall(guestClient, 'getInvite', { invite: { $case: 'token', value: token } });
    expect(preview.room).toMatchObject({ roomId: room!.roomId, name: 'Ward 7 huddle', memberCount: 1 });
    const accepted = await roomCall(guestClient, 'acceptInvite', { invite: { $case: 'token', value: token } });
    expect(accepted.member).toMatchObject({ userId: guest, role: R.ROOM_ROLE_GUEST });
    const again = await roomError(roomCall(ownerClient, 'acceptInvite', { invite: { $case: 'token', value: token } }));
    expect([again.code, again.message]).toEqual([ErrorCode.ERROR_CODE_FAILED_PRECONDITION, 'the invite has reached its use limit']);

    // The guest's devices learned they joined, live.
    await eventually(() => membershipEvents(guestPushes, room!.roomId).some((e) => e.change === C.MEMBERSHIP_CHANGE_JOINED), 10_000, 'the join event');
    // Still connected and served after the errors.
    const mine = await roomCall(guestClient, 'listMyRooms', { userId: '', includeArchived: false, roles: [], page: undefined });
    expect(mine.rooms.map((r) => r.room!.roomId)).toEqual([room!.roomId]);
  });
});

describe('live membership', () => {
  it('shows every member who joined, changed role or was removed; the removed member receives nothing more', async () => {
    const [owner, nurse, doctor] = [user('owner'), user('nurse'), user('doctor')];
    const { client: ownerClient, pushes: ownerPushes } = await connect(0, owner);
    const { pushes: nursePushes } = await connect(1, nurse);
    const { pushes: doctorPushes } = await connect(0, doctor);
    const { room } = await roomCall(ownerClient, 'createRoom', createRoom('Night shift', { memberIds: [nurse, doctor] }));
    const roomId = room!.roomId;

    // Everyone is subscribed to the room once they saw their own join.
    await eventually(() => membershipEvents(nursePushes, roomId).length && membershipEvents(doctorPushes, roomId).length, 10_000, 'joins');
    await roomCall(ownerClient, 'updateMemberRole', { roomId, userId: doctor, role: R.ROOM_ROLE_MODERATOR });
    await eventually(() => membershipEvents(nursePushes, roomId).some((e) => e.change === C.MEMBERSHIP_CHANGE_ROLE_CHANGED), 10_000, 'the role change seen by another member');
    publishRoomMessage(roomId, 1, 'before');
    await eventually(() => messagesIn(nursePushes, roomId).length === 1 && messagesIn(doctorPushes, roomId).length === 1, 10_000, 'the first message');

    await roomCall(ownerClient, 'removeMember', { roomId, userId: nurse, reason: '' });
    // The nurse learns it; the others see it on the room.
    await eventually(() => membershipEvents(nursePushes, roomId).some((e) => e.change === C.MEMBERSHIP_CHANGE_REMOVED && e.userId === nurse), 10_000, 'the removal');
    await eventually(() => membershipEvents(doctorPushes, roomId).some((e) => e.change === C.MEMBERSHIP_CHANGE_REMOVED && e.userId === nurse), 10_000, 'the removal seen by the doctor');
    await eventually(() => membershipEvents(ownerPushes, roomId).some((e) => e.change === C.MEMBERSHIP_CHANGE_REMOVED), 10_000, 'the removal seen by the owner');
    publishRoomMessage(roomId, 2, 'after');
    await eventually(() => messagesIn(doctorPushes, roomId).length === 2, 10_000, 'the second message at the doctor');
    await new Promise((resolve) => setTimeout(resolve, 300));
    expect(messagesIn(nursePushes, roomId).map((m) => m.text)).toEqual(['before']);
    // Each device saw each event once (the member's own from the user subject, others' from the room).
    const doctorSeen = membershipEvents(doctorPushes, roomId).map((e) => [e.userId, e.change]);
    expect(doctorSeen).toEqual([
      [doctor, C.MEMBERSHIP_CHANGE_JOINED],
      [doctor, C.MEMBERSHIP_CHANGE_ROLE_CHANGED],
      [nurse, C.MEMBERSHIP_CHANGE_REMOVED],
    ]);
  });

  it('drops a deleted room from every connected member at once', async () => {
    const [owner, member] = [user('owner'), user('member')];
    const { client: ownerClient, pushes: ownerPushes } = await connect(1, owner);
    const { pushes: memberPushes } = await connect(0, member);
    const { room } = await roomCall(ownerClient, 'createRoom', createRoom('Temporary', { memberIds: [member] }));
    const roomId = room!.roomId;
    await eventually(() => membershipEvents(memberPushes, roomId).length && membershipEvents(ownerPushes, roomId).length, 10_000, 'joins');
    // Published again until both have it: a join pushed to the client may precede the gateway's subscription
    // on a loaded machine; the gateway hands each sequence to a connection once, so repeats never show.
    let publishedAt = 0;
    await eventually(
      () => {
        if (Date.now() - publishedAt > 500) {
          publishRoomMessage(roomId, 1, 'before');
          publishedAt = Date.now();
        }
        return messagesIn(memberPushes, roomId).length === 1 && messagesIn(ownerPushes, roomId).length === 1;
      },
      20_000,
      'the first message',
    );

    await roomCall(ownerClient, 'deleteRoom', { roomId, expectedVersion: 0 });
    const deleted = (pushes: framesV1.ServerFrame[]) => roomEvents(pushes).some((e) => e.$case === 'room' && e.value.roomId === roomId && e.value.deleted);
    await eventually(() => deleted(memberPushes) && deleted(ownerPushes), 10_000, 'the deletion');
    publishRoomMessage(roomId, 2, 'after');
    await new Promise((resolve) => setTimeout(resolve, 500));
    expect(messagesIn(memberPushes, roomId).map((m) => m.text)).toEqual(['before']);
    expect(messagesIn(ownerPushes, roomId).map((m) => m.text)).toEqual(['before']);
    const gone = await roomError(roomCall(ownerClient, 'getRoom', { roomId }));
    expect(gone.code).toBe(ErrorCode.ERROR_CODE_NOT_FOUND);
  });
});
