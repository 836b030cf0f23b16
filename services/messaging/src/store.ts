import { newId } from '@switchboard/ids';
import { AlreadyExistsError, NotFoundError, PermissionDeniedError, SwitchboardError } from '@switchboard/errors';
import { withTenantTransaction, type Pool, type PoolClient, type QueryResult } from '@switchboard/postgres';
import { messagingV1 } from '@switchboard/proto';
import { injectTraceContext, type Meter } from '@switchboard/telemetry';
import { subjects } from '@switchboard/nats';
import { TOPICS } from '@switchboard/kafka';
import { OUTBOX_BATCH_PREPARE, OutboxWriter } from './outbox-writer';
import { sqlString } from './sql';
import { SendBatcher, type BatchLimits, type Outcome } from './send-batcher';

const { ConversationKind } = messagingV1;

export type SendTarget = { conversationId: string } | { recipientUserId: string };

export interface SendRequest {
  tenantId: string;
  target: SendTarget;
  message: NewMessage;
  /**
   * Set when the caller already decided the sender may post here (a room
   * permission, a broadcast role): membership rows are not consulted, and a
   * conversation not yet known is created with this kind.
   */
  granted?: { kind: messagingV1.ConversationKind };
  /** The sending request's trace context (JSON), for its outbox event: the batch that commits it runs outside that request. */
  traceHeaders?: string;
}

/**
 * Who reads. Members read their conversations; `granted` names the
 * conversations the caller may read without being a member row (tenant-wide
 * audiences of their roles, rooms the room service allowed).
 */
export interface Reader {
  userId: string;
  granted: readonly string[];
  /** Per granted room: the earliest message time the reader may see (rooms that hide history from new members). */
  visibleFrom?: ReadonlyMap<string, Date>;
}

/** Conversation kinds never change, so a replica remembers them; this many at most. */
const KIND_CACHE_SIZE = 100_000;

export interface NewMessage {
  senderId: string;
  clientMessageId: string;
  kind: messagingV1.MessageKind;
  text: string;
  attachments: messagingV1.Attachment[];
  mentions: string[];
  metadata: Record<string, string>;
}

interface MessageRow {
  tenant_id: string;
  conversation_id: string;
  seq: string;
  message_id: string;
  sender_id: string;
  client_message_id: string;
  kind: number;
  body: string;
  attachments: messagingV1.Attachment[];
  mentions: string[];
  metadata: Record<string, string>;
  created_at: Date;
  edited_at: Date | null;
  deleted: boolean;
}

/** A message row as `to_jsonb` renders it: timestamps as strings, the sequence as a number. */
type MessageJson = Omit<MessageRow, 'seq' | 'created_at' | 'edited_at'> & { seq: number | string; created_at: string; edited_at: string | null };

function jsonToMessage(row: MessageJson): messagingV1.Message {
  return toMessage({ ...row, seq: String(row.seq), created_at: new Date(row.created_at), edited_at: row.edited_at ? new Date(row.edited_at) : null });
}

/** The key that makes a direct conversation one per pair: both users in sorted order. */
function directKeyOf(userId: string, otherUserId: string): string {
  return [userId, otherUserId].sort().join(':');
}

interface ConversationRow {
  tenant_id: string;
  conversation_id: string;
  kind: number;
  last_seq: string;
  created_at: Date;
  last_message_at: Date | null;
  member_ids: string[];
  /** Present when a viewer is known: the newest message (as JSON) and the viewer's watermarks. */
  last_message?: MessageJson | null;
  read_seq?: string | null;
  delivered_seq?: string | null;
}

export function toMessage(row: MessageRow): messagingV1.Message {
  return {
    tenantId: row.tenant_id,
    conversationId: row.conversation_id,
    messageId: row.message_id,
    seq: Number(row.seq),
    senderId: row.sender_id,
    clientMessageId: row.client_message_id,
    kind: row.kind,
    text: row.deleted ? '' : row.body,
    attachments: row.attachments,
    mentions: row.mentions,
    createdAt: row.created_at,
    editedAt: row.edited_at ?? undefined,
    deleted: row.deleted,
    metadata: row.metadata,
  };
}

function toConversation(row: ConversationRow): messagingV1.Conversation {
  const lastSeq = Number(row.last_seq);
  const readSeq = Number(row.read_seq ?? 0);
  const last = row.last_message;
  return {
    tenantId: row.tenant_id,
    conversationId: row.conversation_id,
    kind: row.kind,
    memberIds: row.member_ids,
    lastSeq,
    createdAt: row.created_at,
    lastMessageAt: row.last_message_at ?? undefined,
    lastMessage: last ? jsonToMessage(last) : undefined,
    readSeq,
    deliveredSeq: Number(row.delivered_seq ?? 0),
    unreadCount: row.read_seq === undefined || row.read_seq === null ? 0 : Math.max(0, lastSeq - readSeq),
  };
}

/** What an acknowledgement (and a retry's check) needs of a stored message. */
type StoredMessage = Pick<messagingV1.Message, 'conversationId' | 'messageId' | 'seq' | 'createdAt' | 'clientMessageId' | 'text'>;

