import { assertSafeId } from '@switchboard/ids';

/**
 * Every subject starts with the tenant: `sb.<tenant>.<kind>.<id>`. Ids are
 * checked against the safe alphabet first so that no id can add a token or a
 * wildcard to a subject.
 */
export const subjects = {
  conversation: (tenant: string, conversationId: string) =>
    `sb.${assertSafeId(tenant, 'tenant')}.conv.${assertSafeId(conversationId, 'conversation_id')}`,
  user: (tenant: string, userId: string) => `sb.${assertSafeId(tenant, 'tenant')}.user.${assertSafeId(userId, 'user_id')}`,
  presence: (tenant: string, userId: string) => `sb.${assertSafeId(tenant, 'tenant')}.presence.${assertSafeId(userId, 'user_id')}`,
  /**
   * Many users' presence changes in one message (events.v1
   * PresenceChangedBatch): `~` is outside the id alphabet, so no user's
   * subject is this one, while `sb.<t>.presence.*` matches both.
   */
  presenceBatch: (tenant: string) => `sb.${assertSafeId(tenant, 'tenant')}.presence.~batch`,
  /** Broadcast events; `topic` is dot-separated safe tokens, and may end in a wildcard when subscribing. */
  event: (tenant: string, topic: string, allowWildcards = false) => {
    const tokens = topic.split('.');
    tokens.forEach((token, index) => {
      const isWildcard = token === '*' || (token === '>' && index === tokens.length - 1);
      if (!(allowWildcards && isWildcard)) assertSafeId(token, 'topic');
    });
    return `sb.${assertSafeId(tenant, 'tenant')}.evt.${topic}`;
  },
};

export const SYSTEM_SUBJECTS = {
  gatewayHeartbeat: 'sb.sys.gateway.heartbeat',
  /** Empty pings after a commit wrote outbox rows, so the relay leader (any replica) publishes at once. */
  messagingOutboxWake: 'sb.sys.messaging.outbox',
  roomOutboxWake: 'sb.sys.room.outbox',
  /** Presence lost its state (Redis came back empty): gateways refresh their leases now and register what presence no longer knows. */
  presenceResync: 'sb.sys.presence.resync',
} as const;
