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
