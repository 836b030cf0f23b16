-- Up Migration

-- Membership changes are numbered per room so that consumers of the events
-- (messaging's membership replica, gateways) apply them once and in order.
ALTER TABLE rooms ADD COLUMN membership_version bigint NOT NULL DEFAULT 0;
-- Set when deleted; the purge removes the rows after the retention period.
ALTER TABLE rooms ADD COLUMN deleted_at timestamptz;
CREATE INDEX rooms_deleted ON rooms (deleted_at) WHERE deleted_at IS NOT NULL;

-- Search: full text weighted name > topic > description, plus trigram
-- similarity on the name for partial words and typos. pg_trgm is a trusted
-- extension (PostgreSQL 13+): the database owner may create it. It lands in
-- this schema, which is on the service's search path.
CREATE EXTENSION IF NOT EXISTS pg_trgm;
ALTER TABLE rooms ADD COLUMN search_document tsvector GENERATED ALWAYS AS (
  setweight(to_tsvector('english', name), 'A') ||
  setweight(to_tsvector('english', topic), 'B') ||
  setweight(to_tsvector('english', description), 'C')
) STORED;
CREATE INDEX rooms_search_document ON rooms USING gin (search_document);
CREATE INDEX rooms_name_trigram ON rooms USING gin (lower(name) gin_trgm_ops);

CREATE TABLE room_bans (
  tenant_id text NOT NULL,
  room_id text NOT NULL,
  user_id text NOT NULL,
  banned_by text NOT NULL,
  reason text NOT NULL DEFAULT '',
  banned_at timestamptz NOT NULL DEFAULT now(),
  -- NULL: until unbanned. An expired ban is ignored where it is read.
  expires_at timestamptz,
  PRIMARY KEY (tenant_id, room_id, user_id),
  FOREIGN KEY (tenant_id, room_id) REFERENCES rooms (tenant_id, room_id) ON DELETE CASCADE
);

CREATE TABLE room_invites (
  tenant_id text NOT NULL,
  invite_id text NOT NULL,
  room_id text NOT NULL,
  kind smallint NOT NULL,
  -- PENDING, ACCEPTED, DECLINED, REVOKED or EXHAUSTED as stored; EXPIRED is
  -- derived from expires_at when read, so expiry needs no job.
  state smallint NOT NULL,
  invitee_id text NOT NULL DEFAULT '',
  role smallint NOT NULL,
  created_by text NOT NULL,
  message text NOT NULL DEFAULT '',
  created_at timestamptz NOT NULL DEFAULT now(),
  expires_at timestamptz,
  max_uses integer NOT NULL DEFAULT 0,
  use_count integer NOT NULL DEFAULT 0,
  responded_at timestamptz,
  -- Links: sha256 of the token; the token itself is never stored.
  token_hash text,
  PRIMARY KEY (tenant_id, invite_id),
  FOREIGN KEY (tenant_id, room_id) REFERENCES rooms (tenant_id, room_id) ON DELETE CASCADE
);
CREATE UNIQUE INDEX room_invites_token ON room_invites (token_hash) WHERE token_hash IS NOT NULL;
CREATE INDEX room_invites_by_room ON room_invites (tenant_id, room_id, created_at DESC);
CREATE INDEX room_invites_by_invitee ON room_invites (tenant_id, invitee_id, created_at DESC) WHERE kind = 1;

CREATE TABLE room_pins (
  tenant_id text NOT NULL,
  room_id text NOT NULL,
  message_id text NOT NULL,
  seq bigint NOT NULL,
  pinned_by text NOT NULL,
  pinned_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (tenant_id, room_id, message_id),
  FOREIGN KEY (tenant_id, room_id) REFERENCES rooms (tenant_id, room_id) ON DELETE CASCADE
);

CREATE TABLE room_announcements (
  tenant_id text NOT NULL,
  announcement_id text NOT NULL,
  room_id text NOT NULL,
  author_id text NOT NULL,
  title text NOT NULL,
  text text NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  expires_at timestamptz,
  message_id text NOT NULL DEFAULT '',
  seq bigint NOT NULL DEFAULT 0,
  -- The author's retry key.
  request_id text NOT NULL,
  PRIMARY KEY (tenant_id, announcement_id),
  FOREIGN KEY (tenant_id, room_id) REFERENCES rooms (tenant_id, room_id) ON DELETE CASCADE
);
CREATE UNIQUE INDEX room_announcements_request ON room_announcements (tenant_id, room_id, request_id);
CREATE INDEX room_announcements_by_room ON room_announcements (tenant_id, room_id, created_at DESC);

ALTER TABLE room_bans ENABLE ROW LEVEL SECURITY;
ALTER TABLE room_bans FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON room_bans
  USING (tenant_id = current_setting('app.tenant_id', true))
  WITH CHECK (tenant_id = current_setting('app.tenant_id', true));
ALTER TABLE room_invites ENABLE ROW LEVEL SECURITY;
ALTER TABLE room_invites FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON room_invites
  USING (tenant_id = current_setting('app.tenant_id', true))
  WITH CHECK (tenant_id = current_setting('app.tenant_id', true));
ALTER TABLE room_pins ENABLE ROW LEVEL SECURITY;
ALTER TABLE room_pins FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON room_pins
  USING (tenant_id = current_setting('app.tenant_id', true))
  WITH CHECK (tenant_id = current_setting('app.tenant_id', true));
ALTER TABLE room_announcements ENABLE ROW LEVEL SECURITY;
ALTER TABLE room_announcements FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON room_announcements
  USING (tenant_id = current_setting('app.tenant_id', true))
  WITH CHECK (tenant_id = current_setting('app.tenant_id', true));

-- Deleted rooms waiting for their purge, read by due time through the
-- primary index (no scan of rooms). Written in the delete's transaction; read
-- across tenants by the purger only, so it has no tenant policy (it holds
-- ids, no content).
CREATE TABLE purge_queue (
  purge_after timestamptz NOT NULL,
  tenant_id text NOT NULL,
  room_id text NOT NULL,
  PRIMARY KEY (purge_after, tenant_id, room_id)
);

-- The transactional outbox (libs/outbox): written in the transaction of the
-- change, relayed to NATS and Kafka by the relay leader. Read across tenants
-- by the relay only, never by request handlers, so it has no tenant policy.
CREATE TABLE outbox (
  id bigserial PRIMARY KEY,
  tenant_id text NOT NULL,
  event_id text NOT NULL,
  nats_subject text NOT NULL,
  kafka_topic text NOT NULL,
  kafka_key text NOT NULL,
  payload bytea NOT NULL,
  headers jsonb NOT NULL DEFAULT '{}',
  created_at timestamptz NOT NULL DEFAULT now(),
  nats_published_at timestamptz,
  kafka_published_at timestamptz
);
CREATE INDEX outbox_nats_pending ON outbox (id) WHERE nats_published_at IS NULL;
CREATE INDEX outbox_kafka_pending ON outbox (id) WHERE kafka_published_at IS NULL;

-- Down Migration
DROP TABLE outbox;
DROP TABLE purge_queue;
DROP TABLE room_announcements;
DROP TABLE room_pins;
DROP TABLE room_invites;
DROP TABLE room_bans;
ALTER TABLE rooms DROP COLUMN search_document;
ALTER TABLE rooms DROP COLUMN deleted_at;
ALTER TABLE rooms DROP COLUMN membership_version;
