// Room's lifecycle, membership, invites, bans, pins, search and bad input,
// against the real service process, PostgreSQL and NATS. Every refused call
// is checked for its specific error and for leaving the state as it was.
import { errorOf, eventually, infraEnv, type ServiceProcess } from '@switchboard/devenv';
import { ErrorCode } from '@switchboard/errors';
import { newId } from '@switchboard/ids';
import { createPool, withTenantTransaction, type Pool } from '@switchboard/postgres';
import { eventsV1, roomV1 } from '@switchboard/proto';
import { addWithRole, contexts, createRequest, page, startRoom, type RoomClient } from './support/rooms';

const { RoomVisibility: V, RoomState: S, Permission: P, DenialReason: D, InviteState: I } = roomV1;
const { RoomRole: R } = eventsV1;

describe('room lifecycle, membership and bad input', () => {
  const tenantId = newId();
  const otherTenant = newId();
  const { as, internal } = contexts(tenantId);
  let service: ServiceProcess;
  let client: RoomClient;
  let pool: Pool;

  beforeAll(async () => {
    ({ service, client } = await startRoom({ MAX_PINS: '3', DELETED_ROOM_RETENTION_MS: '1', PURGE_INTERVAL_MS: '200' }));
    pool = createPool({ connectionString: infraEnv().DATABASE_URL!, applicationName: 'room-lifecycle-test', schema: 'room', max: 2 });
  });

  afterAll(async () => {
    client?.close();
    await pool?.end();
    expect(await service?.stop()).toBe(0);
  });

  const room = async (roomId: string) => (await client.getRoom({ context: undefined, roomId }, internal())).room!;
  const memberIds = async (roomId: string) => (await client.listMembers({ context: undefined, roomId, roles: [], page: page() }, internal())).members.map((m) => m.userId).sort();
  /** As messaging asks: an internal caller naming the user. */
  const check = (roomId: string, userId: string, permissions: roomV1.Permission[] = []) => client.checkPermission({ context: undefined, roomId, userId, permissions }, internal());
  const rows = async (table: string, roomId: string) =>
    withTenantTransaction(pool, tenantId, async (db) => Number((await db.query(`SELECT count(*) AS n FROM ${table} WHERE room_id = $1`, [roomId])).rows[0].n));

  describe('archive and restore', () => {
    it('makes a room read-only and hidden from default lists until restored', async () => {
      const [owner, member, outsider] = [newId(), newId(), newId()];
      const { room: created } = await client.createRoom(createRequest({ name: 'Archived ward', visibility: V.ROOM_VISIBILITY_PUBLIC, memberIds: [member] }), as(owner));
      const roomId = created!.roomId;
      const archived = await client.archiveRoom({ context: undefined, roomId, reason: 'ward closed' }, as(owner));
      expect(archived.room).toMatchObject({ state: S.ROOM_STATE_ARCHIVED, version: 2 });
      expect(archived.room!.archivedAt).toBeInstanceOf(Date);

      const mine = (includeArchived: boolean) => client.listMyRooms({ context: undefined, userId: '', includeArchived, roles: [], page: page() }, as(member));
      expect((await mine(false)).rooms).toEqual([]);
      expect((await mine(true)).rooms.map((r) => r.room!.roomId)).toEqual([roomId]);

      // Read-only: reading stays, nothing else; each refusal is specific and changes nothing.
      const permissions = await check(roomId, member, [P.PERMISSION_READ, P.PERMISSION_POST]);
      expect(permissions.results.map((r) => [r.allowed, r.reason])).toEqual([
        [true, D.DENIAL_REASON_UNSPECIFIED],
        [false, D.DENIAL_REASON_ROOM_ARCHIVED],
      ]);
      expect([permissions.roomState, permissions.roomVisibility]).toEqual([S.ROOM_STATE_ARCHIVED, V.ROOM_VISIBILITY_PUBLIC]);
      const refusals = [
        client.joinRoom({ context: undefined, roomId }, as(outsider)),
        client.updateRoom({ context: undefined, room: { ...created!, topic: 'new' }, updateMask: ['topic'], expectedVersion: 0 }, as(owner)),
        client.pinMessage({ context: undefined, roomId, messageId: newId(), seq: 3 }, as(owner)),
        client.createInvite({ context: undefined, roomId, inviteeId: outsider, role: 0, message: '', expiresAt: undefined }, as(owner)),
        client.addMembers({ context: undefined, roomId, userIds: [outsider], role: 0 }, internal()),
        client.archiveRoom({ context: undefined, roomId, reason: '' }, as(owner)),
      ];
      for (const refusal of refusals) expect((await errorOf(refusal)).code).toBe(ErrorCode.ERROR_CODE_FAILED_PRECONDITION);
      expect(await room(roomId)).toMatchObject({ state: S.ROOM_STATE_ARCHIVED, version: 2, topic: '', memberCount: 2 });
      expect(await memberIds(roomId)).toEqual([member, owner].sort());
      // A member may still leave an archived room.
      await client.leaveRoom({ context: undefined, roomId }, as(member));

      const restored = await client.unarchiveRoom({ context: undefined, roomId }, as(owner));
      expect(restored.room).toMatchObject({ state: S.ROOM_STATE_ACTIVE, version: 3, archivedAt: undefined });
      await client.joinRoom({ context: undefined, roomId }, as(outsider));
      expect((await errorOf(client.unarchiveRoom({ context: undefined, roomId }, as(owner)))).code).toBe(ErrorCode.ERROR_CODE_FAILED_PRECONDITION);
    });
  });

  describe('delete', () => {
    it('takes access away at once, leaves every listing, and is purged after the retention', async () => {
      const [owner, member] = [newId(), newId()];
      const { room: created } = await client.createRoom(createRequest({ name: 'Delete me soon', visibility: V.ROOM_VISIBILITY_PUBLIC, memberIds: [member] }), as(owner));
      const roomId = created!.roomId;
      await client.pinMessage({ context: undefined, roomId, messageId: newId(), seq: 1 }, as(owner));
      expect((await check(roomId, member, [P.PERMISSION_POST])).allowed).toBe(true);

      expect((await errorOf(client.deleteRoom({ context: undefined, roomId, expectedVersion: 0 }, as(member)))).code).toBe(ErrorCode.ERROR_CODE_PERMISSION_DENIED);
      expect((await errorOf(client.deleteRoom({ context: undefined, roomId, expectedVersion: 7 }, as(owner)))).code).toBe(ErrorCode.ERROR_CODE_CONFLICT);
      await client.deleteRoom({ context: undefined, roomId, expectedVersion: 1 }, as(owner));

      const denied = await check(roomId, member, [P.PERMISSION_READ, P.PERMISSION_POST]);
      // A deleted room shows nothing of itself, its visibility included.
      expect(denied).toMatchObject({ allowed: false, member: undefined, roomState: S.ROOM_STATE_DELETED, roomVisibility: V.ROOM_VISIBILITY_UNSPECIFIED });
      expect(denied.results.map((r) => r.reason)).toEqual([D.DENIAL_REASON_ROOM_NOT_FOUND, D.DENIAL_REASON_ROOM_NOT_FOUND]);
      for (const call of [
        client.getRoom({ context: undefined, roomId }, as(member)),
        client.getRoom({ context: undefined, roomId }, internal()),
        client.joinRoom({ context: undefined, roomId }, as(newId())),
        client.listMembers({ context: undefined, roomId, roles: [], page: page() }, as(owner)),
        client.deleteRoom({ context: undefined, roomId, expectedVersion: 0 }, as(owner)),
        client.unarchiveRoom({ context: undefined, roomId }, as(owner)),
      ]) {
        expect((await errorOf(call)).code).toBe(ErrorCode.ERROR_CODE_NOT_FOUND);
      }
      expect((await client.listMyRooms({ context: undefined, userId: '', includeArchived: true, roles: [], page: page() }, as(member))).rooms).toEqual([]);
      expect((await client.batchGetRooms({ context: undefined, roomIds: [roomId] }, internal())).rooms).toEqual([]);
      expect((await client.searchRooms({ context: undefined, query: 'Delete me soon', visibility: 0, includeArchived: true, page: page() }, as(owner))).results).toEqual([]);

      // The purger (retention 1 ms here) removes the rows: the room, its members and its pins.
      await eventually(async () => (await rows('rooms', roomId)) === 0, 15_000, 'the purge');
      expect(await rows('room_members', roomId)).toBe(0);
      expect(await rows('room_pins', roomId)).toBe(0);
    });
  });

  describe('membership, roles and ownership', () => {
    it('keeps a private room to invitees, with NOT_FOUND for anyone else', async () => {
      const [owner, stranger] = [newId(), newId()];
      const { room: created } = await client.createRoom(createRequest({ name: 'Private' }), as(owner));
      const roomId = created!.roomId;
      expect((await errorOf(client.joinRoom({ context: undefined, roomId }, as(stranger)))).code).toBe(ErrorCode.ERROR_CODE_NOT_FOUND);
      expect(await memberIds(roomId)).toEqual([owner]);
      expect((await check(roomId, stranger)).results.every((r) => r.reason === D.DENIAL_REASON_NOT_MEMBER)).toBe(true);
    });

    it('transfers ownership, after which the previous owner may leave', async () => {
      const [owner, heir, member] = [newId(), newId(), newId()];
      const { room: created } = await client.createRoom(createRequest({ name: 'Handover', memberIds: [heir, member] }), as(owner));
      const roomId = created!.roomId;
      expect((await errorOf(client.leaveRoom({ context: undefined, roomId }, as(owner)))).code).toBe(ErrorCode.ERROR_CODE_FAILED_PRECONDITION);
      expect((await errorOf(client.transferOwnership({ context: undefined, roomId, newOwnerId: member, previousOwnerRole: 0 }, as(heir)))).code).toBe(ErrorCode.ERROR_CODE_PERMISSION_DENIED);
      const outsider = await errorOf(client.transferOwnership({ context: undefined, roomId, newOwnerId: newId(), previousOwnerRole: 0 }, as(owner)));
      expect([outsider.code, outsider.field]).toEqual([ErrorCode.ERROR_CODE_FAILED_PRECONDITION, 'new_owner_id']);
      expect((await room(roomId)).ownerId).toBe(owner);

      const moved = await client.transferOwnership({ context: undefined, roomId, newOwnerId: heir, previousOwnerRole: 0 }, as(owner));
      expect(moved.newOwner).toMatchObject({ userId: heir, role: R.ROOM_ROLE_OWNER });
      expect(moved.previousOwner).toMatchObject({ userId: owner, role: R.ROOM_ROLE_ADMIN });
      expect(await room(roomId)).toMatchObject({ ownerId: heir, version: 2 });
      await client.leaveRoom({ context: undefined, roomId }, as(owner));
      expect(await memberIds(roomId)).toEqual([heir, member].sort());
    });

    it('lets roles act only on lower roles and grant only lower roles', async () => {
      const [owner, admin, moderator, member] = [newId(), newId(), newId(), newId()];
      const { room: created } = await client.createRoom(createRequest({ name: 'Ranks', memberIds: [member] }), as(owner));
      const roomId = created!.roomId;
      await addWithRole(client, tenantId, roomId, R.ROOM_ROLE_ADMIN, admin);
      await addWithRole(client, tenantId, roomId, R.ROOM_ROLE_MODERATOR, moderator);
      const attempts: [Promise<unknown>, ErrorCode][] = [
        [client.removeMember({ context: undefined, roomId, userId: admin, reason: '' }, as(moderator)), ErrorCode.ERROR_CODE_PERMISSION_DENIED],
        [client.removeMember({ context: undefined, roomId, userId: owner, reason: '' }, as(admin)), ErrorCode.ERROR_CODE_PERMISSION_DENIED],
        [client.banMember({ context: undefined, roomId, userId: owner, reason: '', expiresAt: undefined }, as(admin)), ErrorCode.ERROR_CODE_PERMISSION_DENIED],
        [client.updateMemberRole({ context: undefined, roomId, userId: member, role: R.ROOM_ROLE_ADMIN }, as(admin)), ErrorCode.ERROR_CODE_PERMISSION_DENIED],
        [client.updateMemberRole({ context: undefined, roomId, userId: member, role: R.ROOM_ROLE_OWNER }, as(owner)), ErrorCode.ERROR_CODE_INVALID_ARGUMENT],
        [client.addMembers({ context: undefined, roomId, userIds: [newId()], role: R.ROOM_ROLE_MODERATOR }, as(moderator)), ErrorCode.ERROR_CODE_PERMISSION_DENIED],
        [client.removeMember({ context: undefined, roomId, userId: newId(), reason: '' }, as(admin)), ErrorCode.ERROR_CODE_NOT_FOUND],
        [client.removeMember({ context: undefined, roomId, userId: admin, reason: '' }, as(admin)), ErrorCode.ERROR_CODE_INVALID_ARGUMENT],
      ];
      for (const [attempt, code] of attempts) expect((await errorOf(attempt)).code).toBe(code);
      const roles = (await client.listMembers({ context: undefined, roomId, roles: [], page: page() }, internal())).members.map((m) => [m.userId, m.role]);
      expect(roles).toEqual([
        [owner, R.ROOM_ROLE_OWNER],
        [admin, R.ROOM_ROLE_ADMIN],
        [moderator, R.ROOM_ROLE_MODERATOR],
        [member, R.ROOM_ROLE_MEMBER],
      ]);
      // An admin may make moderators; a moderator may add guests.
      await client.updateMemberRole({ context: undefined, roomId, userId: member, role: R.ROOM_ROLE_MODERATOR }, as(admin));
      const added = await client.addMembers({ context: undefined, roomId, userIds: [newId(), member], role: R.ROOM_ROLE_GUEST }, as(moderator));
      expect(added.added.map((m) => m.role)).toEqual([R.ROOM_ROLE_GUEST]);
      expect(added.alreadyMemberIds).toEqual([member]);
    });

    it('bans: removes, keeps out until unbanned, and reports banned users in AddMembers', async () => {
      const [owner, troll] = [newId(), newId()];
      const { room: created } = await client.createRoom(createRequest({ name: 'Open forum', visibility: V.ROOM_VISIBILITY_PUBLIC, memberIds: [troll] }), as(owner));
      const roomId = created!.roomId;
      const past = await errorOf(client.banMember({ context: undefined, roomId, userId: troll, reason: '', expiresAt: new Date(Date.now() - 1000) }, as(owner)));
      expect([past.code, past.field]).toEqual([ErrorCode.ERROR_CODE_INVALID_ARGUMENT, 'expires_at']);
      expect(await memberIds(roomId)).toContain(troll);

      const { ban } = await client.banMember({ context: undefined, roomId, userId: troll, reason: 'spam', expiresAt: undefined }, as(owner));
      expect(ban).toMatchObject({ roomId, userId: troll, bannedBy: owner, reason: 'spam' });
      expect(await memberIds(roomId)).toEqual([owner]);
      expect((await check(roomId, troll, [P.PERMISSION_READ])).results[0]!.reason).toBe(D.DENIAL_REASON_BANNED);
      const rejoin = await errorOf(client.joinRoom({ context: undefined, roomId }, as(troll)));
      expect([rejoin.code, rejoin.message]).toEqual([ErrorCode.ERROR_CODE_PERMISSION_DENIED, `you are banned from room ${roomId}`]);
      const viaAdd = await client.addMembers({ context: undefined, roomId, userIds: [troll], role: 0 }, internal());
      expect(viaAdd).toMatchObject({ added: [], bannedIds: [troll] });
      expect((await client.listBans({ context: undefined, roomId, page: page() }, as(owner))).bans.map((b) => b.userId)).toEqual([troll]);
      expect(await memberIds(roomId)).toEqual([owner]);

      await client.unbanMember({ context: undefined, roomId, userId: troll }, as(owner));
      expect((await errorOf(client.unbanMember({ context: undefined, roomId, userId: troll }, as(owner)))).code).toBe(ErrorCode.ERROR_CODE_NOT_FOUND);
      await client.joinRoom({ context: undefined, roomId }, as(troll));
    });

    it('enforces the member limit and records when history starts for new members', async () => {
      const [owner, first, second] = [newId(), newId(), newId()];
      const { room: created } = await client.createRoom(
        createRequest({ name: 'Small group', visibility: V.ROOM_VISIBILITY_PUBLIC, settings: { memberLimit: 2, announcementOnly: false, historyVisibleToNewMembers: false } }),
        as(owner),
      );
      const roomId = created!.roomId;
      const joined = await client.joinRoom({ context: undefined, roomId }, as(first));
      expect(joined.member!.historyVisibleFrom).toBeInstanceOf(Date);
      const full = await errorOf(client.joinRoom({ context: undefined, roomId }, as(second)));
      expect(full.code).toBe(ErrorCode.ERROR_CODE_QUOTA_EXCEEDED);
      expect(await memberIds(roomId)).toEqual([owner, first].sort());
      const tooSmall = await errorOf(client.updateRoom({ context: undefined, room: { ...created!, settings: { memberLimit: 1, announcementOnly: false, historyVisibleToNewMembers: false } }, updateMask: ['settings.member_limit'], expectedVersion: 0 }, as(owner)));
      expect(tooSmall.code).toBe(ErrorCode.ERROR_CODE_FAILED_PRECONDITION);

      await client.updateRoom({ context: undefined, room: { ...created!, settings: { memberLimit: 3, announcementOnly: true, historyVisibleToNewMembers: true } }, updateMask: ['settings'], expectedVersion: 1 }, as(owner));
      const later = await client.joinRoom({ context: undefined, roomId }, as(second));
      expect(later.member!.historyVisibleFrom).toBeUndefined();
      // Announcement-only: the member reads but does not post; the owner posts.
      expect((await check(roomId, second, [P.PERMISSION_READ, P.PERMISSION_POST])).results.map((r) => r.reason)).toEqual([D.DENIAL_REASON_UNSPECIFIED, D.DENIAL_REASON_ANNOUNCEMENT_ONLY]);
      expect((await check(roomId, owner, [P.PERMISSION_POST])).allowed).toBe(true);
    });

    it('answers CheckPermission from the committed state: a removed member is refused at once', async () => {
      const [owner, member] = [newId(), newId()];
      const { room: created } = await client.createRoom(createRequest({ name: 'Immediate', memberIds: [member] }), as(owner));
      const roomId = created!.roomId;
      const before = await check(roomId, member, [P.PERMISSION_POST]);
      expect(before.allowed).toBe(true);
      expect(before.member).toMatchObject({ userId: member, role: R.ROOM_ROLE_MEMBER });
      await client.removeMember({ context: undefined, roomId, userId: member, reason: '' }, as(owner));
      const after = await check(roomId, member, [P.PERMISSION_POST]);
      expect(after).toMatchObject({ allowed: false, member: undefined });
      expect(after.results[0]!.reason).toBe(D.DENIAL_REASON_NOT_MEMBER);
      // A user asks for themselves; only internal callers name someone else.
      expect((await client.checkPermission({ context: undefined, roomId, userId: '', permissions: [P.PERMISSION_READ] }, as(owner))).allowed).toBe(true);
      expect((await errorOf(client.checkPermission({ context: undefined, roomId, userId: member, permissions: [] }, as(owner)))).code).toBe(ErrorCode.ERROR_CODE_PERMISSION_DENIED);
      expect((await errorOf(client.checkPermission({ context: undefined, roomId, userId: '', permissions: [99 as roomV1.Permission] }, as(owner)))).code).toBe(ErrorCode.ERROR_CODE_INVALID_ARGUMENT);
    });
  });

  describe('invites', () => {
    it('user invites: accept, decline, revoke, expiry, and only by the invitee', async () => {
      const [owner, nurse, doctor, intern, someoneElse] = [newId(), newId(), newId(), newId(), newId()];
      const { room: created } = await client.createRoom(createRequest({ name: 'Invite only' }), as(owner));
      const roomId = created!.roomId;
      const { invite } = await client.createInvite({ context: undefined, roomId, inviteeId: nurse, role: 0, message: 'join us', expiresAt: undefined }, as(owner));
      expect(invite).toMatchObject({ state: I.INVITE_STATE_PENDING, role: R.ROOM_ROLE_MEMBER, inviteeId: nurse, createdBy: owner, message: 'join us' });
      const pending = await client.listMyInvites({ context: undefined, page: page() }, as(nurse));
      expect(pending.invites.map((i) => [i.invite!.inviteId, i.room!.name])).toEqual([[invite!.inviteId, 'Invite only']]);

      expect((await errorOf(client.acceptInvite({ context: undefined, invite: { $case: 'inviteId', value: invite!.inviteId } }, as(someoneElse)))).code).toBe(ErrorCode.ERROR_CODE_NOT_FOUND);
      expect((await errorOf(client.getInvite({ context: undefined, invite: { $case: 'inviteId', value: invite!.inviteId } }, as(someoneElse)))).code).toBe(ErrorCode.ERROR_CODE_NOT_FOUND);
      const accepted = await client.acceptInvite({ context: undefined, invite: { $case: 'inviteId', value: invite!.inviteId } }, as(nurse));
      expect(accepted.member).toMatchObject({ userId: nurse, role: R.ROOM_ROLE_MEMBER, addedBy: owner });
      const twice = await errorOf(client.acceptInvite({ context: undefined, invite: { $case: 'inviteId', value: invite!.inviteId } }, as(nurse)));
      expect([twice.code, twice.message]).toEqual([ErrorCode.ERROR_CODE_FAILED_PRECONDITION, 'the invite was already accepted']);

      const { invite: declined } = await client.createInvite({ context: undefined, roomId, inviteeId: doctor, role: R.ROOM_ROLE_GUEST, message: '', expiresAt: undefined }, as(owner));
      await client.declineInvite({ context: undefined, inviteId: declined!.inviteId }, as(doctor));
      expect((await errorOf(client.acceptInvite({ context: undefined, invite: { $case: 'inviteId', value: declined!.inviteId } }, as(doctor)))).message).toBe('the invite was declined');

      const { invite: revoked } = await client.createInvite({ context: undefined, roomId, inviteeId: intern, role: 0, message: '', expiresAt: undefined }, as(owner));
      expect((await client.revokeInvite({ context: undefined, inviteId: revoked!.inviteId }, as(owner))).invite!.state).toBe(I.INVITE_STATE_REVOKED);
      expect((await errorOf(client.acceptInvite({ context: undefined, invite: { $case: 'inviteId', value: revoked!.inviteId } }, as(intern)))).message).toBe('the invite was revoked');

      const { invite: expiring } = await client.createInvite({ context: undefined, roomId, inviteeId: intern, role: 0, message: '', expiresAt: new Date(Date.now() + 1500) }, as(owner));
      await eventually(
        async () => (await client.getInvite({ context: undefined, invite: { $case: 'inviteId', value: expiring!.inviteId } }, as(intern))).invite!.state === I.INVITE_STATE_EXPIRED,
        10_000,
        'the invite expires',
      );
      const expired = await errorOf(client.acceptInvite({ context: undefined, invite: { $case: 'inviteId', value: expiring!.inviteId } }, as(intern)));
      expect([expired.code, expired.message]).toEqual([ErrorCode.ERROR_CODE_FAILED_PRECONDITION, 'the invite has expired']);
      expect((await client.listMyInvites({ context: undefined, page: page() }, as(intern))).invites).toEqual([]);
      const byState = await client.listRoomInvites({ context: undefined, roomId, states: [I.INVITE_STATE_EXPIRED, I.INVITE_STATE_DECLINED], page: page() }, as(owner));
      expect(byState.invites.map((i) => i.inviteId).sort()).toEqual([declined!.inviteId, expiring!.inviteId].sort());
      expect(await memberIds(roomId)).toEqual([nurse, owner].sort());
    });

    it('links: a use limit that is never exceeded, required expiry, banned users refused', async () => {
      const [owner, banned, ...users] = [newId(), newId(), newId(), newId(), newId()];
      const { room: created } = await client.createRoom(createRequest({ name: 'Group session' }), as(owner));
      const roomId = created!.roomId;
      const noExpiry = await errorOf(client.createInviteLink({ context: undefined, roomId, role: 0, expiresAt: undefined, maxUses: 2 }, as(owner)));
      expect([noExpiry.code, noExpiry.field]).toEqual([ErrorCode.ERROR_CODE_INVALID_ARGUMENT, 'expires_at']);
      const tooLong = await errorOf(client.createInviteLink({ context: undefined, roomId, role: 0, expiresAt: new Date(Date.now() + 365 * 86_400_000), maxUses: 2 }, as(owner)));
      expect([tooLong.code, tooLong.field]).toEqual([ErrorCode.ERROR_CODE_INVALID_ARGUMENT, 'expires_at']);

      await client.banMember({ context: undefined, roomId, userId: banned, reason: '', expiresAt: undefined }, as(owner));
      const { invite, token } = await client.createInviteLink({ context: undefined, roomId, role: R.ROOM_ROLE_GUEST, expiresAt: new Date(Date.now() + 3_600_000), maxUses: 2 }, as(owner));
      expect(token).toMatch(/^[A-Za-z0-9_-]{32}$/);
      // Only the hash is stored.
      const stored = await withTenantTransaction(pool, tenantId, async (db) => (await db.query(`SELECT token_hash FROM room_invites WHERE invite_id = $1`, [invite!.inviteId])).rows[0].token_hash);
      expect(stored).not.toContain(token);
      expect((await errorOf(client.acceptInvite({ context: undefined, invite: { $case: 'token', value: token } }, as(banned)))).code).toBe(ErrorCode.ERROR_CODE_PERMISSION_DENIED);

      // Three users race for two uses.
      const outcomes = await Promise.allSettled(users.map((userId) => client.acceptInvite({ context: undefined, invite: { $case: 'token', value: token } }, as(userId))));
      expect(outcomes.filter((o) => o.status === 'fulfilled')).toHaveLength(2);
      const refused = outcomes.find((o) => o.status === 'rejected') as PromiseRejectedResult;
      expect([refused.reason.code, refused.reason.message]).toEqual([ErrorCode.ERROR_CODE_FAILED_PRECONDITION, 'the invite has reached its use limit']);
      const after = await client.getInvite({ context: undefined, invite: { $case: 'token', value: token } }, as(newId()));
      expect(after.invite).toMatchObject({ state: I.INVITE_STATE_EXHAUSTED, useCount: 2 });
      expect((await room(roomId)).memberCount).toBe(3);
      expect((await errorOf(client.getInvite({ context: undefined, invite: { $case: 'token', value: 'x'.repeat(32) } }, as(owner)))).code).toBe(ErrorCode.ERROR_CODE_NOT_FOUND);
      expect((await errorOf(client.getInvite({ context: undefined, invite: { $case: 'token', value: token } }, as(owner, otherTenant)))).code).toBe(ErrorCode.ERROR_CODE_NOT_FOUND);
    });
  });

  describe('pins', () => {
    it('pins up to the cap, newest first, and unpins', async () => {
      const owner = newId();
      const { room: created } = await client.createRoom(createRequest({ name: 'Pins' }), as(owner));
      const roomId = created!.roomId;
      const ids = [newId(), newId(), newId(), newId()];
      for (const [i, messageId] of ids.slice(0, 3).entries()) await client.pinMessage({ context: undefined, roomId, messageId, seq: i + 1 }, as(owner));
      // Pinning again is a no-op, not a new pin.
      await client.pinMessage({ context: undefined, roomId, messageId: ids[0]!, seq: 1 }, as(owner));
      const full = await errorOf(client.pinMessage({ context: undefined, roomId, messageId: ids[3]!, seq: 4 }, as(owner)));
      expect(full.code).toBe(ErrorCode.ERROR_CODE_QUOTA_EXCEEDED);
      const listed = await client.listPins({ context: undefined, roomId, page: page() }, as(owner));
      expect(listed.pins.map((p) => p.messageId)).toEqual([ids[2], ids[1], ids[0]]);
      await client.unpinMessage({ context: undefined, roomId, messageId: ids[1]! }, as(owner));
      expect((await errorOf(client.unpinMessage({ context: undefined, roomId, messageId: ids[1]! }, as(owner)))).code).toBe(ErrorCode.ERROR_CODE_NOT_FOUND);
      const noSeq = await errorOf(client.pinMessage({ context: undefined, roomId, messageId: ids[3]!, seq: 0 }, as(owner)));
      expect([noSeq.code, noSeq.field]).toEqual([ErrorCode.ERROR_CODE_INVALID_ARGUMENT, 'seq']);
      expect((await client.listPins({ context: undefined, roomId, page: page() }, as(owner))).pins).toHaveLength(2);
    });
  });

  describe('bad input', () => {
    it('refuses oversized metadata, markup in names and unknown fields, and changes nothing', async () => {
      const owner = newId();
      const { room: created } = await client.createRoom(createRequest({ name: 'Stable', topic: 'as it was', metadata: { ward: '4' } }), as(owner));
      const roomId = created!.roomId;
      const before = await room(roomId);
      const tooMany = Object.fromEntries(Array.from({ length: 33 }, (_, i) => [`k${i}`, 'v']));
      const attempts: [Partial<roomV1.Room>, string[], string][] = [
        [{ metadata: tooMany }, ['metadata'], 'room.metadata'],
        [{ metadata: { ward: 'x'.repeat(513) } }, ['metadata'], 'room.metadata'],
        [{ metadata: { 'bad key!': 'v' } }, ['metadata'], 'room.metadata'],
        [{ name: '<script>alert(1)</script>' }, ['name'], 'room.name'],
        [{ name: 'Ward &amp; co' }, ['name'], 'room.name'],
        [{ name: '   ' }, ['name'], 'room.name'],
        [{ name: 'x'.repeat(101) }, ['name'], 'room.name'],
        [{ topic: '<b>bold</b>' }, ['topic'], 'room.topic'],
        [{ description: 'd'.repeat(4001) }, ['description'], 'room.description'],
        [{ topic: 'new' }, ['owner_id'], 'update_mask'],
        [{ topic: 'new' }, [], 'update_mask'],
        [{ visibility: 7 as roomV1.RoomVisibility }, ['visibility'], 'room.visibility'],
      ];
      for (const [fields, mask, field] of attempts) {
        const err = await errorOf(client.updateRoom({ context: undefined, room: { ...created!, ...fields }, updateMask: mask, expectedVersion: 0 }, as(owner)));
        expect([mask.join(), err.code, err.field]).toEqual([mask.join(), ErrorCode.ERROR_CODE_INVALID_ARGUMENT, field]);
      }
      const stale = await errorOf(client.updateRoom({ context: undefined, room: { ...created!, topic: 'new' }, updateMask: ['topic'], expectedVersion: 9 }, as(owner)));
      expect([stale.code, stale.field]).toEqual([ErrorCode.ERROR_CODE_CONFLICT, 'expected_version']);
      expect(await room(roomId)).toEqual(before);

      const createErrors: [Partial<roomV1.CreateRoomRequest>, string][] = [
        [{ name: '<img src=x onerror=alert(1)>' }, 'name'],
        [{ metadata: tooMany }, 'metadata'],
        [{ settings: { memberLimit: 1_000_000, announcementOnly: false, historyVisibleToNewMembers: false } }, 'settings.member_limit'],
        [{ requestId: 'not safe!' }, 'request_id'],
        [{ visibility: 9 as roomV1.RoomVisibility }, 'visibility'],
      ];
      for (const [fields, field] of createErrors) {
        const err = await errorOf(client.createRoom(createRequest({ name: 'Never created', ...fields }), as(owner)));
        expect([field, err.code, err.field]).toEqual([field, ErrorCode.ERROR_CODE_INVALID_ARGUMENT, field]);
      }
      const listed = await client.listMyRooms({ context: undefined, userId: '', includeArchived: true, roles: [], page: page() }, as(owner));
      expect(listed.rooms.map((r) => r.room!.name)).toEqual(['Stable']);
      const badToken = await errorOf(client.listMyRooms({ context: undefined, userId: '', includeArchived: false, roles: [], page: page(10, 'bm9wZQ') }, as(owner)));
      expect([badToken.code, badToken.field]).toEqual([ErrorCode.ERROR_CODE_INVALID_ARGUMENT, 'page.page_token']);
    });

    it('answers NOT_FOUND for ids of another tenant, on every call that names a room, and changes nothing', async () => {
      const [owner, member] = [newId(), newId()];
      const { room: created } = await client.createRoom(createRequest({ name: 'Tenant A', visibility: V.ROOM_VISIBILITY_PUBLIC, memberIds: [member] }), as(owner));
      const roomId = created!.roomId;
      const { invite } = await client.createInvite({ context: undefined, roomId, inviteeId: newId(), role: 0, message: '', expiresAt: undefined }, as(owner));
      await client.pinMessage({ context: undefined, roomId, messageId: 'm1', seq: 1 }, as(owner));
      const before = await room(roomId);
      // The same user ids, acting in another tenant (and that tenant's internal systems).
      const b = contexts(otherTenant);
      const callers = [b.as(owner), b.internal(otherTenant, owner)];
      for (const ctx of callers) {
        const calls: Promise<unknown>[] = [
          client.getRoom({ context: undefined, roomId }, ctx),
          client.updateRoom({ context: undefined, room: { ...created!, topic: 'stolen' }, updateMask: ['topic'], expectedVersion: 0 }, ctx),
          client.archiveRoom({ context: undefined, roomId, reason: '' }, ctx),
          client.unarchiveRoom({ context: undefined, roomId }, ctx),
          client.deleteRoom({ context: undefined, roomId, expectedVersion: 0 }, ctx),
          client.addMembers({ context: undefined, roomId, userIds: [newId()], role: 0 }, ctx),
          client.removeMember({ context: undefined, roomId, userId: member, reason: '' }, ctx),
          client.banMember({ context: undefined, roomId, userId: member, reason: '', expiresAt: undefined }, ctx),
          client.unbanMember({ context: undefined, roomId, userId: member }, ctx),
          client.listBans({ context: undefined, roomId, page: page() }, ctx),
          client.getMember({ context: undefined, roomId, userId: member }, ctx),
          client.listMembers({ context: undefined, roomId, roles: [], page: page() }, ctx),
          client.updateMemberRole({ context: undefined, roomId, userId: member, role: R.ROOM_ROLE_ADMIN }, ctx),
          client.transferOwnership({ context: undefined, roomId, newOwnerId: member, previousOwnerRole: 0 }, ctx),
          client.createInvite({ context: undefined, roomId, inviteeId: newId(), role: 0, message: '', expiresAt: undefined }, ctx),
          client.createInviteLink({ context: undefined, roomId, role: 0, expiresAt: new Date(Date.now() + 60_000), maxUses: 0 }, ctx),
          client.getInvite({ context: undefined, invite: { $case: 'inviteId', value: invite!.inviteId } }, ctx),
          client.listRoomInvites({ context: undefined, roomId, states: [], page: page() }, ctx),
          client.revokeInvite({ context: undefined, inviteId: invite!.inviteId }, ctx),
          client.pinMessage({ context: undefined, roomId, messageId: 'm2', seq: 2 }, ctx),
          client.unpinMessage({ context: undefined, roomId, messageId: 'm1' }, ctx),
          client.listPins({ context: undefined, roomId, page: page() }, ctx),
          client.listAnnouncements({ context: undefined, roomId, includeExpired: true, page: page() }, ctx),
          client.deleteAnnouncement({ context: undefined, roomId, announcementId: newId() }, ctx),
          client.postAnnouncement({ context: undefined, roomId, title: 't', text: 'x', expiresAt: undefined, pin: false, requestId: newId() }, ctx),
        ];
        if (ctx === callers[0]) calls.push(client.joinRoom({ context: undefined, roomId }, ctx), client.leaveRoom({ context: undefined, roomId }, ctx));
        for (const [index, call] of calls.entries()) {
          const err = await errorOf(call);
          expect([index, err.code]).toEqual([index, ErrorCode.ERROR_CODE_NOT_FOUND]);
        }
        const checked = await client.checkPermission({ context: undefined, roomId, userId: owner, permissions: [P.PERMISSION_READ] }, b.internal());
        expect(checked).toMatchObject({ allowed: false, roomState: S.ROOM_STATE_UNSPECIFIED });
        expect((await client.batchGetRooms({ context: undefined, roomIds: [roomId] }, ctx)).rooms).toEqual([]);
      }
      expect(await room(roomId)).toEqual(before);
      expect(await memberIds(roomId)).toEqual([member, owner].sort());
      expect((await client.listPins({ context: undefined, roomId, page: page() }, internal())).pins.map((p) => p.messageId)).toEqual(['m1']);
      // A body context naming another tenant than the call's metadata is refused outright.
      const mismatch = await errorOf(client.getRoom({ context: { tenantId: otherTenant, userId: owner, deviceId: '', internal: false }, roomId }, as(owner)));
      expect(mismatch.code).toBe(ErrorCode.ERROR_CODE_PERMISSION_DENIED);
    });
  });
});