/** One item's row of the batch send statement (`insertMessages`). */
interface SendRow {
  /** The item's 1-based position in the statement, and that of the item that stored its sender's client id (null: none did). */
  position: number;
  winner: number | null;
  /** Null when the conversation does not exist (in this tenant). */
  conversation_id: string | null;
  member_ids: string[];
  message_id: string;
  /** Set when this item was stored. */
  seq: string | null;
  created_ms: number | null;
  /** Set when the sender's client id was stored before this statement. */
  original_conversation_id: string | null;
  original_message_id: string | null;
  original_seq: string | null;
  original_created_ms: number | null;
  original_text: string | null;
}

function ackOf(message: StoredMessage, duplicate: boolean): messagingV1.MessageAck {
  return {
    conversationId: message.conversationId,
    messageId: message.messageId,
    seq: message.seq,
    createdAt: message.createdAt,
    clientMessageId: message.clientMessageId,
    duplicate,
  };
}

const { CONVERSATION_KIND_DIRECT: DIRECT, CONVERSATION_KIND_BROADCAST: BROADCAST } = ConversationKind;

/**
 * Member ids are listed for direct conversations only: a room's members come
 * from the room service, and an audience's member rows only hold the
 * receipts of those who read it.
 */
const CONVERSATION_COLUMNS = `c.tenant_id, c.conversation_id, c.kind, c.last_seq, c.created_at, c.last_message_at,
  CASE WHEN c.kind = ${DIRECT} THEN ARRAY(SELECT m.user_id FROM conversation_members m
        WHERE m.tenant_id = c.tenant_id AND m.conversation_id = c.conversation_id ORDER BY m.user_id) ELSE '{}' END AS member_ids`;

/**
 * The conversations a reader ($1 tenant, $2 user, $3 granted ids) sees: those
 * with a member row (except audiences, whose rows only hold receipts) and
 * the granted ones.
 */
const READABLE = `readable AS (
  SELECT m.conversation_id FROM conversation_members m
  JOIN conversations rc ON rc.tenant_id = m.tenant_id AND rc.conversation_id = m.conversation_id
  WHERE m.tenant_id = $1 AND m.user_id = $2 AND rc.kind <> ${BROADCAST} AND rc.deleted_at IS NULL
  UNION SELECT unnest($3::text[])
)`;

/** A conversation as one member sees it: with the newest message and the member's own watermarks (`me`). */
const VIEWER_COLUMNS = `${CONVERSATION_COLUMNS}, COALESCE(me.read_seq, 0) AS read_seq, COALESCE(me.delivered_seq, 0) AS delivered_seq,
  (SELECT to_jsonb(lm) FROM messages lm
   WHERE lm.tenant_id = c.tenant_id AND lm.conversation_id = c.conversation_id AND lm.seq = c.last_seq
     AND (me.history_visible_from IS NULL OR lm.created_at >= me.history_visible_from)) AS last_message`;

/**
 * The sends of one tenant as one statement ($1 the tenant, $2 the items as a
 * JSON array): see `MessageStore.insertMessages`.
 */
