import type { Consumer } from 'kafkajs';
import { decodeRecord, leaveGroup, TOPICS } from '@switchboard/kafka';
import type { Logger } from '@switchboard/logging';
import { withTenantTransaction, type Pool } from '@switchboard/postgres';
import { eventsV1, messagingV1 } from '@switchboard/proto';
import type { Counter, Meter } from '@switchboard/telemetry';
import { ensureConversationRow } from './store';

const ROOM = messagingV1.ConversationKind.CONVERSATION_KIND_ROOM;
const { MembershipChange } = eventsV1;
/** Changes after which the user is a member (with the role and history window given). */
const MEMBER_AFTER = new Set([MembershipChange.MEMBERSHIP_CHANGE_JOINED, MembershipChange.MEMBERSHIP_CHANGE_ROLE_CHANGED]);

export type Applied = 'applied' | 'stale' | 'gap';

/**
 * Messaging's replica of room membership: a room is a conversation (kind
 * ROOM, id = room id) whose member rows follow the room service's
 * RoomMembershipChanged events from Kafka `sb.events` (keyed by room, so in
 * commit order per room). Each event carries the room's membership_version:
 * an event at or below the version held is a redelivery and changes nothing.
 *
 * The replica serves conversation lists, gateway subscriptions, sync and
 * notification routing. Who may post or read a room is asked of the room
 * service on every call (RoomAccess), so a lagging replica never lets a
 * removed member in.
 */
export class RoomReplica {
  private readonly applied: Counter;

  constructor(
    private readonly pool: Pool,
    private readonly deletedRetentionMs: number,
    meter: Meter,
  ) {
    this.applied = meter.createCounter('messaging_room_events_total', { description: 'Room events applied to the membership replica, by outcome' });
  }

  async applyMembership(tenantId: string, change: eventsV1.RoomMembershipChanged): Promise<Applied> {
    const outcome = await withTenantTransaction(this.pool, tenantId, async (db) => {
      await ensureConversationRow(db, tenantId, change.roomId, ROOM);
      const { rows } = await db.query<{ kind: number; membership_version: string; deleted_at: Date | null }>(
        `SELECT kind, membership_version, deleted_at FROM conversations WHERE tenant_id = $1 AND conversation_id = $2 FOR UPDATE`,
        [tenantId, change.roomId],
      );
      const held = Number(rows[0]!.membership_version);
      if (rows[0]!.kind !== ROOM || rows[0]!.deleted_at || change.membershipVersion <= held) return 'stale';
      if (MEMBER_AFTER.has(change.change)) {
        // Messages from before the member's history start are not theirs to read, so they never count as unread:
        // the watermarks start at the last of them.
        await db.query(
          `WITH hidden AS (
             SELECT COALESCE(max(seq), 0) AS seq FROM messages
             WHERE tenant_id = $1 AND conversation_id = $2 AND $4::timestamptz IS NOT NULL AND created_at < $4::timestamptz
           )
           INSERT INTO conversation_members (tenant_id, conversation_id, user_id, history_visible_from, read_seq, delivered_seq)
           SELECT $1, $2, $3, $4, hidden.seq, hidden.seq FROM hidden
           ON CONFLICT (tenant_id, conversation_id, user_id) DO UPDATE SET
             history_visible_from = EXCLUDED.history_visible_from,
             read_seq = GREATEST(conversation_members.read_seq, EXCLUDED.read_seq),
             delivered_seq = GREATEST(conversation_members.delivered_seq, EXCLUDED.delivered_seq)`,
          [tenantId, change.roomId, change.userId, change.historyVisibleFrom ?? null],
        );
      } else {
        await db.query(`DELETE FROM conversation_members WHERE tenant_id = $1 AND conversation_id = $2 AND user_id = $3`, [tenantId, change.roomId, change.userId]);
      }
      await db.query(`UPDATE conversations SET membership_version = $3 WHERE tenant_id = $1 AND conversation_id = $2`, [tenantId, change.roomId, change.membershipVersion]);
      // Versions come one by one in commit order; a jump means events were lost upstream.
      return change.membershipVersion > held + 1 ? 'gap' : 'applied';
    });
    this.applied.add(1, { event: 'membership', outcome });
    return outcome;
  }

