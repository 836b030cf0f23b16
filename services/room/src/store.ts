import { createHash, randomBytes } from 'node:crypto';
import { ConflictError, FailedPreconditionError, InvalidArgumentError, NotFoundError, PermissionDeniedError, QuotaExceededError } from '@switchboard/errors';
import { assertSafeId, newId } from '@switchboard/ids';
import { TOPICS } from '@switchboard/kafka';
import { subjects } from '@switchboard/nats';
import { enqueue, type OutboxEvent } from '@switchboard/outbox';
import { connectOrUnavailable, withTenantTransaction, type Pool, type PoolClient } from '@switchboard/postgres';
import { eventsV1, roomV1 } from '@switchboard/proto';
import { decide, outranks } from './permissions';

const { RoomRole, MembershipChange } = eventsV1;
const { RoomState, RoomVisibility, Permission, DenialReason, InviteKind, InviteState } = roomV1;

/** Who performs a call: a user, or an internal system (optionally acting for a user) that may act on any room of its tenant. */
export interface Actor {
  /** Empty for an internal system acting without a user. */
  userId: string;
  internal: boolean;
}

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

export interface RoomPatch {
  name?: string;
  topic?: string;
  description?: string;
  avatarRef?: string;
  metadata?: Record<string, string>;
  visibility?: roomV1.RoomVisibility;
  settings?: Partial<roomV1.RoomSettings>;
}

export interface StoreLimits {
  /** The deployment's member limit; a tenant's and a room's own limit may only be lower. */
  maxMembers: number;
  /** The tenant's room size (libs/limits, shared with the gateways' admin API); the deployment's limit when absent. */
  tenantMaxMembers?: (tenantId: string) => Promise<number>;
  maxPins: number;
  /** How long a deleted room's rows are kept before the purge removes them. */
  deletedRetentionMs: number;
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
  membership_version: string;
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

interface InviteRow {
  invite_id: string;
  room_id: string;
  kind: number;
  state: number;
  invitee_id: string;
  role: number;
  created_by: string;
  message: string;
  created_at: Date;
  expires_at: Date | null;
  max_uses: number;
  use_count: number;
  responded_at: Date | null;
}

/** A room as read for a decision: the room plus its membership version. */
interface LoadedRoom {
  room: roomV1.Room;
  membershipVersion: number;
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
    joinedAt: new Date(row.joined_at),
    addedBy: row.added_by,
    historyVisibleFrom: row.history_visible_from ? new Date(row.history_visible_from) : undefined,
  };
}

/** EXPIRED is derived on read: a pending invite past its expiry is expired without any job rewriting it. */
function effectiveState(row: InviteRow, now = Date.now()): roomV1.InviteState {
  if (row.state === InviteState.INVITE_STATE_PENDING && row.expires_at && new Date(row.expires_at).getTime() <= now) return InviteState.INVITE_STATE_EXPIRED;
  return row.state;
}

function toInvite(row: InviteRow): roomV1.Invite {
  return {
    inviteId: row.invite_id,
    roomId: row.room_id,
    kind: row.kind,
    state: effectiveState(row),
    inviteeId: row.invitee_id,
    role: row.role,
    createdBy: row.created_by,
    message: row.message,
    createdAt: new Date(row.created_at),
    expiresAt: row.expires_at ? new Date(row.expires_at) : undefined,
    maxUses: row.max_uses,
    useCount: row.use_count,
    respondedAt: row.responded_at ? new Date(row.responded_at) : undefined,
  };
}

function toPreview(room: roomV1.Room): roomV1.RoomPreview {
  return { roomId: room.roomId, name: room.name, topic: room.topic, avatarRef: room.avatarRef, visibility: room.visibility, memberCount: room.memberCount };
}

const ROOM_COLUMNS = `r.tenant_id, r.room_id, r.visibility, r.state, r.name, r.topic, r.description, r.avatar_ref, r.metadata, r.settings, r.owner_id,
  r.created_by, r.created_at, r.updated_at, r.archived_at, r.version, r.membership_version,
  (SELECT count(*) FROM room_members c WHERE c.tenant_id = r.tenant_id AND c.room_id = r.room_id) AS member_count`;
const MEMBER_COLUMNS = `m.room_id, m.user_id, m.role, m.joined_at, m.added_by, m.history_visible_from`;
const INVITE_COLUMNS = `i.invite_id, i.room_id, i.kind, i.state, i.invitee_id, i.role, i.created_by, i.message, i.created_at, i.expires_at, i.max_uses, i.use_count, i.responded_at`;
/** An unexpired ban. */
const ACTIVE_BAN = `(b.expires_at IS NULL OR b.expires_at > now())`;

export function offsetOf(pageToken: string): number {
  if (!pageToken) return 0;
  const offset = Number.parseInt(Buffer.from(pageToken, 'base64url').toString(), 10);
  if (!Number.isSafeInteger(offset) || offset < 0) throw new InvalidArgumentError('page_token is not one this service issued', { field: 'page.page_token' });
  return offset;
}

function nextToken(offset: number, pageSize: number, more: boolean): string {
  return more ? Buffer.from(String(offset + pageSize)).toString('base64url') : '';
}

function notFound(roomId: string): NotFoundError {
  return new NotFoundError(`room ${roomId} not found`, { field: 'room_id' });
}

const PERMISSION_NAME = (permission: roomV1.Permission) => roomV1.permissionToJSON(permission);
const ROLE_NAME = (role: eventsV1.RoomRole) => eventsV1.roomRoleToJSON(role).replace('ROOM_ROLE_', '').toLowerCase();

export function hashToken(token: string): string {
  return createHash('sha256').update(token).digest('hex');
}

/** One membership change to record: the member (as after the change, or as before it for removals). */
interface MembershipRecord {
  member: roomV1.Member;
  change: eventsV1.MembershipChange;
  actorId: string;
}

/**
 * Everything room keeps in PostgreSQL. Each method runs in one transaction
 * scoped to one tenant (row-level security does the rest); changes lock the
 * room row, so limits, versions and the owner rule hold under concurrency,
 * and write their events to the outbox in the same transaction.
 */
export class RoomStore {
  constructor(
    private readonly pool: Pool,
    private readonly limits: StoreLimits,
    /** Called after a commit that wrote outbox rows (wakes the relay). */
    private readonly outboxWritten: () => void = () => undefined,
  ) {}

  /** A tenant transaction that wakes the relay after commit when it wrote events. */
  private async tx<T>(tenantId: string, fn: (db: PoolClient, emit: (events: OutboxEvent[]) => Promise<void>) => Promise<T>): Promise<T> {
    let wrote = false;
    const result = await withTenantTransaction(this.pool, tenantId, (db) =>
      fn(db, async (events) => {
        if (events.length === 0) return;
        wrote = true;
        await enqueue(db, events);
      }),
    );
    if (wrote) this.outboxWritten();
    return result;
  }

  // ---------------------------------------------------------------- events

  /**
   * Numbers the changes with the room's next membership versions and writes
   * each as RoomMembershipChanged: to the room's conversation subject and
   * Kafka `sb.events` (keyed by room), and to the member's user subject.
   */
  private async recordMembership(db: PoolClient, emit: (events: OutboxEvent[]) => Promise<void>, tenantId: string, roomId: string, records: MembershipRecord[]) {
    if (records.length === 0) return;
    const { rows } = await db.query<{ membership_version: string }>(
      `UPDATE rooms SET membership_version = membership_version + $3 WHERE tenant_id = $1 AND room_id = $2 RETURNING membership_version`,
      [tenantId, roomId, records.length],
    );
    const first = Number(rows[0]!.membership_version) - records.length + 1;
    const events: OutboxEvent[] = [];
    records.forEach((record, index) => {
      const event: OutboxEvent['event'] = {
        $case: 'roomMembershipChanged',
        value: {
          roomId,
          userId: record.member.userId,
          change: record.change,
          role: record.member.role,
          actorId: record.actorId,
          historyVisibleFrom: record.member.historyVisibleFrom,
          membershipVersion: first + index,
        },
      };
      events.push({ tenantId, natsSubject: subjects.conversation(tenantId, roomId), kafkaTopic: TOPICS.events, kafkaKey: roomId, event });
      events.push({ tenantId, natsSubject: subjects.user(tenantId, record.member.userId), kafkaTopic: '', kafkaKey: roomId, event });
    });
    await emit(events);
  }