const SEND_BATCH = `WITH item AS (
  SELECT i.*, CASE WHEN i.by_direct
    THEN (SELECT c.conversation_id FROM conversations c WHERE c.tenant_id = $1 AND c.direct_key = i.target)
    ELSE (SELECT c.conversation_id FROM conversations c WHERE c.tenant_id = $1 AND c.conversation_id = i.target) END AS conversation_id
  FROM jsonb_to_recordset($2) AS i(position int, by_direct boolean, target text, granted boolean, sender_id text,
    client_message_id text, message_id text, kind smallint, body text, attachments jsonb, mentions text[], metadata jsonb)
), members AS (
  SELECT d.conversation_id, ARRAY(SELECT m.user_id FROM conversation_members m
    WHERE m.tenant_id = $1 AND m.conversation_id = d.conversation_id ORDER BY m.user_id) AS ids
  FROM (SELECT DISTINCT conversation_id FROM item WHERE conversation_id IS NOT NULL) d
), checked AS (
  SELECT i.*, mb.ids AS member_ids, o.conversation_id AS original_conversation_id, o.message_id AS original_message_id,
    o.seq AS original_seq, floor(extract(epoch FROM o.created_at) * 1000)::float8 AS original_created_ms,
    CASE WHEN o.deleted THEN '' ELSE o.body END AS original_text,
    o.message_id IS NULL AND i.conversation_id IS NOT NULL AND (i.granted OR i.sender_id = ANY (mb.ids)) AS storable
  FROM item i
  LEFT JOIN members mb ON mb.conversation_id = i.conversation_id
  -- One lookup in the client-id index per item: the LIMIT keeps the planner from joining (scanning) the tenant's messages.
  LEFT JOIN LATERAL (
    SELECT m.conversation_id, m.message_id, m.seq, m.created_at, m.deleted, m.body FROM messages m
    WHERE m.tenant_id = $1 AND m.sender_id = i.sender_id AND m.client_message_id = i.client_message_id LIMIT 1
  ) o ON true
), ranked AS (
  -- The first storable item of a sender's client id is stored; later items with that id are its retries.
  SELECT c.*, min(c.position) FILTER (WHERE c.storable) OVER (PARTITION BY c.sender_id, c.client_message_id) AS winner
  FROM checked c
), stored AS (
  SELECT r.conversation_id, r.position, r.sender_id, r.client_message_id, r.message_id, r.kind, r.body, r.attachments, r.mentions, r.metadata,
    row_number() OVER (PARTITION BY r.conversation_id ORDER BY r.position) AS nth
  FROM ranked r WHERE r.position = r.winner
), counts AS (
  SELECT conversation_id, count(*) AS n FROM stored GROUP BY conversation_id
), locked AS (
  -- In one order across statements, so that two never wait on each other in a cycle.
  SELECT c.conversation_id FROM conversations c
  WHERE c.tenant_id = $1 AND c.conversation_id IN (SELECT conversation_id FROM counts)
  ORDER BY c.conversation_id FOR UPDATE
), bumped AS (
  UPDATE conversations c SET last_seq = c.last_seq + k.n, last_message_at = now()
  FROM counts k JOIN locked l ON l.conversation_id = k.conversation_id
  WHERE c.tenant_id = $1 AND c.conversation_id = k.conversation_id
  RETURNING c.conversation_id, c.last_seq - k.n AS seq_before
), inserted AS (
  INSERT INTO messages (tenant_id, conversation_id, seq, message_id, sender_id, client_message_id, kind, body, attachments, mentions, metadata)
  SELECT $1, s.conversation_id, b.seq_before + s.nth, s.message_id, s.sender_id, s.client_message_id, s.kind, s.body, s.attachments, s.mentions, s.metadata
  FROM stored s JOIN bumped b ON b.conversation_id = s.conversation_id
  RETURNING conversation_id, sender_id, message_id, seq, created_at
), sender_receipt AS (
  -- What a user sent counts as read and delivered for them: it never shows as unread on their other devices.
  UPDATE conversation_members m SET read_seq = s.seq, delivered_seq = s.seq, receipts_updated_at = now()
  FROM (SELECT conversation_id, sender_id, max(seq) AS seq FROM inserted GROUP BY conversation_id, sender_id) s
  WHERE m.tenant_id = $1 AND m.conversation_id = s.conversation_id AND m.user_id = s.sender_id
)
SELECT r.position, r.winner, r.conversation_id, r.member_ids, r.message_id, i.seq, floor(extract(epoch FROM i.created_at) * 1000)::float8 AS created_ms,
  r.original_conversation_id, r.original_message_id, r.original_seq, r.original_created_ms, r.original_text
FROM ranked r LEFT JOIN inserted i ON i.message_id = r.message_id
ORDER BY r.position`;

/**
 * The statements of a send batch, prepared with SQL PREPARE once per
 * connection: unlike a protocol-level named statement, an EXECUTE can share
 * one round trip with BEGIN and the tenant setting (and the outbox insert
 * with COMMIT), so a batch transaction costs two round trips.
 */
const preparedOn = new WeakSet<PoolClient>();

export async function prepareSendBatch(db: PoolClient): Promise<void> {
  if (preparedOn.has(db)) return;
  await db.query(`PREPARE messaging_send_batch(text, jsonb) AS ${SEND_BATCH}; ${OUTBOX_BATCH_PREPARE}`);
  preparedOn.add(db);
}

/**
 * Everything messaging keeps in PostgreSQL. Each method runs in a
 * transaction scoped to one tenant (row-level security does the rest).
 */
export class MessageStore {
  private readonly batcher: SendBatcher;
  private readonly kinds = new Map<string, messagingV1.ConversationKind>();
  private readonly kindLookups = new Map<string, Promise<messagingV1.ConversationKind | undefined>>();

  /**
   * `outboxWritten` runs after a commit that wrote outbox rows, so the relay
   * publishes at once instead of at its next poll.
   */
  constructor(
    private readonly pool: Pool,
    batching: BatchLimits & { meter?: Meter },
    private readonly outboxWritten: () => void = () => undefined,
  ) {
    const batchSize = batching.meter?.createHistogram('messaging_send_batch_size', {
      description: 'Sends committed per transaction (group commit under load)',
      advice: { explicitBucketBoundaries: [1, 2, 4, 8, 16, 32, 64, 128] },
    });
    const shed = batching.meter?.createCounter('messaging_sends_shed_total', { description: 'Sends refused unstored under overload, by reason (queue_full, queue_wait, deadline)' });
    this.batcher = new SendBatcher(
      pool,
      batching,
      { prepare: prepareSendBatch, sendAllIn: (db, requests, outbox, opening) => this.sendAllIn(db, requests, outbox, opening), originalOf: (request) => this.originalOf(request) },
      batchSize,
      shed,
    );
  }

