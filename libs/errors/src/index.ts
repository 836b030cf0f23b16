import { InvalidIdError } from '@switchboard/ids';
import { commonV1 } from '@switchboard/proto';

export const ErrorCode = commonV1.ErrorCode;
export type ErrorCode = commonV1.ErrorCode;
type ErrorProto = commonV1.Error;

export interface SwitchboardErrorOptions {
  cause?: unknown;
  /** The request field or frame part the error is about. */
  field?: string;
  /** For rate limits and unavailability: when the caller may try again. */
  retryAfterMs?: number;
}

/**
 * The one error type that crosses boundaries: its code decides the gRPC
 * status (libs/grpc) and the WebSocket error frame (gateway), its message is
 * safe to show to the caller, and `cause` keeps the underlying failure for
 * logs.
 */
export class SwitchboardError extends Error {
  readonly field: string | undefined;
  readonly retryAfterMs: number | undefined;

  constructor(
    readonly code: ErrorCode,
    message: string,
    options: SwitchboardErrorOptions = {},
  ) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = new.target.name;
    this.field = options.field;
    this.retryAfterMs = options.retryAfterMs;
  }

  toProto(): ErrorProto {
    return {
      code: this.code,
      message: this.message,
      field: this.field ?? '',
      retryAfterMs: this.retryAfterMs ?? 0,
    };
  }

  static fromProto(proto: ErrorProto): SwitchboardError {
    return new SwitchboardError(proto.code, proto.message, {
      ...(proto.field ? { field: proto.field } : {}),
      ...(proto.retryAfterMs ? { retryAfterMs: proto.retryAfterMs } : {}),
    });
  }
}

function kind(code: ErrorCode) {
  return class extends SwitchboardError {
    constructor(message: string, options?: SwitchboardErrorOptions) {
      super(code, message, options);
    }
  };
}

export class InvalidArgumentError extends kind(ErrorCode.ERROR_CODE_INVALID_ARGUMENT) {}
export class UnauthenticatedError extends kind(ErrorCode.ERROR_CODE_UNAUTHENTICATED) {}
export class PermissionDeniedError extends kind(ErrorCode.ERROR_CODE_PERMISSION_DENIED) {}
export class NotFoundError extends kind(ErrorCode.ERROR_CODE_NOT_FOUND) {}
export class AlreadyExistsError extends kind(ErrorCode.ERROR_CODE_ALREADY_EXISTS) {}
export class ConflictError extends kind(ErrorCode.ERROR_CODE_CONFLICT) {}
export class RateLimitedError extends kind(ErrorCode.ERROR_CODE_RATE_LIMITED) {}
export class QuotaExceededError extends kind(ErrorCode.ERROR_CODE_QUOTA_EXCEEDED) {}
export class FrameTooLargeError extends kind(ErrorCode.ERROR_CODE_FRAME_TOO_LARGE) {}
export class UnavailableError extends kind(ErrorCode.ERROR_CODE_UNAVAILABLE) {}
export class DeadlineExceededError extends kind(ErrorCode.ERROR_CODE_DEADLINE_EXCEEDED) {}
export class InternalError extends kind(ErrorCode.ERROR_CODE_INTERNAL) {}
export class UnsupportedError extends kind(ErrorCode.ERROR_CODE_UNSUPPORTED) {}
export class FailedPreconditionError extends kind(ErrorCode.ERROR_CODE_FAILED_PRECONDITION) {}
/** Load shedding: a queue is at its bound, so the request is refused at once (retryable, with `retryAfterMs`). */
export class OverloadedError extends kind(ErrorCode.ERROR_CODE_OVERLOADED) {}

/**
 * Any thrown value as a SwitchboardError: an invalid id is the caller's
 * INVALID_ARGUMENT, unknown failures become INTERNAL with the original as cause.
 */
export function asSwitchboardError(err: unknown): SwitchboardError {
  if (err instanceof SwitchboardError) return err;
  if (err instanceof InvalidIdError) return new InvalidArgumentError(err.message, { field: err.field, cause: err });
  return new InternalError('internal error', { cause: err });
}
