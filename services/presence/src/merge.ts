import { eventsV1, presenceV1 } from '@switchboard/proto';
import type { Snapshot, StoredDevice } from './store';

export const PresenceStatus = eventsV1.PresenceStatus;
export type PresenceStatus = eventsV1.PresenceStatus;

/**
 * Who is looking: the user themself and internal callers see everything
 * (devices, the chosen status, the truth behind appear-offline); everyone
 * else sees the public face.
 */
export type Audience = 'private' | 'public';

const MANUAL = new Set([PresenceStatus.PRESENCE_STATUS_AWAY, PresenceStatus.PRESENCE_STATUS_BUSY, PresenceStatus.PRESENCE_STATUS_OFFLINE]);

function live(expiresAt: number, now: number): boolean {
  return expiresAt === 0 || expiresAt > now;
}

function date(ms: number): Date | undefined {
  return ms > 0 ? new Date(ms) : undefined;
}

/** Last user activity of each connected device (its connection counts as activity) and its connection count. */
function connectedDevices(snapshot: Snapshot): Map<string, { connections: number; lastActive: number; connectedAt: number }> {
  const devices = new Map<string, { connections: number; lastActive: number; connectedAt: number }>();
  for (const lease of snapshot.leases) {
    const entry = devices.get(lease.deviceId) ?? { connections: 0, lastActive: 0, connectedAt: Number.MAX_SAFE_INTEGER };
    entry.connections += 1;
    entry.connectedAt = Math.min(entry.connectedAt, lease.connectedAt);
    entry.lastActive = Math.max(entry.lastActive, lease.connectedAt, snapshot.activity.get(lease.deviceId) ?? 0);
    devices.set(lease.deviceId, entry);
  }
  return devices;
}

/** The user chose to appear offline (and that choice has not expired): others see them offline and uncounted. */
export function appearsOffline(snapshot: Snapshot, now: number): boolean {
  const manual = snapshot.manual;
  return manual?.status === PresenceStatus.PRESENCE_STATUS_OFFLINE && live(manual.statusExpiresAt, now);
}

/**
 * A user's merged presence. The rule, in order:
 *   1. no connected device, or appear-offline (to others): OFFLINE;
 *   2. an explicitly chosen AWAY or BUSY that has not expired: that status
 *      (explicit beats automatic; the chosen status is one per user, so the
 *      latest explicit change from any device replaces the previous one);
 *   3. AWAY when every connected device has been idle longer than the
 *      user's auto-away delay, otherwise AVAILABLE.
 * Last seen is now while online, else when the last device left; frozen
 * while appearing offline; hidden from others when the user asked.
 */
export function mergePresence(snapshot: Snapshot, now: number, audience: Audience, includeDevices = false): presenceV1.UserPresence {
  const devices = connectedDevices(snapshot);
  const online = devices.size > 0;
  const manual = snapshot.manual;
  const chosen = manual && MANUAL.has(manual.status) && live(manual.statusExpiresAt, now) ? manual.status : PresenceStatus.PRESENCE_STATUS_UNSPECIFIED;
  const customMessage = manual?.customMessage && live(manual.customMessageExpiresAt, now) ? manual.customMessage : '';
  const invisible = audience === 'public' && chosen === PresenceStatus.PRESENCE_STATUS_OFFLINE;
  const isPrivate = audience === 'private';
  const idle = [...devices.values()].every((d) => d.lastActive + snapshot.settings.autoAwayAfterMs <= now);

  let status: PresenceStatus = PresenceStatus.PRESENCE_STATUS_AVAILABLE;
  if (!online || invisible) status = PresenceStatus.PRESENCE_STATUS_OFFLINE;
  else if (chosen === PresenceStatus.PRESENCE_STATUS_AWAY || chosen === PresenceStatus.PRESENCE_STATUS_BUSY) status = chosen;
  else if (idle) status = PresenceStatus.PRESENCE_STATUS_AWAY;

  // Online users were seen now; hidden ones when they went invisible.
  const lastSeen = invisible ? manual!.frozenLastSeen : online ? now : snapshot.lastSeen;
  const showLastSeen = isPrivate || !snapshot.settings.hideLastSeen;
  return {
    userId: snapshot.userId,
    status,
    customMessage: invisible ? '' : customMessage,
    customMessageExpiresAt: invisible || !customMessage ? undefined : date(manual!.customMessageExpiresAt),
    lastSeen: showLastSeen ? date(lastSeen) : undefined,
    deviceCount: invisible ? 0 : devices.size,
    devices: isPrivate && includeDevices ? devicePresences(snapshot, now, false) : [],
    manualStatus: isPrivate ? chosen : PresenceStatus.PRESENCE_STATUS_UNSPECIFIED,
    manualStatusExpiresAt: isPrivate && chosen !== PresenceStatus.PRESENCE_STATUS_UNSPECIFIED ? date(manual!.statusExpiresAt) : undefined,
    updatedAt: date(invisible ? manual!.updatedAt : Math.max(snapshot.lastSeen, manual?.updatedAt ?? 0)),
  };
}