  /**
   * Commits a message with the conversation's next sequence and its outbox
   * events. A retry with the same client id returns the original
   * acknowledgement; the same client id with a different body is refused.
   * Sends go through the batcher: alone they commit at once, under load
   * several share one transaction (one commit, one fsync).
   */
  async send(tenantId: string, target: SendTarget, message: NewMessage, granted?: SendRequest['granted'], deadlineAt = Infinity): Promise<messagingV1.MessageAck> {
    const traceHeaders = JSON.stringify(injectTraceContext({}));
    const ack = await this.batcher.submit(granted ? { tenantId, target, message, granted, traceHeaders } : { tenantId, target, message, traceHeaders }, deadlineAt);
    if (!ack.duplicate) this.outboxWritten();
    return ack;
  }

  /** Creates a conversation the caller was allowed into (a room whose membership has not reached this replica yet). */
  async ensureConversation(tenantId: string, conversationId: string, kind: messagingV1.ConversationKind): Promise<void> {
    await withTenantTransaction(this.pool, tenantId, (db) => ensureConversationRow(db, tenantId, conversationId, kind));
  }

  /** A conversation's kind, or undefined when this tenant has no such conversation (yet). */
  async conversationKind(tenantId: string, conversationId: string): Promise<messagingV1.ConversationKind | undefined> {
    const key = `${tenantId}/${conversationId}`;
    const known = this.kinds.get(key);
    if (known !== undefined) return known;
    // A burst of sends to a conversation this replica has not seen yet shares one lookup.
    let lookup = this.kindLookups.get(key);
    if (!lookup) {
      lookup = this.lookUpKind(tenantId, conversationId, key).finally(() => this.kindLookups.delete(key));
      this.kindLookups.set(key, lookup);
    }
    return lookup;
  }

  private async lookUpKind(tenantId: string, conversationId: string, key: string): Promise<messagingV1.ConversationKind | undefined> {
    const { rows } = await withTenantTransaction(this.pool, tenantId, (db) =>
      db.query<{ kind: number }>(`SELECT kind FROM conversations WHERE tenant_id = $1 AND conversation_id = $2`, [tenantId, conversationId]),
    );
    if (!rows[0]) return undefined;
    if (this.kinds.size >= KIND_CACHE_SIZE) this.kinds.clear();
    this.kinds.set(key, rows[0].kind);
    return rows[0].kind;
  }

  /**
   * The sends of one tenant inside a batch transaction whose `app.tenant_id`
   * is that tenant: one statement stores them all (`insertMessages`), and
   * each gets its own outcome, as if it had been sent alone in their order.
   * Sends whose conversation does not exist yet and may create it (the first
   * direct message of a pair; a granted conversation) create it and go
   * through the statement once more.
   */
  private async sendAllIn(db: PoolClient, requests: SendRequest[], outbox: OutboxWriter, opening: string): Promise<Outcome[]> {
    const outcomes: Outcome[] = new Array<Outcome>(requests.length);
    const tenantId = requests[0]!.tenantId;
    const waiting = await this.settle(db, tenantId, requests, requests.map((_, index) => index), outbox, outcomes, opening);
    if (waiting.length > 0) {
      const made = new Set<string>();
      for (const index of waiting) {
        const { target, message, granted } = requests[index]!;
        const key = 'recipientUserId' in target ? `d/${directKeyOf(message.senderId, target.recipientUserId)}` : `c/${target.conversationId}`;
        if (made.has(key)) continue;
        made.add(key);
        // The first message between two users creates their conversation; an audience's first broadcast, or a room
        // whose membership has not reached this replica yet, creates its row.
        if ('recipientUserId' in target) await this.directConversation(db, tenantId, message.senderId, target.recipientUserId, outbox);
        else await ensureConversationRow(db, tenantId, target.conversationId, granted!.kind);
      }
      await this.settle(db, tenantId, requests, waiting, outbox, outcomes);
    }
    return outcomes;
  }

