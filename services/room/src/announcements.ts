import { PermissionDeniedError } from '@switchboard/errors';
import type { CallContext, PromiseClient } from '@switchboard/grpc';
import type { Logger } from '@switchboard/logging';
import { messagingV1, notificationV1, type roomV1 } from '@switchboard/proto';
import type { RoomStore } from './store';

export interface AnnouncementInput {
  roomId: string;
  title: string;
  text: string;
  expiresAt: Date | undefined;
  pin: boolean;
  requestId: string;
}

/** Notification kind of an announcement (notification's built-in templates and users' preferences key on it). */
export const ANNOUNCEMENT_KIND = 'message.announcement';
/** In-app previews stay short, as notification's own previews do. */
const PREVIEW_LENGTH = 140;

/**
 * Posts announcements: the message goes into the room's conversation through
 * messaging (ordered, delivered and synced like any message, as a
 * MESSAGE_KIND_ANNOUNCEMENT by the author), room keeps the announcement
 * record (and the pin), and notification tells every member. Each step is
 * idempotent on the request id, so a retry after any failure completes the
 * same announcement instead of posting a second one.
 */
export class Announcer {
  constructor(
    private readonly store: RoomStore,
    private readonly messaging: PromiseClient<messagingV1.MessagingServiceClient>,
    private readonly notification: PromiseClient<notificationV1.NotificationServiceClient>,
    private readonly logger: Logger,
  ) {}

  async post(ctx: CallContext, input: AnnouncementInput): Promise<roomV1.Announcement> {
    const tenantId = ctx.tenant.tenantId;
    const authorId = ctx.tenant.userId;
    if (!authorId) throw new PermissionDeniedError('an announcement needs an author: the user in the tenant context', { field: 'context.user_id' });
    const actor = { userId: authorId, internal: ctx.tenant.internal };
    const earlier = await this.store.prepareAnnouncement(tenantId, input.roomId, actor, input.requestId);
    const announcement =
      earlier ??
      (await (async () => {
        const { ack } = await this.messaging.sendMessage(
          {
            context: undefined,
            target: { $case: 'conversationId', value: input.roomId },
            clientMessageId: `announcement-${input.requestId}`,
            kind: messagingV1.MessageKind.MESSAGE_KIND_ANNOUNCEMENT,
            text: input.text,
            attachments: [],
            mentions: [],
            // Room tells the members itself (Notify below, with the title): notification's message pipeline skips it.
            metadata: { announcement_title: input.title, notified_by: 'room' },
          },
          { context: { tenantId, userId: authorId, deviceId: '', internal: true } },
        );
        return this.store.saveAnnouncement(
          tenantId,
          actor,
          { roomId: input.roomId, authorId, title: input.title, text: input.text, expiresAt: input.expiresAt, messageId: ack!.messageId, seq: ack!.seq },
          input.requestId,
          input.pin,
        );
      })());
    // Notify is idempotent on the key, so a retry that found the announcement stored still makes sure members were told.
    await this.notification.notify(
      {
        context: undefined,
        audience: { $case: 'roomId', value: input.roomId },
        excludeUserIds: [authorId],
        kind: ANNOUNCEMENT_KIND,
        variables: {
          preview: `${announcement.title}: ${announcement.text}`.slice(0, PREVIEW_LENGTH),
          title: announcement.title,
          senderId: authorId,
          conversationId: input.roomId,
          messageId: announcement.messageId,
        },
        data: { room_id: input.roomId, announcement_id: announcement.announcementId, message_id: announcement.messageId, seq: String(announcement.seq) },
        priority: notificationV1.Priority.PRIORITY_NORMAL,
        idempotencyKey: `announcement-${input.roomId}-${input.requestId}`,
        channels: [],
        expiresAt: announcement.expiresAt,
      },
      { context: { tenantId, userId: '', deviceId: '', internal: true } },
    );
    this.logger.debug({ tenant: tenantId, roomId: input.roomId, announcementId: announcement.announcementId }, 'announcement posted');
    return announcement;
  }
}
