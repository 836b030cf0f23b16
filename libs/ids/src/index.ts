import { randomUUID } from 'node:crypto';

/**
 * Ids that end up inside a NATS subject or a Redis key must not be able to
 * change its shape (no `.`, `*`, `>`, `{`, `}`, spaces or control
 * characters), so every id is checked against one safe alphabet first.
 */
export const SAFE_ID_PATTERN = /^[A-Za-z0-9_-]{1,128}$/;

export class InvalidIdError extends Error {
  constructor(
    readonly field: string,
    readonly value: string,
  ) {
    super(`${field} must be 1-128 characters of A-Z, a-z, 0-9, '_' or '-'`);
    this.name = 'InvalidIdError';
  }
}

export function isSafeId(value: unknown): value is string {
  return typeof value === 'string' && SAFE_ID_PATTERN.test(value);
}

/** Returns the id when it is safe, throws {@link InvalidIdError} naming the field otherwise. */
export function assertSafeId(value: unknown, field: string): string {
  if (!isSafeId(value)) throw new InvalidIdError(field, String(value));
  return value;
}

/** A new random id in the safe alphabet (UUID v4 without dashes is 32 hex chars). */
export function newId(): string {
  return randomUUID().replace(/-/g, '');
}
export { audienceConversationId, audienceConversationsOf, MAX_AUDIENCE_ROLE_LENGTH } from './audiences';
