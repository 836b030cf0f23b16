-- Up Migration

-- Every table carries tenant_id and is guarded by a row-level security policy
-- on `app.tenant_id`, which the service sets per transaction. FORCE makes the
-- policy apply to the owning role too, so a query that forgets the tenant
-- sees nothing of another tenant's rows.

CREATE TABLE notifications (
  tenant_id text NOT NULL,
  notification_id text NOT NULL,
  user_id text NOT NULL,
  kind text NOT NULL,
  priority smallint NOT NULL,
  title text NOT NULL,
  body text NOT NULL,
  data jsonb NOT NULL DEFAULT '{}',
  room_id text NOT NULL DEFAULT '',
  request_id text NOT NULL DEFAULT '',
  -- The event a notification was made from (the envelope id of a Kafka
  -- record): a redelivered record finds its rows instead of adding more.
  source_event_id text,
  created_at timestamptz NOT NULL DEFAULT now(),
  read_at timestamptz,
  expires_at timestamptz,
  PRIMARY KEY (tenant_id, notification_id)
);
CREATE UNIQUE INDEX notifications_source_event ON notifications (tenant_id, source_event_id, user_id) WHERE source_event_id IS NOT NULL;
-- A user's history, newest first, and the unread count behind the badge.
CREATE INDEX notifications_by_user ON notifications (tenant_id, user_id, created_at DESC, notification_id DESC);
CREATE INDEX notifications_unread ON notifications (tenant_id, user_id) WHERE read_at IS NULL;

ALTER TABLE notifications ENABLE ROW LEVEL SECURITY;
ALTER TABLE notifications FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON notifications
  USING (tenant_id = current_setting('app.tenant_id', true))
  WITH CHECK (tenant_id = current_setting('app.tenant_id', true));

-- Down Migration
DROP TABLE notifications;
