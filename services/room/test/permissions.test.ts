// The permission matrix as pure logic: every role against every permission,
// and the room states and settings that override a role.
import { eventsV1, roomV1 } from '@switchboard/proto';
import { ALL_PERMISSIONS, ALL_ROLES, decide, outranks, PERMISSION_MATRIX } from '../src/permissions';

const { Permission: P, DenialReason, RoomState } = roomV1;
const { RoomRole: R } = eventsV1;

/** The documented matrix (docs/rooms.md), written out independently of the code's table. */
const EXPECTED: Record<string, string[]> = {
  OWNER: ['READ', 'POST', 'INVITE', 'REMOVE_MEMBER', 'BAN_MEMBER', 'MANAGE_ROLES', 'PIN', 'ANNOUNCE', 'CHANGE_SETTINGS', 'ARCHIVE', 'DELETE'],
  ADMIN: ['READ', 'POST', 'INVITE', 'REMOVE_MEMBER', 'BAN_MEMBER', 'MANAGE_ROLES', 'PIN', 'ANNOUNCE', 'CHANGE_SETTINGS', 'ARCHIVE'],
  MODERATOR: ['READ', 'POST', 'INVITE', 'REMOVE_MEMBER', 'BAN_MEMBER', 'PIN'],
  MEMBER: ['READ', 'POST'],
  GUEST: ['READ'],
};
const name = (permission: roomV1.Permission) => roomV1.permissionToJSON(permission).replace('PERMISSION_', '');
const roleName = (role: eventsV1.RoomRole) => eventsV1.roomRoleToJSON(role).replace('ROOM_ROLE_', '');
const active = { state: RoomState.ROOM_STATE_ACTIVE, announcementOnly: false };

describe('permission matrix', () => {
  const cases = ALL_ROLES.flatMap((role) => ALL_PERMISSIONS.map((permission) => [roleName(role), name(permission), role, permission] as const));

  it.each(cases)('%s / %s in an active room', (roleLabel, permissionLabel, role, permission) => {
    const allowed = EXPECTED[roleLabel]!.includes(permissionLabel);
    expect(decide({ room: active, role, banned: false }, permission)).toEqual(
      allowed ? { allowed: true, reason: DenialReason.DENIAL_REASON_UNSPECIFIED } : { allowed: false, reason: DenialReason.DENIAL_REASON_ROLE },
    );
    expect(PERMISSION_MATRIX[role].has(permission)).toBe(allowed);
  });

  it.each(cases)('%s / %s in an archived room: only READ (and ARCHIVE, to restore) remain', (roleLabel, permissionLabel, role, permission) => {
    const byRole = EXPECTED[roleLabel]!.includes(permissionLabel);
    const decision = decide({ room: { ...active, state: RoomState.ROOM_STATE_ARCHIVED }, role, banned: false }, permission);
    if (!byRole) expect(decision.reason).toBe(DenialReason.DENIAL_REASON_ROLE);
    else if (permission === P.PERMISSION_READ || permission === P.PERMISSION_ARCHIVE) expect(decision.allowed).toBe(true);
    else expect(decision).toEqual({ allowed: false, reason: DenialReason.DENIAL_REASON_ROOM_ARCHIVED });
  });

  it('lets only owners and admins post in an announcement-only room', () => {
    const room = { ...active, announcementOnly: true };
    expect(ALL_ROLES.filter((role) => decide({ room, role, banned: false }, P.PERMISSION_POST).allowed)).toEqual([R.ROOM_ROLE_OWNER, R.ROOM_ROLE_ADMIN]);
    expect(decide({ room, role: R.ROOM_ROLE_MEMBER, banned: false }, P.PERMISSION_POST).reason).toBe(DenialReason.DENIAL_REASON_ANNOUNCEMENT_ONLY);
    expect(decide({ room, role: R.ROOM_ROLE_MEMBER, banned: false }, P.PERMISSION_READ).allowed).toBe(true);
  });

  it('denies everything in a deleted or missing room, and to non-members and banned users', () => {
    for (const permission of ALL_PERMISSIONS) {
      expect(decide({ room: { ...active, state: RoomState.ROOM_STATE_DELETED }, role: R.ROOM_ROLE_OWNER, banned: false }, permission).reason).toBe(DenialReason.DENIAL_REASON_ROOM_NOT_FOUND);
      expect(decide({ room: undefined, role: undefined, banned: false }, permission).reason).toBe(DenialReason.DENIAL_REASON_ROOM_NOT_FOUND);
      expect(decide({ room: active, role: undefined, banned: false }, permission).reason).toBe(DenialReason.DENIAL_REASON_NOT_MEMBER);
      expect(decide({ room: active, role: undefined, banned: true }, permission).reason).toBe(DenialReason.DENIAL_REASON_BANNED);
    }
  });

  it('ranks owner > admin > moderator > member > guest', () => {
    expect(outranks(R.ROOM_ROLE_OWNER, R.ROOM_ROLE_ADMIN)).toBe(true);
    expect(outranks(R.ROOM_ROLE_ADMIN, R.ROOM_ROLE_MODERATOR)).toBe(true);
    expect(outranks(R.ROOM_ROLE_MODERATOR, R.ROOM_ROLE_MEMBER)).toBe(true);
    expect(outranks(R.ROOM_ROLE_MEMBER, R.ROOM_ROLE_GUEST)).toBe(true);
    expect(outranks(R.ROOM_ROLE_ADMIN, R.ROOM_ROLE_ADMIN)).toBe(false);
    expect(outranks(R.ROOM_ROLE_GUEST, R.ROOM_ROLE_MEMBER)).toBe(false);
  });
});