  /**
   * Runs `insertMessages` for `requests[indexes]` and writes each one's
   * outcome, event and ack. The first run (`opening` given, the SQL that
   * precedes it in its round trip) returns the indexes whose conversation
   * does not exist yet but may be created by the send; the second refuses them.
   */
  private async settle(
    db: PoolClient,
    tenantId: string,
    requests: SendRequest[],
    indexes: number[],
    outbox: OutboxWriter,
    outcomes: Outcome[],
    opening?: string,
  ): Promise<number[]> {
    const mayCreate = opening !== undefined;
    const items = indexes.map((index) => requests[index]!);
    const rows = await this.insertMessages(db, tenantId, items, opening ?? '');
    const waiting: number[] = [];
    /** The messages this statement stored, by item position: later items with the same client id are their retries. */
    const stored = new Map<number, messagingV1.Message>();
    rows.forEach((row, position) => {
      const index = indexes[position]!;
      const { target, message, granted, traceHeaders } = items[position]!;
      try {
        if (row.original_message_id !== null) {
          const original = {
            conversationId: row.original_conversation_id!,
            messageId: row.original_message_id,
            seq: Number(row.original_seq),
            createdAt: new Date(row.original_created_ms!),
            clientMessageId: message.clientMessageId,
            text: row.original_text!,
          };
          outcomes[index] = { ok: true, ack: this.retried(original, target, message) };
          return;
        }
        if (row.winner !== null && row.winner < row.position) {
          // An earlier item of this statement stored the same sender's client id: this one is its retry.
          outcomes[index] = { ok: true, ack: this.retried(stored.get(row.winner)!, target, message) };
          return;
        }
        if (row.conversation_id === null) {
          if (mayCreate && ('recipientUserId' in target || granted)) {
            waiting.push(index);
            return;
          }
          const conversationId = 'conversationId' in target ? target.conversationId : '';
          throw new NotFoundError(`conversation ${conversationId} not found`, { field: 'conversation_id' });
        }
        if (row.seq === null) throw new PermissionDeniedError(`not a member of conversation ${row.conversation_id}`, { field: 'conversation_id' });
        const created: messagingV1.Message = {
          tenantId,
          conversationId: row.conversation_id,
          messageId: row.message_id,
          seq: Number(row.seq),
          senderId: message.senderId,
          clientMessageId: message.clientMessageId,
          kind: message.kind,
          text: message.text,
          attachments: message.attachments,
          mentions: message.mentions,
          createdAt: new Date(row.created_ms!),
          editedAt: undefined,
          deleted: false,
          metadata: message.metadata,
        };
        stored.set(row.position, created);
        outbox.add(tenantId, subjects.conversation(tenantId, created.conversationId), TOPICS.messages, created.conversationId, {
          $case: 'messageCreated',
          value: { message: created, memberIds: row.member_ids },
        }, traceHeaders);
        outcomes[index] = { ok: true, ack: ackOf(created, false) };
      } catch (error) {
        // A refusal is this item's outcome; anything else aborts the transaction (the batcher reruns each send alone).
        if (!(error instanceof SwitchboardError)) throw error;
        outcomes[index] = { ok: false, error };
      }
    });
    return waiting;
  }

  /**
   * The sends of one tenant as one statement (one round trip), each item
   * answered in its own row, in order. Per item, exactly what one send alone
   * would do, taken in the items' order: an item whose sender already used
   * its client id (before, or in an earlier item) stores nothing and is
   * answered with the original; an item whose sender is not a member (and
   * not granted) stores nothing; the others are stored, each conversation's
   * in item order with consecutive sequences after its `last_seq`, which
   * moves once by their number. The conversations' rows are locked in id
   * order before the update, so concurrent statements never wait on each
   * other in a cycle, and their locks serialise senders of a conversation
   * until commit (the sequence stays gap-free); a concurrent send with the
   * same client id fails on the unique index and undoes the whole statement.
   */
  private async insertMessages(db: PoolClient, tenantId: string, requests: SendRequest[], opening: string): Promise<SendRow[]> {
    const items = requests.map(({ target, message, granted }, position) => ({
      position: position + 1,
      by_direct: 'recipientUserId' in target,
      target: 'recipientUserId' in target ? directKeyOf(message.senderId, target.recipientUserId) : target.conversationId,
      granted: granted !== undefined,
      sender_id: message.senderId,
      client_message_id: message.clientMessageId,
      message_id: newId(),
      kind: message.kind,
      body: message.text,
      attachments: message.attachments,
      mentions: message.mentions,
      metadata: message.metadata,
    }));
    // One round trip: the transaction's opening (when this is its first statement) and the prepared statement.
    const results = (await db.query(`${opening}EXECUTE messaging_send_batch(${db.escapeLiteral(tenantId)}, ${sqlString(JSON.stringify(items))})`)) as unknown as
      | QueryResult<SendRow>
      | QueryResult<SendRow>[];
    return Array.isArray(results) ? results[results.length - 1]!.rows : results.rows;
  }

  /** After losing the race on the client id index: the winner's ack, looked up in a fresh transaction. */
  async originalOf(request: SendRequest): Promise<messagingV1.MessageAck | undefined> {
    return withTenantTransaction(this.pool, request.tenantId, async (db) => {
      const original = await this.findByClientId(db, request.tenantId, request.message.senderId, request.message.clientMessageId);
      return original ? this.retried(original, request.target, request.message) : undefined;
    });
  }

  /** A retry must be the same message: same body, same conversation (or recipient). */
  private retried(original: StoredMessage, target: SendTarget, message: NewMessage): messagingV1.MessageAck {
    const sameTarget = 'conversationId' in target ? target.conversationId === original.conversationId : true;
    if (!sameTarget || original.text !== message.text) {
      // Not CONFLICT: clients retry CONFLICT, and retrying this can never succeed.
      throw new AlreadyExistsError('client_message_id was already used for a different message', { field: 'client_message_id' });
    }
    return ackOf(original, true);
  }

  async getOrCreateDirect(tenantId: string, userId: string, otherUserId: string) {
    const result = await withTenantTransaction(this.pool, tenantId, async (db) => {
      const outbox = new OutboxWriter();
      const direct = await this.directConversation(db, tenantId, userId, otherUserId, outbox);
      await outbox.write(db);
      return direct;
    });
    if (result.created) this.outboxWritten();
    return result;
  }

