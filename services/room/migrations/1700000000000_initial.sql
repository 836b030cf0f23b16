-- Up Migration

-- Every table carries tenant_id and is guarded by a row-level security policy
-- on `app.tenant_id`, which the service sets per transaction. FORCE makes the
-- policy apply to the owning role too, so a query that forgets the tenant
-- sees nothing of another tenant's rows.

CREATE TABLE rooms (
  tenant_id text NOT NULL,
  room_id text NOT NULL,
  visibility smallint NOT NULL,
  state smallint NOT NULL,
  name text NOT NULL,
  topic text NOT NULL DEFAULT '',
  description text NOT NULL DEFAULT '',
  avatar_ref text NOT NULL DEFAULT '',
  metadata jsonb NOT NULL DEFAULT '{}',
  settings jsonb NOT NULL DEFAULT '{}',
  owner_id text NOT NULL,
  -- Empty when an internal system created it without acting as a user.
  created_by text NOT NULL,
  -- The creator's retry key: a repeated create finds the first room.
  request_id text,
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now(),
  archived_at timestamptz,
  version bigint NOT NULL DEFAULT 1,
  PRIMARY KEY (tenant_id, room_id)
);
CREATE UNIQUE INDEX rooms_request_id ON rooms (tenant_id, created_by, request_id) WHERE request_id IS NOT NULL;

CREATE TABLE room_members (
  tenant_id text NOT NULL,
  room_id text NOT NULL,
  user_id text NOT NULL,
  role smallint NOT NULL,
  joined_at timestamptz NOT NULL DEFAULT now(),
  -- Empty when the member joined on their own (or created the room).
  added_by text NOT NULL DEFAULT '',
  -- NULL: the whole history is readable.
  history_visible_from timestamptz,
  PRIMARY KEY (tenant_id, room_id, user_id),
  FOREIGN KEY (tenant_id, room_id) REFERENCES rooms (tenant_id, room_id) ON DELETE CASCADE
);
-- "My rooms" reads by user.
CREATE INDEX room_members_by_user ON room_members (tenant_id, user_id);

ALTER TABLE rooms ENABLE ROW LEVEL SECURITY;
ALTER TABLE rooms FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON rooms
  USING (tenant_id = current_setting('app.tenant_id', true))
  WITH CHECK (tenant_id = current_setting('app.tenant_id', true));

ALTER TABLE room_members ENABLE ROW LEVEL SECURITY;
ALTER TABLE room_members FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON room_members
  USING (tenant_id = current_setting('app.tenant_id', true))
  WITH CHECK (tenant_id = current_setting('app.tenant_id', true));

-- Down Migration
DROP TABLE room_members;
DROP TABLE rooms;
