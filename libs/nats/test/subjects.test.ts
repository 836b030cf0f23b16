import { InvalidIdError } from '@switchboard/ids';
import { subjects } from '../src';

describe('subjects carry the tenant and never an unsafe id', () => {
  it('builds tenant-scoped subjects', () => {
    expect(subjects.conversation('acme', 'c1')).toBe('sb.acme.conv.c1');
    expect(subjects.user('acme', 'u1')).toBe('sb.acme.user.u1');
    expect(subjects.presence('acme', 'u1')).toBe('sb.acme.presence.u1');
    expect(subjects.event('acme', 'labs.results')).toBe('sb.acme.evt.labs.results');
    expect(subjects.event('acme', 'ward.*.>', true)).toBe('sb.acme.evt.ward.*.>');
  });

  it('refuses ids that would change a subject or a key', () => {
    expect(() => subjects.user('acme', 'u1.>')).toThrow(InvalidIdError);
    expect(() => subjects.conversation('*', 'c1')).toThrow(InvalidIdError);
    expect(() => subjects.event('acme', 'labs.*')).toThrow(InvalidIdError);
  });
});