  /** Writes RoomUpdated for the room as it is now (in this transaction). */
  private async recordRoomUpdate(db: PoolClient, emit: (events: OutboxEvent[]) => Promise<void>, tenantId: string, roomId: string) {
    const { room, membershipVersion } = await this.loadRoom(db, tenantId, roomId, { includeDeleted: true });
    await emit([
      {
        tenantId,
        natsSubject: subjects.conversation(tenantId, roomId),
        kafkaTopic: TOPICS.events,
        kafkaKey: roomId,
        event: {
          $case: 'roomUpdated',
          value: {
            roomId,
            archived: room.state === RoomState.ROOM_STATE_ARCHIVED,
            deleted: room.state === RoomState.ROOM_STATE_DELETED,
            announcementOnly: room.settings!.announcementOnly,
            historyVisibleToNewMembers: room.settings!.historyVisibleToNewMembers,
            version: room.version,
            name: room.name,
            membershipVersion,
          },
        },
      },
    ]);
  }

  // ---------------------------------------------------------------- reading and deciding

  private async loadRoom(db: PoolClient, tenantId: string, roomId: string, options: { lock?: boolean; includeDeleted?: boolean } = {}): Promise<LoadedRoom> {
    if (options.lock) await db.query(`SELECT 1 FROM rooms WHERE tenant_id = $1 AND room_id = $2 FOR UPDATE`, [tenantId, roomId]);
    const { rows } = await db.query<RoomRow>(
      `SELECT ${ROOM_COLUMNS} FROM rooms r WHERE r.tenant_id = $1 AND r.room_id = $2${options.includeDeleted ? '' : ' AND r.state <> $3'}`,
      options.includeDeleted ? [tenantId, roomId] : [tenantId, roomId, RoomState.ROOM_STATE_DELETED],
    );
    if (!rows[0]) throw notFound(roomId);
    return { room: toRoom(rows[0]), membershipVersion: Number(rows[0].membership_version) };
  }

  private async member(db: PoolClient, tenantId: string, roomId: string, userId: string): Promise<roomV1.Member | undefined> {
    if (!userId) return undefined;
    const { rows } = await db.query<MemberRow>(`SELECT ${MEMBER_COLUMNS} FROM room_members m WHERE m.tenant_id = $1 AND m.room_id = $2 AND m.user_id = $3`, [
      tenantId,
      roomId,
      userId,
    ]);
    return rows[0] ? toMember(rows[0]) : undefined;
  }

  private async isBanned(db: PoolClient, tenantId: string, roomId: string, userId: string): Promise<boolean> {
    const { rows } = await db.query(`SELECT 1 FROM room_bans b WHERE b.tenant_id = $1 AND b.room_id = $2 AND b.user_id = $3 AND ${ACTIVE_BAN}`, [tenantId, roomId, userId]);
    return rows.length > 0;
  }

  /**
   * The one enforcement point: loads the room (locked when the call changes
   * it) and the actor's membership, asks the permission matrix, and turns a
   * denial into the caller's error. Internal callers act with the owner's
   * permissions (the room's state still applies). A private room the actor
   * is not in is NOT_FOUND, so its existence does not leak.
   */
  private async authorize(db: PoolClient, tenantId: string, roomId: string, actor: Actor, permission: roomV1.Permission, lock = true) {
    const loaded = await this.loadRoom(db, tenantId, roomId, { lock });
    const { room } = loaded;
    const membership = await this.member(db, tenantId, roomId, actor.userId);
    const role = actor.internal ? RoomRole.ROOM_ROLE_OWNER : membership?.role;
    const banned = role === undefined && actor.userId ? await this.isBanned(db, tenantId, roomId, actor.userId) : false;
    const decision = decide({ room: { state: room.state, announcementOnly: room.settings!.announcementOnly }, role, banned }, permission);
    if (!decision.allowed) {
      switch (decision.reason) {
        case DenialReason.DENIAL_REASON_NOT_MEMBER:
        case DenialReason.DENIAL_REASON_BANNED:
          if (room.visibility !== RoomVisibility.ROOM_VISIBILITY_PUBLIC) throw notFound(roomId);
          throw new PermissionDeniedError(
            decision.reason === DenialReason.DENIAL_REASON_BANNED ? `you are banned from room ${roomId}` : `only members of room ${roomId} may do this`,
            { field: 'room_id' },
          );
        case DenialReason.DENIAL_REASON_ROOM_ARCHIVED:
          throw new FailedPreconditionError(`room ${roomId} is archived: it is read-only until restored`, { field: 'room_id' });
        case DenialReason.DENIAL_REASON_ANNOUNCEMENT_ONLY:
          throw new PermissionDeniedError(`room ${roomId} is announcement-only: only owners and admins post`, { field: 'room_id' });
        case DenialReason.DENIAL_REASON_ROLE:
          throw new PermissionDeniedError(`your role (${ROLE_NAME(role!)}) does not grant ${PERMISSION_NAME(permission)} in room ${roomId}`, { field: 'room_id' });
        default:
          throw notFound(roomId);
      }
    }
    // The rank that bounds what the actor may do to others; internal callers outrank everyone but owners' transfers.
    const rank = actor.internal ? RoomRole.ROOM_ROLE_UNSPECIFIED : role!;
    return { ...loaded, membership, rank };
  }

  /**
   * What `userId` may do in the room, from the committed state (no cache, so
   * never stale once a removal, ban, archive or delete is acknowledged).
   * Messaging asks on every post, so it is one round trip to PostgreSQL: the
   * tenant setting, the indexed read (room by primary key, the member's row,
   * an active ban) and the commit go as one multi-statement query. That form
   * takes no bind parameters, so the three ids are inlined, and they are
   * checked against the safe-id alphabet (no quote can appear) right here.
   */
  async checkPermission(tenantId: string, roomId: string, userId: string, permissions: roomV1.Permission[]): Promise<roomV1.CheckPermissionResponse> {
    const [tenant, room, user] = [tenantId, roomId, userId].map((id) => `'${assertSafeId(id, 'id')}'`);
    const client = await connectOrUnavailable(this.pool);
    let row: (MemberRow & { state: number; visibility: number; settings: Partial<roomV1.RoomSettings>; member_user: string | null; banned: boolean }) | undefined;
    try {
      const results = (await client.query(
        `BEGIN READ ONLY;
         SELECT set_config('app.tenant_id', ${tenant}, true);
         SELECT r.state, r.visibility, r.settings, m.user_id AS member_user, m.room_id, m.user_id, m.role, m.joined_at, m.added_by, m.history_visible_from,
                EXISTS (SELECT 1 FROM room_bans b WHERE b.tenant_id = r.tenant_id AND b.room_id = r.room_id AND b.user_id = ${user} AND ${ACTIVE_BAN}) AS banned
         FROM rooms r LEFT JOIN room_members m ON m.tenant_id = r.tenant_id AND m.room_id = r.room_id AND m.user_id = ${user}
         WHERE r.tenant_id = ${tenant} AND r.room_id = ${room};
         COMMIT;`,
      )) as unknown as { rows: (typeof row & object)[] }[];
      row = results[2]!.rows[0];
    } catch (err) {
      await client.query('ROLLBACK').catch(() => undefined);
      throw err;
    } finally {
      client.release();
    }
    const state = row?.state ?? RoomState.ROOM_STATE_UNSPECIFIED;
    const standingRoom = row && state !== RoomState.ROOM_STATE_DELETED ? { state, announcementOnly: row.settings?.announcementOnly ?? false } : undefined;
    const member = standingRoom && row?.member_user ? toMember(row) : undefined;
    const results = permissions.map((permission) => ({ permission, ...decide({ room: standingRoom, role: member?.role, banned: row?.banned ?? false }, permission) }));
    return {
      allowed: results.every((result) => result.allowed),
      results,
      member,
      roomState: row ? state : RoomState.ROOM_STATE_UNSPECIFIED,
      roomVisibility: standingRoom ? row!.visibility : RoomVisibility.ROOM_VISIBILITY_UNSPECIFIED,
    };
  }

  // ---------------------------------------------------------------- lifecycle

