import { InvalidArgumentError, PermissionDeniedError } from '@switchboard/errors';
import { actingUser, targetUser, unary, viewer, type CallContext } from '@switchboard/grpc';
import { assertSafeId } from '@switchboard/ids';
import type { Logger } from '@switchboard/logging';
import { eventsV1, roomV1 } from '@switchboard/proto';
import type { Announcer } from './announcements';
import type { RoomConfig } from './config';
import { ALL_PERMISSIONS } from './permissions';
import type { Actor, RoomPatch, RoomStore } from './store';

const { RoomVisibility, InviteState } = roomV1;
const { RoomRole } = eventsV1;

export const LIMITS = {
  name: 100,
  topic: 250,
  description: 4000,
  avatarRef: 512,
  metadataEntries: 32,
  metadataKey: 64,
  metadataValue: 512,
  reason: 500,
  inviteMessage: 500,
  announcementTitle: 200,
  announcementText: 8000,
  batchGet: 200,
  addMembers: 500,
};

/** Tags, comments and entities: names and topics are plain text, shown everywhere without escaping surprises. */
const MARKUP = /<\s*[a-zA-Z/!?]|&[a-zA-Z#][a-zA-Z0-9]*;/;
// eslint-disable-next-line no-control-regex
const CONTROL = /[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f]/;

export function text(value: string, field: string, max: number, options: { plain?: boolean; required?: boolean } = {}): string {
  const trimmed = value.trim();
  if (options.required && !trimmed) throw new InvalidArgumentError(`${field} is required`, { field });
  if (trimmed.length > max) throw new InvalidArgumentError(`${field} is longer than ${max} characters`, { field });
  if (CONTROL.test(trimmed)) throw new InvalidArgumentError(`${field} contains control characters`, { field });
  if (options.plain && MARKUP.test(trimmed)) throw new InvalidArgumentError(`${field} must be plain text, without markup`, { field });
  return trimmed;
}

export function metadata(entries: Record<string, string>, field = 'metadata'): Record<string, string> {
  const keys = Object.keys(entries);
  if (keys.length > LIMITS.metadataEntries) throw new InvalidArgumentError(`at most ${LIMITS.metadataEntries} metadata entries`, { field });
  for (const key of keys) {
    if (!/^[A-Za-z0-9_.:-]+$/.test(key) || key.length > LIMITS.metadataKey) {
      throw new InvalidArgumentError(`metadata keys are 1-${LIMITS.metadataKey} characters of letters, digits and _ . : -`, { field });
    }
    if (entries[key]!.length > LIMITS.metadataValue) throw new InvalidArgumentError(`metadata values are at most ${LIMITS.metadataValue} characters`, { field });
  }
  return entries;
}

function roles(requested: eventsV1.RoomRole[]): number[] {
  for (const role of requested) {
    if (role <= RoomRole.ROOM_ROLE_UNSPECIFIED || role > RoomRole.ROOM_ROLE_GUEST) throw new InvalidArgumentError('unknown role', { field: 'roles' });
  }
  return requested;
}

/** A role to grant: MEMBER when unspecified, never OWNER. */
function grantable(role: eventsV1.RoomRole, field = 'role'): eventsV1.RoomRole {
  if (role === RoomRole.ROOM_ROLE_UNSPECIFIED) return RoomRole.ROOM_ROLE_MEMBER;
  if (role === RoomRole.ROOM_ROLE_OWNER) throw new InvalidArgumentError('ownership is never granted this way: use TransferOwnership', { field });
  if (role < RoomRole.ROOM_ROLE_OWNER || role > RoomRole.ROOM_ROLE_GUEST) throw new InvalidArgumentError('unknown role', { field });
  return role;
}

function visibilityOf(visibility: roomV1.RoomVisibility, field: string): roomV1.RoomVisibility {
  if (visibility !== RoomVisibility.ROOM_VISIBILITY_UNSPECIFIED && visibility !== RoomVisibility.ROOM_VISIBILITY_PUBLIC && visibility !== RoomVisibility.ROOM_VISIBILITY_PRIVATE) {
    throw new InvalidArgumentError('unknown visibility', { field });
  }
  return visibility;
}

function future(at: Date | undefined, field: string): Date | undefined {
  if (at && at.getTime() <= Date.now()) throw new InvalidArgumentError(`${field} must be in the future`, { field });
  return at;
}

function roomIdOf(value: string): string {
  return assertSafeId(value, 'room_id');
}

/** Who acts: users act as themselves; internal callers act on any room of their tenant (as their user, if they name one). */
function actorOf(ctx: CallContext): Actor {
  if (ctx.tenant.internal) return { userId: ctx.tenant.userId, internal: true };
  return { userId: actingUser(ctx), internal: false };
}

export function roomService(store: RoomStore, announcer: Announcer, config: RoomConfig, logger: Logger): roomV1.RoomServiceServer {
  const pageSize = (requested: number | undefined, fallback = 50) => Math.min(requested || fallback, config.MAX_PAGE_SIZE);
  const memberLimit = (requested: number, field: string) => {
    if (requested > config.MAX_ROOM_MEMBERS) throw new InvalidArgumentError(`member_limit is at most ${config.MAX_ROOM_MEMBERS}`, { field });
    return requested;
  };

  return {
    // ------------------------------------------------------------ lifecycle
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

      const name = text(req.name, 'name', LIMITS.name, { plain: true, required: true });
      visibilityOf(req.visibility, 'visibility');
      if (req.memberIds.length > config.MAX_INITIAL_MEMBERS) {
        throw new InvalidArgumentError(`at most ${config.MAX_INITIAL_MEMBERS} member_ids at creation`, { field: 'member_ids' });
      }
      const memberIds = req.memberIds.map((userId) => assertSafeId(userId, 'member_ids'));
      const settings: roomV1.RoomSettings = {
        announcementOnly: req.settings?.announcementOnly ?? false,
        historyVisibleToNewMembers: req.settings?.historyVisibleToNewMembers ?? false,
        memberLimit: memberLimit(req.settings?.memberLimit ?? 0, 'settings.member_limit'),
      };
      const limit = settings.memberLimit || config.MAX_ROOM_MEMBERS;
      if (new Set([ownerId, ...memberIds]).size > limit) throw new InvalidArgumentError(`more members than the room's limit of ${limit}`, { field: 'member_ids' });

      const room = await store.create(tenantId, {
        name,
        topic: text(req.topic, 'topic', LIMITS.topic, { plain: true }),
        description: text(req.description, 'description', LIMITS.description, { plain: true }),
        avatarRef: text(req.avatarRef, 'avatar_ref', LIMITS.avatarRef),
        metadata: metadata(req.metadata),
        // Private unless asked otherwise: in a clinical setting a room is never public by accident.
        visibility: req.visibility || RoomVisibility.ROOM_VISIBILITY_PRIVATE,
        settings,
        ownerId,
        createdBy: ctx.tenant.userId,
        memberIds,
        requestId: req.requestId ? assertSafeId(req.requestId, 'request_id') : '',
      });
      return { room };
    }),

    getRoom: unary('GetRoom', logger, async (req: roomV1.GetRoomRequest, ctx) => {
      return store.get(ctx.tenant.tenantId, roomIdOf(req.roomId), viewer(ctx));
    }),

    batchGetRooms: unary('BatchGetRooms', logger, async (req: roomV1.BatchGetRoomsRequest, ctx) => {
      if (req.roomIds.length > LIMITS.batchGet) throw new InvalidArgumentError(`at most ${LIMITS.batchGet} room_ids at once`, { field: 'room_ids' });
      const roomIds = req.roomIds.map((roomId) => assertSafeId(roomId, 'room_ids'));
      return { rooms: await store.batchGet(ctx.tenant.tenantId, roomIds, viewer(ctx)) };
    }),

    updateRoom: unary('UpdateRoom', logger, async (req: roomV1.UpdateRoomRequest, ctx) => {
      if (!req.room) throw new InvalidArgumentError('room is required', { field: 'room' });
      const paths = req.updateMask ?? [];
      if (paths.length === 0) throw new InvalidArgumentError('update_mask names no field to change', { field: 'update_mask' });
      const source = req.room;
      const patch: RoomPatch = {};
      const settings: Partial<roomV1.RoomSettings> = {};
      for (const path of paths) {
        switch (path) {
          case 'name':
            patch.name = text(source.name, 'room.name', LIMITS.name, { plain: true, required: true });
            break;
          case 'topic':
            patch.topic = text(source.topic, 'room.topic', LIMITS.topic, { plain: true });
            break;
          case 'description':
            patch.description = text(source.description, 'room.description', LIMITS.description, { plain: true });
            break;
          case 'avatar_ref':
            patch.avatarRef = text(source.avatarRef, 'room.avatar_ref', LIMITS.avatarRef);
            break;
          case 'metadata':
            patch.metadata = metadata(source.metadata, 'room.metadata');
            break;
          case 'visibility':
            if (!visibilityOf(source.visibility, 'room.visibility')) throw new InvalidArgumentError('visibility must be PUBLIC or PRIVATE', { field: 'room.visibility' });
            patch.visibility = source.visibility;
            break;
          case 'settings':
            settings.announcementOnly = source.settings?.announcementOnly ?? false;
            settings.historyVisibleToNewMembers = source.settings?.historyVisibleToNewMembers ?? false;
            settings.memberLimit = memberLimit(source.settings?.memberLimit ?? 0, 'room.settings.member_limit');
            break;
          case 'settings.announcement_only':
            settings.announcementOnly = source.settings?.announcementOnly ?? false;
            break;
          case 'settings.history_visible_to_new_members':
            settings.historyVisibleToNewMembers = source.settings?.historyVisibleToNewMembers ?? false;
            break;
          case 'settings.member_limit':
            settings.memberLimit = memberLimit(source.settings?.memberLimit ?? 0, 'room.settings.member_limit');
            break;
          default:
            throw new InvalidArgumentError(`update_mask path "${path}" is not a field UpdateRoom changes`, { field: 'update_mask' });
        }
      }
      if (Object.keys(settings).length) patch.settings = settings;
      const room = await store.update(ctx.tenant.tenantId, roomIdOf(source.roomId), actorOf(ctx), patch, req.expectedVersion);
      return { room };
    }),

    archiveRoom: unary('ArchiveRoom', logger, async (req: roomV1.ArchiveRoomRequest, ctx) => {
      text(req.reason, 'reason', LIMITS.reason);
      return { room: await store.setArchived(ctx.tenant.tenantId, roomIdOf(req.roomId), actorOf(ctx), true) };
    }),

    unarchiveRoom: unary('UnarchiveRoom', logger, async (req: roomV1.UnarchiveRoomRequest, ctx) => {
      return { room: await store.setArchived(ctx.tenant.tenantId, roomIdOf(req.roomId), actorOf(ctx), false) };
    }),

    deleteRoom: unary('DeleteRoom', logger, async (req: roomV1.DeleteRoomRequest, ctx) => {
      await store.delete(ctx.tenant.tenantId, roomIdOf(req.roomId), actorOf(ctx), req.expectedVersion);
      return {};
    }),

    // ------------------------------------------------------------ finding rooms
    listMyRooms: unary('ListMyRooms', logger, async (req: roomV1.ListMyRoomsRequest, ctx) => {
      const userId = targetUser(ctx, req.userId);
      const { rooms, nextPageToken } = await store.listForUser(
        ctx.tenant.tenantId,
        userId,
        req.includeArchived,
        roles(req.roles),
        pageSize(req.page?.pageSize),
        req.page?.pageToken ?? '',
      );
      return { rooms, page: { nextPageToken } };
    }),

    searchRooms: unary('SearchRooms', logger, async (req: roomV1.SearchRoomsRequest, ctx) => {
      const query = text(req.query, 'query', 200);
      visibilityOf(req.visibility, 'visibility');
      const { results, nextPageToken } = await store.search(
        ctx.tenant.tenantId,
        viewer(ctx),
        query,
        req.visibility,
        req.includeArchived,
        pageSize(req.page?.pageSize, 20),
        req.page?.pageToken ?? '',
      );
      return { results, page: { nextPageToken } };
    }),

    // ------------------------------------------------------------ membership
    joinRoom: unary('JoinRoom', logger, async (req: roomV1.JoinRoomRequest, ctx) => {
      return store.join(ctx.tenant.tenantId, roomIdOf(req.roomId), actingUser(ctx));
    }),

    leaveRoom: unary('LeaveRoom', logger, async (req: roomV1.LeaveRoomRequest, ctx) => {
      await store.leave(ctx.tenant.tenantId, roomIdOf(req.roomId), actingUser(ctx));
      return {};
    }),

    addMembers: unary('AddMembers', logger, async (req: roomV1.AddMembersRequest, ctx) => {
      if (req.userIds.length === 0) throw new InvalidArgumentError('user_ids names nobody to add', { field: 'user_ids' });
      if (req.userIds.length > LIMITS.addMembers) throw new InvalidArgumentError(`at most ${LIMITS.addMembers} user_ids at once`, { field: 'user_ids' });
      const userIds = req.userIds.map((userId) => assertSafeId(userId, 'user_ids'));
      return store.addMembers(ctx.tenant.tenantId, roomIdOf(req.roomId), actorOf(ctx), userIds, grantable(req.role));
    }),

    removeMember: unary('RemoveMember', logger, async (req: roomV1.RemoveMemberRequest, ctx) => {
      text(req.reason, 'reason', LIMITS.reason);
      await store.removeMember(ctx.tenant.tenantId, roomIdOf(req.roomId), actorOf(ctx), assertSafeId(req.userId, 'user_id'));
      return {};
    }),

    banMember: unary('BanMember', logger, async (req: roomV1.BanMemberRequest, ctx) => {
      const reason = text(req.reason, 'reason', LIMITS.reason);
      const ban = await store.ban(ctx.tenant.tenantId, roomIdOf(req.roomId), actorOf(ctx), assertSafeId(req.userId, 'user_id'), reason, future(req.expiresAt, 'expires_at'));
      return { ban };
    }),

    unbanMember: unary('UnbanMember', logger, async (req: roomV1.UnbanMemberRequest, ctx) => {
      await store.unban(ctx.tenant.tenantId, roomIdOf(req.roomId), actorOf(ctx), assertSafeId(req.userId, 'user_id'));
      return {};
    }),

    listBans: unary('ListBans', logger, async (req: roomV1.ListBansRequest, ctx) => {
      const { bans, nextPageToken } = await store.listBans(ctx.tenant.tenantId, roomIdOf(req.roomId), actorOf(ctx), pageSize(req.page?.pageSize), req.page?.pageToken ?? '');
      return { bans, page: { nextPageToken } };
    }),

    getMember: unary('GetMember', logger, async (req: roomV1.GetMemberRequest, ctx) => {
      const member = await store.getMember(ctx.tenant.tenantId, roomIdOf(req.roomId), viewer(ctx), assertSafeId(req.userId, 'user_id'));
      return { member };
    }),

    listMembers: unary('ListMembers', logger, async (req: roomV1.ListMembersRequest, ctx) => {
      const { members, nextPageToken, totalCount } = await store.listMembers(
        ctx.tenant.tenantId,
        roomIdOf(req.roomId),
        viewer(ctx),
        roles(req.roles),
        pageSize(req.page?.pageSize, 100),
        req.page?.pageToken ?? '',
      );
      return { members, page: { nextPageToken }, totalCount };
    }),

    updateMemberRole: unary('UpdateMemberRole', logger, async (req: roomV1.UpdateMemberRoleRequest, ctx) => {
      if (req.role === RoomRole.ROOM_ROLE_UNSPECIFIED) throw new InvalidArgumentError('role is required', { field: 'role' });
      const member = await store.updateMemberRole(ctx.tenant.tenantId, roomIdOf(req.roomId), actorOf(ctx), assertSafeId(req.userId, 'user_id'), grantable(req.role));
      return { member };
    }),

    transferOwnership: unary('TransferOwnership', logger, async (req: roomV1.TransferOwnershipRequest, ctx) => {
      const previousRole = req.previousOwnerRole === RoomRole.ROOM_ROLE_UNSPECIFIED ? RoomRole.ROOM_ROLE_ADMIN : grantable(req.previousOwnerRole, 'previous_owner_role');
      return store.transferOwnership(ctx.tenant.tenantId, roomIdOf(req.roomId), actorOf(ctx), assertSafeId(req.newOwnerId, 'new_owner_id'), previousRole);
    }),

    checkPermission: unary('CheckPermission', logger, async (req: roomV1.CheckPermissionRequest, ctx) => {
      const userId = targetUser(ctx, req.userId);
      for (const permission of req.permissions) {
        if (!ALL_PERMISSIONS.includes(permission)) throw new InvalidArgumentError(`unknown permission ${permission}`, { field: 'permissions' });
      }
      return store.checkPermission(ctx.tenant.tenantId, roomIdOf(req.roomId), userId, req.permissions.length ? req.permissions : ALL_PERMISSIONS);
    }),

    // ------------------------------------------------------------ invites
    createInvite: unary('CreateInvite', logger, async (req: roomV1.CreateInviteRequest, ctx) => {
      const invite = await store.createInvite(
        ctx.tenant.tenantId,
        roomIdOf(req.roomId),
        actorOf(ctx),
        assertSafeId(req.inviteeId, 'invitee_id'),
        grantable(req.role),
        text(req.message, 'message', LIMITS.inviteMessage),
        future(req.expiresAt, 'expires_at'),
      );
      return { invite };
    }),

    createInviteLink: unary('CreateInviteLink', logger, async (req: roomV1.CreateInviteLinkRequest, ctx) => {
      if (!req.expiresAt) throw new InvalidArgumentError('an invite link needs expires_at', { field: 'expires_at' });
      future(req.expiresAt, 'expires_at');
      if (req.expiresAt.getTime() - Date.now() > config.MAX_INVITE_LINK_LIFETIME_MS) {
        throw new InvalidArgumentError(`an invite link lives at most ${Math.round(config.MAX_INVITE_LINK_LIFETIME_MS / 3_600_000)} hours`, { field: 'expires_at' });
      }
      return store.createInviteLink(ctx.tenant.tenantId, roomIdOf(req.roomId), actorOf(ctx), grantable(req.role), req.expiresAt, req.maxUses);
    }),

    getInvite: unary('GetInvite', logger, async (req: roomV1.GetInviteRequest, ctx) => {
      const actor: Actor = ctx.tenant.internal ? { userId: ctx.tenant.userId, internal: true } : { userId: actingUser(ctx), internal: false };
      return store.getInvite(ctx.tenant.tenantId, actor, inviteRef(req.invite));
    }),

    listRoomInvites: unary('ListRoomInvites', logger, async (req: roomV1.ListRoomInvitesRequest, ctx) => {
      for (const state of req.states) {
        if (state <= InviteState.INVITE_STATE_UNSPECIFIED || state > InviteState.INVITE_STATE_EXHAUSTED) throw new InvalidArgumentError('unknown invite state', { field: 'states' });
      }
      const { invites, nextPageToken } = await store.listRoomInvites(
        ctx.tenant.tenantId,
        roomIdOf(req.roomId),
        actorOf(ctx),
        req.states,
        pageSize(req.page?.pageSize),
        req.page?.pageToken ?? '',
      );
      return { invites, page: { nextPageToken } };
    }),

    listMyInvites: unary('ListMyInvites', logger, async (req: roomV1.ListMyInvitesRequest, ctx) => {
      const { invites, nextPageToken } = await store.listMyInvites(ctx.tenant.tenantId, actingUser(ctx), pageSize(req.page?.pageSize), req.page?.pageToken ?? '');
      return { invites, page: { nextPageToken } };
    }),

    revokeInvite: unary('RevokeInvite', logger, async (req: roomV1.RevokeInviteRequest, ctx) => {
      return { invite: await store.revokeInvite(ctx.tenant.tenantId, actorOf(ctx), assertSafeId(req.inviteId, 'invite_id')) };
    }),

    acceptInvite: unary('AcceptInvite', logger, async (req: roomV1.AcceptInviteRequest, ctx) => {
      return store.acceptInvite(ctx.tenant.tenantId, actingUser(ctx), inviteRef(req.invite));
    }),

    declineInvite: unary('DeclineInvite', logger, async (req: roomV1.DeclineInviteRequest, ctx) => {
      await store.declineInvite(ctx.tenant.tenantId, actingUser(ctx), assertSafeId(req.inviteId, 'invite_id'));
      return {};
    }),

    // ------------------------------------------------------------ pins
    pinMessage: unary('PinMessage', logger, async (req: roomV1.PinMessageRequest, ctx) => {
      if (!req.seq) throw new InvalidArgumentError('seq is required: the message’s sequence in the room', { field: 'seq' });
      const pin = await store.pin(ctx.tenant.tenantId, roomIdOf(req.roomId), actorOf(ctx), assertSafeId(req.messageId, 'message_id'), req.seq);
      return { pin };
    }),

    unpinMessage: unary('UnpinMessage', logger, async (req: roomV1.UnpinMessageRequest, ctx) => {
      await store.unpin(ctx.tenant.tenantId, roomIdOf(req.roomId), actorOf(ctx), assertSafeId(req.messageId, 'message_id'));
      return {};
    }),

    listPins: unary('ListPins', logger, async (req: roomV1.ListPinsRequest, ctx) => {
      const { pins, nextPageToken } = await store.listPins(ctx.tenant.tenantId, roomIdOf(req.roomId), actorOf(ctx), pageSize(req.page?.pageSize), req.page?.pageToken ?? '');
      return { pins, page: { nextPageToken } };
    }),

    // ------------------------------------------------------------ announcements
    postAnnouncement: unary('PostAnnouncement', logger, async (req: roomV1.PostAnnouncementRequest, ctx) => {
      const announcement = await announcer.post(ctx, {
        roomId: roomIdOf(req.roomId),
        title: text(req.title, 'title', LIMITS.announcementTitle, { plain: true, required: true }),
        text: text(req.text, 'text', LIMITS.announcementText, { required: true }),
        expiresAt: future(req.expiresAt, 'expires_at'),
        pin: req.pin,
        requestId: assertSafeId(req.requestId, 'request_id'),
      });
      return { announcement };
    }),

    listAnnouncements: unary('ListAnnouncements', logger, async (req: roomV1.ListAnnouncementsRequest, ctx) => {
      const { announcements, nextPageToken } = await store.listAnnouncements(
        ctx.tenant.tenantId,
        roomIdOf(req.roomId),
        actorOf(ctx),
        req.includeExpired,
        pageSize(req.page?.pageSize, 20),
        req.page?.pageToken ?? '',
      );
      return { announcements, page: { nextPageToken } };
    }),

    deleteAnnouncement: unary('DeleteAnnouncement', logger, async (req: roomV1.DeleteAnnouncementRequest, ctx) => {
      await store.deleteAnnouncement(ctx.tenant.tenantId, roomIdOf(req.roomId), actorOf(ctx), assertSafeId(req.announcementId, 'announcement_id'));
      return {};
    }),
  };
}

function inviteRef(invite: roomV1.GetInviteRequest['invite']): { inviteId?: string; token?: string } {
  if (invite?.$case === 'inviteId') return { inviteId: assertSafeId(invite.value, 'invite_id') };
  if (invite?.$case === 'token') {
    if (!/^[A-Za-z0-9_-]{16,128}$/.test(invite.value)) throw new InvalidArgumentError('token is not an invite link token', { field: 'token' });
    return { token: invite.value };
  }
  throw new InvalidArgumentError('name the invite by invite_id or token', { field: 'invite' });
}
