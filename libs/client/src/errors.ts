import {
  ErrorCode,
  FailedPreconditionError,
  FrameTooLargeError,
  InvalidArgumentError,
  PermissionDeniedError,
  QuotaExceededError,
  RateLimitedError,
  SwitchboardError,
  UnauthenticatedError,
  UnavailableError,
} from '@switchboard/errors';
import { commonV1 } from '@switchboard/proto';

/** WebSocket close codes of the Switchboard protocol. */
export const CloseCode = {
  NORMAL: 1000,
  GOING_AWAY: 1001,
  /** No close frame was received (the connection dropped or was terminated). */
  ABNORMAL: 1006,
  INVALID_PAYLOAD: 1007,
  POLICY_VIOLATION: 1008,
  MESSAGE_TOO_BIG: 1009,
  SERVER_ERROR: 1011,
  SERVICE_RESTART: 1012,
  TOKEN_EXPIRED: 4001,
  SESSION_REVOKED: 4003,
  RATE_LIMITED: 4008,
  TENANT_CONNECTION_LIMIT: 4029,
} as const;

/**
 * The server refused the WebSocket upgrade with an HTTP status (401 for a bad
 * or missing token, 400 for a subprotocol version it does not speak, …); no
 * socket was opened.
 */
export class HandshakeError extends SwitchboardError {
  constructor(
    readonly status: number,
    message: string,
    readonly body: string = '',
  ) {
    super(codeForHttpStatus(status), message);
  }

  static fromResponse(status: number, body: string): HandshakeError {
    return new HandshakeError(status, `WebSocket upgrade refused with HTTP ${status}${describeBody(body)}`, body);
  }
}

function codeForHttpStatus(status: number): ErrorCode {
  if (status === 400) return ErrorCode.ERROR_CODE_UNSUPPORTED;
  if (status === 401) return ErrorCode.ERROR_CODE_UNAUTHENTICATED;
  if (status === 403) return ErrorCode.ERROR_CODE_PERMISSION_DENIED;
  if (status === 429) return ErrorCode.ERROR_CODE_RATE_LIMITED;
  if (status >= 500 || status === 408) return ErrorCode.ERROR_CODE_UNAVAILABLE;
  if (status >= 400) return ErrorCode.ERROR_CODE_INVALID_ARGUMENT;
  return ErrorCode.ERROR_CODE_INTERNAL;
}

function describeBody(body: string): string {
  const trimmed = body.trim();
  if (!trimmed) return '';
  try {
    // The gateway may explain a refusal with a JSON common.v1.Error.
    const parsed: unknown = JSON.parse(trimmed);
    if (parsed && typeof parsed === 'object') {
      const err = commonV1.Error.fromJSON(parsed);
      if (err.message) return `: ${err.message}`;
    }
  } catch {
    // Not JSON: show it as text.
  }
  return `: ${trimmed.slice(0, 200)}`;
}

/** The error a close code stands for, for callers that need one (connect(), a terminal disconnect). */
export function errorForClose(code: number, reason: string): SwitchboardError {
  const message = `connection closed with ${code}${reason ? ` (${reason})` : ''}`;
  switch (code) {
    case CloseCode.TOKEN_EXPIRED:
      return new UnauthenticatedError(message);
    case CloseCode.SESSION_REVOKED:
      return new PermissionDeniedError(message);
    case CloseCode.RATE_LIMITED:
      return new RateLimitedError(message);
    case CloseCode.TENANT_CONNECTION_LIMIT:
      return new QuotaExceededError(message);
    case CloseCode.MESSAGE_TOO_BIG:
      return new FrameTooLargeError(message);
    case CloseCode.INVALID_PAYLOAD:
      return new InvalidArgumentError(message);
    case CloseCode.POLICY_VIOLATION:
      return new FailedPreconditionError(message);
    default:
      return new UnavailableError(message);
  }
}

/**
 * A send was refused locally because the outbox already holds
 * `outboxLimit` unacknowledged sends. Nothing was sent; try again once some
 * are acknowledged.
 */
export class OutboxFullError extends SwitchboardError {
  constructor(readonly limit: number) {
    super(ErrorCode.ERROR_CODE_QUOTA_EXCEEDED, `the outbox already holds ${limit} unacknowledged sends`, { field: 'outbox' });
  }
}

/** Why the client stopped trying to get a send acknowledged. */
export type SendGiveUpReason = 'deadline' | 'attempts' | 'closed';

/**
 * The client gave up on a send before it was acknowledged: its deadline
 * passed, it used its attempts, or the client closed (close(), a loss it
 * will not reconnect after, or the first connect failing while it waited).
 *
 * When `attempts` > 0 a frame went out and the message **may have been
 * committed**: sending again with the same `clientMessageId` is safe and
 * answers with the original acknowledgement (`duplicate: true`) if it was.
 * `cause` is the last attempt's error, when there was one; after the last
 * attempt (`reason` 'attempts') the code and retry-after are that error's.
 */
export class SendNotAcknowledgedError extends SwitchboardError {
  constructor(
    readonly reason: SendGiveUpReason,
    readonly clientMessageId: string,
    readonly attempts: number,
    cause?: unknown,
  ) {
    const last = reason === 'attempts' && cause instanceof SwitchboardError ? cause : undefined;
    super(
      reason === 'deadline' ? ErrorCode.ERROR_CODE_DEADLINE_EXCEEDED : (last?.code ?? ErrorCode.ERROR_CODE_UNAVAILABLE),
      `message ${clientMessageId} not acknowledged: ${describeReason(reason)} after ${attempts} attempt(s)${last ? ` (last: ${last.message})` : ''}`,
      { ...(cause === undefined ? {} : { cause }), ...(last?.retryAfterMs ? { retryAfterMs: last.retryAfterMs } : {}) },
    );
  }

  /** True when at least one attempt went out, so the message may be stored. */
  get mayHaveBeenCommitted(): boolean {
    return this.attempts > 0;
  }
}

function describeReason(reason: SendGiveUpReason): string {
  switch (reason) {
    case 'deadline':
      return 'its deadline passed';
    case 'attempts':
      return 'no attempts left';
    case 'closed':
      return 'the client closed';
  }
}

/**
 * Whether a failed send may succeed if tried again with the same
 * client_message_id: the connection or a backend was unavailable, the answer
 * did not come in time, a service shed load, a rate limit, a concurrent modification, or a quota
 * that says when it frees. Everything else (INVALID_ARGUMENT,
 * PERMISSION_DENIED, NOT_FOUND, FRAME_TOO_LARGE, UNSUPPORTED, INTERNAL, …)
 * would fail the same way again.
 */
export function isRetryableError(err: unknown): boolean {
  if (!(err instanceof SwitchboardError) || err instanceof HandshakeError) return false;
  switch (err.code) {
    case ErrorCode.ERROR_CODE_UNAVAILABLE:
    case ErrorCode.ERROR_CODE_OVERLOADED:
    case ErrorCode.ERROR_CODE_DEADLINE_EXCEEDED:
    case ErrorCode.ERROR_CODE_RATE_LIMITED:
    case ErrorCode.ERROR_CODE_CONFLICT:
      return true;
    case ErrorCode.ERROR_CODE_QUOTA_EXCEEDED:
      return (err.retryAfterMs ?? 0) > 0;
    default:
      return false;
  }
}
