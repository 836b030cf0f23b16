// Group conversations: a room is a conversation. Real room and messaging
// processes, real PostgreSQL and Kafka (the membership replica is fed from sb.events).
import { errorOf, eventually, infraEnv, launchWithClient, type ServiceProcess } from '@switchboard/devenv';
import { ErrorCode } from '@switchboard/errors';
import type { PromiseClient } from '@switchboard/grpc';
import { newId } from '@switchboard/ids';
import { createPool, withTenantTransaction } from '@switchboard/postgres';
import { messagingV1, roomV1 } from '@switchboard/proto';

type Messaging = PromiseClient<messagingV1.MessagingServiceClient>;
type Rooms = PromiseClient<roomV1.RoomServiceClient>;

const env = infraEnv();
const tenant = `t${newId().slice(0, 12)}`;
const as = (userId: string, tenantId = tenant) => ({ context: { tenantId, userId, deviceId: '', internal: false } });
const internal = (userId = '') => ({ context: { tenantId: tenant, userId, deviceId: '', internal: true } });

function post(messaging: Messaging, from: string, roomId: string, text: string, kind = messagingV1.MessageKind.MESSAGE_KIND_TEXT, tenantId = tenant) {
  return messaging.sendMessage(
    { context: undefined, target: { $case: 'conversationId', value: roomId }, clientMessageId: newId(), kind, text, attachments: [], mentions: [], metadata: {} },
    as(from, tenantId),
  );
}

function history(messaging: Messaging, reader: string, roomId: string) {
  return messaging.getHistory({ context: undefined, conversationId: roomId, fromSeq: 0, direction: messagingV1.Direction.DIRECTION_FORWARD, limit: 100 }, as(reader));
}

async function createRoom(
  rooms: Rooms,
  owner: string,
  memberIds: string[],
  settings?: Partial<roomV1.RoomSettings>,
  visibility = roomV1.RoomVisibility.ROOM_VISIBILITY_PRIVATE,
) {
  const { room } = await rooms.createRoom(
    {
      context: undefined,
      name: `Care team ${newId().slice(0, 6)}`,
      topic: '',
      description: '',
      avatarRef: '',
      metadata: {},
      visibility,
      settings: settings ? { announcementOnly: false, historyVisibleToNewMembers: true, memberLimit: 0, ...settings } : undefined,
      memberIds,
      ownerId: owner,
      requestId: '',
    },
    internal(),
  );
  return room!.roomId;
}

