import { isSafeId } from '@switchboard/ids';
import { type eventsV1, notificationV1 } from '@switchboard/proto';
import type { NewNotification } from './store';

/** In-app previews stay short; the message itself is one tap away. */
const PREVIEW_LENGTH = 200;

function preview(text: string): string {
  return text.length > PREVIEW_LENGTH ? `${text.slice(0, PREVIEW_LENGTH - 1)}…` : text;
}

/**
 * One in-app notification per member of the conversation except the sender:
 * `message.mention` for the mentioned, `message.new` for everyone else.
 * Members whose ids are not safe are left out rather than failing the record.
 */
export function notificationsForMessage(created: eventsV1.MessageCreated): NewNotification[] {
  const message = created.message;
  if (!message || message.deleted) return [];
  const mentioned = new Set(message.mentions);
  const recipients = [...new Set(created.memberIds)].filter((userId) => userId !== message.senderId && isSafeId(userId));
  const body = message.text ? preview(message.text) : 'Sent an attachment';
  return recipients.map((userId) => ({
    userId,
    kind: mentioned.has(userId) ? 'message.mention' : 'message.new',
    priority: notificationV1.Priority.PRIORITY_NORMAL,
    title: mentioned.has(userId) ? 'You were mentioned' : 'New message',
    body,
    data: {
      conversationId: message.conversationId,
      messageId: message.messageId,
      seq: String(message.seq),
      senderId: message.senderId,
    },
  }));
}
