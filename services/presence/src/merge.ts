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

/**
 * A user's merged presence: no live lease → OFFLINE; a chosen AWAY or BUSY
 * → that; otherwise AVAILABLE. A user who appears offline is OFFLINE with
 * no devices and a frozen last seen to the public audience.
 */
export function mergePresence(snapshot: Snapshot, now: number, audience: Audience, includeDevices = false): presenceV1.UserPresence {
  const connections = new Map<string, number>();
  for (const lease of snapshot.leases) {
    if (lease.leaseUntil > now) connections.set(lease.deviceId, (connections.get(lease.deviceId) ?? 0) + 1);
  }
  const online = connections.size > 0;
  const manual = snapshot.manual;
  const chosen = manual && MANUAL.has(manual.status) && live(manual.statusExpiresAt, now) ? manual.status : PresenceStatus.PRESENCE_STATUS_UNSPECIFIED;
  const customMessage = manual?.customMessage && live(manual.customMessageExpiresAt, now) ? manual.customMessage : '';
  const invisible = audience === 'public' && chosen === PresenceStatus.PRESENCE_STATUS_OFFLINE;
  const isPrivate = audience === 'private';

  let status: PresenceStatus = PresenceStatus.PRESENCE_STATUS_AVAILABLE;
  if (!online || invisible) status = PresenceStatus.PRESENCE_STATUS_OFFLINE;
  else if (chosen === PresenceStatus.PRESENCE_STATUS_AWAY || chosen === PresenceStatus.PRESENCE_STATUS_BUSY) status = chosen;

  // Online users were seen now; hidden ones when they went invisible.
  const lastSeen = invisible ? manual!.frozenLastSeen : online ? now : snapshot.lastSeen;
  return {
    userId: snapshot.userId,
    status,
    customMessage: invisible ? '' : customMessage,
    customMessageExpiresAt: invisible || !customMessage ? undefined : date(manual!.customMessageExpiresAt),
    lastSeen: date(lastSeen),
    deviceCount: invisible ? 0 : connections.size,
    devices: isPrivate && includeDevices ? [...connections].map(([deviceId, count]) => devicePresence(deviceId, snapshot.devices.get(deviceId), count)) : [],
    manualStatus: isPrivate ? chosen : PresenceStatus.PRESENCE_STATUS_UNSPECIFIED,
    manualStatusExpiresAt: isPrivate && chosen !== PresenceStatus.PRESENCE_STATUS_UNSPECIFIED ? date(manual!.statusExpiresAt) : undefined,
    updatedAt: date(invisible ? manual!.updatedAt : Math.max(snapshot.lastSeen, manual?.updatedAt ?? 0)),
  };
}

function devicePresence(deviceId: string, stored: StoredDevice | undefined, connectionCount: number): presenceV1.DevicePresence {
  return {
    device: {
      deviceId,
      platform: stored?.platform ?? presenceV1.DevicePlatform.DEVICE_PLATFORM_UNSPECIFIED,
      label: stored?.label ?? '',
      appVersion: stored?.appVersion ?? '',
      userAgent: stored?.userAgent ?? '',
    },
    status: PresenceStatus.PRESENCE_STATUS_AVAILABLE,
    connectionCount,
    // Activity is not tracked per device yet: its latest connection stands in.
    connectedAt: date(stored?.connectedAt ?? 0),
    lastActiveAt: date(stored?.connectedAt ?? 0),
    disconnectedAt: undefined,
  };
}

/** What watchers display; a change of it is what gets announced. */
export function fingerprint(presence: presenceV1.UserPresence): string {
  return `${presence.status}|${presence.customMessage}`;
}

export function presenceChanged(presence: presenceV1.UserPresence): eventsV1.PresenceChanged {
  return {
    userId: presence.userId,
    status: presence.status,
    customMessage: presence.customMessage,
    lastSeen: presence.lastSeen,
    deviceCount: presence.deviceCount,
  };
}