/** Each device's own presence: AVAILABLE while active, AWAY when idle past the delay, OFFLINE when not connected. */
export function devicePresences(snapshot: Snapshot, now: number, includeDisconnected: boolean): presenceV1.DevicePresence[] {
  const connected = connectedDevices(snapshot);
  const result: presenceV1.DevicePresence[] = [];
  for (const [deviceId, d] of connected) {
    const idle = d.lastActive + snapshot.settings.autoAwayAfterMs <= now;
    result.push(
      devicePresence(deviceId, snapshot.devices.get(deviceId), {
        status: idle ? PresenceStatus.PRESENCE_STATUS_AWAY : PresenceStatus.PRESENCE_STATUS_AVAILABLE,
        connectionCount: d.connections,
        connectedAt: d.connectedAt,
        lastActiveAt: d.lastActive,
        disconnectedAt: 0,
      }),
    );
  }
  if (includeDisconnected) {
    const gone = [...snapshot.devices].filter(([deviceId]) => !connected.has(deviceId));
    gone.sort((a, b) => (b[1].disconnectedAt ?? b[1].connectedAt) - (a[1].disconnectedAt ?? a[1].connectedAt));
    for (const [deviceId, stored] of gone) {
      result.push(
        devicePresence(deviceId, stored, {
          status: PresenceStatus.PRESENCE_STATUS_OFFLINE,
          connectionCount: 0,
          connectedAt: stored.connectedAt,
          lastActiveAt: Math.max(stored.connectedAt, snapshot.activity.get(deviceId) ?? 0),
          disconnectedAt: stored.disconnectedAt ?? 0,
        }),
      );
    }
  }
  return result;
}

function devicePresence(
  deviceId: string,
  stored: StoredDevice | undefined,
  state: { status: PresenceStatus; connectionCount: number; connectedAt: number; lastActiveAt: number; disconnectedAt: number },
): presenceV1.DevicePresence {
  return {
    device: {
      deviceId,
      platform: stored?.platform ?? presenceV1.DevicePlatform.DEVICE_PLATFORM_UNSPECIFIED,
      label: stored?.label ?? '',
      appVersion: stored?.appVersion ?? '',
      userAgent: stored?.userAgent ?? '',
    },
    status: state.status,
    connectionCount: state.connectionCount,
    connectedAt: date(state.connectedAt),
    lastActiveAt: date(state.lastActiveAt),
    disconnectedAt: date(state.disconnectedAt),
  };
}

/**
 * When this user's merged presence changes by itself with time: the next
 * expiry of a chosen status or custom message, or the moment every device
 * has been idle past the auto-away delay. 0 when nothing is pending.
 */
export function nextDue(snapshot: Snapshot, now: number): number {
  const candidates: number[] = [];
  const manual = snapshot.manual;
  if (manual?.statusExpiresAt && manual.statusExpiresAt > now) candidates.push(manual.statusExpiresAt);
  if (manual?.customMessageExpiresAt && manual.customMessageExpiresAt > now) candidates.push(manual.customMessageExpiresAt);
  const devices = [...connectedDevices(snapshot).values()];
  if (devices.length > 0) {
    const awayAt = Math.max(...devices.map((d) => d.lastActive)) + snapshot.settings.autoAwayAfterMs;
    if (awayAt > now) candidates.push(awayAt);
  }
  return candidates.length > 0 ? Math.min(...candidates) : 0;
}

/** What watchers display; a change of it is what gets announced. */
export function fingerprint(presence: presenceV1.UserPresence): string {
  return `${presence.status}|${presence.customMessage}`;
}

export function presenceChanged(presence: presenceV1.UserPresence, changedAt: number): eventsV1.PresenceChanged {
  return {
    userId: presence.userId,
    status: presence.status,
    customMessage: presence.customMessage,
    lastSeen: presence.lastSeen,
    deviceCount: presence.deviceCount,
    changedAt: new Date(changedAt),
  };
}
