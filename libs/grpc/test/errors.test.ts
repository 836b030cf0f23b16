import { Metadata, status, type ServiceError } from '@grpc/grpc-js';
import { ErrorCode, InvalidArgumentError, NotFoundError, RateLimitedError, SwitchboardError, asSwitchboardError } from '@switchboard/errors';
import { InvalidIdError } from '@switchboard/ids';
import { fromServiceError, grpcStatusFor, tenantFromMetadata, tenantToMetadata, toServiceError } from '../src';

function asServiceError(err: SwitchboardError): ServiceError {
  const s = toServiceError(err);
  return Object.assign(new Error(s.details), { code: s.code!, details: s.details!, metadata: s.metadata! });
}

describe('one mapping from typed errors to gRPC status codes', () => {
  it.each([
    [ErrorCode.ERROR_CODE_INVALID_ARGUMENT, status.INVALID_ARGUMENT],
    [ErrorCode.ERROR_CODE_NOT_FOUND, status.NOT_FOUND],
    [ErrorCode.ERROR_CODE_PERMISSION_DENIED, status.PERMISSION_DENIED],
    [ErrorCode.ERROR_CODE_UNAUTHENTICATED, status.UNAUTHENTICATED],
    [ErrorCode.ERROR_CODE_RATE_LIMITED, status.RESOURCE_EXHAUSTED],
    [ErrorCode.ERROR_CODE_CONFLICT, status.ABORTED],
    [ErrorCode.ERROR_CODE_UNSUPPORTED, status.UNIMPLEMENTED],
    [ErrorCode.ERROR_CODE_UNAVAILABLE, status.UNAVAILABLE],
  ])('code %s is status %s', (code, expected) => {
    expect(grpcStatusFor(code)).toBe(expected);
  });

  it('round-trips code, message, field and retry-after through the trailer', () => {
    const back = fromServiceError(asServiceError(new RateLimitedError('slow down', { field: 'text', retryAfterMs: 1500 })));
    expect(back.code).toBe(ErrorCode.ERROR_CODE_RATE_LIMITED);
    expect(back.message).toBe('slow down');
    expect(back.field).toBe('text');
    expect(back.retryAfterMs).toBe(1500);
  });

  it('falls back to the status code when there is no trailer', () => {
    const err = Object.assign(new Error('x'), { code: status.NOT_FOUND, details: 'no such room', metadata: new Metadata() });
    const back = fromServiceError(err);
    expect(back).toBeInstanceOf(SwitchboardError);
    expect(back.code).toBe(ErrorCode.ERROR_CODE_NOT_FOUND);
  });

  it('never leaks an unexpected error: it becomes INTERNAL with the original as cause', () => {
    const original = new Error('connection string with password');
    const err = asSwitchboardError(original);
    expect(err.code).toBe(ErrorCode.ERROR_CODE_INTERNAL);
    expect(err.message).toBe('internal error');
    expect(err.cause).toBe(original);
  });

  it('turns an invalid id into INVALID_ARGUMENT naming the field', () => {
    const err = asSwitchboardError(new InvalidIdError('user_id', 'a.b'));
    expect(err).toBeInstanceOf(InvalidArgumentError);
    expect(err.field).toBe('user_id');
  });

  it('keeps typed errors as they are', () => {
    const err = new NotFoundError('gone');
    expect(asSwitchboardError(err)).toBe(err);
  });
});

describe('tenant metadata', () => {
  it('round-trips the tenant context', () => {
    const ctx = { tenantId: 'acme', userId: 'alice', deviceId: 'phone', internal: false };
    expect(tenantFromMetadata(tenantToMetadata(ctx))).toEqual(ctx);
  });

  it('refuses a call without a tenant or with an unsafe one', () => {
    expect(() => tenantFromMetadata(new Metadata())).toThrow(/missing or invalid tenant context/);
    const md = new Metadata();
    md.set('x-sb-tenant', 'acme.>');
    expect(() => tenantFromMetadata(md)).toThrow(/tenant must be/);
  });
});
