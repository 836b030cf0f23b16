-- Up Migration

-- Push, email, templates, preferences, do-not-disturb and exactly-once
-- delivery. Every table with tenant data carries tenant_id under the same
-- row-level security policy as `notifications`; only `delivery_queue` (ids and
-- due times, read across tenants by the delivery worker alone, like
-- messaging's outbox) has none.

-- Where a notification came from and whether anyone sees it.
ALTER TABLE notifications
  ADD COLUMN conversation_id text,
  ADD COLUMN message_seq bigint,
  -- Not shown in app (routed elsewhere or nowhere, e.g. the user was reading
  -- the conversation): kept for support staff, never listed or counted for
  -- the user.
  ADD COLUMN hidden boolean NOT NULL DEFAULT false,
  -- Stored during do-not-disturb: shown without a sound.
  ADD COLUMN silent boolean NOT NULL DEFAULT false,
  -- What push and email templates are rendered with when they go.
  ADD COLUMN variables jsonb NOT NULL DEFAULT '{}';
DROP INDEX notifications_unread;
CREATE INDEX notifications_unread ON notifications (tenant_id, user_id) WHERE read_at IS NULL AND NOT hidden;
CREATE INDEX notifications_by_message ON notifications (tenant_id, user_id, conversation_id, message_seq) WHERE conversation_id IS NOT NULL AND read_at IS NULL;

-- One row per notification, channel and target: the idempotency key of every
-- effect. target is '' for in-app and email, the push device id for push.
-- state: pending | deferred | inflight | sent | delivered | failed | skipped,
-- and `routed` for a push decision row whose sends are the per-device rows.
CREATE TABLE deliveries (
  tenant_id text NOT NULL,
  notification_id text NOT NULL,
  channel smallint NOT NULL,
  target text NOT NULL DEFAULT '',
  user_id text NOT NULL,
  state text NOT NULL,
  skip_reason smallint NOT NULL DEFAULT 0,
  reason text NOT NULL DEFAULT '',
  -- Held for a digest (hourly | daily) rather than for do-not-disturb.
  digest text NOT NULL DEFAULT '',
  next_attempt_at timestamptz,
  attempts integer NOT NULL DEFAULT 0,
  -- Counted against the user's hourly push and email cap from this moment.
  counted_at timestamptz,
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (tenant_id, notification_id, channel, target)
);
CREATE INDEX deliveries_rate ON deliveries (tenant_id, user_id, counted_at) WHERE counted_at IS NOT NULL;
CREATE INDEX deliveries_held ON deliveries (tenant_id, user_id, channel) WHERE state = 'deferred';

-- Every attempt and its outcome (0 while the attempt is in flight).
CREATE TABLE delivery_attempts (
  tenant_id text NOT NULL,
  notification_id text NOT NULL,
  channel smallint NOT NULL,
  target text NOT NULL DEFAULT '',
  attempt integer NOT NULL,
  push_device_id text NOT NULL DEFAULT '',
  started_at timestamptz NOT NULL DEFAULT now(),
  finished_at timestamptz,
  outcome smallint NOT NULL DEFAULT 0,
  provider_response text NOT NULL DEFAULT '',
  PRIMARY KEY (tenant_id, notification_id, channel, target, attempt)
);

-- Work that is due: read across tenants by the delivery worker only. A
-- claimed row's due_at moves a lease into the future, so a worker that dies
-- mid-send leaves it to be picked up again.
CREATE TABLE delivery_queue (
  -- The deployment (its consumer group) whose workers do it: two deployments
  -- sharing a database never take each other's work.
  owner text NOT NULL,
  tenant_id text NOT NULL,
  notification_id text NOT NULL,
  channel smallint NOT NULL,
  target text NOT NULL DEFAULT '',
  due_at timestamptz NOT NULL,
  PRIMARY KEY (tenant_id, notification_id, channel, target)
);
CREATE INDEX delivery_queue_due ON delivery_queue (owner, due_at);

-- Notify requests already accepted, per caller and idempotency key.
CREATE TABLE notify_requests (
  tenant_id text NOT NULL,
  caller text NOT NULL,
  idempotency_key text NOT NULL,
  request_id text NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (tenant_id, caller, idempotency_key)
);

CREATE TABLE templates (
  tenant_id text NOT NULL,
  kind text NOT NULL,
  channel smallint NOT NULL,
  locale text NOT NULL,
  title text NOT NULL,
  body text NOT NULL,
  html_body text NOT NULL DEFAULT '',
  data jsonb NOT NULL DEFAULT '{}',
  version bigint NOT NULL DEFAULT 1,
  updated_by text NOT NULL DEFAULT '',
  updated_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (tenant_id, kind, channel, locale)
);

CREATE TABLE preferences (
  tenant_id text NOT NULL,
  user_id text NOT NULL,
  channel_preferences jsonb NOT NULL DEFAULT '[]',
  dnd_enabled boolean NOT NULL DEFAULT false,
  dnd_until timestamptz,
  dnd_schedule jsonb NOT NULL DEFAULT '[]',
  time_zone text NOT NULL DEFAULT '',
  locale text NOT NULL DEFAULT '',
  max_per_hour integer NOT NULL DEFAULT 0,
  daily_digest_minute integer NOT NULL DEFAULT 0,
  email text NOT NULL DEFAULT '',
  version bigint NOT NULL DEFAULT 1,
  PRIMARY KEY (tenant_id, user_id)
);

CREATE TABLE tenant_policies (
  tenant_id text PRIMARY KEY,
  urgent_bypasses_dnd boolean NOT NULL DEFAULT false,
  urgent_bypasses_rate_cap boolean NOT NULL DEFAULT true,
  default_max_per_hour integer NOT NULL DEFAULT 0,
  default_locale text NOT NULL DEFAULT '',
  default_time_zone text NOT NULL DEFAULT '',
  email_fallback_after_ms bigint NOT NULL DEFAULT 0,
  version bigint NOT NULL DEFAULT 1
);

-- One registration per user, device and platform; a token belongs to one
-- user at a time (a handed-over phone stops getting the previous user's).
CREATE TABLE push_devices (
  tenant_id text NOT NULL,
  push_device_id text NOT NULL,
  user_id text NOT NULL,
  device_id text NOT NULL,
  platform smallint NOT NULL,
  token text NOT NULL,
  target jsonb NOT NULL,
  app_version text NOT NULL DEFAULT '',
  created_at timestamptz NOT NULL DEFAULT now(),
  last_success_at timestamptz,
  PRIMARY KEY (tenant_id, push_device_id)
);
CREATE UNIQUE INDEX push_devices_device ON push_devices (tenant_id, user_id, device_id, platform);
CREATE UNIQUE INDEX push_devices_token ON push_devices (tenant_id, platform, token);

-- Per user and conversation, what messaging reported delivered and read
-- (receiptUpdated on `sb.messages`).
CREATE TABLE conversation_receipts (
  tenant_id text NOT NULL,
  user_id text NOT NULL,
  conversation_id text NOT NULL,
  delivered_seq bigint NOT NULL DEFAULT 0,
  read_seq bigint NOT NULL DEFAULT 0,
  read_at timestamptz,
  PRIMARY KEY (tenant_id, user_id, conversation_id)
);

DO $$
DECLARE t text;
BEGIN
  FOREACH t IN ARRAY ARRAY['deliveries', 'delivery_attempts', 'notify_requests', 'templates', 'preferences', 'tenant_policies', 'push_devices', 'conversation_receipts'] LOOP
    EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
    EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
    EXECUTE format($p$CREATE POLICY tenant_isolation ON %I
      USING (tenant_id = current_setting('app.tenant_id', true))
      WITH CHECK (tenant_id = current_setting('app.tenant_id', true))$p$, t);
  END LOOP;
END $$;

-- Down Migration
DROP TABLE conversation_receipts;
DROP TABLE push_devices;
DROP TABLE tenant_policies;
DROP TABLE preferences;
DROP TABLE templates;
DROP TABLE notify_requests;
DROP TABLE delivery_queue;
DROP TABLE delivery_attempts;
DROP TABLE deliveries;
DROP INDEX notifications_by_message;
DROP INDEX notifications_unread;
CREATE INDEX notifications_unread ON notifications (tenant_id, user_id) WHERE read_at IS NULL;
ALTER TABLE notifications DROP COLUMN variables, DROP COLUMN silent, DROP COLUMN hidden, DROP COLUMN message_seq, DROP COLUMN conversation_id;
