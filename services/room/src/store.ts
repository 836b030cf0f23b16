import { FailedPreconditionError, NotFoundError, PermissionDeniedError } from '@switchboard/errors';
import { newId } from '@switchboard/ids';
import { withTenantTransaction, type Pool, type PoolClient } from '@switchboard/postgres';
import { eventsV1, roomV1 } from '@switchboard/proto';

const { RoomRole } = eventsV1;
const { RoomState, RoomVisibility } = roomV1;

export interface NewRoom {
  name: string;
  topic: string;
  description: string;
  avatarRef: string;
  metadata: Record<string, string>;
  visibility: roomV1.RoomVisibility;
  settings: roomV1.RoomSettings;
  ownerId: string;
  /** Empty for an internal system acting without a user. */
  createdBy: string;
  /** Added as MEMBER besides the owner. */
  memberIds: string[];
  requestId: string;
}

interface RoomRow {
  tenant_id: string;
  room_id: string;
  visibility: number;
  state: number;
  name: string;
  topic: string;
  description: string;
  avatar_ref: string;
  metadata: Record<string, string>;
  settings: Partial<roomV1.RoomSettings>;
  owner_id: string;
  created_by: string;
  created_at: Date;
  updated_at: Date;
  archived_at: Date | null;
  version: string;
  member_count: string;
}

interface MemberRow {
  room_id: string;
  user_id: string;
  role: number;
  joined_at: Date;
  added_by: string;
  history_visible_from: Date | null;
}

function toRoom(row: RoomRow): roomV1.Room {
  return {
    tenantId: row.tenant_id,
    roomId: row.room_id,
    visibility: row.visibility,
    state: row.state,
    name: row.name,
    topic: row.topic,
    description: row.description,
    avatarRef: row.avatar_ref,
    metadata: row.metadata,
    settings: {
      announcementOnly: row.settings.announcementOnly ?? false,
      historyVisibleToNewMembers: row.settings.historyVisibleToNewMembers ?? false,
      memberLimit: row.settings.memberLimit ?? 0,
    },
    ownerId: row.owner_id,
    createdBy: row.created_by,
    memberCount: Number(row.member_count),
    createdAt: row.created_at,
    updatedAt: row.updated_at,
    archivedAt: row.archived_at ?? undefined,
    version: Number(row.version),
  };
}

function toMember(row: MemberRow): roomV1.Member {
  return {
    roomId: row.room_id,
    userId: row.user_id,
    role: row.role,
    joinedAt: row.joined_at,
    addedBy: row.added_by,
    historyVisibleFrom: row.history_visible_from ?? undefined,
  };
}

const ROOM_COLUMNS = `r.*, (SELECT count(*) FROM room_members c WHERE c.tenant_id = r.tenant_id AND c.room_id = r.room_id) AS member_count`;
const MEMBER_COLUMNS = `m.room_id, m.user_id, m.role, m.joined_at, m.added_by, m.history_visible_from`;

function offsetOf(pageToken: string): number {
  return pageToken ? Number.parseInt(Buffer.from(pageToken, 'base64url').toString(), 10) || 0 : 0;
}

function nextToken(offset: number, pageSize: number, more: boolean): string {
  return more ? Buffer.from(String(offset + pageSize)).toString('base64url') : '';
}

function notFound(roomId: string): NotFoundError {
  return new NotFoundError(`room ${roomId} not found`, { field: 'room_id' });
}

/**
 * Everything room keeps in PostgreSQL. Each method runs in a transaction
 * scoped to one tenant (row-level security does the rest). Membership
 * changes lock the room row, so limits and the owner rule hold under
 * concurrent joins and leaves.
 */
export class RoomStore {
  constructor(
    private readonly pool: Pool,
    private readonly maxMembers: number,
  ) {}

