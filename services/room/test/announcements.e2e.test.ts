// Announcements through the real mesh: room posts the announcement into the
// room's conversation through messaging (an internal send in the author's
// name), keeps the record and the pin, and notification tells the members.
// Retries with the same request id complete the same announcement.
import { errorOf, eventually, startMesh, type Mesh } from '@switchboard/devenv';
import { ErrorCode } from '@switchboard/errors';
import { createClient, type PromiseClient } from '@switchboard/grpc';
import { newId } from '@switchboard/ids';
import { eventsV1, messagingV1, notificationV1, roomV1 } from '@switchboard/proto';
import { addWithRole, contexts, createRequest, page, type RoomClient } from './support/rooms';

const { RoomRole: R } = eventsV1;

describe('announcements', () => {
  const tenantId = `t${newId().slice(0, 12)}`;
  const { as, internal } = contexts(tenantId);
  let mesh: Mesh;
  let room: RoomClient;
  let messaging: PromiseClient<messagingV1.MessagingServiceClient>;
  let notification: PromiseClient<notificationV1.NotificationServiceClient>;

  beforeAll(async () => {
    mesh = await startMesh({ gateways: 0, ports: 'free', env: { LOG_LEVEL: 'warn' } });
    room = createClient(roomV1.RoomServiceClient, mesh.addresses.room);
    messaging = createClient(messagingV1.MessagingServiceClient, mesh.addresses.messaging);
    notification = createClient(notificationV1.NotificationServiceClient, mesh.addresses.notification);
  }, 120_000);

  afterAll(async () => {
    room?.close();
    messaging?.close();
    notification?.close();
    await mesh?.stop();
  });

  it('posts into the conversation once, pins it, lists it and notifies every member but the author', async () => {
    const [owner, admin, nurse] = [newId(), newId(), newId()];
    const { room: created } = await room.createRoom(createRequest({ name: 'Ward 9', memberIds: [nurse] }), as(owner));
    const roomId = created!.roomId;
    await addWithRole(room, tenantId, roomId, R.ROOM_ROLE_ADMIN, admin);
    const requestId = newId();
    const post = () =>
      room.postAnnouncement({ context: undefined, roomId, title: 'Fire drill', text: 'At 3 pm, assemble in the car park.', expiresAt: undefined, pin: true, requestId }, as(admin));

    // A member may not announce: nothing reaches the conversation.
    const denied = await errorOf(room.postAnnouncement({ context: undefined, roomId, title: 'Hi', text: 'x', expiresAt: undefined, pin: false, requestId: newId() }, as(nurse)));
    expect(denied.code).toBe(ErrorCode.ERROR_CODE_PERMISSION_DENIED);

    // Messaging learns of the room from room's events before it takes the first post.
    const { announcement } = await eventually(() => post().catch(() => undefined), 20_000, 'messaging accepts posts into the room');
    expect(announcement).toMatchObject({ roomId, authorId: admin, title: 'Fire drill', text: 'At 3 pm, assemble in the car park.' });
    expect(announcement!.seq).toBeGreaterThan(0);
    const retried = await post();
    expect(retried.announcement).toEqual(announcement);

    const history = await messaging.getHistory({ context: undefined, conversationId: roomId, fromSeq: 0, direction: messagingV1.Direction.DIRECTION_FORWARD, limit: 50 }, as(nurse));
    const posted = history.messages.filter((m) => m.kind === messagingV1.MessageKind.MESSAGE_KIND_ANNOUNCEMENT);
    expect(posted.map((m) => [m.messageId, m.seq, m.senderId, m.text])).toEqual([[announcement!.messageId, announcement!.seq, admin, 'At 3 pm, assemble in the car park.']]);

    expect((await room.listPins({ context: undefined, roomId, page: page() }, as(nurse))).pins.map((p) => [p.messageId, p.seq])).toEqual([[announcement!.messageId, announcement!.seq]]);
    expect((await room.listAnnouncements({ context: undefined, roomId, includeExpired: false, page: page() }, as(nurse))).announcements.map((a) => a.announcementId)).toEqual([announcement!.announcementId]);

    const announcementsFor = async (userId: string) =>
      (await notification.listNotifications({ context: undefined, userId, unreadOnly: false, kinds: ['message.announcement'], page: page(), includeSuppressed: true }, internal())).notifications;
    await eventually(async () => (await announcementsFor(nurse)).length > 0 && (await announcementsFor(owner)).length > 0, 30_000, 'members notified');
    expect(await announcementsFor(admin)).toEqual([]);
    // Told once: by room's Notify (with the title), not a second time by the message pipeline.
    await new Promise((resolve) => setTimeout(resolve, 2000));
    const told = await announcementsFor(nurse);
    expect(told.map((n) => [n.body, n.data.announcement_id])).toEqual([['Fire drill: At 3 pm, assemble in the car park.', announcement!.announcementId]]);

    // Withdrawn by its author: no longer listed (the message stays in the history).
    await room.deleteAnnouncement({ context: undefined, roomId, announcementId: announcement!.announcementId }, as(admin));
    expect((await room.listAnnouncements({ context: undefined, roomId, includeExpired: true, page: page() }, as(nurse))).announcements).toEqual([]);
  });
});
