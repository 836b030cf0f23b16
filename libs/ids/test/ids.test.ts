import { assertSafeId, InvalidIdError, isSafeId, newId } from '../src';

describe('safe ids', () => {
  it('accepts the safe alphabet and new ids', () => {
    expect(isSafeId('tenant_A-1')).toBe(true);
    expect(isSafeId(newId())).toBe(true);
    expect(newId()).not.toEqual(newId());
  });

  it.each(['', 'a.b', 'a*', 'a>', 'a b', 'x{y}', 'ü', 'a'.repeat(129), 'a\nb'])('refuses %j', (value) => {
    expect(isSafeId(value)).toBe(false);
    expect(() => assertSafeId(value, 'user_id')).toThrow(InvalidIdError);
  });

  it('names the field in the error', () => {
    expect(() => assertSafeId('a.b', 'conversation_id')).toThrow(/^conversation_id must be/);
  });
});

