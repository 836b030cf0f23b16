import { InvalidIdError } from '@switchboard/ids';
import { tenantKey } from '../src';

describe('tenant keys', () => {
  it('puts the tenant in braces so its keys share a cluster slot', () => {
    expect(tenantKey('acme', 'presence', 'u1')).toBe('sb:{acme}:presence:u1');
  });

  it('refuses a tenant that would change the key', () => {
    expect(() => tenantKey('a}b', 'x')).toThrow(InvalidIdError);
    expect(() => tenantKey('a:b', 'x')).toThrow(InvalidIdError);
  });
});
