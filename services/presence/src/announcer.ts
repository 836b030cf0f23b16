import type { Logger } from '@switchboard/logging';
import { newEnvelope, publishEnvelope, subjects, type NatsConnection } from '@switchboard/nats';
import { eventsV1, presenceV1 } from '@switchboard/proto';
import { fingerprint, mergePresence, nextDue, presenceChanged } from './merge';
import type { Occupancy, PresenceStore, Snapshot } from './store';

export const Cause = presenceV1.PresenceChangeCause;
export type Cause = presenceV1.PresenceChangeCause;

/**
 * Publishes `PresenceChanged` on `sb.<t>.presence.<userId>` when a write
 * changed what watchers see, and records it in the user's history. Watchers
 * are other users, so the public face is what is compared and sent.
 * Occupancy counts are published on the conversation's subject, at most one
 * per conversation per throttle window (the latest counts win).
 */
export class ChangeAnnouncer {
  private readonly pendingOccupancy = new Map<string, { tenantId: string; occupancy: Occupancy; timer: NodeJS.Timeout | undefined }>();

  constructor(
    private readonly store: PresenceStore,
    private readonly nats: NatsConnection,
    private readonly logger: Logger,
    private readonly occupancyThrottleMs: number,
  ) {}

  async announce(tenantId: string, snapshot: Snapshot, now: number, cause: Cause): Promise<void> {
    const presence = mergePresence(snapshot, now, 'public');
    const privately = mergePresence(snapshot, now, 'private');
    try {
      const news = await this.store.claimChange(
        tenantId,
        snapshot.userId,
        {
          version: snapshot.version,
          fingerprint: fingerprint(presence),
          history: { at: now, status: presence.status, customMessage: presence.customMessage, cause, deviceCount: presence.deviceCount },
          dueAt: nextDue(snapshot, now),
          online: privately.deviceCount > 0,
        },
        now,
      );
      if (!news) return;
      publishEnvelope(this.nats, subjects.presence(tenantId, snapshot.userId), newEnvelope(tenantId, { $case: 'presenceChanged', value: presenceChanged(presence, now) }));
    } catch (err) {
      // The write is committed and the caller must hear so; watchers catch up on their next GetPresence.
      this.logger.warn({ err, tenant: tenantId, userId: snapshot.userId }, 'could not announce a presence change');
    }
  }

  /** Publishes a conversation's occupancy now if it was quiet, else once at the end of the throttle window. */
  occupancyChanged(tenantId: string, conversationId: string, occupancy: Occupancy): void {
    const key = `${tenantId}/${conversationId}`;
    const pending = this.pendingOccupancy.get(key);
    if (pending) {
      pending.occupancy = occupancy;
      return;
    }
    this.publishOccupancy(tenantId, conversationId, occupancy);
    const entry = { tenantId, occupancy, timer: undefined as NodeJS.Timeout | undefined };
    const published = occupancy;
    entry.timer = setTimeout(() => {
      this.pendingOccupancy.delete(key);
      if (entry.occupancy !== published) this.publishOccupancy(tenantId, conversationId, entry.occupancy);
    }, this.occupancyThrottleMs);
    entry.timer.unref();
    this.pendingOccupancy.set(key, entry);
  }

  private publishOccupancy(tenantId: string, conversationId: string, occupancy: Occupancy): void {
    try {
      publishEnvelope(
        this.nats,
        subjects.conversation(tenantId, conversationId),
        newEnvelope(tenantId, { $case: 'occupancyChanged', value: eventsV1.OccupancyChanged.fromPartial({ conversationId, ...occupancy }) }),
      );
    } catch (err) {
      this.logger.warn({ err, tenant: tenantId, conversationId }, 'could not publish occupancy');
    }
  }

  close(): void {
    for (const entry of this.pendingOccupancy.values()) clearTimeout(entry.timer);
    this.pendingOccupancy.clear();
  }
}