  /** Creates the room with its owner and first members; a retry with the same request id returns the first room and no members. */
  async create(tenantId: string, room: NewRoom): Promise<{ room: roomV1.Room; members: roomV1.Member[] }> {
    return withTenantTransaction(this.pool, tenantId, async (db) => {
      const roomId = newId();
      const inserted = await db.query(
        `INSERT INTO rooms (tenant_id, room_id, visibility, state, name, topic, description, avatar_ref, metadata, settings, owner_id, created_by, request_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
         ON CONFLICT (tenant_id, created_by, request_id) WHERE request_id IS NOT NULL DO NOTHING`,
        [
          tenantId,
          roomId,
          room.visibility,
          RoomState.ROOM_STATE_ACTIVE,
          room.name,
          room.topic,
          room.description,
          room.avatarRef,
          JSON.stringify(room.metadata),
          JSON.stringify(room.settings),
          room.ownerId,
          room.createdBy,
          room.requestId || null,
        ],
      );
      if (inserted.rowCount === 0) {
        const { rows } = await db.query<RoomRow>(`SELECT ${ROOM_COLUMNS} FROM rooms r WHERE r.tenant_id = $1 AND r.created_by = $2 AND r.request_id = $3`, [
          tenantId,
          room.createdBy,
          room.requestId,
        ]);
        return { room: toRoom(rows[0]!), members: [] };
      }
      const others = [...new Set(room.memberIds)].filter((userId) => userId !== room.ownerId);
      const { rows: memberRows } = await db.query<MemberRow>(
        `INSERT INTO room_members AS m (tenant_id, room_id, user_id, role, added_by)
         SELECT $1, $2, u.user_id, CASE WHEN u.user_id = $3 THEN $4::smallint ELSE $5::smallint END, CASE WHEN u.user_id = $3 THEN '' ELSE $6 END
         FROM unnest($7::text[]) AS u(user_id)
         RETURNING ${MEMBER_COLUMNS}`,
        [tenantId, roomId, room.ownerId, RoomRole.ROOM_ROLE_OWNER, RoomRole.ROOM_ROLE_MEMBER, room.createdBy, [room.ownerId, ...others]],
      );
      return { room: await this.requireRoom(db, tenantId, roomId), members: memberRows.map(toMember) };
    });
  }

  /** The room and the viewer's membership; a private room is NOT_FOUND to non-members (undefined viewer: an internal caller sees all). */
  async get(tenantId: string, roomId: string, viewerId: string | undefined): Promise<{ room: roomV1.Room; membership: roomV1.Member | undefined }> {
    return withTenantTransaction(this.pool, tenantId, async (db) => {
      const room = await this.requireRoom(db, tenantId, roomId);
      const membership = viewerId ? await this.member(db, tenantId, roomId, viewerId) : undefined;
      if (viewerId && !membership && room.visibility !== RoomVisibility.ROOM_VISIBILITY_PUBLIC) throw notFound(roomId);
      return { room, membership };
    });
  }

  /** A user's rooms with their membership, by room name, paged by an offset token. */
  async listForUser(tenantId: string, userId: string, includeArchived: boolean, roles: number[], pageSize: number, pageToken: string) {
    const offset = offsetOf(pageToken);
    const states = includeArchived ? [RoomState.ROOM_STATE_ACTIVE, RoomState.ROOM_STATE_ARCHIVED] : [RoomState.ROOM_STATE_ACTIVE];
    return withTenantTransaction(this.pool, tenantId, async (db) => {
      const { rows } = await db.query<RoomRow & { member: MemberRow }>(
        `SELECT ${ROOM_COLUMNS}, row_to_json(m) AS member
         FROM room_members m JOIN rooms r ON r.tenant_id = m.tenant_id AND r.room_id = m.room_id
         WHERE m.tenant_id = $1 AND m.user_id = $2 AND r.state = ANY($3::smallint[]) AND (cardinality($4::smallint[]) = 0 OR m.role = ANY($4::smallint[]))
         ORDER BY r.name, r.room_id
         LIMIT $5 OFFSET $6`,
        [tenantId, userId, states, roles, pageSize + 1, offset],
      );
      return {
        rooms: rows.slice(0, pageSize).map((row) => ({ room: toRoom(row), member: toMember(fromJson(row.member)) })),
        nextPageToken: nextToken(offset, pageSize, rows.length > pageSize),
      };
    });
  }

  /** Joins a public room as MEMBER; joining again returns the existing membership and `joined: false`. */
  async join(tenantId: string, roomId: string, userId: string): Promise<{ room: roomV1.Room; member: roomV1.Member; joined: boolean }> {
    return withTenantTransaction(this.pool, tenantId, async (db) => {
      const room = await this.lockRoom(db, tenantId, roomId);
      const existing = await this.member(db, tenantId, roomId, userId);
      if (existing) return { room, member: existing, joined: false };
      if (room.visibility !== RoomVisibility.ROOM_VISIBILITY_PUBLIC) throw notFound(roomId);
      if (room.state !== RoomState.ROOM_STATE_ACTIVE) throw new PermissionDeniedError(`room ${roomId} is archived: nobody joins it`, { field: 'room_id' });
      const limit = Math.min(room.settings?.memberLimit || this.maxMembers, this.maxMembers);
      if (room.memberCount >= limit) throw new FailedPreconditionError(`room ${roomId} is full (${limit} members)`, { field: 'room_id' });
      const { rows } = await db.query<MemberRow>(
        `INSERT INTO room_members AS m (tenant_id, room_id, user_id, role, history_visible_from)
         VALUES ($1, $2, $3, $4, CASE WHEN $5 THEN NULL ELSE now() END)
         RETURNING ${MEMBER_COLUMNS}`,
        [tenantId, roomId, userId, RoomRole.ROOM_ROLE_MEMBER, room.settings?.historyVisibleToNewMembers ?? false],
      );
      return { room: { ...room, memberCount: room.memberCount + 1 }, member: toMember(rows[0]!), joined: true };
    });
  }

