import { InvalidArgumentError, NotFoundError } from '@switchboard/errors';
import { withTenantTransaction, type Pool, type PoolClient } from '@switchboard/postgres';
import type { notificationV1 } from '@switchboard/proto';

interface NotificationRow {
  tenant_id: string;
  notification_id: string;
  user_id: string;
  kind: string;
  priority: number;
  title: string;
  body: string;
  data: Record<string, string>;
  room_id: string;
  request_id: string;
  created_at: Date;
  read_at: Date | null;
  expires_at: Date | null;
  /** created_at as PostgreSQL prints it: exact to the microsecond, for page cursors. */
  cursor_at: string;
}

function toNotification(row: NotificationRow): notificationV1.Notification {
  return {
    tenantId: row.tenant_id,
    notificationId: row.notification_id,
    userId: row.user_id,
    kind: row.kind,
    priority: row.priority,
    title: row.title,
    body: row.body,
    data: row.data,
    roomId: row.room_id,
    requestId: row.request_id,
    createdAt: row.created_at,
    readAt: row.read_at ?? undefined,
    expiresAt: row.expires_at ?? undefined,
  };
}

const COLUMNS = `*, created_at::text AS cursor_at`;
const LIVE = `(expires_at IS NULL OR expires_at > now())`;
/** What the user sees: live and shown in app. */
const VISIBLE = `(${LIVE} AND NOT hidden)`;

/**
 * Pages are cut by (created_at, notification_id), not by offset, so a
 * notification arriving while the user scrolls neither repeats nor hides one.
 */
function decodeCursor(pageToken: string): [string, string] | undefined {
  if (!pageToken) return undefined;
  try {
    const cursor = JSON.parse(Buffer.from(pageToken, 'base64url').toString()) as unknown;
    if (Array.isArray(cursor) && cursor.length === 2 && cursor.every((part) => typeof part === 'string')) return cursor as [string, string];
  } catch {
    // Reported below.
  }
  throw new InvalidArgumentError('page_token is not one this service issued', { field: 'page.page_token' });
}

function encodeCursor(row: NotificationRow): string {
  return Buffer.from(JSON.stringify([row.cursor_at, row.notification_id])).toString('base64url');
}

/**
 * The in-app notification history in PostgreSQL. Each method runs in a
 * transaction scoped to one tenant (row-level security does the rest).
 */
export class NotificationStore {
  constructor(private readonly pool: Pool) {}

  /** A user's notifications, newest first. */
  async list(tenantId: string, userId: string, unreadOnly: boolean, kinds: string[], pageSize: number, pageToken: string, includeHidden = false) {
    const cursor = decodeCursor(pageToken);
    return withTenantTransaction(this.pool, tenantId, async (db) => {
      const { rows } = await db.query<NotificationRow>(
        `SELECT ${COLUMNS} FROM notifications
         WHERE tenant_id = $1 AND user_id = $2 AND (${VISIBLE} OR $8)
           AND (NOT $3 OR read_at IS NULL)
           AND (cardinality($4::text[]) = 0 OR kind = ANY($4::text[]))
           AND ($5::timestamptz IS NULL OR (created_at, notification_id) < ($5::timestamptz, $6::text))
         ORDER BY created_at DESC, notification_id DESC
         LIMIT $7`,
        [tenantId, userId, unreadOnly, kinds, cursor?.[0] ?? null, cursor?.[1] ?? '', pageSize + 1, includeHidden],
      );
      const page = rows.slice(0, pageSize);
      return {
        notifications: page.map(toNotification),
        nextPageToken: rows.length > pageSize ? encodeCursor(page[page.length - 1]!) : '',
        unreadCount: await this.unread(db, tenantId, userId),
      };
    });
  }

  /** Marks one of the user's notifications read (once: a second call keeps the first read time). */
  async markRead(tenantId: string, userId: string, notificationId: string) {
    return withTenantTransaction(this.pool, tenantId, async (db) => {
      const { rows } = await db.query<NotificationRow & { was_unread: boolean }>(
        `UPDATE notifications n SET read_at = coalesce(n.read_at, now())
         FROM (SELECT read_at IS NULL AS was_unread FROM notifications WHERE tenant_id = $1 AND user_id = $2 AND notification_id = $3) before
         WHERE n.tenant_id = $1 AND n.user_id = $2 AND n.notification_id = $3 AND NOT n.hidden
         RETURNING n.*, n.created_at::text AS cursor_at, before.was_unread`,
        [tenantId, userId, notificationId],
      );
      if (!rows[0]) throw new NotFoundError(`notification ${notificationId} not found`, { field: 'notification_id' });
      return { notification: toNotification(rows[0]), changed: rows[0].was_unread, unreadCount: await this.unread(db, tenantId, userId) };
    });
  }

  /** Marks the user's notifications created up to `upTo` (default now) read. */
  async markAllRead(tenantId: string, userId: string, upTo: Date | undefined, kinds: string[]) {
    return withTenantTransaction(this.pool, tenantId, async (db) => {
      const { rowCount } = await db.query(
        `UPDATE notifications SET read_at = now()
         WHERE tenant_id = $1 AND user_id = $2 AND read_at IS NULL AND NOT hidden AND created_at <= coalesce($3::timestamptz, now())
           AND (cardinality($4::text[]) = 0 OR kind = ANY($4::text[]))`,
        [tenantId, userId, upTo ?? null, kinds],
      );
      return { marked: rowCount ?? 0, unreadCount: await this.unread(db, tenantId, userId) };
    });
  }

  /** One notification: the user's own visible one, or (internal callers) any. */
  async get(tenantId: string, userId: string | undefined, notificationId: string): Promise<notificationV1.Notification & { hidden: boolean }> {
    return withTenantTransaction(this.pool, tenantId, async (db) => {
      const { rows } = await db.query<NotificationRow & { hidden: boolean }>(
        `SELECT ${COLUMNS} FROM notifications WHERE tenant_id = $1 AND notification_id = $2 AND ($3::text IS NULL OR (user_id = $3 AND NOT hidden))`,
        [tenantId, notificationId, userId ?? null],
      );
      if (!rows[0]) throw new NotFoundError(`notification ${notificationId} not found`, { field: 'notification_id' });
      return { ...toNotification(rows[0]), hidden: rows[0].hidden };
    });
  }

  async badgeCount(tenantId: string, userId: string): Promise<number> {
    return withTenantTransaction(this.pool, tenantId, (db) => this.unread(db, tenantId, userId));
  }

  private async unread(db: PoolClient, tenantId: string, userId: string): Promise<number> {
    const { rows } = await db.query<{ unread: number }>(
      `SELECT count(*)::int AS unread FROM notifications WHERE tenant_id = $1 AND user_id = $2 AND read_at IS NULL AND ${VISIBLE}`,
      [tenantId, userId],
    );
    return rows[0]!.unread;
  }
}