  async getConversation(tenantId: string, conversationId: string, reader: Reader | undefined): Promise<messagingV1.Conversation> {
    return withTenantTransaction(this.pool, tenantId, async (db) => {
      if (reader) await this.requireAccess(db, tenantId, conversationId, reader);
      const { rows } = reader
        ? await db.query<ConversationRow>(
            `SELECT ${VIEWER_COLUMNS} FROM conversations c
             LEFT JOIN conversation_members me ON me.tenant_id = c.tenant_id AND me.conversation_id = c.conversation_id AND me.user_id = $3
             WHERE c.tenant_id = $1 AND c.conversation_id = $2`,
            [tenantId, conversationId, reader.userId],
          )
        : await db.query<ConversationRow>(`SELECT ${CONVERSATION_COLUMNS} FROM conversations c WHERE c.tenant_id = $1 AND c.conversation_id = $2`, [
            tenantId,
            conversationId,
          ]);
      if (!rows[0]) throw new NotFoundError(`conversation ${conversationId} not found`, { field: 'conversation_id' });
      return toConversation(rows[0]);
    });
  }

  /** A user's conversations, most recently active first, paged by an offset token. */
  async listConversations(tenantId: string, reader: Reader, pageSize: number, pageToken: string) {
    const offset = pageToken ? Number.parseInt(Buffer.from(pageToken, 'base64url').toString(), 10) || 0 : 0;
    return withTenantTransaction(this.pool, tenantId, async (db) => {
      const { rows } = await db.query<ConversationRow>(
        `WITH ${READABLE}
         SELECT ${VIEWER_COLUMNS} FROM conversations c
         LEFT JOIN conversation_members me ON me.tenant_id = c.tenant_id AND me.conversation_id = c.conversation_id AND me.user_id = $2
         WHERE c.tenant_id = $1 AND c.conversation_id IN (SELECT conversation_id FROM readable)
         ORDER BY c.last_message_at DESC NULLS LAST, c.conversation_id
         LIMIT $4 OFFSET $5`,
        [tenantId, reader.userId, reader.granted, pageSize + 1, offset],
      );
      const more = rows.length > pageSize;
      return {
        conversations: rows.slice(0, pageSize).map(toConversation),
        nextPageToken: more ? Buffer.from(String(offset + pageSize)).toString('base64url') : '',
      };
    });
  }

  /** Messages after `fromSeq` (forward) or before it (backward; 0 = from the newest), always returned in ascending order. */
  async history(tenantId: string, conversationId: string, reader: Reader | undefined, fromSeq: number, backward: boolean, limit: number) {
    return withTenantTransaction(this.pool, tenantId, async (db) => {
      if (reader) await this.requireAccess(db, tenantId, conversationId, reader);
      // A room that hides its history from new members: nothing from before the reader joined.
      const visibleFrom = reader?.visibleFrom?.get(conversationId) ?? null;
      const { rows } = backward
        ? await db.query<MessageRow>(
            `SELECT * FROM messages WHERE tenant_id = $1 AND conversation_id = $2 AND ($3::bigint = 0 OR seq < $3)
               AND ($5::timestamptz IS NULL OR created_at >= $5)
             ORDER BY seq DESC LIMIT $4`,
            [tenantId, conversationId, fromSeq, limit + 1, visibleFrom],
          )
        : await db.query<MessageRow>(
            `SELECT * FROM messages WHERE tenant_id = $1 AND conversation_id = $2 AND seq > $3
               AND ($5::timestamptz IS NULL OR created_at >= $5)
             ORDER BY seq ASC LIMIT $4`,
            [tenantId, conversationId, fromSeq, limit + 1, visibleFrom],
          );
      const hasMore = rows.length > limit;
      const page = rows.slice(0, limit).map(toMessage);
      if (backward) page.reverse();
      return { messages: page, hasMore };
    });
  }

  /**
   * Everything a device missed since its positions, across the user's
   * conversations, in (conversation, seq) order and paginated: a device that
   * was offline for a week pages through it instead of getting one giant frame.
   */
  async sync(tenantId: string, reader: Reader, positions: Map<string, number>, limit: number) {
    return withTenantTransaction(this.pool, tenantId, async (db) => {
      const { rows } = await db.query<MessageRow>(
        `WITH ${READABLE}
         SELECT m.* FROM messages m
         JOIN readable r ON r.conversation_id = m.conversation_id
         LEFT JOIN conversation_members me ON me.tenant_id = m.tenant_id AND me.conversation_id = m.conversation_id AND me.user_id = $2
         LEFT JOIN unnest($4::text[], $5::bigint[]) AS p(conversation_id, last_seq) ON p.conversation_id = m.conversation_id
         WHERE m.tenant_id = $1 AND m.seq > COALESCE(p.last_seq, 0)
           AND (me.history_visible_from IS NULL OR m.created_at >= me.history_visible_from)
         ORDER BY m.conversation_id, m.seq
         LIMIT $6`,
        [tenantId, reader.userId, reader.granted, [...positions.keys()], [...positions.values()], limit + 1],
      );
      const hasMore = rows.length > limit;
      const messages = rows.slice(0, limit).map(toMessage);
      const next = new Map(positions);
      for (const message of messages) next.set(message.conversationId, Math.max(next.get(message.conversationId) ?? 0, message.seq));
      return { messages, hasMore, positions: next };
    });
  }