  /** Leaves a room; the owner may leave only as its last member (ownership is transferred first otherwise). Returns the role held. */
  async leave(tenantId: string, roomId: string, userId: string): Promise<roomV1.Member> {
    return withTenantTransaction(this.pool, tenantId, async (db) => {
      const room = await this.lockRoom(db, tenantId, roomId);
      const member = await this.member(db, tenantId, roomId, userId);
      if (!member) {
        if (room.visibility !== RoomVisibility.ROOM_VISIBILITY_PUBLIC) throw notFound(roomId);
        throw new NotFoundError(`not a member of room ${roomId}`, { field: 'room_id' });
      }
      if (member.role === RoomRole.ROOM_ROLE_OWNER && room.memberCount > 1) {
        const { rows } = await db.query<{ owners: string }>(
          `SELECT count(*) AS owners FROM room_members WHERE tenant_id = $1 AND room_id = $2 AND role = $3 AND user_id <> $4`,
          [tenantId, roomId, RoomRole.ROOM_ROLE_OWNER, userId],
        );
        if (Number(rows[0]!.owners) === 0) {
          throw new FailedPreconditionError('the last owner cannot leave while others remain: transfer ownership first', { field: 'room_id' });
        }
      }
      await db.query(`DELETE FROM room_members WHERE tenant_id = $1 AND room_id = $2 AND user_id = $3`, [tenantId, roomId, userId]);
      return member;
    });
  }

  /** Members by role (highest first), then join time; members (and internal callers, viewer undefined) may list. */
  async listMembers(tenantId: string, roomId: string, viewerId: string | undefined, roles: number[], pageSize: number, pageToken: string) {
    const offset = offsetOf(pageToken);
    return withTenantTransaction(this.pool, tenantId, async (db) => {
      const room = await this.requireRoom(db, tenantId, roomId);
      if (viewerId && !(await this.member(db, tenantId, roomId, viewerId))) {
        if (room.visibility !== RoomVisibility.ROOM_VISIBILITY_PUBLIC) throw notFound(roomId);
        throw new PermissionDeniedError(`only members may list the members of room ${roomId}`, { field: 'room_id' });
      }
      const filter = `m.tenant_id = $1 AND m.room_id = $2 AND (cardinality($3::smallint[]) = 0 OR m.role = ANY($3::smallint[]))`;
      const { rows } = await db.query<MemberRow>(
        `SELECT ${MEMBER_COLUMNS} FROM room_members m WHERE ${filter} ORDER BY m.role, m.joined_at, m.user_id LIMIT $4 OFFSET $5`,
        [tenantId, roomId, roles, pageSize + 1, offset],
      );
      const total = await db.query<{ total: string }>(`SELECT count(*) AS total FROM room_members m WHERE ${filter}`, [tenantId, roomId, roles]);
      return {
        members: rows.slice(0, pageSize).map(toMember),
        nextPageToken: nextToken(offset, pageSize, rows.length > pageSize),
        totalCount: Number(total.rows[0]!.total),
      };
    });
  }

  private async member(db: PoolClient, tenantId: string, roomId: string, userId: string): Promise<roomV1.Member | undefined> {
    const { rows } = await db.query<MemberRow>(`SELECT ${MEMBER_COLUMNS} FROM room_members m WHERE m.tenant_id = $1 AND m.room_id = $2 AND m.user_id = $3`, [
      tenantId,
      roomId,
      userId,
    ]);
    return rows[0] ? toMember(rows[0]) : undefined;
  }

  /** A room that is not deleted; NOT_FOUND otherwise. */
  private async requireRoom(db: PoolClient, tenantId: string, roomId: string, lock = false): Promise<roomV1.Room> {
    const { rows } = await db.query<RoomRow>(
      `SELECT ${ROOM_COLUMNS} FROM rooms r WHERE r.tenant_id = $1 AND r.room_id = $2 AND r.state <> $3${lock ? ' FOR UPDATE' : ''}`,
      [tenantId, roomId, RoomState.ROOM_STATE_DELETED],
    );
    if (!rows[0]) throw notFound(roomId);
    return toRoom(rows[0]);
  }

  /** Serialises membership changes of one room until commit. */
  private lockRoom(db: PoolClient, tenantId: string, roomId: string): Promise<roomV1.Room> {
    return this.requireRoom(db, tenantId, roomId, true);
  }
}

/** row_to_json gives timestamps as strings. */
function fromJson(row: MemberRow): MemberRow {
  return {
    ...row,
    joined_at: new Date(row.joined_at),
    history_visible_from: row.history_visible_from ? new Date(row.history_visible_from) : null,
  };
}