describe('group conversations: a room is a conversation (real room service, messaging, Kafka replica)', () => {
  let room: ServiceProcess;
  let rooms: Rooms;
  let service: ServiceProcess;
  let messaging: Messaging;

  beforeAll(async () => {
    let roomAddress: string;
    ({ service: room, client: rooms, address: roomAddress } = await launchWithClient('room', roomV1.RoomServiceClient, { OUTBOX_POLL_MS: '200' }));
    ({ service, client: messaging } = await launchWithClient('messaging', messagingV1.MessagingServiceClient, {
      OUTBOX_POLL_MS: '200',
      ROOM_ADDR: roomAddress,
      DELETED_ROOM_RETENTION_MS: '1',
      ROOM_PURGE_INTERVAL_MS: '300',
    }));
  });

  afterAll(async () => {
    messaging?.close();
    rooms?.close();
    expect(await service?.stop()).toBe(0);
    expect(await room?.stop()).toBe(0);
  });

  it('lets members post with one gap-free sequence, refuses outsiders, and lists the room from the replica', async () => {
    const roomId = await createRoom(rooms, 'owner-a', ['member-b', 'member-c']);
    const first = await post(messaging, 'owner-a', roomId, 'Rounds at 9');
    const second = await post(messaging, 'member-b', roomId, 'On my way');
    expect([first.ack!.conversationId, first.ack!.seq, second.ack!.seq]).toEqual([roomId, 1, 2]);
    // A private room is hidden from outsiders: the same answer as for a room that does not exist.
    const outsider = await errorOf(post(messaging, 'stranger', roomId, 'let me in'));
    const missingId = newId();
    const missing = await errorOf(post(messaging, 'stranger', missingId, 'anyone?'));
    expect([outsider.code, outsider.field, outsider.message]).toEqual([missing.code, missing.field, missing.message.replace(missingId, roomId)]);
    expect([outsider.code, outsider.field]).toEqual([ErrorCode.ERROR_CODE_NOT_FOUND, 'conversation_id']);
    expect((await errorOf(history(messaging, 'stranger', roomId))).code).toBe(ErrorCode.ERROR_CODE_NOT_FOUND);
    const otherTenant = await errorOf(post(messaging, 'owner-a', roomId, 'hi', messagingV1.MessageKind.MESSAGE_KIND_TEXT, `t${newId().slice(0, 12)}`));
    expect(otherTenant.code).toBe(ErrorCode.ERROR_CODE_NOT_FOUND);
    // The replica (from sb.events) puts the room in every member's list, so gateways subscribe them at connect.
    const found = await eventually(
      async () => {
        const list = await messaging.listConversations({ context: undefined, page: { pageSize: 50, pageToken: '' } }, as('member-c'));
        return list.conversations.find((c) => c.conversationId === roomId);
      },
      30_000,
      'the room in the member list',
    );
    expect([found.kind, found.lastSeq, found.unreadCount]).toEqual([messagingV1.ConversationKind.CONVERSATION_KIND_ROOM, 2, 2]);
    expect((await history(messaging, 'member-c', roomId)).messages.map((m) => m.text)).toEqual(['Rounds at 9', 'On my way']);
  });

  it('refuses a removed member at once, before the replica has heard of it', async () => {
    const roomId = await createRoom(rooms, 'owner-d', ['member-e']);
    await post(messaging, 'member-e', roomId, 'still here');
    await rooms.removeMember({ context: undefined, roomId, userId: 'member-e', reason: 'moved ward' }, as('owner-d'));
    // Removed from a private room, it is hidden from them like from any outsider.
    expect((await errorOf(post(messaging, 'member-e', roomId, 'am I?'))).code).toBe(ErrorCode.ERROR_CODE_NOT_FOUND);
    expect((await errorOf(history(messaging, 'member-e', roomId))).code).toBe(ErrorCode.ERROR_CODE_NOT_FOUND);
    // And the replica drops the room from their list and their sync.
    await eventually(
      async () => {
        const list = await messaging.listConversations({ context: undefined, page: { pageSize: 50, pageToken: '' } }, as('member-e'));
        return !list.conversations.some((c) => c.conversationId === roomId);
      },
      30_000,
      'the room gone from the removed member list',
    );
    const synced = await messaging.sync({ context: undefined, positions: [], resumeToken: '', limit: 100 }, as('member-e'));
    expect(synced.messages.filter((m) => m.conversationId === roomId)).toHaveLength(0);
  });

  it('tells an outsider of a public room why, and hides a private room from a banned user', async () => {
    const publicRoom = await createRoom(rooms, 'owner-p', ['member-q'], undefined, roomV1.RoomVisibility.ROOM_VISIBILITY_PUBLIC);
    // A public room can be found and joined, so saying "not a member" reveals nothing.
    const outsider = await errorOf(post(messaging, 'passer-by', publicRoom, 'hello?'));
    expect([outsider.code, outsider.field, outsider.message]).toEqual([ErrorCode.ERROR_CODE_PERMISSION_DENIED, 'conversation_id', expect.stringContaining('not a member')]);

    const privateRoom = await createRoom(rooms, 'owner-p', ['member-q']);
    await rooms.banMember({ context: undefined, roomId: privateRoom, userId: 'member-q', reason: 'left the practice', expiresAt: undefined }, as('owner-p'));
    expect((await errorOf(post(messaging, 'member-q', privateRoom, 'still here?'))).code).toBe(ErrorCode.ERROR_CODE_NOT_FOUND);
    // Its members are unaffected.
    await post(messaging, 'owner-p', privateRoom, 'Ward closes at 8');
    expect((await history(messaging, 'owner-p', privateRoom)).messages.map((m) => m.text)).toEqual(['Ward closes at 8']);
  });

  it('applies the room settings: announcement-only, no history before joining, announcements by those who may', async () => {
    const roomId = await createRoom(rooms, 'owner-f', ['member-g'], { announcementOnly: true, historyVisibleToNewMembers: false });
    const refused = await errorOf(post(messaging, 'member-g', roomId, 'question'));
    expect([refused.code, refused.message]).toEqual([ErrorCode.ERROR_CODE_PERMISSION_DENIED, expect.stringContaining('announcement-only')]);
    await post(messaging, 'owner-f', roomId, 'before the new member');
    await new Promise((r) => setTimeout(r, 50));
    await rooms.addMembers({ context: undefined, roomId, userIds: ['member-h'], role: 0 }, internal());
    await post(messaging, 'owner-f', roomId, 'after the new member');
    expect((await history(messaging, 'member-h', roomId)).messages.map((m) => m.text)).toEqual(['after the new member']);
    const synced = await eventually(
      async () => {
        const page = await messaging.sync({ context: undefined, positions: [], resumeToken: '', limit: 100 }, as('member-h'));
        const texts = page.messages.filter((m) => m.conversationId === roomId).map((m) => m.text);
        return texts.length > 0 && texts;
      },
      30_000,
      'the room in the new member sync',
    );
    expect(synced).toEqual(['after the new member']);
    // What the new member may not read does not count as unread either.
    const listed = await eventually(
      async () => {
        const list = await messaging.listConversations({ context: undefined, page: { pageSize: 50, pageToken: '' } }, as('member-h'));
        return list.conversations.find((c) => c.conversationId === roomId);
      },
      30_000,
      'the room in the new member list',
    );
    expect([listed.lastSeq, listed.unreadCount, listed.lastMessage?.text]).toEqual([2, 1, 'after the new member']);
    // Broadcasting to a room's members needs the announce permission.
    const broadcast = (from: string) =>
      messaging.sendBroadcast({ context: undefined, audience: { $case: 'roomId', value: roomId }, clientMessageId: newId(), text: 'Fire drill', kind: 0, metadata: {} }, as(from));
    const { ack } = await broadcast('owner-f');
    const stored = (await history(messaging, 'member-g', roomId)).messages.find((m) => m.messageId === ack!.messageId);
    expect(stored?.kind).toBe(messagingV1.MessageKind.MESSAGE_KIND_ANNOUNCEMENT);
    expect((await errorOf(broadcast('member-g'))).code).toBe(ErrorCode.ERROR_CODE_PERMISSION_DENIED);
    expect((await errorOf(post(messaging, 'member-g', roomId, 'x', messagingV1.MessageKind.MESSAGE_KIND_SYSTEM))).field).toBe('kind');
  });

  it('keeps archived rooms readable and closed to posts, and removes deleted rooms and then their history', async () => {
    const roomId = await createRoom(rooms, 'owner-i', ['member-j']);
    await post(messaging, 'member-j', roomId, 'last words');
    await rooms.archiveRoom({ context: undefined, roomId, reason: 'discharged' }, as('owner-i'));
    expect((await errorOf(post(messaging, 'owner-i', roomId, 'more'))).code).toBe(ErrorCode.ERROR_CODE_FAILED_PRECONDITION);
    expect((await history(messaging, 'member-j', roomId)).messages.map((m) => m.text)).toEqual(['last words']);
    await rooms.unarchiveRoom({ context: undefined, roomId }, as('owner-i'));
    await rooms.deleteRoom({ context: undefined, roomId, expectedVersion: 0 }, as('owner-i'));
    expect((await errorOf(history(messaging, 'member-j', roomId))).code).toBe(ErrorCode.ERROR_CODE_NOT_FOUND);
    const pool = createPool({ connectionString: env.DATABASE_URL!, applicationName: 'rooms-test', schema: 'messaging' });
    try {
      await eventually(
        async () => {
          const left = await withTenantTransaction(pool, tenant, (db) => db.query(`SELECT count(*)::int AS n FROM messages WHERE conversation_id = $1`, [roomId]));
          return left.rows[0].n === 0;
        },
        30_000,
        'the deleted room history purged',
      );
    } finally {
      await pool.end();
    }
  });
});
