import { isSafeId } from './index';

/**
 * Tenant-wide broadcast audiences. An audience is a conversation of kind
 * BROADCAST without member rows: who belongs to it follows from the roles in
 * the user's token, so gaining or losing a role needs nothing synchronised.
 * Messaging stores its messages; gateways subscribe each connection to the
 * audiences of its roles, whether or not anything was broadcast yet.
 *
 *   "all"          every user of the tenant    → conversation "audience-all"
 *   "role:<role>"  users with <role> in token  → conversation "audience-role-<role>"
 */
const CONVERSATION_PREFIX = 'audience-';
/** Conversation ids are safe ids of at most 128 characters; the prefix takes some of them. */
export const MAX_AUDIENCE_ROLE_LENGTH = 128 - `${CONVERSATION_PREFIX}role-`.length;

/** The conversation of an audience id, or undefined when the id is not "all" or "role:<role>". */
export function audienceConversationId(audienceId: string): string | undefined {
  if (audienceId === 'all') return `${CONVERSATION_PREFIX}all`;
  const role = audienceId.startsWith('role:') ? audienceId.slice('role:'.length) : '';
  return isSafeId(role) && role.length <= MAX_AUDIENCE_ROLE_LENGTH ? `${CONVERSATION_PREFIX}role-${role}` : undefined;
}

/** The audience conversations a user with these roles reads. */
export function audienceConversationsOf(roles: readonly string[]): string[] {
  return [`${CONVERSATION_PREFIX}all`, ...roles.filter((role) => isSafeId(role) && role.length <= MAX_AUDIENCE_ROLE_LENGTH).map((role) => `${CONVERSATION_PREFIX}role-${role}`)];
}
