// Room against real PostgreSQL and NATS: the built service runs as its own
// process, migrates its schema and is called over gRPC.
import { errorOf, eventually, infraEnv, launchWithClient, type ServiceProcess, natsSeedFile } from '@switchboard/devenv';
import { ErrorCode } from '@switchboard/errors';
import type { PromiseClient } from '@switchboard/grpc';
import { newId } from '@switchboard/ids';
import { connectNats, decodeEnvelope, subjects, type NatsConnection } from '@switchboard/nats';
import { createPool, withTenantTransaction } from '@switchboard/postgres';
import { eventsV1, roomV1 } from '@switchboard/proto';

const { RoomVisibility } = roomV1;
const { RoomRole, MembershipChange } = eventsV1;
type Client = PromiseClient<roomV1.RoomServiceClient>;

async function startRoom(env: Record<string, string> = {}): Promise<{ service: ServiceProcess; client: Client }> {
  return launchWithClient('room', roomV1.RoomServiceClient, env);
}



function createRequest(fields: Partial<roomV1.CreateRoomRequest>): roomV1.CreateRoomRequest {
  return {
    context: undefined,
    name: 'Ward 4 care team',
    topic: '',
    description: '',
    avatarRef: '',
    metadata: {},
    visibility: RoomVisibility.ROOM_VISIBILITY_PRIVATE,
    settings: undefined,
    memberIds: [],
    ownerId: '',
    requestId: '',
    ...fields,
  };
}

const page = (pageSize = 0, pageToken = '') => ({ pageSize, pageToken });

