import { DateTime, IANAZone } from 'luxon';

/**
 * Time-zone arithmetic for do-not-disturb and digests, pure: every function
 * takes `now` and the user's IANA zone, and works in the user's wall-clock
 * time (so a 22:00–07:00 window stays 22:00–07:00 across DST changes).
 */

export interface Window {
  /** ISO weekdays the window starts on (1 = Monday … 7 = Sunday); empty = every day. */
  days: number[];
  /** Minutes after local midnight, 0–1439. */
  startMinute: number;
  endMinute: number;
}

export interface DndSettings {
  enabled: boolean;
  /** When the manual switch turns itself off; undefined = when turned off. */
  until: Date | undefined;
  schedule: Window[];
  timeZone: string;
}

export interface DndState {
  active: boolean;
  /** When it stops holding; undefined while manual DND has no end. Only when active. */
  until: Date | undefined;
  /** In words, for the delivery record. */
  reason: string;
}

export function isValidTimeZone(zone: string): boolean {
  return IANAZone.isValidZone(zone);
}

const MINUTES_PER_DAY = 24 * 60;

function atMinute(day: DateTime, minute: number): DateTime {
  return day.set({ hour: Math.floor(minute / 60), minute: minute % 60, second: 0, millisecond: 0 });
}

/** The window instance (start, end) that contains `local`, if any. */
function containing(window: Window, local: DateTime): { start: DateTime; end: DateTime } | undefined {
  const length = (window.endMinute - window.startMinute + MINUTES_PER_DAY) % MINUTES_PER_DAY;
  if (length === 0) return undefined;
  // A window that crosses midnight may have started yesterday.
  for (const daysBack of [0, 1]) {
    const day = local.minus({ days: daysBack }).startOf('day');
    if (window.days.length > 0 && !window.days.includes(day.weekday)) continue;
    // Wall-clock times (set, not plus): a 22:00 start stays 22:00 on the day clocks change.
    const start = atMinute(day, window.startMinute);
    const end = atMinute(window.endMinute > window.startMinute ? day : day.plus({ days: 1 }), window.endMinute);
    if (local >= start && local < end) return { start, end };
  }
  return undefined;
}

function hhmm(local: DateTime): string {
  return local.toFormat('HH:mm');
}

/** Whether scheduled do-not-disturb holds at `now`, and until when (chained windows are followed). */
function scheduled(settings: DndSettings, now: Date): { until: DateTime } | undefined {
  let local: DateTime = DateTime.fromJSDate(now, { zone: settings.timeZone });
  let until: DateTime | undefined;
  // Windows that touch (22:00–07:00 then 07:00–08:00) hold as one.
  for (let hop = 0; hop < 16; hop += 1) {
    const hit = settings.schedule.map((w) => containing(w, local)).find((instance) => instance !== undefined);
    if (!hit) break;
    until = hit.end;
    local = hit.end;
  }
  return until ? { until } : undefined;
}

export function dndState(settings: DndSettings, now: Date): DndState {
  // Most users have neither: no time-zone arithmetic for them.
  if (!settings.enabled && settings.schedule.length === 0) return { active: false, until: undefined, reason: '' };
  const manual = settings.enabled && (!settings.until || settings.until.getTime() > now.getTime());
  const planned = scheduled(settings, now);
  if (!manual && !planned) return { active: false, until: undefined, reason: '' };
  if (manual && !settings.until) return { active: true, until: undefined, reason: 'do-not-disturb is on' };
  const manualUntil = manual ? DateTime.fromJSDate(settings.until!, { zone: settings.timeZone }) : undefined;
  // Whichever ends later; a schedule that starts while the manual switch holds is followed too.
  let end: DateTime = manualUntil && planned ? (manualUntil > planned.until ? manualUntil : planned.until) : (manualUntil ?? planned!.until);
  const after = scheduled(settings, end.toJSDate());
  if (after) end = after.until;
  return {
    active: true,
    until: end.toJSDate(),
    reason: `do-not-disturb until ${hhmm(end.setZone(settings.timeZone))} ${settings.timeZone}`,
  };
}

/** The next top of the hour in the user's zone (zones with half-hour offsets included). */
export function nextHourlyDigest(now: Date, timeZone: string): Date {
  return DateTime.fromJSDate(now, { zone: timeZone }).startOf('hour').plus({ hours: 1 }).toJSDate();
}

/** The next time the user's local clock shows `minute` after midnight. */
export function nextDailyDigest(now: Date, timeZone: string, minute: number): Date {
  const local = DateTime.fromJSDate(now, { zone: timeZone });
  let at = atMinute(local.startOf('day'), minute);
  if (at <= local) at = atMinute(local.startOf('day').plus({ days: 1 }), minute);
  return at.toJSDate();
}
