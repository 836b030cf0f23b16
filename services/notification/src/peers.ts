import { createClient, type PromiseClient } from '@switchboard/grpc';
import type { Logger } from '@switchboard/logging';
import { presenceV1, roomV1 } from '@switchboard/proto';

export interface PresenceFact {
  known: boolean;
  online: boolean;
}

/** Presence's batch cap; larger audiences are asked in slices. */
const PRESENCE_BATCH = 500;

/**
 * The other services notification asks: presence (who is online) and room
 * (who is in a room). Both are called as the tenant's internal caller.
 */
export class Peers {
  private readonly presence: PromiseClient<presenceV1.PresenceServiceClient>;
  private readonly room: PromiseClient<roomV1.RoomServiceClient>;

  constructor(
    presenceAddr: string,
    roomAddr: string,
    private readonly deadlineMs: number,
    private readonly logger: Logger,
  ) {
    this.presence = createClient(presenceV1.PresenceServiceClient, presenceAddr);
    this.room = createClient(roomV1.RoomServiceClient, roomAddr);
  }

  private internal(tenantId: string) {
    return { context: { tenantId, userId: '', deviceId: '', internal: true }, deadlineMs: this.deadlineMs };
  }

  /**
   * Online = at least one connected device (as an internal caller sees it,
   * so appearing offline still counts: the user is in the app). When presence
   * does not answer, users are `known: false` and routing treats them as
   * offline, so a notification is pushed rather than lost.
   */
  async online(tenantId: string, userIds: string[]): Promise<Map<string, PresenceFact>> {
    const facts = new Map<string, PresenceFact>();
    for (let i = 0; i < userIds.length; i += PRESENCE_BATCH) {
      const slice = userIds.slice(i, i + PRESENCE_BATCH);
      try {
        const { presences } = await this.presence.getPresence({ context: undefined, userIds: slice, includeDevices: false }, this.internal(tenantId));
        for (const p of presences) facts.set(p.userId, { known: true, online: p.deviceCount > 0 });
      } catch (err) {
        this.logger.warn({ tenant: tenantId, error: (err as Error).message }, 'presence did not answer: routing as offline');
      }
    }
    for (const userId of userIds) if (!facts.has(userId)) facts.set(userId, { known: false, online: false });
    return facts;
  }

  /** Throws NOT_FOUND for a room the tenant does not have. */
  async checkRoom(tenantId: string, roomId: string): Promise<void> {
    await this.room.getRoom({ context: undefined, roomId }, this.internal(tenantId));
  }

  /** Every member of a room now, page by page. */
  async roomMembers(tenantId: string, roomId: string): Promise<string[]> {
    const members: string[] = [];
    let pageToken = '';
    for (;;) {
      const page = await this.room.listMembers({ context: undefined, roomId, roles: [], page: { pageSize: 200, pageToken } }, this.internal(tenantId));
      members.push(...page.members.map((m) => m.userId));
      pageToken = page.page?.nextPageToken ?? '';
      if (!pageToken) return members;
    }
  }

  close(): void {
    this.presence.close();
    this.room.close();
  }
}
