// The merge rule on its own (pure logic): devices, explicit over automatic,
// auto-away, appear-offline, hidden last seen, and when to look again.
import { eventsV1 } from '@switchboard/proto';
import { mergePresence, nextDue } from '../src/merge';
import type { Snapshot } from '../src/store';

const S = eventsV1.PresenceStatus;
const NOW = 1_000_000_000;
const AWAY_AFTER = 60_000;

function snapshot(overrides: Partial<Snapshot> = {}): Snapshot {
  return {
    userId: 'u1',
    leases: [],
    devices: new Map(),
    activity: new Map(),
    manual: undefined,
    settings: { autoAwayAfterMs: AWAY_AFTER, hideLastSeen: false },
    lastSeen: NOW - 5000,
    version: 1,
    ...overrides,
  };
}

const lease = (deviceId: string, connectedAt: number, connectionId = `c-${deviceId}`) => ({ deviceId, gatewayId: 'g1', connectionId, connectedAt });
const manual = (status: eventsV1.PresenceStatus, extra: Partial<NonNullable<Snapshot['manual']>> = {}) => ({
  status,
  statusExpiresAt: 0,
  customMessage: '',
  customMessageExpiresAt: 0,
  frozenLastSeen: NOW - 100_000,
  updatedAt: NOW - 10,
  ...extra,
});

describe('mergePresence', () => {
  it('is offline with the last seen when no device is connected', () => {
    const p = mergePresence(snapshot(), NOW, 'public');
    expect(p).toMatchObject({ status: S.PRESENCE_STATUS_OFFLINE, deviceCount: 0, lastSeen: new Date(NOW - 5000) });
  });

  it('counts devices, not connections (two tabs are one device)', () => {
    const p = mergePresence(snapshot({ leases: [lease('phone', NOW - 10, 'a'), lease('phone', NOW - 5, 'b'), lease('laptop', NOW - 1)] }), NOW, 'private', true);
    expect(p.status).toBe(S.PRESENCE_STATUS_AVAILABLE);
    expect(p.deviceCount).toBe(2);
    expect(p.devices.find((d) => d.device?.deviceId === 'phone')!.connectionCount).toBe(2);
  });

  it('goes away only when every device is idle past the delay', () => {
    const idlePhone = lease('phone', NOW - 2 * AWAY_AFTER);
    const activeLaptop = lease('laptop', NOW - 2 * AWAY_AFTER);
    const oneActive = snapshot({ leases: [idlePhone, activeLaptop], activity: new Map([['laptop', NOW - 1000]]) });
    expect(mergePresence(oneActive, NOW, 'public').status).toBe(S.PRESENCE_STATUS_AVAILABLE);
    const bothIdle = snapshot({ leases: [idlePhone, activeLaptop] });
    expect(mergePresence(bothIdle, NOW, 'public').status).toBe(S.PRESENCE_STATUS_AWAY);
  });

  it('lets an explicit status win over activity until it expires', () => {
    const active = { leases: [lease('phone', NOW - 1)] };
    expect(mergePresence(snapshot({ ...active, manual: manual(S.PRESENCE_STATUS_BUSY) }), NOW, 'public').status).toBe(S.PRESENCE_STATUS_BUSY);
    const expired = manual(S.PRESENCE_STATUS_BUSY, { statusExpiresAt: NOW - 1 });
    expect(mergePresence(snapshot({ ...active, manual: expired }), NOW, 'private')).toMatchObject({ status: S.PRESENCE_STATUS_AVAILABLE, manualStatus: S.PRESENCE_STATUS_UNSPECIFIED });
  });

  it('shows appear-offline as offline with a frozen last seen to others, the truth to the user', () => {
    const s = snapshot({ leases: [lease('phone', NOW - 1)], manual: manual(S.PRESENCE_STATUS_OFFLINE, { customMessage: 'hidden' }) });
    expect(mergePresence(s, NOW, 'public')).toMatchObject({ status: S.PRESENCE_STATUS_OFFLINE, deviceCount: 0, customMessage: '', lastSeen: new Date(NOW - 100_000) });
    expect(mergePresence(s, NOW, 'private')).toMatchObject({ status: S.PRESENCE_STATUS_AVAILABLE, deviceCount: 1, manualStatus: S.PRESENCE_STATUS_OFFLINE });
  });

  it('hides last seen from others when the user asked', () => {
    const s = snapshot({ settings: { autoAwayAfterMs: AWAY_AFTER, hideLastSeen: true } });
    expect(mergePresence(s, NOW, 'public').lastSeen).toBeUndefined();
    expect(mergePresence(s, NOW, 'private').lastSeen).toEqual(new Date(NOW - 5000));
  });
});

describe('nextDue', () => {
  it('is the earliest of the auto-away moment and the expiries, or 0 when nothing is pending', () => {
    expect(nextDue(snapshot(), NOW)).toBe(0);
    const online = snapshot({ leases: [lease('phone', NOW - 1000)], activity: new Map([['phone', NOW - 500]]) });
    expect(nextDue(online, NOW)).toBe(NOW - 500 + AWAY_AFTER);
    const expiring = snapshot({ ...online, manual: manual(S.PRESENCE_STATUS_BUSY, { statusExpiresAt: NOW + 10, customMessage: 'x', customMessageExpiresAt: NOW + 5 }) });
    expect(nextDue(expiring, NOW)).toBe(NOW + 5);
  });
});