  /** A deleted room: nobody reads it from now on, and its history is purged after the retention period. */
  async applyRoomUpdate(tenantId: string, update: eventsV1.RoomUpdated): Promise<void> {
    if (!update.deleted) return;
    await withTenantTransaction(this.pool, tenantId, async (db) => {
      await db.query(
        `INSERT INTO conversations (tenant_id, conversation_id, kind, deleted_at) VALUES ($1, $2, $3, now())
         ON CONFLICT (tenant_id, conversation_id) DO UPDATE SET deleted_at = COALESCE(conversations.deleted_at, now())
         WHERE conversations.kind = $3`,
        [tenantId, update.roomId, ROOM],
      );
      await db.query(`DELETE FROM conversation_members WHERE tenant_id = $1 AND conversation_id = $2`, [tenantId, update.roomId]);
      await db.query(
        `INSERT INTO room_purges (tenant_id, conversation_id, due_at) VALUES ($1, $2, now() + make_interval(secs => $3::double precision / 1000))
         ON CONFLICT DO NOTHING`,
        [tenantId, update.roomId, this.deletedRetentionMs],
      );
    });
    this.applied.add(1, { event: 'deleted', outcome: 'applied' });
  }

  /**
   * Purges the history of deleted rooms whose retention has passed, a bounded
   * number of rows per transaction so a big room never holds long locks.
   * Returns how many rooms were finished.
   */
  async purgeDue(chunk = 5000): Promise<number> {
    const { rows } = await this.pool.query<{ tenant_id: string; conversation_id: string }>(
      `SELECT tenant_id, conversation_id FROM room_purges WHERE due_at <= now() ORDER BY due_at LIMIT 20`,
    );
    for (const { tenant_id: tenantId, conversation_id: conversationId } of rows) {
      for (;;) {
        const deleted = await withTenantTransaction(this.pool, tenantId, (db) =>
          db.query(
            `DELETE FROM messages WHERE ctid IN (SELECT ctid FROM messages WHERE tenant_id = $1 AND conversation_id = $2 LIMIT $3)`,
            [tenantId, conversationId, chunk],
          ),
        );
        if ((deleted.rowCount ?? 0) < chunk) break;
      }
      await withTenantTransaction(this.pool, tenantId, (db) =>
        db.query(`DELETE FROM conversations WHERE tenant_id = $1 AND conversation_id = $2 AND deleted_at IS NOT NULL`, [tenantId, conversationId]),
      );
      await this.pool.query(`DELETE FROM room_purges WHERE tenant_id = $1 AND conversation_id = $2`, [tenantId, conversationId]);
    }
    return rows.length;
  }
}

/**
 * Feeds the replica from Kafka `sb.events` (its own consumer group, from the
 * beginning the first time, so a new deployment builds the whole replica).
 * An offset is committed only after its event was applied: a crash replays,
 * and replays are stale versions that change nothing.
 */
export async function consumeRoomEvents(consumer: Consumer, replica: RoomReplica, logger: Logger): Promise<void> {
  await consumer.subscribe({ topic: TOPICS.events, fromBeginning: true });
  await consumer.run({
    eachMessage: async ({ message, partition }) => {
      if (!message.value) return;
      let envelope: eventsV1.Envelope;
      try {
        envelope = decodeRecord(message.value, message.headers).envelope;
      } catch (err) {
        logger.warn({ err, partition, offset: message.offset }, 'skipping an undecodable record on sb.events');
        return;
      }
      const event = envelope.event;
      if (event?.$case === 'roomMembershipChanged') {
        const outcome = await replica.applyMembership(envelope.tenantId, event.value);
        if (outcome === 'gap') logger.warn({ roomId: event.value.roomId, version: event.value.membershipVersion }, 'room membership events were skipped upstream');
      } else if (event?.$case === 'roomUpdated') {
        await replica.applyRoomUpdate(envelope.tenantId, event.value);
      }
    },
  });
}

/**
 * Starts feeding the replica and keeps trying while Kafka is not reachable
 * (messaging serves meanwhile: room posts and reads are checked with the
 * room service, not the replica). Returns the stop function.
 */
export function runRoomEvents(consumer: Consumer, replica: RoomReplica, logger: Logger, leaveWithinMs: number): () => Promise<void> {
  let stopped = false;
  let wake = () => undefined as void;
  const started = (async () => {
    for (let attempt = 0; !stopped; attempt += 1) {
      try {
        await consumer.connect();
        await consumeRoomEvents(consumer, replica, logger);
        return;
      } catch (err) {
        if (stopped) return;
        logger.warn({ err }, 'the room events consumer cannot start yet; retrying');
        await new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, Math.min(30_000, 1000 * 2 ** attempt));
          wake = () => {
            clearTimeout(timer);
            resolve();
          };
        });
      }
    }
  })();
  return async () => {
    stopped = true;
    wake();
    if (!(await leaveGroup(consumer, leaveWithinMs))) {
      logger.warn({ withinMs: leaveWithinMs }, 'the room events consumer did not leave its group in time; its partitions move when its session times out');
      return;
    }
    await started;
  };
}
