-- Up Migration

-- Every tenant-owned table carries tenant_id and is guarded by a row-level
-- security policy on `app.tenant_id`, which the service sets per transaction.
-- FORCE makes the policy apply to the owning role too, so a query that forgets
-- the tenant sees nothing of another tenant's rows.

CREATE TABLE conversations (
  tenant_id text NOT NULL,
  conversation_id text NOT NULL,
  kind smallint NOT NULL,
  -- "<userA>:<userB>" in sorted order for direct conversations: one per pair.
  direct_key text,
  last_seq bigint NOT NULL DEFAULT 0,
  created_at timestamptz NOT NULL DEFAULT now(),
  last_message_at timestamptz,
  PRIMARY KEY (tenant_id, conversation_id)
);
CREATE UNIQUE INDEX conversations_direct_key ON conversations (tenant_id, direct_key) WHERE direct_key IS NOT NULL;

CREATE TABLE conversation_members (
  tenant_id text NOT NULL,
  conversation_id text NOT NULL,
  user_id text NOT NULL,
  joined_at timestamptz NOT NULL DEFAULT now(),
  -- Receipts are watermarks per member, not a row per message per recipient.
  delivered_seq bigint NOT NULL DEFAULT 0,
  read_seq bigint NOT NULL DEFAULT 0,
  receipts_updated_at timestamptz,
  PRIMARY KEY (tenant_id, conversation_id, user_id),
  FOREIGN KEY (tenant_id, conversation_id) REFERENCES conversations (tenant_id, conversation_id) ON DELETE CASCADE
);
CREATE INDEX conversation_members_by_user ON conversation_members (tenant_id, user_id);

CREATE TABLE messages (
  tenant_id text NOT NULL,
  conversation_id text NOT NULL,
  seq bigint NOT NULL,
  message_id text NOT NULL,
  sender_id text NOT NULL,
  client_message_id text NOT NULL,
  kind smallint NOT NULL,
  body text NOT NULL,
  attachments jsonb NOT NULL DEFAULT '[]',
  mentions text[] NOT NULL DEFAULT '{}',
  metadata jsonb NOT NULL DEFAULT '{}',
  created_at timestamptz NOT NULL DEFAULT now(),
  edited_at timestamptz,
  deleted boolean NOT NULL DEFAULT false,
  PRIMARY KEY (tenant_id, conversation_id, seq),
  FOREIGN KEY (tenant_id, conversation_id) REFERENCES conversations (tenant_id, conversation_id) ON DELETE CASCADE
);
-- A retried send (same sender, same client id) finds the original.
CREATE UNIQUE INDEX messages_client_message_id ON messages (tenant_id, sender_id, client_message_id);
CREATE UNIQUE INDEX messages_message_id ON messages (tenant_id, message_id);

ALTER TABLE conversations ENABLE ROW LEVEL SECURITY;
ALTER TABLE conversations FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON conversations
  USING (tenant_id = current_setting('app.tenant_id', true))
  WITH CHECK (tenant_id = current_setting('app.tenant_id', true));

ALTER TABLE conversation_members ENABLE ROW LEVEL SECURITY;
ALTER TABLE conversation_members FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON conversation_members
  USING (tenant_id = current_setting('app.tenant_id', true))
  WITH CHECK (tenant_id = current_setting('app.tenant_id', true));

ALTER TABLE messages ENABLE ROW LEVEL SECURITY;
ALTER TABLE messages FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON messages
  USING (tenant_id = current_setting('app.tenant_id', true))
  WITH CHECK (tenant_id = current_setting('app.tenant_id', true));

-- The transactional outbox: written in the same transaction as the message,
-- relayed to NATS and Kafka independently by the relay leader. It is read
-- across tenants by the relay only, never by request handlers, so it has no
-- tenant policy.
CREATE TABLE outbox (
  id bigserial PRIMARY KEY,
  tenant_id text NOT NULL,
  event_id text NOT NULL,
  nats_subject text NOT NULL,
  kafka_topic text NOT NULL,
  kafka_key text NOT NULL,
  payload bytea NOT NULL,
  -- Trace context of the request that committed the event.
  headers jsonb NOT NULL DEFAULT '{}',
  created_at timestamptz NOT NULL DEFAULT now(),
  nats_published_at timestamptz,
  kafka_published_at timestamptz
);
CREATE INDEX outbox_nats_pending ON outbox (id) WHERE nats_published_at IS NULL;
CREATE INDEX outbox_kafka_pending ON outbox (id) WHERE kafka_published_at IS NULL;

-- Down Migration
DROP TABLE outbox;
DROP TABLE messages;
DROP TABLE conversation_members;
DROP TABLE conversations;
