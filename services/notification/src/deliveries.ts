import { withTenantTransaction, type Pool, type PoolClient } from '@switchboard/postgres';
import { notificationV1 } from '@switchboard/proto';
import { CHANNELS } from './routing';

const { DeliveryState, SkipReason } = notificationV1;

interface DeliveryRow {
  channel: number;
  target: string;
  state: string;
  skip_reason: number;
  reason: string;
  next_attempt_at: Date | null;
}

interface AttemptRow {
  channel: number;
  target: string;
  attempt: number;
  push_device_id: string;
  started_at: Date;
  finished_at: Date | null;
  outcome: number;
  provider_response: string;
}

const STATE: Record<string, notificationV1.DeliveryState> = {
  pending: DeliveryState.DELIVERY_STATE_PENDING,
  inflight: DeliveryState.DELIVERY_STATE_PENDING,
  routed: DeliveryState.DELIVERY_STATE_PENDING,
  deferred: DeliveryState.DELIVERY_STATE_DEFERRED,
  sent: DeliveryState.DELIVERY_STATE_SENT,
  delivered: DeliveryState.DELIVERY_STATE_DELIVERED,
  failed: DeliveryState.DELIVERY_STATE_FAILED,
  skipped: DeliveryState.DELIVERY_STATE_SKIPPED,
};

/** For a channel that went to several devices: the best any device reached. */
const RANK: Record<string, number> = { delivered: 7, sent: 6, inflight: 5, pending: 4, deferred: 3, routed: 2, failed: 1, skipped: 0 };

/** Per channel, the decision and every attempt: what support staff see for one notification. */
export function channelDeliveries(deliveries: DeliveryRow[], attempts: AttemptRow[]): notificationV1.ChannelDelivery[] {
  // A notification suppressed because the user was reading the conversation has one decision row, for every channel.
  const suppression = deliveries.find((d) => d.target === '' && d.skip_reason === SkipReason.SKIP_REASON_ACTIVE_IN_CONVERSATION);
  return CHANNELS.map((channel) => {
    const decision = deliveries.find((d) => d.channel === channel && d.target === '') ?? suppression;
    const devices = deliveries.filter((d) => d.channel === channel && d.target !== '');
    const best = devices.length > 0 ? devices.reduce((a, b) => (RANK[b.state]! > RANK[a.state]! ? b : a)) : decision;
    const waiting = [...devices, ...(decision ? [decision] : [])].filter((d) => ['pending', 'deferred'].includes(d.state) && d.next_attempt_at).map((d) => d.next_attempt_at!.getTime());
    const reasons = [decision?.reason, ...devices.filter((d) => d.state === 'failed' || d.state === 'skipped').map((d) => d.reason)].filter(Boolean);
    return {
      channel,
      state: best ? STATE[best.state]! : DeliveryState.DELIVERY_STATE_UNSPECIFIED,
      skipReason: best?.skip_reason || decision?.skip_reason || 0,
      reason: [...new Set(reasons)].join('; '),
      nextAttemptAt: waiting.length ? new Date(Math.min(...waiting)) : undefined,
      attempts: attempts
        .filter((a) => a.channel === channel)
        .sort((a, b) => a.started_at.getTime() - b.started_at.getTime() || a.attempt - b.attempt)
        .map((a) => ({
          attempt: a.attempt,
          pushDeviceId: a.push_device_id,
          startedAt: a.started_at,
          finishedAt: a.finished_at ?? undefined,
          outcome: a.outcome,
          providerResponse: a.provider_response,
        })),
    };
  });
}

export class DeliveryStore {
  constructor(private readonly pool: Pool) {}

  async status(tenantId: string, notificationId: string) {
    return withTenantTransaction(this.pool, tenantId, async (db) => {
      const { rows: deliveries } = await db.query<DeliveryRow>(`SELECT channel, target, state, skip_reason, reason, next_attempt_at FROM deliveries WHERE tenant_id = $1 AND notification_id = $2`, [
        tenantId,
        notificationId,
      ]);
      const { rows: attempts } = await db.query<AttemptRow>(`SELECT * FROM delivery_attempts WHERE tenant_id = $1 AND notification_id = $2`, [tenantId, notificationId]);
      const channels = channelDeliveries(deliveries, attempts);
      return { channels, suppressed: deliveries.length > 0 && channels.every((c) => c.state === DeliveryState.DELIVERY_STATE_SKIPPED) };
    });
  }

  /**
   * Records a Notify request under its idempotency key inside `then` (which
   * puts it on Kafka): if `then` fails the record is rolled back, so a retry
   * tries again; a request already recorded is a duplicate.
   */
  async acceptRequest(tenantId: string, caller: string, idempotencyKey: string, requestId: string, then: () => Promise<void>): Promise<{ requestId: string; duplicate: boolean }> {
    return withTenantTransaction(this.pool, tenantId, async (db) => {
      const { rows } = await db.query<{ request_id: string }>(
        `INSERT INTO notify_requests (tenant_id, caller, idempotency_key, request_id) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING RETURNING request_id`,
        [tenantId, caller, idempotencyKey, requestId],
      );
      if (rows.length === 0) {
        const { rows: existing } = await db.query<{ request_id: string }>(`SELECT request_id FROM notify_requests WHERE tenant_id = $1 AND caller = $2 AND idempotency_key = $3`, [
          tenantId,
          caller,
          idempotencyKey,
        ]);
        return { requestId: existing[0]?.request_id ?? requestId, duplicate: true };
      }
      await then();
      return { requestId, duplicate: false };
    });
  }

  /** Held notifications of a user are looked at again now (do-not-disturb may have ended). */
  async recheckHeld(tenantId: string, userId: string): Promise<number> {
    return withTenantTransaction(this.pool, tenantId, (db) => recheckHeld(db, tenantId, userId));
  }
}

async function recheckHeld(db: PoolClient, tenantId: string, userId: string): Promise<number> {
  const { rowCount } = await db.query(
    `UPDATE delivery_queue q SET due_at = now()
     FROM deliveries d
     WHERE d.tenant_id = $1 AND d.user_id = $2 AND d.state = 'deferred' AND d.digest = ''
       AND q.tenant_id = d.tenant_id AND q.notification_id = d.notification_id AND q.channel = d.channel AND q.target = d.target`,
    [tenantId, userId],
  );
  return rowCount ?? 0;
}
