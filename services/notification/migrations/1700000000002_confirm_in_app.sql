-- Up Migration

-- Confirms in-app deliveries once NATS has the batch's publishes, in one
-- round trip and one implicit transaction (it was five round trips: BEGIN
-- with the tenant setting, three statements, COMMIT). It scopes itself to the
-- tenant first, so row-level security applies as in every other transaction;
-- plpgsql keeps the statement's plan for the connection.
--
-- The attempt row is written here, finished: the pipeline no longer opens one
-- before publishing. The delivery row in flight (attempts = 1, created when
-- the decision was stored) is what a crash leaves; the delivery worker then
-- records that attempt as interrupted and makes the next one.
CREATE FUNCTION confirm_in_app(p_tenant text, p_notification_ids text[], p_user_ids text[]) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
  confirmed integer;
BEGIN
  PERFORM set_config('app.tenant_id', p_tenant, true);
  WITH live AS (
    SELECT * FROM unnest(p_notification_ids, p_user_ids) AS l(notification_id, user_id)
  ), delivered AS (
    -- channel 1 = in-app; only a delivery still in flight (the worker may have taken it over)
    UPDATE deliveries d SET state = 'delivered', updated_at = now()
    FROM live
    WHERE d.tenant_id = p_tenant AND d.notification_id = live.notification_id AND d.channel = 1 AND d.target = '' AND d.state = 'inflight'
    RETURNING d.notification_id, d.attempts, d.created_at, live.user_id
  ), recorded AS (
    -- outcome 1 = success
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

-- Down Migration
DROP FUNCTION confirm_in_app(text, text[], text[]);