  /**
   * Moves a member's watermark forward (never back, never past the last
   * message): delivery per device (the member's delivered_seq is the highest
   * of their devices), reading per user (reading implies delivery). When a
   * watermark moved, one event on the conversation subject tells the senders
   * and the reader's other devices.
   */
  async markReceipt(tenantId: string, conversationId: string, reader: Reader, deviceId: string, seq: number, which: 'delivered' | 'read') {
    const userId = reader.userId;
    const receipt = await withTenantTransaction(this.pool, tenantId, async (db) => {
      await this.requireAccess(db, tenantId, conversationId, reader);
      if (reader.granted.includes(conversationId)) {
        // A reader without a member row (an audience, a room whose membership is still on its way) gets one for its watermarks.
        await db.query(`INSERT INTO conversation_members (tenant_id, conversation_id, user_id) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING`, [
          tenantId,
          conversationId,
          userId,
        ]);
      }
      const before = await db.query<{ delivered_seq: string; read_seq: string; last_seq: string }>(
        `SELECT m.delivered_seq, m.read_seq, c.last_seq FROM conversation_members m
         JOIN conversations c ON c.tenant_id = m.tenant_id AND c.conversation_id = m.conversation_id
         WHERE m.tenant_id = $1 AND m.conversation_id = $2 AND m.user_id = $3 FOR UPDATE OF m`,
        [tenantId, conversationId, userId],
      );
      const old = before.rows[0]!;
      const upTo = Math.min(seq, Number(old.last_seq));
      if (which === 'delivered' && deviceId) {
        await db.query(
          `INSERT INTO device_receipts (tenant_id, conversation_id, user_id, device_id, delivered_seq) VALUES ($1, $2, $3, $4, $5)
           ON CONFLICT (tenant_id, conversation_id, user_id, device_id)
           DO UPDATE SET delivered_seq = GREATEST(device_receipts.delivered_seq, EXCLUDED.delivered_seq), updated_at = now()`,
          [tenantId, conversationId, userId, deviceId, upTo],
        );
      }
      const receipt = {
        deliveredSeq: Math.max(Number(old.delivered_seq), upTo),
        readSeq: which === 'read' ? Math.max(Number(old.read_seq), upTo) : Number(old.read_seq),
      };
      const moved = receipt.deliveredSeq !== Number(old.delivered_seq) || receipt.readSeq !== Number(old.read_seq);
      if (moved) {
        await db.query(
          `UPDATE conversation_members SET delivered_seq = $4, read_seq = $5, receipts_updated_at = now()
           WHERE tenant_id = $1 AND conversation_id = $2 AND user_id = $3`,
          [tenantId, conversationId, userId, receipt.deliveredSeq, receipt.readSeq],
        );
        const outbox = new OutboxWriter();
        outbox.add(tenantId, subjects.conversation(tenantId, conversationId), TOPICS.messages, conversationId, {
          $case: 'receiptUpdated',
          value: { conversationId, userId, ...receipt, deviceId: which === 'delivered' ? deviceId : '' },
        });
        await outbox.write(db);
      }
      return { ...receipt, moved };
    });
    if (receipt.moved) this.outboxWritten();
    return { deliveredSeq: receipt.deliveredSeq, readSeq: receipt.readSeq };
  }

  /** Every member's watermarks, with each device's delivery. */
  async receipts(tenantId: string, conversationId: string, reader: Reader | undefined): Promise<messagingV1.Receipt[]> {
    return withTenantTransaction(this.pool, tenantId, async (db) => {
      if (reader) await this.requireAccess(db, tenantId, conversationId, reader);
      const { rows } = await db.query<{ user_id: string; delivered_seq: string; read_seq: string; receipts_updated_at: Date | null; devices: { device_id: string; delivered_seq: number }[] }>(
        `SELECT m.user_id, m.delivered_seq, m.read_seq, m.receipts_updated_at,
           COALESCE((SELECT jsonb_agg(jsonb_build_object('device_id', d.device_id, 'delivered_seq', d.delivered_seq) ORDER BY d.device_id)
                     FROM device_receipts d
                     WHERE d.tenant_id = m.tenant_id AND d.conversation_id = m.conversation_id AND d.user_id = m.user_id), '[]') AS devices
         FROM conversation_members m WHERE m.tenant_id = $1 AND m.conversation_id = $2 ORDER BY m.user_id`,
        [tenantId, conversationId],
      );
      return rows.map((row) => ({
        userId: row.user_id,
        deliveredSeq: Number(row.delivered_seq),
        readSeq: Number(row.read_seq),
        updatedAt: row.receipts_updated_at ?? undefined,
        devices: row.devices.map((d) => ({ deviceId: d.device_id, deliveredSeq: Number(d.delivered_seq) })),
      }));
    });
  }

