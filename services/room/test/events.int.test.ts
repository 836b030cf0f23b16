// Room's events are durable: every committed membership or room change is
// written to room's outbox in the change's transaction and relayed to NATS
// (the member's user subject and the room's conversation subject) and to
// Kafka `sb.events` keyed by room id, numbered per room so a replica applies
// them once and in order, even when the relay leader dies with events pending.
import { eventually, infraEnv, type ServiceProcess, natsSeedFile } from '@switchboard/devenv';
import { newId } from '@switchboard/ids';
import { connectNats, decodeEnvelope, subjects, type NatsConnection } from '@switchboard/nats';
import { eventsV1, roomV1 } from '@switchboard/proto';
import { Kafka, logLevel, type Consumer } from 'kafkajs';
import { addWithRole, contexts, createRequest, startRoom, type RoomClient } from './support/rooms';

const { RoomRole: R, MembershipChange: C } = eventsV1;
const { RoomVisibility } = roomV1;

type RoomEvent = { subject: string; envelope: eventsV1.Envelope };

describe('room events (outbox → NATS and Kafka)', () => {
  const tenantId = newId();
  const { as, internal } = contexts(tenantId);
  let service: ServiceProcess;
  let client: RoomClient;
  let nats: NatsConnection;
  let consumer: Consumer;
  /** Every room event of this tenant seen on NATS, and on Kafka (by room key). */
  const onNats: RoomEvent[] = [];
  const onKafka: { key: string; envelope: eventsV1.Envelope }[] = [];

  // At info level the replica says when it leads the relay (the failover test waits for that).
  const startLeader = () => startRoom({ LOG_LEVEL: 'info' });

  beforeAll(async () => {
    ({ service, client } = await startLeader());
    nats = await connectNats({ servers: infraEnv().NATS_URL!, nkeySeedFile: natsSeedFile(), name: 'room-events-test' });
    nats.subscribe(`sb.${tenantId}.>`, {
      callback: (err, msg) => {
        if (!err) onNats.push({ subject: msg.subject, envelope: decodeEnvelope(msg).envelope });
      },
    });
    await nats.flush();
    const kafka = new Kafka({ clientId: 'room-test', brokers: infraEnv().KAFKA_BROKERS!.split(','), logLevel: logLevel.NOTHING });
    consumer = kafka.consumer({ groupId: `room-test-${newId()}` });
    await consumer.connect();
    await consumer.subscribe({ topic: 'sb.events', fromBeginning: false });
    const joined = new Promise<void>((resolve) => consumer.on(consumer.events.GROUP_JOIN, () => resolve()));
    void consumer.run({
      eachMessage: async ({ message }) => {
        const envelope = eventsV1.Envelope.decode(message.value!);
        if (envelope.tenantId === tenantId) onKafka.push({ key: message.key!.toString(), envelope });
      },
    });
    await joined;
  });

  afterAll(async () => {
    client?.close();
    await consumer?.disconnect();
    await nats?.close();
    expect(await service?.stop()).toBe(0);
  });

  const membership = (events: { envelope: eventsV1.Envelope }[], roomId: string) =>
    events.flatMap(({ envelope }) => (envelope.event?.$case === 'roomMembershipChanged' && envelope.event.value.roomId === roomId ? [envelope.event.value] : []));
  const updates = (events: { envelope: eventsV1.Envelope }[], roomId: string) =>
    events.flatMap(({ envelope }) => (envelope.event?.$case === 'roomUpdated' && envelope.event.value.roomId === roomId ? [envelope.event.value] : []));

  it('publishes every membership change in commit order, numbered per room, on NATS and Kafka', async () => {
    const [owner, nurse, visitor, doctor] = [newId(), newId(), newId(), newId()];
    const { room } = await client.createRoom(createRequest({ name: 'Events', visibility: RoomVisibility.ROOM_VISIBILITY_PUBLIC, memberIds: [nurse] }), as(owner));
    const roomId = room!.roomId;
    await client.joinRoom({ context: undefined, roomId }, as(visitor));
    await addWithRole(client, tenantId, roomId, R.ROOM_ROLE_MODERATOR, doctor);
    await client.updateMemberRole({ context: undefined, roomId, userId: nurse, role: R.ROOM_ROLE_ADMIN }, as(owner));
    await client.removeMember({ context: undefined, roomId, userId: visitor, reason: '' }, as(owner));
    await client.banMember({ context: undefined, roomId, userId: doctor, reason: 'test', expiresAt: undefined }, as(nurse));
    await client.leaveRoom({ context: undefined, roomId }, as(nurse));

    const expected = [
      [owner, C.MEMBERSHIP_CHANGE_JOINED, R.ROOM_ROLE_OWNER, 1],
      [nurse, C.MEMBERSHIP_CHANGE_JOINED, R.ROOM_ROLE_MEMBER, 2],
      [visitor, C.MEMBERSHIP_CHANGE_JOINED, R.ROOM_ROLE_MEMBER, 3],
      [doctor, C.MEMBERSHIP_CHANGE_JOINED, R.ROOM_ROLE_MODERATOR, 4],
      [nurse, C.MEMBERSHIP_CHANGE_ROLE_CHANGED, R.ROOM_ROLE_ADMIN, 5],
      [visitor, C.MEMBERSHIP_CHANGE_REMOVED, R.ROOM_ROLE_MEMBER, 6],
      [doctor, C.MEMBERSHIP_CHANGE_BANNED, R.ROOM_ROLE_MODERATOR, 7],
      [nurse, C.MEMBERSHIP_CHANGE_LEFT, R.ROOM_ROLE_ADMIN, 8],
    ];
    const shape = (events: eventsV1.RoomMembershipChanged[]) => events.map((e) => [e.userId, e.change, e.role, e.membershipVersion]);
    const conversationSubject = subjects.conversation(tenantId, roomId);
    await eventually(() => membership(onNats.filter((e) => e.subject === conversationSubject), roomId).length >= 8, 10_000, 'events on the room subject');
    await eventually(() => membership(onKafka.filter((e) => e.key === roomId), roomId).length >= 8, 20_000, 'events on Kafka');
    expect(shape(membership(onNats.filter((e) => e.subject === conversationSubject), roomId))).toEqual(expected);
    expect(shape(membership(onKafka.filter((e) => e.key === roomId), roomId))).toEqual(expected);
    // Each member's own subject carries that member's changes (gateways add or drop the room there).
    const forUser = (userId: string) => shape(membership(onNats.filter((e) => e.subject === subjects.user(tenantId, userId)), roomId));
    expect(forUser(visitor)).toEqual(expected.filter(([userId]) => userId === visitor));
    expect(forUser(doctor)).toEqual(expected.filter(([userId]) => userId === doctor));
    // The actor and who joined by themselves.
    const events = membership(onKafka, roomId);
    expect(events[2]!.actorId).toBe(visitor);
    expect(events[6]!.actorId).toBe(nurse);
    // Nobody joined with history hidden from before: the room hides history by default.
    expect(events[2]!.historyVisibleFrom).toBeInstanceOf(Date);
  });

  it('publishes room changes with the settings messaging applies, versioned', async () => {
    const owner = newId();
    const { room } = await client.createRoom(createRequest({ name: 'Settings', settings: { announcementOnly: false, historyVisibleToNewMembers: true, memberLimit: 0 } }), as(owner));
    const roomId = room!.roomId;
    await client.updateRoom({ context: undefined, room: { ...room!, settings: { announcementOnly: true, historyVisibleToNewMembers: false, memberLimit: 0 } }, updateMask: ['settings.announcement_only', 'settings.history_visible_to_new_members'], expectedVersion: 1 }, as(owner));
    await client.archiveRoom({ context: undefined, roomId, reason: '' }, as(owner));
    await client.unarchiveRoom({ context: undefined, roomId }, as(owner));
    await client.deleteRoom({ context: undefined, roomId, expectedVersion: 0 }, as(owner));
    await eventually(() => updates(onKafka, roomId).length >= 5, 20_000, 'room updates on Kafka');
    await eventually(() => updates(onNats, roomId).length >= 5, 10_000, 'room updates on NATS');
    const shape = (list: eventsV1.RoomUpdated[]) => list.map((u) => [u.version, u.announcementOnly, u.historyVisibleToNewMembers, u.archived, u.deleted, u.membershipVersion]);
    const expected = [
      [1, false, true, false, false, 1],
      [2, true, false, false, false, 1],
      [3, true, false, true, false, 1],
      [4, true, false, false, false, 1],
      [5, true, false, false, true, 1],
    ];
    expect(shape(updates(onKafka, roomId))).toEqual(expected);
    expect(shape(updates(onNats, roomId))).toEqual(expected);
    expect(updates(onKafka, roomId)[0]!.name).toBe('Settings');
  });

  it('delivers events committed while the relay leader is frozen, once another replica takes over after it dies', async () => {
    // This suite's service is the leader (once the previous file's replicas let go of the lock); a second replica serves the calls.
    await eventually(() => service.output.some((line) => line.includes('outbox relay is the leader')), 15_000, 'the suite\'s replica leads the relay');
    const second = await startRoom();
    try {
      const owner = newId();
      const { room } = await second.client.createRoom(createRequest({ name: 'Failover' }), as(owner));
      const roomId = room!.roomId;
      await eventually(() => membership(onNats, roomId).length >= 1, 10_000, 'the leader relays');
      // Frozen, the leader still holds the lock: nothing is published while changes commit.
      service.child.kill('SIGSTOP');
      const members = [newId(), newId(), newId()];
      for (const userId of members) await addWithRole(second.client, tenantId, roomId, R.ROOM_ROLE_MEMBER, userId);
      await new Promise((r) => setTimeout(r, 300));
      expect(membership(onNats, roomId).filter((e) => e.change === C.MEMBERSHIP_CHANGE_JOINED && members.includes(e.userId))).toEqual([]);
      // It dies: its database session ends, the lock passes to the other replica, which publishes what was committed.
      service.child.kill('SIGKILL');
      await service.exited;
      await eventually(() => membership(onNats.filter((e) => e.subject === subjects.conversation(tenantId, roomId)), roomId).length >= 4, 20_000, 'the new leader relays');
      // At least once: the dead leader may have sent some to Kafka before it could mark them; consumers drop repeats by version.
      const distinct = () => [...new Map(membership(onKafka, roomId).map((e) => [e.membershipVersion, e] as const)).values()];
      await eventually(() => distinct().length >= 4, 30_000, 'Kafka gets them too');
      expect(distinct().map((e) => [e.userId, e.membershipVersion])).toEqual([
        [owner, 1],
        ...members.map((userId, i) => [userId, i + 2]),
      ]);
    } finally {
      // Frozen still if an assertion ended the test early: a stopped process never acts on SIGTERM.
      if (service.child.exitCode === null && service.child.signalCode === null) await service.kill();
      second.client.close();
      await second.service.stop();
      // The suite's afterAll stops `service`; give it a live one again.
      client.close();
      ({ service, client } = await startLeader());
    }
  });
});
