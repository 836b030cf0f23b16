import type { Logger } from '@switchboard/logging';
import { newEnvelope, publishEnvelope, subjects, type NatsConnection } from '@switchboard/nats';
import { eventsV1, presenceV1 } from '@switchboard/proto';
import { appearsOffline, fingerprint, mergePresence, nextDue, PresenceStatus, presenceChanged } from './merge';
import type { DroppedUser, Occupancy, PresenceStore, Snapshot } from './store';

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
    await this.announceMany(tenantId, [snapshot], now, cause);
  }

  /**
   * Many users of one tenant in one claim (a dropped gateway, a stale
   * batch): one Redis call decides which changes are news, then each is
   * published on its user's subject.
   */
  async announceMany(tenantId: string, snapshots: Snapshot[], now: number, cause: Cause): Promise<void> {
    const publics = snapshots.map((snapshot) => mergePresence(snapshot, now, 'public'));
    try {
      const claims = await this.store.claimChanges(
        tenantId,
        snapshots.map((snapshot, i) => {
          const presence = publics[i]!;
          return {
            userId: snapshot.userId,
            version: snapshot.version,
            fingerprint: fingerprint(presence),
            history: { at: now, status: presence.status, customMessage: presence.customMessage, cause, deviceCount: presence.deviceCount },
            dueAt: nextDue(snapshot, now),
            online: snapshot.leases.length > 0,
            hidden: appearsOffline(snapshot, now),
          };
        }),
        now,
      );
      claims.forEach(({ news, occupancy }, i) => {
        if (news) publishEnvelope(this.nats, subjects.presence(tenantId, snapshots[i]!.userId), newEnvelope(tenantId, { $case: 'presenceChanged', value: presenceChanged(publics[i]!, now) }));
        for (const [conversationId, counts] of occupancy) this.occupancyChanged(tenantId, conversationId, counts);
      });
    } catch (err) {
      // The writes are committed and the caller must hear so; watchers catch up on their next GetPresence.
      this.logger.warn({ err, tenant: tenantId, users: snapshots.length }, 'could not announce presence changes');
    }
  }

  /**
   * Users a gateway drop took offline, already decided and claimed in Redis
   * (PresenceStore.dropUsers): published as they are, nothing to merge, all
   * in ONE PresenceChangedBatch on the tenant's batch subject — a dead
   * gateway's thousands of users cost presence one encode and publish, and
   * every other gateway one message to decode and fan out, instead of one
   * per user (each gateway hands every change to the connections that
   * receive that user's presence). Returns false when the publish failed
   * (the changes stay in the drop's outbox for another try).
   */
  announceOffline(tenantId: string, users: Extract<DroppedUser, { online: false }>[], now: number): boolean {
    const changedAt = new Date(now);
    const changes: eventsV1.PresenceChanged[] = [];
    for (const user of users) {
      if (user.news) changes.push({ userId: user.userId, status: PresenceStatus.PRESENCE_STATUS_OFFLINE, customMessage: user.customMessage, lastSeen: user.lastSeen > 0 ? new Date(user.lastSeen) : undefined, deviceCount: 0, changedAt });
      for (const [conversationId, counts] of user.occupancy) this.occupancyChanged(tenantId, conversationId, counts);
    }
    if (changes.length === 0) return true;
    try {
      publishEnvelope(this.nats, subjects.presenceBatch(tenantId), newEnvelope(tenantId, { $case: 'presenceChangedBatch', value: { changes } }));
      return true;
    } catch (err) {
      this.logger.warn({ err, tenant: tenantId, users: changes.length }, 'could not announce presence changes');
      return false;
    }
  }

  /** Resolves once NATS has everything published so far (a drop's outbox is cleared only then). */
  async flush(): Promise<void> {
    await this.nats.flush();
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