  /** Unread messages per conversation of a user (after their read watermark), only where there are some. */
  async unreadCounts(tenantId: string, reader: Reader): Promise<messagingV1.UnreadCount[]> {
    return withTenantTransaction(this.pool, tenantId, async (db) => {
      const { rows } = await db.query<{ conversation_id: string; last_seq: string; read_seq: string }>(
        `WITH ${READABLE}
         SELECT c.conversation_id, c.last_seq, COALESCE(me.read_seq, 0) AS read_seq FROM conversations c
         LEFT JOIN conversation_members me ON me.tenant_id = c.tenant_id AND me.conversation_id = c.conversation_id AND me.user_id = $2
         WHERE c.tenant_id = $1 AND c.conversation_id IN (SELECT conversation_id FROM readable) AND c.last_seq > COALESCE(me.read_seq, 0)
         ORDER BY c.conversation_id`,
        [tenantId, reader.userId, reader.granted],
      );
      return rows.map((row) => ({
        conversationId: row.conversation_id,
        unread: Number(row.last_seq) - Number(row.read_seq),
        lastSeq: Number(row.last_seq),
        readSeq: Number(row.read_seq),
      }));
    });
  }

  private async findByClientId(db: PoolClient, tenantId: string, senderId: string, clientMessageId: string) {
    const { rows } = await db.query<MessageRow>(
      `SELECT * FROM messages WHERE tenant_id = $1 AND sender_id = $2 AND client_message_id = $3`,
      [tenantId, senderId, clientMessageId],
    );
    return rows[0] ? toMessage(rows[0]) : undefined;
  }

  /**
   * The reader may read the conversation: granted to them, or a member row
   * (audience rows only hold receipts and grant nothing). NOT_FOUND when it
   * does not exist, so outsiders of another tenant learn nothing.
   */
  private async requireAccess(db: PoolClient, tenantId: string, conversationId: string, reader: Reader): Promise<void> {
    const { rows } = await db.query<{ kind: number; member: boolean }>(
      `SELECT c.kind, EXISTS (SELECT 1 FROM conversation_members m
                              WHERE m.tenant_id = c.tenant_id AND m.conversation_id = c.conversation_id AND m.user_id = $3) AS member
       FROM conversations c WHERE c.tenant_id = $1 AND c.conversation_id = $2 AND c.deleted_at IS NULL`,
      [tenantId, conversationId, reader.userId],
    );
    const conversation = rows[0];
    if (!conversation) throw new NotFoundError(`conversation ${conversationId} not found`, { field: 'conversation_id' });
    if (reader.granted.includes(conversationId)) return;
    if (!conversation.member || conversation.kind === BROADCAST) {
      throw new PermissionDeniedError(`not a member of conversation ${conversationId}`, { field: 'conversation_id' });
    }
  }

  private async directConversation(db: PoolClient, tenantId: string, userId: string, otherUserId: string, outbox: OutboxWriter) {
    const members = [userId, otherUserId].sort();
    const directKey = directKeyOf(userId, otherUserId);
    const created = await db.query<{ conversation_id: string }>(
      `INSERT INTO conversations (tenant_id, conversation_id, kind, direct_key) VALUES ($1, $2, $3, $4)
       ON CONFLICT (tenant_id, direct_key) WHERE direct_key IS NOT NULL DO NOTHING
       RETURNING conversation_id`,
      [tenantId, newId(), ConversationKind.CONVERSATION_KIND_DIRECT, directKey],
    );
    const isNew = created.rows.length > 0;
    if (isNew) {
      const conversationId = created.rows[0]!.conversation_id;
      await db.query(
        `INSERT INTO conversation_members (tenant_id, conversation_id, user_id) SELECT $1, $2, unnest($3::text[])`,
        [tenantId, conversationId, members],
      );
      // Gateways subscribe the members' connections to the new conversation.
      for (const memberId of members) {
        outbox.add(tenantId, subjects.user(tenantId, memberId), TOPICS.messages, conversationId, {
          $case: 'conversationMembershipChanged',
          value: { conversationId, userId: memberId, member: true, kind: ConversationKind.CONVERSATION_KIND_DIRECT },
        });
      }
    }
    const { rows } = await db.query<ConversationRow>(
      `SELECT ${CONVERSATION_COLUMNS} FROM conversations c WHERE c.tenant_id = $1 AND c.direct_key = $2`,
      [tenantId, directKey],
    );
    return { conversation: toConversation(rows[0]!), created: isNew };
  }
}

/**
 * The row of a conversation that exists elsewhere first (a room, an audience):
 * created on first use, left as it is when present.
 */
export function ensureConversationRow(db: PoolClient, tenantId: string, conversationId: string, kind: messagingV1.ConversationKind | number): Promise<unknown> {
  return db.query(`INSERT INTO conversations (tenant_id, conversation_id, kind) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING`, [tenantId, conversationId, kind]);
}