describe('room service', () => {
  const tenantId = newId();
  let service: ServiceProcess;
  let client: Client;
  let nats: NatsConnection;
  const as = (userId: string, tenant = tenantId) => ({ context: { tenantId: tenant, userId, deviceId: '', internal: false } });
  const internal = (tenant = tenantId) => ({ context: { tenantId: tenant, userId: '', deviceId: '', internal: true } });

  /** Membership events published for a user from now on. */
  async function watchUser(userId: string): Promise<eventsV1.RoomMembershipChanged[]> {
    const seen: eventsV1.RoomMembershipChanged[] = [];
    nats.subscribe(subjects.user(tenantId, userId), {
      callback: (err, msg) => {
        if (err) return;
        const { envelope } = decodeEnvelope(msg);
        if (envelope.event?.$case === 'roomMembershipChanged') seen.push(envelope.event.value);
      },
    });
    await nats.flush();
    return seen;
  }

  beforeAll(async () => {
    ({ service, client } = await startRoom());
    nats = await connectNats({ servers: infraEnv().NATS_URL!, nkeySeedFile: natsSeedFile(), name: 'room-test' });
  });

  afterAll(async () => {
    client?.close();
    await nats?.close();
    expect(await service?.stop()).toBe(0);
  });

  it('creates a room with its creator as owner and announces every membership', async () => {
    const owner = newId();
    const nurse = newId();
    const ownerEvents = await watchUser(owner);
    const nurseEvents = await watchUser(nurse);
    const { room } = await client.createRoom(createRequest({ memberIds: [nurse, nurse, owner], metadata: { ward: '4' } }), as(owner));
    expect(room).toMatchObject({ tenantId, ownerId: owner, createdBy: owner, memberCount: 2, visibility: RoomVisibility.ROOM_VISIBILITY_PRIVATE, metadata: { ward: '4' } });

    const { members, totalCount } = await client.listMembers({ context: undefined, roomId: room!.roomId, roles: [], page: page() }, as(nurse));
    expect(totalCount).toBe(2);
    expect(members.map((m) => [m.userId, m.role])).toEqual([
      [owner, RoomRole.ROOM_ROLE_OWNER],
      [nurse, RoomRole.ROOM_ROLE_MEMBER],
    ]);
    await eventually(() => (ownerEvents.length && nurseEvents.length ? true : undefined));
    expect(ownerEvents[0]).toMatchObject({ roomId: room!.roomId, userId: owner, change: MembershipChange.MEMBERSHIP_CHANGE_JOINED, role: RoomRole.ROOM_ROLE_OWNER });
    expect(nurseEvents[0]).toMatchObject({ roomId: room!.roomId, userId: nurse, change: MembershipChange.MEMBERSHIP_CHANGE_JOINED, role: RoomRole.ROOM_ROLE_MEMBER, actorId: owner });
  });

  it('returns the first room when a create is retried with the same request id', async () => {
    const owner = newId();
    const requestId = newId();
    const first = await client.createRoom(createRequest({ requestId }), as(owner));
    const retry = await client.createRoom(createRequest({ requestId }), as(owner));
    expect(retry.room!.roomId).toBe(first.room!.roomId);
  });

  it('hides a private room from non-members (NOT_FOUND) and shows a public one', async () => {
    const owner = newId();
    const outsider = newId();
    const { room: secret } = await client.createRoom(createRequest({}), as(owner));
    const { room: lobby } = await client.createRoom(createRequest({ name: 'Lobby', visibility: RoomVisibility.ROOM_VISIBILITY_PUBLIC }), as(owner));

    const mine = await client.getRoom({ context: undefined, roomId: secret!.roomId }, as(owner));
    expect(mine.membership).toMatchObject({ userId: owner, role: RoomRole.ROOM_ROLE_OWNER });
    expect((await errorOf(client.getRoom({ context: undefined, roomId: secret!.roomId }, as(outsider)))).code).toBe(ErrorCode.ERROR_CODE_NOT_FOUND);
    expect((await errorOf(client.joinRoom({ context: undefined, roomId: secret!.roomId }, as(outsider)))).code).toBe(ErrorCode.ERROR_CODE_NOT_FOUND);
    const listing = client.listMembers({ context: undefined, roomId: secret!.roomId, roles: [], page: page() }, as(outsider));
    expect((await errorOf(listing)).code).toBe(ErrorCode.ERROR_CODE_NOT_FOUND);
    expect((await client.getRoom({ context: undefined, roomId: secret!.roomId }, internal())).room!.roomId).toBe(secret!.roomId);

    const open = await client.getRoom({ context: undefined, roomId: lobby!.roomId }, as(outsider));
    expect(open.room!.name).toBe('Lobby');
    expect(open.membership).toBeUndefined();
    const openListing = client.listMembers({ context: undefined, roomId: lobby!.roomId, roles: [], page: page() }, as(outsider));
    expect((await errorOf(openListing)).code).toBe(ErrorCode.ERROR_CODE_PERMISSION_DENIED);
  });

  it('joins public rooms once, and keeps the last owner from leaving while others remain', async () => {
    const owner = newId();
    const visitor = newId();
    const { room } = await client.createRoom(createRequest({ name: 'Open clinic', visibility: RoomVisibility.ROOM_VISIBILITY_PUBLIC }), as(owner));
    const roomId = room!.roomId;
    const visitorEvents = await watchUser(visitor);

    const joined = await client.joinRoom({ context: undefined, roomId }, as(visitor));
    expect(joined.member).toMatchObject({ userId: visitor, role: RoomRole.ROOM_ROLE_MEMBER, addedBy: '' });
    expect(joined.room!.memberCount).toBe(2);
    const again = await client.joinRoom({ context: undefined, roomId }, as(visitor));
    expect(again.member!.joinedAt).toEqual(joined.member!.joinedAt);

    expect((await errorOf(client.leaveRoom({ context: undefined, roomId }, as(owner)))).code).toBe(ErrorCode.ERROR_CODE_FAILED_PRECONDITION);
    await client.leaveRoom({ context: undefined, roomId }, as(visitor));
    expect((await errorOf(client.leaveRoom({ context: undefined, roomId }, as(visitor)))).code).toBe(ErrorCode.ERROR_CODE_NOT_FOUND);

    await eventually(() => (visitorEvents.length >= 2 ? true : undefined));
    await new Promise((r) => setTimeout(r, 100));
    expect(visitorEvents.map((e) => e.change)).toEqual([MembershipChange.MEMBERSHIP_CHANGE_JOINED, MembershipChange.MEMBERSHIP_CHANGE_LEFT]);

    // Alone in the room, the owner may go.
    await client.leaveRoom({ context: undefined, roomId }, as(owner));
    expect((await client.getRoom({ context: undefined, roomId }, internal())).room!.memberCount).toBe(0);
  });

  it('lists a user’s rooms by name, page by page', async () => {
    const user = newId();
    for (const name of ['Charlie', 'Alpha', 'Bravo']) await client.createRoom(createRequest({ name }), as(user));
    const first = await client.listMyRooms({ context: undefined, userId: '', includeArchived: false, roles: [], page: page(2) }, as(user));
    expect(first.rooms.map((r) => r.room!.name)).toEqual(['Alpha', 'Bravo']);
    expect(first.rooms[0]!.member).toMatchObject({ userId: user, role: RoomRole.ROOM_ROLE_OWNER });
    expect(first.page!.nextPageToken).not.toBe('');
    const second = await client.listMyRooms({ context: undefined, userId: '', includeArchived: false, roles: [], page: page(2, first.page!.nextPageToken) }, as(user));
    expect(second.rooms.map((r) => r.room!.name)).toEqual(['Charlie']);
    expect(second.page!.nextPageToken).toBe('');

    const asMember = await client.listMyRooms({ context: undefined, userId: user, includeArchived: false, roles: [RoomRole.ROOM_ROLE_MEMBER], page: page() }, internal());
    expect(asMember.rooms).toEqual([]);
    const someoneElse = client.listMyRooms({ context: undefined, userId: user, includeArchived: false, roles: [], page: page() }, as(newId()));
    expect((await errorOf(someoneElse)).code).toBe(ErrorCode.ERROR_CODE_PERMISSION_DENIED);
  });

  it('keeps tenants apart, in the service and in the database', async () => {
    const owner = newId();
    const { room } = await client.createRoom(createRequest({ name: 'Tenant A only', visibility: RoomVisibility.ROOM_VISIBILITY_PUBLIC }), as(owner));
    const tenantB = newId();
    expect((await errorOf(client.getRoom({ context: undefined, roomId: room!.roomId }, as(owner, tenantB)))).code).toBe(ErrorCode.ERROR_CODE_NOT_FOUND);
    expect((await errorOf(client.getRoom({ context: undefined, roomId: room!.roomId }, internal(tenantB)))).code).toBe(ErrorCode.ERROR_CODE_NOT_FOUND);
    expect((await errorOf(client.joinRoom({ context: undefined, roomId: room!.roomId }, as(newId(), tenantB)))).code).toBe(ErrorCode.ERROR_CODE_NOT_FOUND);
    const listed = await client.listMyRooms({ context: undefined, userId: '', includeArchived: false, roles: [], page: page() }, as(owner, tenantB));
    expect(listed.rooms).toEqual([]);

    // Row-level security: without the tenant set, or with another one, the rows are invisible.
    const pool = createPool({ connectionString: infraEnv().DATABASE_URL!, applicationName: 'room-test', schema: 'room', max: 1 });
    try {
      const count = async (tenant: string | undefined) => {
        const sql = 'SELECT count(*)::int AS n FROM rooms WHERE room_id = $1';
        const { rows } = tenant ? await withTenantTransaction(pool, tenant, (db) => db.query(sql, [room!.roomId])) : await pool.query(sql, [room!.roomId]);
        return rows[0].n as number;
      };
      expect(await count(undefined)).toBe(0);
      expect(await count(tenantB)).toBe(0);
      expect(await count(tenantId)).toBe(1);
    } finally {
      await pool.end();
    }
  });

  it('validates ids and input', async () => {
    const user = newId();
    expect((await errorOf(client.getRoom({ context: undefined, roomId: 'x.>' }, as(user)))).code).toBe(ErrorCode.ERROR_CODE_INVALID_ARGUMENT);
    expect((await errorOf(client.createRoom(createRequest({ name: '  ' }), as(user)))).code).toBe(ErrorCode.ERROR_CODE_INVALID_ARGUMENT);
    expect((await errorOf(client.createRoom(createRequest({ memberIds: ['bad id'] }), as(user)))).code).toBe(ErrorCode.ERROR_CODE_INVALID_ARGUMENT);
    expect((await errorOf(client.createRoom(createRequest({ ownerId: newId() }), as(user)))).code).toBe(ErrorCode.ERROR_CODE_PERMISSION_DENIED);
    const byInternal = await client.createRoom(createRequest({ ownerId: user }), internal());
    expect(byInternal.room).toMatchObject({ ownerId: user, createdBy: '' });
    const archived = await client.archiveRoom({ context: undefined, roomId: byInternal.room!.roomId, reason: '' }, internal());
    expect(archived.room!.state).toBe(roomV1.RoomState.ROOM_STATE_ARCHIVED);
  });

  it.each([
    ['PostgreSQL', { DATABASE_URL: 'postgres://switchboard:switchboard@127.0.0.1:1/switchboard' }],
    ['NATS', { NATS_URL: 'nats://127.0.0.1:1' }],
  ])('exits non-zero when %s cannot be reached at start', async (dependency, env) => {
    const failed = await startRoom(env).then(
      () => undefined,
      (err: Error) => err,
    );
    expect(failed?.message).toMatch(/exited with 1/);
    expect(failed?.message).toContain(`cannot reach ${dependency}`);
  });
});
