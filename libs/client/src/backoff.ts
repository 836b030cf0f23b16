/**
 * Exponential backoff with full jitter: a delay drawn uniformly from
 * [0, min(maxMs, baseMs * 2^attempt)). Full jitter spreads a herd of clients
 * that lost the same gateway over the whole window instead of bunching them
 * at its edges (see the AWS architecture blog, "Exponential Backoff And
 * Jitter").
 *
 * `attempt` counts from 0 (the first retry). `random` must return a number in
 * [0, 1), like Math.random; it is a parameter so tests can pin it.
 */
export function backoffDelay(
  attempt: number,
  baseMs: number,
  maxMs: number,
  random: () => number = Math.random,
): number {
  const ceiling = backoffCeiling(attempt, baseMs, maxMs);
  const r = random();
  // Guard against a random source that strays outside [0, 1).
  const clamped = Number.isFinite(r) ? Math.min(Math.max(r, 0), 1) : 0;
  return Math.min(Math.floor(clamped * ceiling), Math.max(0, ceiling - 1));
}

/** The upper bound of the jitter window for an attempt: min(maxMs, baseMs * 2^attempt). */
export function backoffCeiling(attempt: number, baseMs: number, maxMs: number): number {
  const a = Math.max(0, Math.floor(Number.isFinite(attempt) ? attempt : 0));
  const base = Math.max(0, baseMs);
  const max = Math.max(0, maxMs);
  // 2^52 already exceeds any sane cap; stopping there avoids Infinity (and 0 * Infinity = NaN).
  return Math.min(max, base * 2 ** Math.min(a, 52));
}

/** The client's default backoff for reconnects and retries (SwitchboardClientOptions.reconnect). */
export const DEFAULT_BACKOFF = { baseDelayMs: 250, maxDelayMs: 10_000 } as const;

/**
 * The wait before retry `attempt` (from 0) of a refused or failed request:
 * the backoff, but never before the server's `retryAfterMs` hint.
 */
export function retryDelay(
  attempt: number,
  retryAfterMs: number | undefined,
  baseMs: number,
  maxMs: number,
  random: () => number = Math.random,
): number {
  return Math.max(retryAfterMs ?? 0, backoffDelay(attempt, baseMs, maxMs, random));
}
