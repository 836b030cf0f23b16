import type { Logger } from '@switchboard/logging';
import { newEnvelope, publishEnvelope, subjects, type NatsConnection } from '@switchboard/nats';
import { fingerprint, mergePresence, presenceChanged } from './merge';
import type { PresenceStore, Snapshot } from './store';

/**
 * Publishes `PresenceChanged` on `sb.<t>.presence.<userId>` when a write
 * changed what watchers see. Watchers are other users, so the public face
 * is what is compared and sent.
 */
export class ChangeAnnouncer {
  constructor(
    private readonly store: PresenceStore,
    private readonly nats: NatsConnection,
    private readonly logger: Logger,
  ) {}

  async announce(tenantId: string, snapshot: Snapshot, now: number): Promise<void> {
    const presence = mergePresence(snapshot, now, 'public');
    try {
      if (!(await this.store.claimChange(tenantId, snapshot, fingerprint(presence)))) return;
      publishEnvelope(this.nats, subjects.presence(tenantId, snapshot.userId), newEnvelope(tenantId, { $case: 'presenceChanged', value: presenceChanged(presence) }));
    } catch (err) {
      // The write is committed and the caller must hear so; watchers catch up on their next GetPresence.
      this.logger.warn({ err, tenant: tenantId, userId: snapshot.userId }, 'could not announce a presence change');
    }
  }
}
