import { FailedPreconditionError, NotFoundError, PermissionDeniedError } from '@switchboard/errors';
import type { PromiseClient } from '@switchboard/grpc';
import { roomV1 } from '@switchboard/proto';

const { DenialReason, Permission, RoomVisibility } = roomV1;
export { Permission };

type RoomClient = PromiseClient<roomV1.RoomServiceClient>;

/** What the room service allowed: the caller may act, reading from `visibleFrom` on (unset: the whole history). */
export interface RoomGrant {
  visibleFrom: Date | undefined;
}

/**
 * Asks the room service, on every post and read of a room conversation,
 * whether the user may: the room service is the one authority on
 * membership, roles, bans, archive and delete, so a removal it acknowledged
 * is in force for the very next message. Internal callers (the room
 * service's announcements, scheduling systems) need not be members.
 */
export class RoomAccess {
  constructor(
    private readonly rooms: RoomClient,
    private readonly deadlineMs: number,
  ) {}

  async require(tenantId: string, roomId: string, userId: string, permissions: roomV1.Permission[], internal: boolean): Promise<RoomGrant> {
    const answer = await this.rooms.checkPermission(
      { context: undefined, roomId, userId, permissions },
      { context: { tenantId, userId: '', deviceId: '', internal: true }, deadlineMs: this.deadlineMs },
    );
    const denied = answer.results.filter((result) => !result.allowed && !(internal && result.reason === DenialReason.DENIAL_REASON_NOT_MEMBER));
    if (denied.length > 0) throw refusal(roomId, denied[0]!, answer.roomVisibility);
    return { visibleFrom: answer.member?.historyVisibleFrom };
  }
}

function refusal(roomId: string, { permission, reason }: roomV1.PermissionResult, visibility: roomV1.RoomVisibility): Error {
  const options = { field: 'conversation_id' };
  // Outsiders of a room that is not public learn nothing of it: the same answer as for no room at all (as the room service gives).
  const outsider = reason === DenialReason.DENIAL_REASON_NOT_MEMBER || reason === DenialReason.DENIAL_REASON_BANNED;
  if (outsider && visibility !== RoomVisibility.ROOM_VISIBILITY_PUBLIC) return new NotFoundError(`conversation ${roomId} not found`, options);
  const what = permission === Permission.PERMISSION_READ ? 'read' : permission === Permission.PERMISSION_ANNOUNCE ? 'announce in' : 'post in';
  switch (reason) {
    case DenialReason.DENIAL_REASON_ROOM_NOT_FOUND:
      return new NotFoundError(`conversation ${roomId} not found`, options);
    case DenialReason.DENIAL_REASON_ROOM_ARCHIVED:
      return new FailedPreconditionError(`room ${roomId} is archived: it can be read, not posted in`, options);
    case DenialReason.DENIAL_REASON_ANNOUNCEMENT_ONLY:
      return new PermissionDeniedError(`only owners and admins post in room ${roomId} (announcement-only)`, options);
    case DenialReason.DENIAL_REASON_BANNED:
      return new PermissionDeniedError(`you are banned from room ${roomId}`, options);
    case DenialReason.DENIAL_REASON_NOT_MEMBER:
      return new PermissionDeniedError(`not a member of room ${roomId}`, options);
    default:
      return new PermissionDeniedError(`your role in room ${roomId} does not allow you to ${what} it`, options);
  }
}
