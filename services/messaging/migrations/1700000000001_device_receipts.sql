-- Up Migration

-- Delivery is acknowledged per device; a member's delivered_seq is the
-- highest of their devices. One row per device per conversation, never one
-- per message per recipient.
CREATE TABLE device_receipts (
  tenant_id text NOT NULL,
  conversation_id text NOT NULL,
  user_id text NOT NULL,
  device_id text NOT NULL,
  delivered_seq bigint NOT NULL DEFAULT 0,
  updated_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (tenant_id, conversation_id, user_id, device_id),
  FOREIGN KEY (tenant_id, conversation_id, user_id) REFERENCES conversation_members (tenant_id, conversation_id, user_id) ON DELETE CASCADE
);

ALTER TABLE device_receipts ENABLE ROW LEVEL SECURITY;
ALTER TABLE device_receipts FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON device_receipts
  USING (tenant_id = current_setting('app.tenant_id', true))
  WITH CHECK (tenant_id = current_setting('app.tenant_id', true));

-- Down Migration
DROP TABLE device_receipts;
