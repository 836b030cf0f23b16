import { InvalidArgumentError, PermissionDeniedError } from '@switchboard/errors';
import { actingUser, targetUser, unary, viewer } from '@switchboard/grpc';
import { assertSafeId } from '@switchboard/ids';
import type { Logger } from '@switchboard/logging';
import { eventsV1, roomV1 } from '@switchboard/proto';
import type { RoomConfig } from './config';
import { MembershipChange, type MembershipEvents } from './events';
import type { RoomStore } from './store';

const { RoomVisibility } = roomV1;
const { RoomRole } = eventsV1;

const LIMITS = { name: 100, topic: 250, description: 4000, avatarRef: 512, metadataEntries: 32, metadataKey: 64, metadataValue: 512 };




function text(value: string, field: string, max: number): string {
  const trimmed = value.trim();
  if (trimmed.length > max) throw new InvalidArgumentError(`${field} is longer than ${max} characters`, { field });
  return trimmed;
}

function metadata(entries: Record<string, string>): Record<string, string> {
  const keys = Object.keys(entries);
  if (keys.length > LIMITS.metadataEntries) throw new InvalidArgumentError(`at most ${LIMITS.metadataEntries} metadata entries`, { field: 'metadata' });
  for (const key of keys) {
    if (!key || key.length > LIMITS.metadataKey) throw new InvalidArgumentError(`metadata keys are 1-${LIMITS.metadataKey} characters`, { field: 'metadata' });
    if (entries[key]!.length > LIMITS.metadataValue) throw new InvalidArgumentError(`metadata values are at most ${LIMITS.metadataValue} characters`, { field: 'metadata' });
  }
  return entries;
}

function roles(requested: eventsV1.RoomRole[]): number[] {
  for (const role of requested) {
    if (role <= RoomRole.ROOM_ROLE_UNSPECIFIED || role > RoomRole.ROOM_ROLE_GUEST) throw new InvalidArgumentError('unknown role', { field: 'roles' });
  }
  return requested;
}

function pageSize(requested: number | undefined, config: RoomConfig, fallback = 50): number {
  return Math.min(requested || fallback, config.MAX_PAGE_SIZE);
}

export function roomService(store: RoomStore, events: MembershipEvents, config: RoomConfig, logger: Logger): Partial<roomV1.RoomServiceServer> {
  return {
    createRoom: unary('CreateRoom', logger, async (req: roomV1.CreateRoomRequest, ctx) => {
      const tenantId = ctx.tenant.tenantId;
      // Users own what they create; internal systems name the owner.
      let ownerId: string;
      if (ctx.tenant.internal && req.ownerId) ownerId = assertSafeId(req.ownerId, 'owner_id');
      else if (ctx.tenant.userId) {
        if (req.ownerId && req.ownerId !== ctx.tenant.userId) throw new PermissionDeniedError('only internal callers may name another owner', { field: 'owner_id' });
        ownerId = ctx.tenant.userId;
      } else if (ctx.tenant.internal) throw new InvalidArgumentError('an internal caller without a user must name the owner', { field: 'owner_id' });
      else throw new PermissionDeniedError('this call needs a user in the tenant context', { field: 'context.user_id' });

      const name = text(req.name, 'name', LIMITS.name);
      if (!name) throw new InvalidArgumentError('a room needs a name', { field: 'name' });
      if (req.visibility !== RoomVisibility.ROOM_VISIBILITY_UNSPECIFIED && req.visibility !== RoomVisibility.ROOM_VISIBILITY_PUBLIC && req.visibility !== RoomVisibility.ROOM_VISIBILITY_PRIVATE) {
        throw new InvalidArgumentError('unknown visibility', { field: 'visibility' });
      }
      if (req.memberIds.length > config.MAX_INITIAL_MEMBERS) {
        throw new InvalidArgumentError(`at most ${config.MAX_INITIAL_MEMBERS} member_ids at creation`, { field: 'member_ids' });
      }
      const memberIds = req.memberIds.map((userId) => assertSafeId(userId, 'member_ids'));
      const settings: roomV1.RoomSettings = {
        announcementOnly: req.settings?.announcementOnly ?? false,
        historyVisibleToNewMembers: req.settings?.historyVisibleToNewMembers ?? false,
        memberLimit: Math.min(req.settings?.memberLimit ?? 0, config.MAX_ROOM_MEMBERS),
      };
      const limit = settings.memberLimit || config.MAX_ROOM_MEMBERS;
      if (new Set([ownerId, ...memberIds]).size > limit) throw new InvalidArgumentError(`more members than the room's limit of ${limit}`, { field: 'member_ids' });

      const createdBy = ctx.tenant.userId;
      const { room, members } = await store.create(tenantId, {
        name,
        topic: text(req.topic, 'topic', LIMITS.topic),
        description: text(req.description, 'description', LIMITS.description),
        avatarRef: text(req.avatarRef, 'avatar_ref', LIMITS.avatarRef),
        metadata: metadata(req.metadata),
        // Private unless asked otherwise: in a clinical setting a room is never public by accident.
        visibility: req.visibility || RoomVisibility.ROOM_VISIBILITY_PRIVATE,
        settings,
        ownerId,
        createdBy,
        memberIds,
        requestId: req.requestId ? assertSafeId(req.requestId, 'request_id') : '',
      });
      events.publish(tenantId, members, MembershipChange.MEMBERSHIP_CHANGE_JOINED, createdBy);
      return { room };
    }),

    getRoom: unary('GetRoom', logger, async (req: roomV1.GetRoomRequest, ctx) => {
      const roomId = assertSafeId(req.roomId, 'room_id');
      return store.get(ctx.tenant.tenantId, roomId, viewer(ctx));
    }),

    listMyRooms: unary('ListMyRooms', logger, async (req: roomV1.ListMyRoomsRequest, ctx) => {
      const userId = targetUser(ctx, req.userId);
      const { rooms, nextPageToken } = await store.listForUser(
        ctx.tenant.tenantId,
        userId,
        req.includeArchived,
        roles(req.roles),
        pageSize(req.page?.pageSize, config),
        req.page?.pageToken ?? '',
      );
      return { rooms, page: { nextPageToken } };
    }),

    joinRoom: unary('JoinRoom', logger, async (req: roomV1.JoinRoomRequest, ctx) => {
      const tenantId = ctx.tenant.tenantId;
      const userId = actingUser(ctx);
      const { room, member, joined } = await store.join(tenantId, assertSafeId(req.roomId, 'room_id'), userId);
      if (joined) events.publish(tenantId, [member], MembershipChange.MEMBERSHIP_CHANGE_JOINED, userId);
      return { room, member };
    }),

    leaveRoom: unary('LeaveRoom', logger, async (req: roomV1.LeaveRoomRequest, ctx) => {
      const tenantId = ctx.tenant.tenantId;
      const userId = actingUser(ctx);
      const member = await store.leave(tenantId, assertSafeId(req.roomId, 'room_id'), userId);
      events.publish(tenantId, [member], MembershipChange.MEMBERSHIP_CHANGE_LEFT, userId);
      return {};
    }),

    listMembers: unary('ListMembers', logger, async (req: roomV1.ListMembersRequest, ctx) => {
      const { members, nextPageToken, totalCount } = await store.listMembers(
        ctx.tenant.tenantId,
        assertSafeId(req.roomId, 'room_id'),
        viewer(ctx),
        roles(req.roles),
        pageSize(req.page?.pageSize, config, 100),
        req.page?.pageToken ?? '',
      );
      return { members, page: { nextPageToken }, totalCount };
    }),
  };
}
