import { dndState, isValidTimeZone, nextDailyDigest, nextHourlyDigest, type DndSettings } from '../src/schedule';

const quiet = (timeZone: string, windows: DndSettings['schedule'], manual: Partial<DndSettings> = {}): DndSettings => ({ enabled: false, until: undefined, schedule: windows, timeZone, ...manual });
const NIGHT = { days: [], startMinute: 22 * 60, endMinute: 7 * 60 };

describe('do-not-disturb', () => {
  it('holds a 22:00–07:00 window in the user’s zone, across midnight, until 07:00 local', () => {
    // 2026-03-04 05:30 UTC is 23:30 on the 3rd in Chicago (UTC-6) and 14:30 in Tokyo.
    const now = new Date('2026-03-04T05:30:00Z');
    const chicago = dndState(quiet('America/Chicago', [NIGHT]), now);
    expect(chicago).toEqual({ active: true, until: new Date('2026-03-04T13:00:00Z'), reason: 'do-not-disturb until 07:00 America/Chicago' });
    expect(dndState(quiet('Asia/Tokyo', [NIGHT]), now).active).toBe(false);
    // After midnight it is still the window that started the day before.
    expect(dndState(quiet('America/Chicago', [NIGHT]), new Date('2026-03-04T11:00:00Z')).until).toEqual(new Date('2026-03-04T13:00:00Z'));
    expect(dndState(quiet('America/Chicago', [NIGHT]), new Date('2026-03-04T13:00:00Z')).active).toBe(false);
  });

  it('keeps wall-clock times across a DST change', () => {
    // US clocks spring forward on 2026-03-08: 07:00 CDT is 12:00 UTC (the day before it was 13:00 UTC).
    expect(dndState(quiet('America/Chicago', [NIGHT]), new Date('2026-03-08T10:00:00Z')).until).toEqual(new Date('2026-03-08T12:00:00Z'));
  });

  it('only starts on the chosen weekdays', () => {
    // Weeknights only (Mon–Thu start): Friday night is free. 2026-03-06 is a Friday.
    const weeknights = [{ days: [1, 2, 3, 4], startMinute: 22 * 60, endMinute: 7 * 60 }];
    expect(dndState(quiet('UTC', weeknights), new Date('2026-03-06T23:00:00Z')).active).toBe(false);
    expect(dndState(quiet('UTC', weeknights), new Date('2026-03-05T23:00:00Z')).active).toBe(true);
    // Thursday's window runs into Friday morning.
    expect(dndState(quiet('UTC', weeknights), new Date('2026-03-06T03:00:00Z')).active).toBe(true);
  });

  it('follows touching windows to their common end', () => {
    const chained = [NIGHT, { days: [], startMinute: 7 * 60, endMinute: 8 * 60 }];
    expect(dndState(quiet('UTC', chained), new Date('2026-03-04T23:00:00Z')).until).toEqual(new Date('2026-03-05T08:00:00Z'));
  });

  it('has a manual switch, with or without an end', () => {
    const now = new Date('2026-03-04T12:00:00Z');
    expect(dndState(quiet('UTC', [], { enabled: true }), now)).toEqual({ active: true, until: undefined, reason: 'do-not-disturb is on' });
    expect(dndState(quiet('UTC', [], { enabled: true, until: new Date('2026-03-04T13:00:00Z') }), now).until).toEqual(new Date('2026-03-04T13:00:00Z'));
    expect(dndState(quiet('UTC', [], { enabled: true, until: new Date('2026-03-04T11:00:00Z') }), now).active).toBe(false);
    // A manual end that falls inside the night window is followed by the window.
    expect(dndState(quiet('UTC', [NIGHT], { enabled: true, until: new Date('2026-03-04T23:00:00Z') }), now).until).toEqual(new Date('2026-03-05T07:00:00Z'));
  });

  it('knows real time zones', () => {
    expect(isValidTimeZone('Asia/Kolkata')).toBe(true);
    expect(isValidTimeZone('Mars/Olympus')).toBe(false);
  });
});

describe('digest times', () => {
  it('go at the top of the user’s hour (half-hour zones too) and at their daily minute', () => {
    const now = new Date('2026-03-04T10:10:00Z');
    expect(nextHourlyDigest(now, 'UTC')).toEqual(new Date('2026-03-04T11:00:00Z'));
    expect(nextHourlyDigest(now, 'Asia/Kolkata')).toEqual(new Date('2026-03-04T10:30:00Z'));
    // 08:00 in Chicago is 14:00 UTC; at 15:00 UTC it is tomorrow's.
    expect(nextDailyDigest(now, 'America/Chicago', 8 * 60)).toEqual(new Date('2026-03-04T14:00:00Z'));
    expect(nextDailyDigest(new Date('2026-03-04T15:00:00Z'), 'America/Chicago', 8 * 60)).toEqual(new Date('2026-03-05T14:00:00Z'));
  });
});
