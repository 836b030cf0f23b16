-- Up Migration

-- A room is a conversation (kind ROOM, id = room id). Its member rows are a
-- replica of the room service's membership, applied from Kafka sb.events in
-- the room's membership_version order; posting and reading a room are
-- checked with the room service itself, so the replica only serves
-- conversation lists, gateway subscriptions, sync and notification routing.
ALTER TABLE conversations
  ADD COLUMN membership_version bigint NOT NULL DEFAULT 0,
  -- Set when the room was deleted: nobody reads it any more; the rows are
  -- purged after the retention period.
  ADD COLUMN deleted_at timestamptz;

-- The earliest message time the member may read (rooms that hide history
-- from new members); NULL means the whole history.
ALTER TABLE conversation_members ADD COLUMN history_visible_from timestamptz;

-- Deleted rooms waiting for their history to be purged. Read across tenants
-- by the purge runner only (like the outbox), and it holds no content, so it
-- has no tenant policy.
CREATE TABLE room_purges (
  tenant_id text NOT NULL,
  conversation_id text NOT NULL,
  due_at timestamptz NOT NULL,
  PRIMARY KEY (tenant_id, conversation_id)
);
CREATE INDEX room_purges_due ON room_purges (due_at);

-- Down Migration
DROP TABLE room_purges;
ALTER TABLE conversation_members DROP COLUMN history_visible_from;
ALTER TABLE conversations DROP COLUMN deleted_at, DROP COLUMN membership_version;
