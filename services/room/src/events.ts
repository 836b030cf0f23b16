import type { Logger } from '@switchboard/logging';
import { newEnvelope, publishEnvelope, subjects, type NatsConnection } from '@switchboard/nats';
import { eventsV1, type roomV1 } from '@switchboard/proto';

export const MembershipChange = eventsV1.MembershipChange;

/**
 * Publishes RoomMembershipChanged on the member's user subject (gateways add
 * or drop the room subscription of that user's connections) and on the room's
 * conversation subject (members see who joined or left).
 */
export class MembershipEvents {
  constructor(
    private readonly nats: NatsConnection,
    private readonly logger: Logger,
  ) {}

  publish(tenantId: string, members: roomV1.Member[], change: eventsV1.MembershipChange, actorId: string): void {
    for (const member of members) {
      const envelope = newEnvelope(tenantId, {
        $case: 'roomMembershipChanged',
        value: { roomId: member.roomId, userId: member.userId, change, role: member.role, actorId },
      });
      try {
        publishEnvelope(this.nats, subjects.user(tenantId, member.userId), envelope);
        publishEnvelope(this.nats, subjects.conversation(tenantId, member.roomId), envelope);
      } catch (err) {
        // The change is committed; clients that missed the event see it on their next room list.
        this.logger.warn({ err, tenant: tenantId, roomId: member.roomId, userId: member.userId }, 'could not publish a membership change');
      }
    }
  }
}
