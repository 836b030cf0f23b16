import { roomV1, eventsV1 } from '@switchboard/proto';

const { Permission, DenialReason, RoomState } = roomV1;
const { RoomRole } = eventsV1;
type Permission = roomV1.Permission;
type RoomRole = eventsV1.RoomRole;

/** Every permission a room knows, in the enum's order. */
export const ALL_PERMISSIONS: Permission[] = [
  Permission.PERMISSION_READ,
  Permission.PERMISSION_POST,
  Permission.PERMISSION_INVITE,
  Permission.PERMISSION_REMOVE_MEMBER,
  Permission.PERMISSION_BAN_MEMBER,
  Permission.PERMISSION_MANAGE_ROLES,
  Permission.PERMISSION_PIN,
  Permission.PERMISSION_ANNOUNCE,
  Permission.PERMISSION_CHANGE_SETTINGS,
  Permission.PERMISSION_ARCHIVE,
  Permission.PERMISSION_DELETE,
];

export const ALL_ROLES: RoomRole[] = [RoomRole.ROOM_ROLE_OWNER, RoomRole.ROOM_ROLE_ADMIN, RoomRole.ROOM_ROLE_MODERATOR, RoomRole.ROOM_ROLE_MEMBER, RoomRole.ROOM_ROLE_GUEST];

const P = Permission;
/**
 * THE permission matrix: what each role may do in an active room. Every API
 * asks `decide` (below), which reads only this table plus the room's state
 * and settings; docs/rooms.md prints the same table and the test walks it.
 */
export const PERMISSION_MATRIX: Readonly<Record<RoomRole, ReadonlySet<Permission>>> = {
  [RoomRole.ROOM_ROLE_OWNER]: new Set(ALL_PERMISSIONS),
  [RoomRole.ROOM_ROLE_ADMIN]: new Set([P.PERMISSION_READ, P.PERMISSION_POST, P.PERMISSION_INVITE, P.PERMISSION_REMOVE_MEMBER, P.PERMISSION_BAN_MEMBER, P.PERMISSION_MANAGE_ROLES, P.PERMISSION_PIN, P.PERMISSION_ANNOUNCE, P.PERMISSION_CHANGE_SETTINGS, P.PERMISSION_ARCHIVE]),
  [RoomRole.ROOM_ROLE_MODERATOR]: new Set([P.PERMISSION_READ, P.PERMISSION_POST, P.PERMISSION_INVITE, P.PERMISSION_REMOVE_MEMBER, P.PERMISSION_BAN_MEMBER, P.PERMISSION_PIN]),
  [RoomRole.ROOM_ROLE_MEMBER]: new Set([P.PERMISSION_READ, P.PERMISSION_POST]),
  [RoomRole.ROOM_ROLE_GUEST]: new Set([P.PERMISSION_READ]),
  [RoomRole.ROOM_ROLE_UNSPECIFIED]: new Set(),
  [RoomRole.UNRECOGNIZED]: new Set(),
};

/** Roles that still post when the room is announcement-only. */
const ANNOUNCEMENT_ONLY_POSTERS: ReadonlySet<RoomRole> = new Set([RoomRole.ROOM_ROLE_OWNER, RoomRole.ROOM_ROLE_ADMIN]);

/** What a decision looks at: the room (undefined when it does not exist or is deleted) and the user's place in it. */
export interface Standing {
  room: { state: roomV1.RoomState; announcementOnly: boolean } | undefined;
  /** The user's role; undefined when not a member. */
  role: RoomRole | undefined;
  /** An active (unexpired) ban. */
  banned: boolean;
}

export interface Decision {
  allowed: boolean;
  reason: roomV1.DenialReason;
}

const ALLOW: Decision = { allowed: true, reason: DenialReason.DENIAL_REASON_UNSPECIFIED };
const deny = (reason: roomV1.DenialReason): Decision => ({ allowed: false, reason });

/** The one decision: may this user (standing) do this (permission)? */
export function decide(standing: Standing, permission: Permission): Decision {
  const { room, role } = standing;
  if (!room || room.state === RoomState.ROOM_STATE_DELETED) return deny(DenialReason.DENIAL_REASON_ROOM_NOT_FOUND);
  if (role === undefined) return deny(standing.banned ? DenialReason.DENIAL_REASON_BANNED : DenialReason.DENIAL_REASON_NOT_MEMBER);
  if (!PERMISSION_MATRIX[role]?.has(permission)) return deny(DenialReason.DENIAL_REASON_ROLE);
  // Archived rooms are read-only, restorable by who may archive.
  if (room.state === RoomState.ROOM_STATE_ARCHIVED && permission !== P.PERMISSION_READ && permission !== P.PERMISSION_ARCHIVE) {
    return deny(DenialReason.DENIAL_REASON_ROOM_ARCHIVED);
  }
  if (permission === P.PERMISSION_POST && room.announcementOnly && !ANNOUNCEMENT_ONLY_POSTERS.has(role)) return deny(DenialReason.DENIAL_REASON_ANNOUNCEMENT_ONLY);
  return ALLOW;
}

/** Whether `actor` ranks strictly above `target` (owner highest); the enum orders roles from highest to lowest. */
export function outranks(actor: RoomRole, target: RoomRole): boolean {
  return actor < target;
}
