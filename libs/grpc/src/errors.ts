import { Metadata, status, type ServiceError, type StatusObject } from '@grpc/grpc-js';
import { ErrorCode, SwitchboardError, UnavailableError, DeadlineExceededError, InternalError } from '@switchboard/errors';
import { commonV1 } from '@switchboard/proto';

/** Trailer carrying the structured error (`common.v1.Error`) next to the status. */
export const ERROR_TRAILER = 'sb-error-bin';

/** The one mapping from Switchboard error codes to gRPC status codes. */
const STATUS_BY_CODE: Record<ErrorCode, status> = {
  [ErrorCode.ERROR_CODE_UNSPECIFIED]: status.UNKNOWN,
  [ErrorCode.ERROR_CODE_INVALID_ARGUMENT]: status.INVALID_ARGUMENT,
  [ErrorCode.ERROR_CODE_UNAUTHENTICATED]: status.UNAUTHENTICATED,
  [ErrorCode.ERROR_CODE_PERMISSION_DENIED]: status.PERMISSION_DENIED,
  [ErrorCode.ERROR_CODE_NOT_FOUND]: status.NOT_FOUND,
  [ErrorCode.ERROR_CODE_ALREADY_EXISTS]: status.ALREADY_EXISTS,
  [ErrorCode.ERROR_CODE_CONFLICT]: status.ABORTED,
  [ErrorCode.ERROR_CODE_RATE_LIMITED]: status.RESOURCE_EXHAUSTED,
  [ErrorCode.ERROR_CODE_QUOTA_EXCEEDED]: status.RESOURCE_EXHAUSTED,
  [ErrorCode.ERROR_CODE_FRAME_TOO_LARGE]: status.INVALID_ARGUMENT,
  [ErrorCode.ERROR_CODE_UNAVAILABLE]: status.UNAVAILABLE,
  [ErrorCode.ERROR_CODE_DEADLINE_EXCEEDED]: status.DEADLINE_EXCEEDED,
  [ErrorCode.ERROR_CODE_INTERNAL]: status.INTERNAL,
  [ErrorCode.ERROR_CODE_UNSUPPORTED]: status.UNIMPLEMENTED,
  [ErrorCode.ERROR_CODE_FAILED_PRECONDITION]: status.FAILED_PRECONDITION,
  // Shed load: retryable like UNAVAILABLE; the trailer keeps the specific code.
  [ErrorCode.ERROR_CODE_OVERLOADED]: status.UNAVAILABLE,
  [ErrorCode.UNRECOGNIZED]: status.UNKNOWN,
};

export function grpcStatusFor(code: ErrorCode): status {
  return STATUS_BY_CODE[code] ?? status.UNKNOWN;
}

/** A thrown error as the status a grpc-js handler returns; internal details never leave the process. */
export function toServiceError(err: SwitchboardError): Partial<StatusObject> {
  const metadata = new Metadata();
  metadata.set(ERROR_TRAILER, Buffer.from(commonV1.Error.encode(err.toProto()).finish()));
  return { code: grpcStatusFor(err.code), details: err.message, metadata };
}

/** A failed call as a typed error; the structured trailer wins, the status code is the fallback. */
export function fromServiceError(err: ServiceError): SwitchboardError {
  const trailer = err.metadata?.get(ERROR_TRAILER)[0];
  if (trailer instanceof Buffer) {
    try {
      return SwitchboardError.fromProto(commonV1.Error.decode(trailer));
    } catch {
      // A malformed trailer falls through to the status code.
    }
  }
  const message = err.details || err.message;
  switch (err.code) {
    case status.UNAVAILABLE:
      return new UnavailableError(`service unavailable: ${message}`, { cause: err });
    case status.DEADLINE_EXCEEDED:
      return new DeadlineExceededError(`deadline exceeded: ${message}`, { cause: err });
    default: {
      const code = (Object.entries(STATUS_BY_CODE).find(([, s]) => s === err.code)?.[0] ?? ErrorCode.ERROR_CODE_INTERNAL) as ErrorCode;
      if (Number(code) === ErrorCode.ERROR_CODE_INTERNAL || Number(code) === ErrorCode.ERROR_CODE_UNSPECIFIED) {
        return new InternalError(message, { cause: err });
      }
      return new SwitchboardError(Number(code), message, { cause: err });
    }
  }
}
