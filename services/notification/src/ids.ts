import { createHash } from 'node:crypto';

/**
 * Ids derived from what caused them, so that every retry, redelivery or
 * restart names the same thing: a Kafka record delivered twice creates the
 * same notification ids (and the database keeps one), a Notify retried with
 * the same idempotency key becomes the same request.
 */
function derive(...parts: string[]): string {
  return createHash('sha256').update(parts.join('\u0000')).digest('hex').slice(0, 32);
}

/** One notification per source (a message event or a request) and user. */
export function notificationIdFor(tenantId: string, sourceId: string, userId: string): string {
  return derive('notification', tenantId, sourceId, userId);
}

export function requestIdFor(tenantId: string, caller: string, idempotencyKey: string): string {
  return derive('request', tenantId, caller, idempotencyKey);
}

/** One digest per user, channel and digest time. */
export function digestIdFor(tenantId: string, userId: string, channel: number, dueAt: Date): string {
  return derive('digest', tenantId, userId, String(channel), dueAt.toISOString());
}