  /** Creates the room with its owner and first members; a retry with the same request id returns the first room and records nothing. */
  async create(tenantId: string, room: NewRoom): Promise<roomV1.Room> {
    const size = new Set([room.ownerId, ...room.memberIds]).size;
    const limit = await this.memberLimit(tenantId, { settings: room.settings } as roomV1.Room);
    if (size > limit) throw new QuotaExceededError(`a room of ${size} members is more than the limit of ${limit}`, { field: 'member_ids' });
    return this.tx(tenantId, async (db, emit) => {
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
        return toRoom(rows[0]!);
      }
      const others = [...new Set(room.memberIds)].filter((userId) => userId !== room.ownerId);
      const { rows: memberRows } = await db.query<MemberRow>(
        `INSERT INTO room_members AS m (tenant_id, room_id, user_id, role, added_by)
         SELECT $1, $2, u.user_id, CASE WHEN u.user_id = $3 THEN $4::smallint ELSE $5::smallint END, CASE WHEN u.user_id = $3 THEN '' ELSE $6 END
         FROM unnest($7::text[]) WITH ORDINALITY AS u(user_id, n) ORDER BY u.n
         RETURNING ${MEMBER_COLUMNS}`,
        [tenantId, roomId, room.ownerId, RoomRole.ROOM_ROLE_OWNER, RoomRole.ROOM_ROLE_MEMBER, room.createdBy, [room.ownerId, ...others]],
      );
      await this.recordMembership(
        db,
        emit,
        tenantId,
        roomId,
        memberRows.map((row) => ({ member: toMember(row), change: MembershipChange.MEMBERSHIP_CHANGE_JOINED, actorId: room.createdBy })),
      );
      await this.recordRoomUpdate(db, emit, tenantId, roomId);
      return (await this.loadRoom(db, tenantId, roomId)).room;
    });
  }

  /** The room and the viewer's membership; a private room is NOT_FOUND to non-members (undefined viewer: an internal caller sees all). */
  async get(tenantId: string, roomId: string, viewerId: string | undefined): Promise<{ room: roomV1.Room; membership: roomV1.Member | undefined }> {
    return withTenantTransaction(this.pool, tenantId, async (db) => {
      const { room } = await this.loadRoom(db, tenantId, roomId);
      const membership = viewerId ? await this.member(db, tenantId, roomId, viewerId) : undefined;
      if (viewerId && !membership && room.visibility !== RoomVisibility.ROOM_VISIBILITY_PUBLIC) throw notFound(roomId);
      return { room, membership };
    });
  }

  /** The rooms among `roomIds` the viewer may see (public, or a member; everything for internal callers), in the order asked. */
  async batchGet(tenantId: string, roomIds: string[], viewerId: string | undefined): Promise<roomV1.Room[]> {
    return withTenantTransaction(this.pool, tenantId, async (db) => {
      const { rows } = await db.query<RoomRow>(
        `SELECT ${ROOM_COLUMNS} FROM rooms r
         WHERE r.tenant_id = $1 AND r.room_id = ANY($2::text[]) AND r.state <> $3
           AND ($4::text IS NULL OR r.visibility = $5 OR EXISTS (SELECT 1 FROM room_members m WHERE m.tenant_id = r.tenant_id AND m.room_id = r.room_id AND m.user_id = $4))`,
        [tenantId, roomIds, RoomState.ROOM_STATE_DELETED, viewerId ?? null, RoomVisibility.ROOM_VISIBILITY_PUBLIC],
      );
      const byId = new Map(rows.map((row) => [row.room_id, toRoom(row)]));
      return [...new Set(roomIds)].flatMap((roomId) => byId.get(roomId) ?? []);
    });
  }

  /** Replaces the patched fields (PERMISSION_CHANGE_SETTINGS); a stale expected version fails with CONFLICT. */
  async update(tenantId: string, roomId: string, actor: Actor, patch: RoomPatch, expectedVersion: number): Promise<roomV1.Room> {
    return this.tx(tenantId, async (db, emit) => {
      const { room } = await this.authorize(db, tenantId, roomId, actor, Permission.PERMISSION_CHANGE_SETTINGS);
      if (expectedVersion && expectedVersion !== room.version) {
        throw new ConflictError(`room ${roomId} is at version ${room.version}, not ${expectedVersion}: read it again`, { field: 'expected_version' });
      }
      const settings = { ...room.settings!, ...patch.settings };
      if (patch.settings?.memberLimit && patch.settings.memberLimit < room.memberCount) {
        throw new FailedPreconditionError(`room ${roomId} has ${room.memberCount} members, more than a limit of ${patch.settings.memberLimit}`, { field: 'room.settings.member_limit' });
      }
      await db.query(
        `UPDATE rooms SET name = $3, topic = $4, description = $5, avatar_ref = $6, metadata = $7, visibility = $8, settings = $9,
           version = version + 1, updated_at = now()
         WHERE tenant_id = $1 AND room_id = $2`,
        [
          tenantId,
          roomId,
          patch.name ?? room.name,
          patch.topic ?? room.topic,
          patch.description ?? room.description,
          patch.avatarRef ?? room.avatarRef,
          JSON.stringify(patch.metadata ?? room.metadata),
          patch.visibility ?? room.visibility,
          JSON.stringify(settings),
        ],
      );
      await this.recordRoomUpdate(db, emit, tenantId, roomId);
      return (await this.loadRoom(db, tenantId, roomId)).room;
    });
  }

  /** Archives (read-only) or restores a room (PERMISSION_ARCHIVE). */
  async setArchived(tenantId: string, roomId: string, actor: Actor, archived: boolean): Promise<roomV1.Room> {
    return this.tx(tenantId, async (db, emit) => {
      const { room } = await this.authorize(db, tenantId, roomId, actor, Permission.PERMISSION_ARCHIVE);
      const isArchived = room.state === RoomState.ROOM_STATE_ARCHIVED;
      if (isArchived === archived) throw new FailedPreconditionError(`room ${roomId} is ${archived ? 'already archived' : 'not archived'}`, { field: 'room_id' });
      await db.query(
        `UPDATE rooms SET state = $3, archived_at = CASE WHEN $4 THEN now() END, version = version + 1, updated_at = now() WHERE tenant_id = $1 AND room_id = $2`,
        [tenantId, roomId, archived ? RoomState.ROOM_STATE_ARCHIVED : RoomState.ROOM_STATE_ACTIVE, archived],
      );
      await this.recordRoomUpdate(db, emit, tenantId, roomId);
      return (await this.loadRoom(db, tenantId, roomId)).room;
    });
  }

  /**
   * Deletes a room (PERMISSION_DELETE): from this commit it is NOT_FOUND
   * everywhere and CheckPermission denies everything; RoomUpdated{deleted}
   * makes gateways drop it and messaging purge its conversation. The rows
   * stay for the retention period, then `purgeDeleted` removes them.
   */
  async delete(tenantId: string, roomId: string, actor: Actor, expectedVersion: number): Promise<void> {
    await this.tx(tenantId, async (db, emit) => {
      const { room } = await this.authorize(db, tenantId, roomId, actor, Permission.PERMISSION_DELETE);
      if (expectedVersion && expectedVersion !== room.version) {
        throw new ConflictError(`room ${roomId} is at version ${room.version}, not ${expectedVersion}: read it again`, { field: 'expected_version' });
      }
      await db.query(`UPDATE rooms SET state = $3, deleted_at = now(), version = version + 1, updated_at = now() WHERE tenant_id = $1 AND room_id = $2`, [
        tenantId,
        roomId,
        RoomState.ROOM_STATE_DELETED,
      ]);
      await db.query(`INSERT INTO purge_queue (tenant_id, room_id, purge_after) VALUES ($1, $2, now() + $3 * interval '1 millisecond')`, [
        tenantId,
        roomId,
        this.limits.deletedRetentionMs,
      ]);
      await this.recordRoomUpdate(db, emit, tenantId, roomId);
    });
  }

  /**
   * Removes the rows of deleted rooms whose retention has passed, at most
   * `batch` rooms; reads only the due head of the purge queue (by index), so
   * it costs nothing when there is nothing to purge. Returns how many it purged.
   */
  async purgeDeleted(batch: number): Promise<number> {
    const { rows } = await this.pool.query<{ tenant_id: string; room_id: string }>(
      `SELECT tenant_id, room_id FROM purge_queue WHERE purge_after <= now() ORDER BY purge_after LIMIT $1`,
      [batch],
    );
    for (const { tenant_id: tenantId, room_id: roomId } of rows) {
      await withTenantTransaction(this.pool, tenantId, async (db) => {
        await db.query(`DELETE FROM rooms WHERE tenant_id = $1 AND room_id = $2 AND state = $3`, [tenantId, roomId, RoomState.ROOM_STATE_DELETED]);
        await db.query(`DELETE FROM purge_queue WHERE tenant_id = $1 AND room_id = $2`, [tenantId, roomId]);
      });
    }
    return rows.length;
  }

  // ---------------------------------------------------------------- finding rooms

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
        rooms: rows.slice(0, pageSize).map((row) => ({ room: toRoom(row), member: toMember(row.member) })),
        nextPageToken: nextToken(offset, pageSize, rows.length > pageSize),
      };
    });
  }

  /**
   * Rooms the viewer may see (public rooms of the tenant, rooms they are a
   * member of; internal callers see all), matching `query` by full text
   * (name > topic > description) or by trigram similarity of the name, best
   * first. An empty query lists them by name.
   */
  async search(tenantId: string, viewerId: string | undefined, query: string, visibility: roomV1.RoomVisibility, includeArchived: boolean, pageSize: number, pageToken: string) {
    const offset = offsetOf(pageToken);
    const states = includeArchived ? [RoomState.ROOM_STATE_ACTIVE, RoomState.ROOM_STATE_ARCHIVED] : [RoomState.ROOM_STATE_ACTIVE];
    return withTenantTransaction(this.pool, tenantId, async (db) => {
      const { rows } = await db.query<RoomRow & { is_member: boolean }>(
        `WITH q AS (SELECT websearch_to_tsquery('english', $3) AS ts, lower($3) AS text)
         SELECT ${ROOM_COLUMNS},
                EXISTS (SELECT 1 FROM room_members m WHERE m.tenant_id = r.tenant_id AND m.room_id = r.room_id AND m.user_id = $4) AS is_member,
                CASE WHEN q.text = '' THEN 0 ELSE ts_rank_cd(r.search_document, q.ts) + similarity(lower(r.name), q.text) END AS score
         FROM rooms r, q
         WHERE r.tenant_id = $1 AND r.state = ANY($2::smallint[])
           AND ($5::smallint = 0 OR r.visibility = $5)
           AND ($4::text IS NULL OR $7::boolean OR r.visibility = $6
                OR EXISTS (SELECT 1 FROM room_members m WHERE m.tenant_id = r.tenant_id AND m.room_id = r.room_id AND m.user_id = $4))
           AND (q.text = '' OR r.search_document @@ q.ts OR lower(r.name) % q.text OR strict_word_similarity(q.text, lower(r.name)) > 0.3)
         ORDER BY score DESC, r.name, r.room_id
         LIMIT $8 OFFSET $9`,
        [tenantId, states, query, viewerId ?? null, visibility, RoomVisibility.ROOM_VISIBILITY_PUBLIC, viewerId === undefined, pageSize + 1, offset],
      );
      return {
        results: rows.slice(0, pageSize).map((row) => ({ room: toRoom(row), member: row.is_member })),
        nextPageToken: nextToken(offset, pageSize, rows.length > pageSize),
      };
    });
  }

  // ---------------------------------------------------------------- membership

  private async memberLimit(tenantId: string, room: roomV1.Room): Promise<number> {
    const ceiling = Math.min(this.limits.maxMembers, (await this.limits.tenantMaxMembers?.(tenantId)) ?? this.limits.maxMembers);
    return Math.min(room.settings?.memberLimit || ceiling, ceiling);
  }

  /** Inserts members (the room row is locked by the caller) and records their JOINED events. */
  private async insertMembers(
    db: PoolClient,
    emit: (events: OutboxEvent[]) => Promise<void>,
    tenantId: string,
    room: roomV1.Room,
    userIds: string[],
    role: eventsV1.RoomRole,
    addedBy: string,
    actorId: string,
  ): Promise<roomV1.Member[]> {
    if (userIds.length === 0) return [];
    const limit = await this.memberLimit(tenantId, room);
    if (room.memberCount + userIds.length > limit) {
      throw new QuotaExceededError(`room ${room.roomId} is full: ${room.memberCount} of ${limit} members`, { field: 'room_id' });
    }
    const { rows } = await db.query<MemberRow>(
      `INSERT INTO room_members AS m (tenant_id, room_id, user_id, role, added_by, history_visible_from)
       SELECT $1, $2, u.user_id, $3, $4, CASE WHEN $5 THEN NULL ELSE now() END FROM unnest($6::text[]) WITH ORDINALITY AS u(user_id, n) ORDER BY u.n
       RETURNING ${MEMBER_COLUMNS}`,
      [tenantId, room.roomId, role, addedBy, room.settings?.historyVisibleToNewMembers ?? false, userIds],
    );
    const members = rows.map(toMember);
    await this.recordMembership(db, emit, tenantId, room.roomId, members.map((member) => ({ member, change: MembershipChange.MEMBERSHIP_CHANGE_JOINED, actorId })));
    return members;
  }

  /** Joins a public room as MEMBER; joining again returns the existing membership. */
  async join(tenantId: string, roomId: string, userId: string): Promise<{ room: roomV1.Room; member: roomV1.Member }> {
    return this.tx(tenantId, async (db, emit) => {
      const { room } = await this.loadRoom(db, tenantId, roomId, { lock: true });
      const existing = await this.member(db, tenantId, roomId, userId);
      if (existing) return { room, member: existing };
      if (room.visibility !== RoomVisibility.ROOM_VISIBILITY_PUBLIC) throw notFound(roomId);
      if (room.state !== RoomState.ROOM_STATE_ACTIVE) throw new FailedPreconditionError(`room ${roomId} is archived: nobody joins it`, { field: 'room_id' });
      if (await this.isBanned(db, tenantId, roomId, userId)) throw new PermissionDeniedError(`you are banned from room ${roomId}`, { field: 'room_id' });
      const [member] = await this.insertMembers(db, emit, tenantId, room, [userId], RoomRole.ROOM_ROLE_MEMBER, '', userId);
      return { room: { ...room, memberCount: room.memberCount + 1 }, member: member! };
    });
  }

  /** Leaves a room; the last owner may leave only as the last member (ownership is transferred first otherwise). */
  async leave(tenantId: string, roomId: string, userId: string): Promise<void> {
    await this.tx(tenantId, async (db, emit) => {
      const { room } = await this.loadRoom(db, tenantId, roomId, { lock: true });
      const member = await this.member(db, tenantId, roomId, userId);
      if (!member) {
        if (room.visibility !== RoomVisibility.ROOM_VISIBILITY_PUBLIC) throw notFound(roomId);
        throw new NotFoundError(`not a member of room ${roomId}`, { field: 'room_id' });
      }
      if (member.role === RoomRole.ROOM_ROLE_OWNER && room.memberCount > 1) {
        throw new FailedPreconditionError('the owner cannot leave while others remain: transfer ownership first', { field: 'room_id' });
      }
      await db.query(`DELETE FROM room_members WHERE tenant_id = $1 AND room_id = $2 AND user_id = $3`, [tenantId, roomId, userId]);
      await this.recordMembership(db, emit, tenantId, roomId, [{ member, change: MembershipChange.MEMBERSHIP_CHANGE_LEFT, actorId: userId }]);
    });
  }

  /** Adds users directly (PERMISSION_INVITE; the role granted must rank below the actor's). */
  async addMembers(tenantId: string, roomId: string, actor: Actor, userIds: string[], role: eventsV1.RoomRole) {
    return this.tx(tenantId, async (db, emit) => {
      const { room, rank } = await this.authorize(db, tenantId, roomId, actor, Permission.PERMISSION_INVITE);
      if (!outranks(rank, role)) throw new PermissionDeniedError(`you may only grant roles below your own (${ROLE_NAME(rank)})`, { field: 'role' });
      const wanted = [...new Set(userIds)];
      const { rows: existing } = await db.query<{ user_id: string }>(`SELECT user_id FROM room_members WHERE tenant_id = $1 AND room_id = $2 AND user_id = ANY($3::text[])`, [
        tenantId,
        roomId,
        wanted,
      ]);
      const { rows: banned } = await db.query<{ user_id: string }>(
        `SELECT b.user_id FROM room_bans b WHERE b.tenant_id = $1 AND b.room_id = $2 AND b.user_id = ANY($3::text[]) AND ${ACTIVE_BAN}`,
        [tenantId, roomId, wanted],
      );
      const alreadyMemberIds = existing.map((row) => row.user_id);
      const bannedIds = banned.map((row) => row.user_id).filter((userId) => !alreadyMemberIds.includes(userId));
      const toAdd = wanted.filter((userId) => !alreadyMemberIds.includes(userId) && !bannedIds.includes(userId));
      const added = await this.insertMembers(db, emit, tenantId, room, toAdd, role, actor.userId, actor.userId);
      return { added, alreadyMemberIds, bannedIds };
    });
  }

  /** The target's membership, which the actor must outrank (owners are never removed this way). */
  private async targetBelow(db: PoolClient, tenantId: string, roomId: string, rank: eventsV1.RoomRole, userId: string, actor: Actor): Promise<roomV1.Member | undefined> {
    const target = await this.member(db, tenantId, roomId, userId);
    if (target && userId === actor.userId) throw new InvalidArgumentError('you cannot do this to yourself', { field: 'user_id' });
    if (target && (!outranks(rank, target.role) || target.role === RoomRole.ROOM_ROLE_OWNER)) {
      throw new PermissionDeniedError(`you may only act on members below your role (${ROLE_NAME(rank)}); ${userId} is ${ROLE_NAME(target.role)}`, { field: 'user_id' });
    }
    return target;
  }

  /** PERMISSION_REMOVE_MEMBER, and only members of a lower role. */
  async removeMember(tenantId: string, roomId: string, actor: Actor, userId: string): Promise<void> {
    await this.tx(tenantId, async (db, emit) => {
      const { rank } = await this.authorize(db, tenantId, roomId, actor, Permission.PERMISSION_REMOVE_MEMBER);
      const target = await this.targetBelow(db, tenantId, roomId, rank, userId, actor);
      if (!target) throw new NotFoundError(`${userId} is not a member of room ${roomId}`, { field: 'user_id' });
      await db.query(`DELETE FROM room_members WHERE tenant_id = $1 AND room_id = $2 AND user_id = $3`, [tenantId, roomId, userId]);
      await this.recordMembership(db, emit, tenantId, roomId, [{ member: target, change: MembershipChange.MEMBERSHIP_CHANGE_REMOVED, actorId: actor.userId }]);
    });
  }

  /** Removes the user (if a member, of a lower role) and keeps them out until unbanned or the ban expires (PERMISSION_BAN_MEMBER). */
  async ban(tenantId: string, roomId: string, actor: Actor, userId: string, reason: string, expiresAt: Date | undefined): Promise<roomV1.Ban> {
    return this.tx(tenantId, async (db, emit) => {
      const { rank } = await this.authorize(db, tenantId, roomId, actor, Permission.PERMISSION_BAN_MEMBER);
      if (userId === actor.userId) throw new InvalidArgumentError('you cannot ban yourself', { field: 'user_id' });
      const target = await this.targetBelow(db, tenantId, roomId, rank, userId, actor);
      const { rows } = await db.query<{ banned_at: Date }>(
        `INSERT INTO room_bans (tenant_id, room_id, user_id, banned_by, reason, expires_at) VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (tenant_id, room_id, user_id) DO UPDATE SET banned_by = EXCLUDED.banned_by, reason = EXCLUDED.reason, banned_at = now(), expires_at = EXCLUDED.expires_at
         RETURNING banned_at`,
        [tenantId, roomId, userId, actor.userId, reason, expiresAt ?? null],
      );
      if (target) {
        await db.query(`DELETE FROM room_members WHERE tenant_id = $1 AND room_id = $2 AND user_id = $3`, [tenantId, roomId, userId]);
        await this.recordMembership(db, emit, tenantId, roomId, [{ member: target, change: MembershipChange.MEMBERSHIP_CHANGE_BANNED, actorId: actor.userId }]);
      }
      // Pending invites of a banned user are void.
      await db.query(`UPDATE room_invites SET state = $4, responded_at = now() WHERE tenant_id = $1 AND room_id = $2 AND invitee_id = $3 AND state = $5`, [
        tenantId,
        roomId,
        userId,
        InviteState.INVITE_STATE_REVOKED,
        InviteState.INVITE_STATE_PENDING,
      ]);
      return { roomId, userId, bannedBy: actor.userId, reason, bannedAt: rows[0]!.banned_at, expiresAt };
    });
  }

  async unban(tenantId: string, roomId: string, actor: Actor, userId: string): Promise<void> {
    await this.tx(tenantId, async (db) => {
      await this.authorize(db, tenantId, roomId, actor, Permission.PERMISSION_BAN_MEMBER);
      const { rowCount } = await db.query(`DELETE FROM room_bans b WHERE b.tenant_id = $1 AND b.room_id = $2 AND b.user_id = $3 AND ${ACTIVE_BAN}`, [tenantId, roomId, userId]);
      if (!rowCount) throw new NotFoundError(`${userId} is not banned from room ${roomId}`, { field: 'user_id' });
    });
  }

  async listBans(tenantId: string, roomId: string, actor: Actor, pageSize: number, pageToken: string) {
    const offset = offsetOf(pageToken);
    return withTenantTransaction(this.pool, tenantId, async (db) => {
      await this.authorize(db, tenantId, roomId, actor, Permission.PERMISSION_BAN_MEMBER, false);
      const { rows } = await db.query<{ room_id: string; user_id: string; banned_by: string; reason: string; banned_at: Date; expires_at: Date | null }>(
        `SELECT b.room_id, b.user_id, b.banned_by, b.reason, b.banned_at, b.expires_at FROM room_bans b
         WHERE b.tenant_id = $1 AND b.room_id = $2 AND ${ACTIVE_BAN} ORDER BY b.banned_at DESC, b.user_id LIMIT $3 OFFSET $4`,
        [tenantId, roomId, pageSize + 1, offset],
      );
      return {
        bans: rows.slice(0, pageSize).map((row) => ({
          roomId: row.room_id,
          userId: row.user_id,
          bannedBy: row.banned_by,
          reason: row.reason,
          bannedAt: row.banned_at,
          expiresAt: row.expires_at ?? undefined,
        })),
        nextPageToken: nextToken(offset, pageSize, rows.length > pageSize),
      };
    });
  }

  /** Members (and internal callers) may read a member; a private room is NOT_FOUND to others. */
  private async requireReader(db: PoolClient, tenantId: string, roomId: string, viewerId: string | undefined): Promise<roomV1.Room> {
    const { room } = await this.loadRoom(db, tenantId, roomId);
    if (viewerId && !(await this.member(db, tenantId, roomId, viewerId))) {
      if (room.visibility !== RoomVisibility.ROOM_VISIBILITY_PUBLIC) throw notFound(roomId);
      throw new PermissionDeniedError(`only members may list the members of room ${roomId}`, { field: 'room_id' });
    }
    return room;
  }

  async getMember(tenantId: string, roomId: string, viewerId: string | undefined, userId: string): Promise<roomV1.Member> {
    return withTenantTransaction(this.pool, tenantId, async (db) => {
      await this.requireReader(db, tenantId, roomId, viewerId);
      const member = await this.member(db, tenantId, roomId, userId);
      if (!member) throw new NotFoundError(`${userId} is not a member of room ${roomId}`, { field: 'user_id' });
      return member;
    });
  }

  /** Members by role (highest first), then join time; members (and internal callers, viewer undefined) may list. */
  async listMembers(tenantId: string, roomId: string, viewerId: string | undefined, roles: number[], pageSize: number, pageToken: string) {
    const offset = offsetOf(pageToken);
    return withTenantTransaction(this.pool, tenantId, async (db) => {
      await this.requireReader(db, tenantId, roomId, viewerId);
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

  /** PERMISSION_MANAGE_ROLES, only to and from roles below the actor's, never OWNER. */
  async updateMemberRole(tenantId: string, roomId: string, actor: Actor, userId: string, role: eventsV1.RoomRole): Promise<roomV1.Member> {
    return this.tx(tenantId, async (db, emit) => {
      const { rank } = await this.authorize(db, tenantId, roomId, actor, Permission.PERMISSION_MANAGE_ROLES);
      if (role === RoomRole.ROOM_ROLE_OWNER) throw new InvalidArgumentError('ownership moves with TransferOwnership, not a role change', { field: 'role' });
      if (!outranks(rank, role)) throw new PermissionDeniedError(`you may only grant roles below your own (${ROLE_NAME(rank)})`, { field: 'role' });
      const target = await this.targetBelow(db, tenantId, roomId, rank, userId, actor);
      if (!target) throw new NotFoundError(`${userId} is not a member of room ${roomId}`, { field: 'user_id' });
      if (target.role === role) return target;
      const member = await this.setRole(db, tenantId, roomId, userId, role);
      await this.recordMembership(db, emit, tenantId, roomId, [{ member, change: MembershipChange.MEMBERSHIP_CHANGE_ROLE_CHANGED, actorId: actor.userId }]);
      return member;
    });
  }

  private async setRole(db: PoolClient, tenantId: string, roomId: string, userId: string, role: eventsV1.RoomRole): Promise<roomV1.Member> {
    const { rows } = await db.query<MemberRow>(
      `UPDATE room_members m SET role = $4 WHERE m.tenant_id = $1 AND m.room_id = $2 AND m.user_id = $3 RETURNING ${MEMBER_COLUMNS}`,
      [tenantId, roomId, userId, role],
    );
    return toMember(rows[0]!);
  }

  /** The owner (or an internal caller) makes another member the owner; the previous owner takes `previousOwnerRole` (below OWNER). */
  async transferOwnership(tenantId: string, roomId: string, actor: Actor, newOwnerId: string, previousOwnerRole: eventsV1.RoomRole) {
    return this.tx(tenantId, async (db, emit) => {
      const { room, membership } = await this.authorize(db, tenantId, roomId, actor, Permission.PERMISSION_READ);
      if (!actor.internal && membership?.role !== RoomRole.ROOM_ROLE_OWNER) {
        throw new PermissionDeniedError(`only the owner transfers ownership of room ${roomId}`, { field: 'room_id' });
      }
      if (room.state !== RoomState.ROOM_STATE_ACTIVE) throw new FailedPreconditionError(`room ${roomId} is archived: it is read-only until restored`, { field: 'room_id' });
      const target = await this.member(db, tenantId, roomId, newOwnerId);
      if (!target) throw new FailedPreconditionError(`${newOwnerId} must be a member of room ${roomId} first`, { field: 'new_owner_id' });
      if (target.role === RoomRole.ROOM_ROLE_OWNER) throw new FailedPreconditionError(`${newOwnerId} already owns room ${roomId}`, { field: 'new_owner_id' });
      const previousId = room.ownerId;
      const newOwner = await this.setRole(db, tenantId, roomId, newOwnerId, RoomRole.ROOM_ROLE_OWNER);
      const previous = (await this.member(db, tenantId, roomId, previousId)) ? await this.setRole(db, tenantId, roomId, previousId, previousOwnerRole) : undefined;
      await db.query(`UPDATE rooms SET owner_id = $3, version = version + 1, updated_at = now() WHERE tenant_id = $1 AND room_id = $2`, [tenantId, roomId, newOwnerId]);
      await this.recordMembership(db, emit, tenantId, roomId, [
        { member: newOwner, change: MembershipChange.MEMBERSHIP_CHANGE_ROLE_CHANGED, actorId: actor.userId },
        ...(previous ? [{ member: previous, change: MembershipChange.MEMBERSHIP_CHANGE_ROLE_CHANGED, actorId: actor.userId }] : []),
      ]);
      await this.recordRoomUpdate(db, emit, tenantId, roomId);
      return { newOwner, previousOwner: previous };
    });
  }

  // ---------------------------------------------------------------- invites

  async createInvite(tenantId: string, roomId: string, actor: Actor, inviteeId: string, role: eventsV1.RoomRole, message: string, expiresAt: Date | undefined) {
    return this.tx(tenantId, async (db) => {
      const { rank } = await this.authorize(db, tenantId, roomId, actor, Permission.PERMISSION_INVITE);
      if (!outranks(rank, role)) throw new PermissionDeniedError(`you may only grant roles below your own (${ROLE_NAME(rank)})`, { field: 'role' });
      if (await this.member(db, tenantId, roomId, inviteeId)) throw new FailedPreconditionError(`${inviteeId} is already a member of room ${roomId}`, { field: 'invitee_id' });
      if (await this.isBanned(db, tenantId, roomId, inviteeId)) throw new FailedPreconditionError(`${inviteeId} is banned from room ${roomId}`, { field: 'invitee_id' });
      // A new invite replaces the pending one to the same user.
      await db.query(
        `UPDATE room_invites SET state = $5, responded_at = now() WHERE tenant_id = $1 AND room_id = $2 AND invitee_id = $3 AND kind = $4 AND state = $6`,
        [tenantId, roomId, inviteeId, InviteKind.INVITE_KIND_USER, InviteState.INVITE_STATE_REVOKED, InviteState.INVITE_STATE_PENDING],
      );
      const { rows } = await db.query<InviteRow>(
        `INSERT INTO room_invites AS i (tenant_id, invite_id, room_id, kind, state, invitee_id, role, created_by, message, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING ${INVITE_COLUMNS}`,
        [tenantId, newId(), roomId, InviteKind.INVITE_KIND_USER, InviteState.INVITE_STATE_PENDING, inviteeId, role, actor.userId, message, expiresAt ?? null],
      );
      return toInvite(rows[0]!);
    });
  }

  async createInviteLink(tenantId: string, roomId: string, actor: Actor, role: eventsV1.RoomRole, expiresAt: Date, maxUses: number) {
    return this.tx(tenantId, async (db) => {
      const { rank } = await this.authorize(db, tenantId, roomId, actor, Permission.PERMISSION_INVITE);
      if (!outranks(rank, role)) throw new PermissionDeniedError(`you may only grant roles below your own (${ROLE_NAME(rank)})`, { field: 'role' });
      const token = randomBytes(24).toString('base64url');
      const { rows } = await db.query<InviteRow>(
        `INSERT INTO room_invites AS i (tenant_id, invite_id, room_id, kind, state, role, created_by, expires_at, max_uses, token_hash)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING ${INVITE_COLUMNS}`,
        [tenantId, newId(), roomId, InviteKind.INVITE_KIND_LINK, InviteState.INVITE_STATE_PENDING, role, actor.userId, expiresAt, maxUses, hashToken(token)],
      );
      return { invite: toInvite(rows[0]!), token };
    });
  }

  private async findInvite(db: PoolClient, tenantId: string, by: { inviteId?: string; token?: string }, lock = false): Promise<InviteRow> {
    const { rows } = by.token
      ? await db.query<InviteRow>(`SELECT ${INVITE_COLUMNS} FROM room_invites i WHERE i.tenant_id = $1 AND i.token_hash = $2${lock ? ' FOR UPDATE' : ''}`, [tenantId, hashToken(by.token)])
      : await db.query<InviteRow>(`SELECT ${INVITE_COLUMNS} FROM room_invites i WHERE i.tenant_id = $1 AND i.invite_id = $2${lock ? ' FOR UPDATE' : ''}`, [tenantId, by.inviteId]);
    if (!rows[0]) throw new NotFoundError(by.token ? 'no invite link with this token' : `invite ${by.inviteId} not found`, { field: by.token ? 'token' : 'invite_id' });
    return rows[0];
  }

  /** By id: the inviter, the invitee and those who may invite in the room; by token: anyone holding it. */
  async getInvite(tenantId: string, actor: Actor, by: { inviteId?: string; token?: string }) {
    return withTenantTransaction(this.pool, tenantId, async (db) => {
      const row = await this.findInvite(db, tenantId, by);
      const { room } = await this.loadRoom(db, tenantId, row.room_id).catch(() => {
        throw new NotFoundError('the invite leads to a room that no longer exists', { field: by.token ? 'token' : 'invite_id' });
      });
      if (!by.token && !actor.internal && actor.userId !== row.invitee_id && actor.userId !== row.created_by) {
        const membership = await this.member(db, tenantId, row.room_id, actor.userId);
        if (!membership || !decide({ room: { state: room.state, announcementOnly: false }, role: membership.role, banned: false }, Permission.PERMISSION_INVITE).allowed) {
          throw new NotFoundError(`invite ${by.inviteId} not found`, { field: 'invite_id' });
        }
      }
      return { invite: toInvite(row), room: toPreview(room) };
    });
  }

  async listRoomInvites(tenantId: string, roomId: string, actor: Actor, states: roomV1.InviteState[], pageSize: number, pageToken: string) {
    const offset = offsetOf(pageToken);
    const wanted = states.length ? states : [InviteState.INVITE_STATE_PENDING];
    return withTenantTransaction(this.pool, tenantId, async (db) => {
      await this.authorize(db, tenantId, roomId, actor, Permission.PERMISSION_INVITE, false);
      // The effective state (EXPIRED derived from the expiry) is what is filtered on.
      const { rows } = await db.query<InviteRow>(
        `SELECT ${INVITE_COLUMNS} FROM room_invites i
         WHERE i.tenant_id = $1 AND i.room_id = $2
           AND (CASE WHEN i.state = $3 AND i.expires_at <= now() THEN $4 ELSE i.state END) = ANY($5::smallint[])
         ORDER BY i.created_at DESC, i.invite_id LIMIT $6 OFFSET $7`,
        [tenantId, roomId, InviteState.INVITE_STATE_PENDING, InviteState.INVITE_STATE_EXPIRED, wanted, pageSize + 1, offset],
      );
      return { invites: rows.slice(0, pageSize).map(toInvite), nextPageToken: nextToken(offset, pageSize, rows.length > pageSize) };
    });
  }

  /** The user's pending, unexpired invites to rooms that still exist, newest first. */
  async listMyInvites(tenantId: string, userId: string, pageSize: number, pageToken: string) {
    const offset = offsetOf(pageToken);
    return withTenantTransaction(this.pool, tenantId, async (db) => {
      const { rows } = await db.query<InviteRow & { room: RoomRow }>(
        `SELECT ${INVITE_COLUMNS}, (SELECT row_to_json(x) FROM (SELECT ${ROOM_COLUMNS} FROM rooms r WHERE r.tenant_id = i.tenant_id AND r.room_id = i.room_id) x) AS room
         FROM room_invites i JOIN rooms r0 ON r0.tenant_id = i.tenant_id AND r0.room_id = i.room_id AND r0.state = $5
         WHERE i.tenant_id = $1 AND i.invitee_id = $2 AND i.kind = $3 AND i.state = $4 AND (i.expires_at IS NULL OR i.expires_at > now())
         ORDER BY i.created_at DESC, i.invite_id LIMIT $6 OFFSET $7`,
        [tenantId, userId, InviteKind.INVITE_KIND_USER, InviteState.INVITE_STATE_PENDING, RoomState.ROOM_STATE_ACTIVE, pageSize + 1, offset],
      );
      return {
        invites: rows.slice(0, pageSize).map((row) => ({ invite: toInvite(row), room: toPreview(toRoom(row.room)) })),
        nextPageToken: nextToken(offset, pageSize, rows.length > pageSize),
      };
    });
  }

  /** Its creator or PERMISSION_INVITE; only pending invites. */
  async revokeInvite(tenantId: string, actor: Actor, inviteId: string): Promise<roomV1.Invite> {
    return this.tx(tenantId, async (db) => {
      const row = await this.findInvite(db, tenantId, { inviteId }, true);
      if (!actor.internal && actor.userId !== row.created_by) {
        await this.authorize(db, tenantId, row.room_id, actor, Permission.PERMISSION_INVITE).catch((err: unknown) => {
          // Someone who cannot see the room cannot see its invites either.
          if (err instanceof NotFoundError) throw new NotFoundError(`invite ${inviteId} not found`, { field: 'invite_id' });
          throw err;
        });
      }
      if (effectiveState(row) !== InviteState.INVITE_STATE_PENDING) {
        throw new FailedPreconditionError(`invite ${inviteId} is ${roomV1.inviteStateToJSON(effectiveState(row))}, not pending`, { field: 'invite_id' });
      }
      const { rows } = await db.query<InviteRow>(
        `UPDATE room_invites i SET state = $3, responded_at = now() WHERE i.tenant_id = $1 AND i.invite_id = $2 RETURNING ${INVITE_COLUMNS}`,
        [tenantId, inviteId, InviteState.INVITE_STATE_REVOKED],
      );
      return toInvite(rows[0]!);
    });
  }

  /** Why an invite cannot be used, as the caller's error. */
  private unusable(row: InviteRow, field: string): FailedPreconditionError | undefined {
    const state = effectiveState(row);
    if (state === InviteState.INVITE_STATE_PENDING) return undefined;
    const why: Record<number, string> = {
      [InviteState.INVITE_STATE_EXPIRED]: 'has expired',
      [InviteState.INVITE_STATE_EXHAUSTED]: 'has reached its use limit',
      [InviteState.INVITE_STATE_REVOKED]: 'was revoked',
      [InviteState.INVITE_STATE_ACCEPTED]: 'was already accepted',
      [InviteState.INVITE_STATE_DECLINED]: 'was declined',
    };
    return new FailedPreconditionError(`the invite ${why[state] ?? 'cannot be used'}`, { field });
  }

  /** Joins through a user invite addressed to the caller or a link token. */
  async acceptInvite(tenantId: string, userId: string, by: { inviteId?: string; token?: string }) {
    const field = by.token ? 'token' : 'invite_id';
    return this.tx(tenantId, async (db, emit) => {
      const probe = await this.findInvite(db, tenantId, by);
      if (!by.token && probe.invitee_id !== userId) throw new NotFoundError(`invite ${by.inviteId} not found`, { field });
      // Lock order everywhere: the room, then the invite.
      const { room } = await this.loadRoom(db, tenantId, probe.room_id, { lock: true }).catch(() => {
        throw new NotFoundError('the invite leads to a room that no longer exists', { field });
      });
      const row = await this.findInvite(db, tenantId, by, true);
      const problem = this.unusable(row, field);
      if (problem) throw problem;
      if (room.state !== RoomState.ROOM_STATE_ACTIVE) throw new FailedPreconditionError(`room ${room.roomId} is archived: nobody joins it`, { field: 'room_id' });
      if (await this.isBanned(db, tenantId, room.roomId, userId)) throw new PermissionDeniedError(`you are banned from room ${room.roomId}`, { field: 'room_id' });
      const existing = await this.member(db, tenantId, room.roomId, userId);
      if (existing) {
        if (row.kind === InviteKind.INVITE_KIND_USER) {
          await db.query(`UPDATE room_invites SET state = $3, responded_at = now() WHERE tenant_id = $1 AND invite_id = $2`, [tenantId, row.invite_id, InviteState.INVITE_STATE_ACCEPTED]);
        }
        return { room, member: existing };
      }
      const [member] = await this.insertMembers(db, emit, tenantId, room, [userId], row.role, row.created_by, userId);
      if (row.kind === InviteKind.INVITE_KIND_USER) {
        await db.query(`UPDATE room_invites SET state = $3, responded_at = now() WHERE tenant_id = $1 AND invite_id = $2`, [tenantId, row.invite_id, InviteState.INVITE_STATE_ACCEPTED]);
      } else {
        await db.query(
          `UPDATE room_invites SET use_count = use_count + 1, state = CASE WHEN max_uses > 0 AND use_count + 1 >= max_uses THEN $3 ELSE state END
           WHERE tenant_id = $1 AND invite_id = $2`,
          [tenantId, row.invite_id, InviteState.INVITE_STATE_EXHAUSTED],
        );
      }
      return { room: { ...room, memberCount: room.memberCount + 1 }, member: member! };
    });
  }

  async declineInvite(tenantId: string, userId: string, inviteId: string): Promise<void> {
    await this.tx(tenantId, async (db) => {
      const row = await this.findInvite(db, tenantId, { inviteId }, true);
      if (row.kind !== InviteKind.INVITE_KIND_USER || row.invitee_id !== userId) throw new NotFoundError(`invite ${inviteId} not found`, { field: 'invite_id' });
      const problem = this.unusable(row, 'invite_id');
      if (problem) throw problem;
      await db.query(`UPDATE room_invites SET state = $3, responded_at = now() WHERE tenant_id = $1 AND invite_id = $2`, [tenantId, inviteId, InviteState.INVITE_STATE_DECLINED]);
    });
  }

  // ---------------------------------------------------------------- pins

  async pin(tenantId: string, roomId: string, actor: Actor, messageId: string, seq: number): Promise<roomV1.Pin> {
    return this.tx(tenantId, async (db) => {
      await this.authorize(db, tenantId, roomId, actor, Permission.PERMISSION_PIN);
      return this.insertPin(db, tenantId, roomId, actor.userId, messageId, seq);
    });
  }

  private async insertPin(db: PoolClient, tenantId: string, roomId: string, userId: string, messageId: string, seq: number): Promise<roomV1.Pin> {
    const { rows: count } = await db.query<{ pins: string }>(`SELECT count(*) AS pins FROM room_pins WHERE tenant_id = $1 AND room_id = $2 AND message_id <> $3`, [tenantId, roomId, messageId]);
    if (Number(count[0]!.pins) >= this.limits.maxPins) {
      throw new QuotaExceededError(`room ${roomId} has ${this.limits.maxPins} pins already: unpin one first`, { field: 'message_id' });
    }
    const { rows } = await db.query<{ pinned_by: string; pinned_at: Date; seq: string }>(
      `INSERT INTO room_pins (tenant_id, room_id, message_id, seq, pinned_by) VALUES ($1, $2, $3, $4, $5)
       ON CONFLICT (tenant_id, room_id, message_id) DO UPDATE SET seq = room_pins.seq RETURNING pinned_by, pinned_at, seq`,
      [tenantId, roomId, messageId, seq, userId],
    );
    return { roomId, messageId, seq: Number(rows[0]!.seq), pinnedBy: rows[0]!.pinned_by, pinnedAt: rows[0]!.pinned_at };
  }

  async unpin(tenantId: string, roomId: string, actor: Actor, messageId: string): Promise<void> {
    await this.tx(tenantId, async (db) => {
      await this.authorize(db, tenantId, roomId, actor, Permission.PERMISSION_PIN);
      const { rowCount } = await db.query(`DELETE FROM room_pins WHERE tenant_id = $1 AND room_id = $2 AND message_id = $3`, [tenantId, roomId, messageId]);
      if (!rowCount) throw new NotFoundError(`message ${messageId} is not pinned in room ${roomId}`, { field: 'message_id' });
    });
  }

  async listPins(tenantId: string, roomId: string, actor: Actor, pageSize: number, pageToken: string) {
    const offset = offsetOf(pageToken);
    return withTenantTransaction(this.pool, tenantId, async (db) => {
      await this.authorize(db, tenantId, roomId, actor, Permission.PERMISSION_READ, false);
      const { rows } = await db.query<{ message_id: string; seq: string; pinned_by: string; pinned_at: Date }>(
        `SELECT message_id, seq, pinned_by, pinned_at FROM room_pins WHERE tenant_id = $1 AND room_id = $2 ORDER BY pinned_at DESC, message_id LIMIT $3 OFFSET $4`,
        [tenantId, roomId, pageSize + 1, offset],
      );
      return {
        pins: rows.slice(0, pageSize).map((row) => ({ roomId, messageId: row.message_id, seq: Number(row.seq), pinnedBy: row.pinned_by, pinnedAt: row.pinned_at })),
        nextPageToken: nextToken(offset, pageSize, rows.length > pageSize),
      };
    });
  }

  // ---------------------------------------------------------------- announcements

  /** Checks PERMISSION_ANNOUNCE and returns an earlier announcement with the same request id, if any. */
  async prepareAnnouncement(tenantId: string, roomId: string, actor: Actor, requestId: string): Promise<roomV1.Announcement | undefined> {
    return withTenantTransaction(this.pool, tenantId, async (db) => {
      await this.authorize(db, tenantId, roomId, actor, Permission.PERMISSION_ANNOUNCE, false);
      const { rows } = await db.query<AnnouncementRow>(`SELECT ${ANNOUNCEMENT_COLUMNS} FROM room_announcements a WHERE a.tenant_id = $1 AND a.room_id = $2 AND a.request_id = $3`, [
        tenantId,
        roomId,
        requestId,
      ]);
      return rows[0] ? toAnnouncement(rows[0]) : undefined;
    });
  }

  /** Stores the announcement once its message is committed in the conversation (a retry finds the first), pinning it if asked. */
  async saveAnnouncement(tenantId: string, actor: Actor, announcement: Omit<roomV1.Announcement, 'announcementId' | 'createdAt'>, requestId: string, pin: boolean) {
    return this.tx(tenantId, async (db) => {
      await this.authorize(db, tenantId, announcement.roomId, actor, Permission.PERMISSION_ANNOUNCE);
      await db.query(
        `INSERT INTO room_announcements (tenant_id, announcement_id, room_id, author_id, title, text, expires_at, message_id, seq, request_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (tenant_id, room_id, request_id) DO NOTHING`,
        [tenantId, newId(), announcement.roomId, announcement.authorId, announcement.title, announcement.text, announcement.expiresAt ?? null, announcement.messageId, announcement.seq, requestId],
      );
      if (pin) await this.insertPin(db, tenantId, announcement.roomId, actor.userId, announcement.messageId, announcement.seq);
      const { rows } = await db.query<AnnouncementRow>(`SELECT ${ANNOUNCEMENT_COLUMNS} FROM room_announcements a WHERE a.tenant_id = $1 AND a.room_id = $2 AND a.request_id = $3`, [
        tenantId,
        announcement.roomId,
        requestId,
      ]);
      return toAnnouncement(rows[0]!);
    });
  }

  /** Current announcements first (unexpired), newest first; any reader of the room. */
  async listAnnouncements(tenantId: string, roomId: string, actor: Actor, includeExpired: boolean, pageSize: number, pageToken: string) {
    const offset = offsetOf(pageToken);
    return withTenantTransaction(this.pool, tenantId, async (db) => {
      await this.authorize(db, tenantId, roomId, actor, Permission.PERMISSION_READ, false);
      const { rows } = await db.query<AnnouncementRow>(
        `SELECT ${ANNOUNCEMENT_COLUMNS} FROM room_announcements a
         WHERE a.tenant_id = $1 AND a.room_id = $2 AND ($3 OR a.expires_at IS NULL OR a.expires_at > now())
         ORDER BY (a.expires_at IS NULL OR a.expires_at > now()) DESC, a.created_at DESC, a.announcement_id LIMIT $4 OFFSET $5`,
        [tenantId, roomId, includeExpired, pageSize + 1, offset],
      );
      return { announcements: rows.slice(0, pageSize).map(toAnnouncement), nextPageToken: nextToken(offset, pageSize, rows.length > pageSize) };
    });
  }

  /** Its author or PERMISSION_ANNOUNCE. */
  async deleteAnnouncement(tenantId: string, roomId: string, actor: Actor, announcementId: string): Promise<void> {
    await this.tx(tenantId, async (db) => {
      const { rows } = await db.query<AnnouncementRow>(`SELECT ${ANNOUNCEMENT_COLUMNS} FROM room_announcements a WHERE a.tenant_id = $1 AND a.room_id = $2 AND a.announcement_id = $3`, [
        tenantId,
        roomId,
        announcementId,
      ]);
      const isAuthor = rows[0] && rows[0].author_id === actor.userId;
      await this.authorize(db, tenantId, roomId, actor, isAuthor ? Permission.PERMISSION_READ : Permission.PERMISSION_ANNOUNCE);
      if (!rows[0]) throw new NotFoundError(`announcement ${announcementId} not found in room ${roomId}`, { field: 'announcement_id' });
      await db.query(`DELETE FROM room_announcements WHERE tenant_id = $1 AND announcement_id = $2`, [tenantId, announcementId]);
    });
  }
}

interface AnnouncementRow {
  announcement_id: string;
  room_id: string;
  author_id: string;
  title: string;
  text: string;
  created_at: Date;
  expires_at: Date | null;
  message_id: string;
  seq: string;
}

const ANNOUNCEMENT_COLUMNS = `a.announcement_id, a.room_id, a.author_id, a.title, a.text, a.created_at, a.expires_at, a.message_id, a.seq`;

function toAnnouncement(row: AnnouncementRow): roomV1.Announcement {
  return {
    announcementId: row.announcement_id,
    roomId: row.room_id,
    authorId: row.author_id,
    title: row.title,
    text: row.text,
    createdAt: row.created_at,
    expiresAt: row.expires_at ?? undefined,
    messageId: row.message_id,
    seq: Number(row.seq),
  };
}
