-- Up Migration

-- confirm_in_app took its queue rows off with a join on unnest that the
-- planner, under the generic plan plpgsql caches, ran as a scan of the
-- tenant's whole in-app queue (`tenant_id = $1 AND channel = 1 AND target =
-- ''`, hashed against the batch): cheap while the queue is short, O(queue)
-- per confirm once a tenant has work waiting. Both lookups now name the
-- primary key's columns with `notification_id = ANY(...)`, which only the
-- primary key serves, whatever the statistics say about the tenant. The
-- user ids come from the delivery rows now; the parameter stays so that the
-- signature (and its callers) do not change.
CREATE OR REPLACE FUNCTION confirm_in_app(p_tenant text, p_notification_ids text[], p_user_ids text[]) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
  confirmed integer;
BEGIN
  PERFORM set_config('app.tenant_id', p_tenant, true);
  WITH delivered AS (
    -- channel 1 = in-app; only a delivery still in flight (the worker may have taken it over)
    UPDATE deliveries d SET state = 'delivered', updated_at = now()
    WHERE d.tenant_id = p_tenant AND d.notification_id = ANY(p_notification_ids) AND d.channel = 1 AND d.target = '' AND d.state = 'inflight'
    RETURNING d.notification_id, d.attempts, d.created_at, d.user_id
  ), recorded AS (
    -- outcome 1 = success
    INSERT INTO delivery_attempts (tenant_id, notification_id, channel, target, attempt, push_device_id, started_at, finished_at, outcome, provider_response)
    SELECT p_tenant, notification_id, 1, '', attempts, '', created_at, now(), 1, 'published on sb.' || p_tenant || '.user.' || user_id FROM delivered
    ON CONFLICT DO NOTHING
  ), dequeued AS (
    DELETE FROM delivery_queue q
    WHERE q.tenant_id = p_tenant AND q.notification_id = ANY(p_notification_ids) AND q.channel = 1 AND q.target = ''
  )
  SELECT count(*) INTO confirmed FROM delivered;
  RETURN confirmed;
END
$$;

-- Down Migration
CREATE OR REPLACE FUNCTION confirm_in_app(p_tenant text, p_notification_ids text[], p_user_ids text[]) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
  confirmed integer;
BEGIN
  PERFORM set_config('app.tenant_id', p_tenant, true);
  WITH live AS (
    SELECT * FROM unnest(p_notification_ids, p_user_ids) AS l(notification_id, user_id)
  ), delivered AS (
    UPDATE deliveries d SET state = 'delivered', updated_at = now()
    FROM live
    WHERE d.tenant_id = p_tenant AND d.notification_id = live.notification_id AND d.channel = 1 AND d.target = '' AND d.state = 'inflight'
    RETURNING d.notification_id, d.attempts, d.created_at, live.user_id
  ), recorded AS (
    INSERT INTO delivery_attempts (tenant_id, notification_id, channel, target, attempt, push_device_id, started_at, finished_at, outcome, provider_response)
    SELECT p_tenant, notification_id, 1, '', attempts, '', created_at, now(), 1, 'published on sb.' || p_tenant || '.user.' || user_id FROM delivered
    ON CONFLICT DO NOTHING
  ), dequeued AS (
    DELETE FROM delivery_queue q USING live
    WHERE q.tenant_id = p_tenant AND q.notification_id = live.notification_id AND q.channel = 1 AND q.target = ''
  )
  SELECT count(*) INTO confirmed FROM delivered;
  RETURN confirmed;
END
$$;
