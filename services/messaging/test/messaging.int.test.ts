import { createServer, Socket, type Server } from 'node:net';
import { Kafka, logLevel } from 'kafkajs';
import { errorOf, eventually, freePort, infraEnv, launchService, launchWithClient, type ServiceProcess, natsSeedFile } from '@switchboard/devenv';
import { ErrorCode } from '@switchboard/errors';
import type { PromiseClient } from '@switchboard/grpc';
import { newId } from '@switchboard/ids';
import { connectNats, decodeEnvelope, subjects, type NatsConnection } from '@switchboard/nats';
import { createPool, withTenantTransaction } from '@switchboard/postgres';
import { eventsV1, messagingV1, roomV1 } from '@switchboard/proto';

type Messaging = PromiseClient<messagingV1.MessagingServiceClient>;

const env = infraEnv();
const tenant = `t${newId().slice(0, 12)}`;
const otherTenant = `t${newId().slice(0, 12)}`;
const as = (userId: string, tenantId = tenant) => ({ context: { tenantId, userId, deviceId: '', internal: false } });

type Target = { conversationId: string } | { recipientUserId: string };

/** A plain text send to a conversation or a user. */
function sendRequest(target: Target, text: string, clientMessageId: string): messagingV1.SendMessageRequest {
  return {
    context: undefined,
    target: 'conversationId' in target ? { $case: 'conversationId', value: target.conversationId } : { $case: 'recipientUserId', value: target.recipientUserId },
    clientMessageId,
    kind: messagingV1.MessageKind.MESSAGE_KIND_TEXT,
    text,
    attachments: [],
    mentions: [],
    metadata: {},
  };
}

function send(client: Messaging, from: string, target: Target, text: string, clientMessageId = newId(), tenantId = tenant) {
  return client.sendMessage(sendRequest(target, text, clientMessageId), as(from, tenantId));
}


const internal = (tenantId = tenant) => ({ context: { tenantId, userId: '', deviceId: '', internal: true } });

/** One user's send as an item of SendMessages (what a gateway batches). */
function item(from: string, target: Target, text: string, clientMessageId = newId(), extra: Partial<messagingV1.SendMessagesItem> = {}): messagingV1.SendMessagesItem {
  return { userId: from, deviceId: '', roles: [], deadlineMs: 5000, traceContext: {}, request: sendRequest(target, text, clientMessageId), ...extra };
}

/** Each item's outcome: the ack, or the error's code (and field). */
function outcomes(response: messagingV1.SendMessagesResponse) {
  return response.results.map((r) => (r.outcome?.$case === 'ack' ? { ack: r.outcome.value } : { code: r.outcome!.value.code, field: r.outcome!.value.field, retryAfterMs: r.outcome!.value.retryAfterMs }));
}


describe('messaging service (real PostgreSQL, NATS, Kafka, room service)', () => {
  let room: ServiceProcess;
  let roomAddress: string;
  let service: ServiceProcess;
  let client: Messaging;
  let nats: NatsConnection;

  beforeAll(async () => {
    // Messaging asks the room service about any conversation id it does not know.
    const rooms = await launchWithClient('room', roomV1.RoomServiceClient);
    rooms.client.close();
    ({ service: room, address: roomAddress } = rooms);
    ({ service, client } = await launchWithClient('messaging', messagingV1.MessagingServiceClient, { OUTBOX_POLL_MS: '200', ROOM_ADDR: roomAddress }));
    nats = await connectNats({ servers: env.NATS_URL!, nkeySeedFile: natsSeedFile(), name: 'messaging-test' });
  });

  afterAll(async () => {
    client?.close();
    await nats?.close();
    expect(await service?.stop()).toBe(0);
    expect(await room?.stop()).toBe(0);
  });

  it('commits a direct message with the conversation sequence and acknowledges it', async () => {
    const { ack } = await send(client, 'alice', { recipientUserId: 'bob' }, 'hello bob');
    expect(ack).toMatchObject({ seq: 1, duplicate: false });
    expect(ack!.messageId).toMatch(/^[a-f0-9]{32}$/);
    const second = await send(client, 'bob', { recipientUserId: 'alice' }, 'hi alice');
    // One conversation per pair, whoever starts it.
    expect(second.ack).toMatchObject({ conversationId: ack!.conversationId, seq: 2 });
    const history = await client.getHistory(
      { context: undefined, conversationId: ack!.conversationId, fromSeq: 0, direction: messagingV1.Direction.DIRECTION_FORWARD, limit: 10 },
      as('bob'),
    );
    expect(history.messages.map((m) => [m.seq, m.senderId, m.text])).toEqual([
      [1, 'alice', 'hello bob'],
      [2, 'bob', 'hi alice'],
    ]);
  });

  it('returns the original acknowledgement for a retried send and stores one copy', async () => {
    const clientMessageId = newId();
    const first = await send(client, 'carol', { recipientUserId: 'dave' }, 'once', clientMessageId);
    const retries = await Promise.all([1, 2, 3].map(() => send(client, 'carol', { recipientUserId: 'dave' }, 'once', clientMessageId)));
    for (const retry of retries) expect(retry.ack).toMatchObject({ messageId: first.ack!.messageId, seq: first.ack!.seq, duplicate: true });
    const history = await client.getHistory(
      { context: undefined, conversationId: first.ack!.conversationId, fromSeq: 0, direction: messagingV1.Direction.DIRECTION_FORWARD, limit: 10 },
      as('dave'),
    );
    expect(history.messages).toHaveLength(1);
  });

  it('keeps the sequence gap-free under concurrent senders, and publishes every message on NATS in order', async () => {
    const { ack } = await send(client, 'erin', { recipientUserId: 'frank' }, 'start');
    const conversationId = ack!.conversationId;
    const seen: number[] = [];
    const subscription = nats.subscribe(subjects.conversation(tenant, conversationId), {
      callback: (_err, msg) => {
        const event = decodeEnvelope(msg).envelope.event;
        // The first message may still be in flight from before the subscription.
        if (event?.$case === 'messageCreated' && event.value.message!.seq > 1) seen.push(event.value.message!.seq);
      },
    });
    await nats.flush();
    const acks = await Promise.all(Array.from({ length: 40 }, (_, i) => send(client, i % 2 ? 'erin' : 'frank', { conversationId }, `m${i}`)));
    const seqs = acks.map((a) => a.ack!.seq).sort((a, b) => a - b);
    expect(seqs).toEqual(Array.from({ length: 40 }, (_, i) => i + 2));
    const deadline = Date.now() + 10_000;
    while (seen.length < 40 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    subscription.unsubscribe();
    expect(seen).toEqual(seqs);
  });

  it('commits sends together under load (group commit), each conversation still gap-free', async () => {
    const conversations = await Promise.all(
      Array.from({ length: 10 }, async (_, i) => (await send(client, `load-a${i}`, { recipientUserId: `load-b${i}` }, 'start')).ack!.conversationId),
    );
    const acks = await Promise.all(
      Array.from({ length: 300 }, (_, i) => send(client, `load-a${i % 10}`, { conversationId: conversations[i % 10]! }, `m${i}`)),
    );
    for (const conversationId of conversations) {
      const seqs = acks.filter((a) => a.ack!.conversationId === conversationId).map((a) => a.ack!.seq).sort((a, b) => a - b);
      expect(seqs).toEqual(Array.from({ length: 30 }, (_, i) => i + 2));
    }
    const metrics = await (await fetch(`http://127.0.0.1:${service.opsPort}/metrics`)).text();
    const count = Number(/^messaging_send_batch_size_count(?:\{[^}]*\})? (\d+)/m.exec(metrics)?.[1]);
    const sum = Number(/^messaging_send_batch_size_sum(?:\{[^}]*\})? (\d+)/m.exec(metrics)?.[1]);
    // Every send was committed, in fewer transactions than sends.
    expect(sum).toBeGreaterThanOrEqual(310);
    expect(count).toBeLessThan(sum);
  });

  it('refuses a bad send inside a busy batch without failing the sends committed with it', async () => {
    const { ack } = await send(client, 'batch-a', { recipientUserId: 'batch-b' }, 'start');
    const conversationId = ack!.conversationId;
    // Interleaved with the members' sends: an outsider, and a client id reused for another body.
    const reused = newId();
    await send(client, 'batch-a', { conversationId }, 'first use', reused);
    const results = await Promise.allSettled(
      Array.from({ length: 60 }, (_, i) =>
        i % 3 === 1
          ? send(client, 'batch-outsider', { conversationId }, `intrude ${i}`)
          : i % 3 === 2
            ? send(client, 'batch-a', { conversationId }, `reuse ${i}`, reused)
            : send(client, i % 2 ? 'batch-a' : 'batch-b', { conversationId }, `ok ${i}`),
      ),
    );
    const codes = await Promise.all(results.map(async (r) => (r.status === 'fulfilled' ? 'ok' : (await errorOf(Promise.reject(r.reason))).code)));
    expect(codes.filter((c) => c === ErrorCode.ERROR_CODE_PERMISSION_DENIED)).toHaveLength(20);
    expect(codes.filter((c) => c === ErrorCode.ERROR_CODE_ALREADY_EXISTS)).toHaveLength(20);
    expect(codes.filter((c) => c === 'ok')).toHaveLength(20);
    const page = await client.getHistory({ context: undefined, conversationId, fromSeq: 0, direction: messagingV1.Direction.DIRECTION_FORWARD, limit: 100 }, as('batch-a'));
    // Gap-free, and only what was acknowledged is stored.
    expect(page.messages.map((m) => m.seq)).toEqual(Array.from({ length: 22 }, (_, i) => i + 1));
    expect(page.messages.filter((m) => m.text.startsWith('intrude') || m.text.startsWith('reuse'))).toHaveLength(0);
  });

  /** A replica that commits one send at a time (one transaction, one send each), with these queue bounds. */
  const oneAtATime = (queue: Record<string, string>) =>
    launchWithClient('messaging', messagingV1.MessagingServiceClient, { OUTBOX_POLL_MS: '200', ROOM_ADDR: roomAddress, SEND_CONCURRENCY: '1', SEND_BATCH_MAX: '1', ...queue });

  /** A replica's `messaging_sends_shed_total` for one reason, from its /metrics. */
  async function shedCount(service: ServiceProcess, reason: string): Promise<number> {
    const text = await (await fetch(`http://127.0.0.1:${service.opsPort}/metrics`)).text();
    const line = text.split('\n').find((l) => l.startsWith('messaging_sends_shed_total{') && l.includes(`reason="${reason}"`));
    return line ? Number(line.split(' ').pop()) : 0;
  }

  it('sheds load past its send queue: refuses at once with OVERLOADED, stores nothing refused, and loses nothing acknowledged', async () => {
    // A replica that commits one send at a time and queues at most four.
    const small = await oneAtATime({ SEND_QUEUE_MAX: '4', SEND_RETRY_AFTER_MS: '50' });
    try {
      const conversations = await Promise.all(
        Array.from({ length: 5 }, async (_, i) => (await send(small.client, `shed-a${i}`, { recipientUserId: `shed-b${i}` }, 'start')).ack!.conversationId),
      );
      const planned = Array.from({ length: 100 }, (_, i) => ({ from: `shed-a${i % 5}`, conversationId: conversations[i % 5]!, text: `m${i}`, clientMessageId: newId() }));
      const first = await Promise.allSettled(planned.map((p) => send(small.client, p.from, { conversationId: p.conversationId }, p.text, p.clientMessageId)));
      const refusals = await Promise.all(first.flatMap((r) => (r.status === 'rejected' ? [errorOf(Promise.reject(r.reason))] : [])));
      // Some were refused, each with the specific code and a retry hint; none failed any other way.
      expect(refusals.length).toBeGreaterThan(0);
      for (const refusal of refusals) expect(refusal).toMatchObject({ code: ErrorCode.ERROR_CODE_OVERLOADED, retryAfterMs: 50 });
      const historyOf = async (k: number) =>
        (
          await small.client.getHistory(
            { context: undefined, conversationId: conversations[k]!, fromSeq: 0, direction: messagingV1.Direction.DIRECTION_FORWARD, limit: 200 },
            as(`shed-a${k}`),
          )
        ).messages;
      const acked = new Set(first.flatMap((r, i) => (r.status === 'fulfilled' ? [planned[i]!.clientMessageId] : [])));
      const storedNow = (await Promise.all(conversations.map((_, k) => historyOf(k)))).flat();
      // Only what was acknowledged is stored (a refused send changed nothing).
      expect(storedNow.filter((m) => m.text !== 'start').map((m) => m.clientMessageId).sort()).toEqual([...acked].sort());
      // The refused sends go through when retried with their client ids, as a client does after retry_after_ms.
      for (const [i, p] of planned.entries()) {
        if (first[i]!.status === 'fulfilled') continue;
        for (;;) {
          const retried = await send(small.client, p.from, { conversationId: p.conversationId }, p.text, p.clientMessageId).catch((err: unknown) => err);
          if (!(retried instanceof Error)) break;
          const refusal = await errorOf(Promise.reject(retried));
          expect(refusal.code).toBe(ErrorCode.ERROR_CODE_OVERLOADED);
          await new Promise((r) => setTimeout(r, refusal.retryAfterMs));
        }
      }
      for (const [k, conversationId] of conversations.entries()) {
        const messages = await historyOf(k);
        // All 20 of each conversation, once each, gap-free.
        expect(messages.map((m) => m.seq)).toEqual(Array.from({ length: 21 }, (_, i) => i + 1));
        expect(new Set(messages.map((m) => m.clientMessageId)).size).toBe(21);
        expect(messages.filter((m) => m.text !== 'start').map((m) => m.text).sort()).toEqual(
          planned.filter((p) => p.conversationId === conversationId).map((p) => p.text).sort(),
        );
      }
    } finally {
      small.client.close();
      expect(await small.service.stop()).toBe(0);
    }
  });

  it('SendMessages sheds per item: a batch larger than the queue gets OVERLOADED items with a hint, stores only the acked ones, and the retried ones commit once', async () => {
    const small = await oneAtATime({ SEND_QUEUE_MAX: '4', SEND_RETRY_AFTER_MS: '50' });
    try {
      const { ack } = await send(small.client, 'bs-a', { recipientUserId: 'bs-b' }, 'start');
      const conversationId = ack!.conversationId;
      const planned = Array.from({ length: 60 }, (_, i) => item(i % 2 ? 'bs-a' : 'bs-b', { conversationId }, `m${i}`));
      const first = outcomes(await small.client.sendMessages({ context: internal().context, items: planned }, internal()));
      const refused = first.filter((o) => !('ack' in o));
      expect(refused.length).toBeGreaterThan(0);
      for (const refusal of refused) expect(refusal).toMatchObject({ code: ErrorCode.ERROR_CODE_OVERLOADED, retryAfterMs: 50 });
      const history = async () =>
        (await small.client.getHistory({ context: undefined, conversationId, fromSeq: 0, direction: messagingV1.Direction.DIRECTION_FORWARD, limit: 200 }, as('bs-a'))).messages;
      const acked = planned.filter((_, i) => 'ack' in first[i]!).map((p) => p.request!.clientMessageId);
      expect((await history()).filter((m) => m.text !== 'start').map((m) => m.clientMessageId).sort()).toEqual(acked.sort());
      // The refused items again, a few at a time after the hint, as clients retry.
      let pending = planned.filter((_, i) => !('ack' in first[i]!));
      while (pending.length > 0) {
        await new Promise((r) => setTimeout(r, 50));
        const batch = pending.slice(0, 3);
        const results = outcomes(await small.client.sendMessages({ context: internal().context, items: batch }, internal()));
        pending = [...batch.filter((_, i) => !('ack' in results[i]!)), ...pending.slice(3)];
      }
      const messages = await history();
      expect(messages.map((m) => m.seq)).toEqual(Array.from({ length: 61 }, (_, i) => i + 1));
      expect(new Set(messages.map((m) => m.clientMessageId)).size).toBe(61);
    } finally {
      small.client.close();
      expect(await small.service.stop()).toBe(0);
    }
  });

  it('sheds by waiting time: refuses new sends while the queue is not draining, and drops queued sends whose caller gave up, unstored', async () => {
    // One send at a time; the queue is long enough that only time sheds.
    const slow = await oneAtATime({ SEND_QUEUE_MAX: '10000', SEND_QUEUE_MAX_WAIT_MS: '5', SEND_RETRY_AFTER_MS: '50' });
    const request = (from: string, conversationId: string, text: string) => ({
      context: undefined,
      target: { $case: 'conversationId' as const, value: conversationId },
      clientMessageId: newId(),
      kind: messagingV1.MessageKind.MESSAGE_KIND_TEXT,
      text,
      attachments: [],
      mentions: [],
      metadata: {},
    });
    try {
      const conversationId = (await send(slow.client, 'wait-a', { recipientUserId: 'wait-b' }, 'start')).ack!.conversationId;
      const stored = async () =>
        (await slow.client.getHistory({ context: undefined, conversationId, fromSeq: 0, direction: messagingV1.Direction.DIRECTION_FORWARD, limit: 200 }, as('wait-a'))).messages.filter((m) => m.text !== 'start');
      // The queue stops draining: a test transaction holds the conversation's row lock, which the one send in
      // flight needs, so the sends behind it wait. A second wave, 20 ms later, finds the oldest queued send waiting
      // longer than 5 ms: each of its sends is refused at once, with the reason and a retry hint. (Relying on the
      // commits' own slowness was flaky: a fast machine committed a whole burst within 5 ms.)
      const pool = createPool({ connectionString: infraEnv().DATABASE_URL!, applicationName: 'shed-test', schema: 'messaging' });
      let release!: () => void;
      const locked = new Promise<void>((resolveLocked) => {
        void withTenantTransaction(pool, tenant, async (db) => {
          await db.query(`SELECT 1 FROM conversations WHERE tenant_id = $1 AND conversation_id = $2 FOR UPDATE`, [tenant, conversationId]);
          resolveLocked();
          await new Promise<void>((resolveRelease) => (release = resolveRelease));
        });
      });
      await locked;
      const sendW = (i: number) => slow.client.sendMessage(request('wait-a', conversationId, `w${i}`), as('wait-a'));
      const firstWave = Array.from({ length: 20 }, (_, i) => sendW(i));
      await new Promise((resolve) => setTimeout(resolve, 20));
      const secondWave = Array.from({ length: 20 }, (_, i) => sendW(20 + i));
      await new Promise((resolve) => setTimeout(resolve, 200));
      release();
      const burst = await Promise.allSettled([...firstWave, ...secondWave]);
      await pool.end();
      const refused = await Promise.all(burst.flatMap((r) => (r.status === 'rejected' ? [errorOf(Promise.reject(r.reason))] : [])));
      expect(refused.length).toBeGreaterThan(0);
      for (const refusal of refused) expect(refusal).toMatchObject({ code: ErrorCode.ERROR_CODE_OVERLOADED, retryAfterMs: 50, message: expect.stringContaining('waiting longer than 5 ms') });
      const acked = burst.flatMap((r, i) => (r.status === 'fulfilled' ? [`w${i}`] : []));
      expect((await stored()).map((m) => m.text).sort()).toEqual(acked.sort());
      expect(await shedCount(slow.service, 'queue_wait')).toBe(refused.length);
    } finally {
      slow.client.close();
      expect(await slow.service.stop()).toBe(0);
    }
    // Callers that wait only 30 ms: what is still queued when they give up is dropped, never committed.
    const patient = await oneAtATime({ SEND_QUEUE_MAX: '10000', SEND_QUEUE_MAX_WAIT_MS: '600000' });
    const dropped = () => shedCount(patient.service, 'deadline');
    try {
      const conversationId = (await send(patient.client, 'dl-a', { recipientUserId: 'dl-b' }, 'start')).ack!.conversationId;
      const outcomes = await Promise.allSettled(Array.from({ length: 150 }, (_, i) => patient.client.sendMessage(request('dl-a', conversationId, `d${i}`), { ...as('dl-a'), deadlineMs: 30 })));
      expect(outcomes.filter((o) => o.status === 'rejected').length).toBeGreaterThan(0);
      const history = async () =>
        (await patient.client.getHistory({ context: undefined, conversationId, fromSeq: 0, direction: messagingV1.Direction.DIRECTION_FORWARD, limit: 200 }, as('dl-a'))).messages.filter((m) => m.text !== 'start');
      // Every send was either committed (perhaps after its caller gave up: a retry with its client id gets the ack) or dropped unstored.
      await eventually(async () => (await history()).length + (await dropped()) === 150, 20_000, 'every send committed or dropped');
      expect(await dropped()).toBeGreaterThan(0);
      const seqs = (await history()).map((m) => m.seq);
      expect(seqs).toEqual(Array.from({ length: seqs.length }, (_, i) => i + 2));
    } finally {
      patient.client.close();
      expect(await patient.service.stop()).toBe(0);
    }
  });

  it('stores one copy when two messaging replicas commit the same client id at once', async () => {
    const second = await launchWithClient('messaging', messagingV1.MessagingServiceClient, { OUTBOX_POLL_MS: '200', ROOM_ADDR: roomAddress });
    try {
      const { ack } = await send(client, 'race-a', { recipientUserId: 'race-b' }, 'start');
      const conversationId = ack!.conversationId;
      for (let round = 0; round < 5; round += 1) {
        const clientMessageId = newId();
        const acks = await Promise.all(
          [client, second.client, client, second.client].map((replica) => send(replica, 'race-a', { conversationId }, `race ${round}`, clientMessageId)),
        );
        expect(new Set(acks.map((a) => a.ack!.messageId)).size).toBe(1);
        expect(acks.filter((a) => !a.ack!.duplicate)).toHaveLength(1);
      }
      const page = await client.getHistory({ context: undefined, conversationId, fromSeq: 0, direction: messagingV1.Direction.DIRECTION_FORWARD, limit: 100 }, as('race-a'));
      expect(page.messages.map((m) => [m.seq, m.text])).toEqual([[1, 'start'], ...Array.from({ length: 5 }, (_, i) => [i + 2, `race ${i}`])]);
    } finally {
      second.client.close();
      expect(await second.service.stop()).toBe(0);
    }
  });

  it('broadcasts to a tenant-wide audience that the readers roles decide, never to others', async () => {
    const internal = { context: { tenantId: tenant, userId: 'scheduler', deviceId: '', internal: true } };
    const provider = (userId: string) => ({ ...as(userId), roles: ['provider'] });
    const broadcast = (options: typeof internal & { roles?: string[] }, audienceId: string, text: string, clientMessageId = newId()) =>
      client.sendBroadcast({ context: undefined, audience: { $case: 'audienceId', value: audienceId }, clientMessageId, text, kind: 0, metadata: {} }, options);

    const first = await broadcast(internal, 'role:provider', 'Ward 3 handover at 14:00');
    expect(first.ack!.conversationId).toBe('audience-role-provider');
    const retry = await broadcast(internal, 'role:provider', 'Ward 3 handover at 14:00', first.ack!.clientMessageId);
    expect([retry.ack!.messageId, retry.ack!.duplicate]).toEqual([first.ack!.messageId, true]);
    // A user whose token carries a broadcasting role may broadcast too; others may not.
    await broadcast({ ...as('chief'), roles: ['admin'] }, 'role:provider', 'Protocol update');
    const refused = await errorOf(broadcast(provider('pat-provider'), 'role:provider', 'me too'));
    expect([refused.code, refused.field]).toEqual([ErrorCode.ERROR_CODE_PERMISSION_DENIED, 'audience_id']);
    const badAudience = await errorOf(broadcast(internal, 'providers.>', 'x'));
    expect([badAudience.code, badAudience.field]).toEqual([ErrorCode.ERROR_CODE_INVALID_ARGUMENT, 'audience_id']);

    // A provider sees the audience in their list with its unread count, syncs it and reads its history.
    const list = await client.listConversations({ context: undefined, page: { pageSize: 50, pageToken: '' } }, provider('pat-provider'));
    const audience = list.conversations.find((c) => c.conversationId === 'audience-role-provider');
    expect([audience?.kind, audience?.lastSeq, audience?.unreadCount, audience?.memberIds]).toEqual([messagingV1.ConversationKind.CONVERSATION_KIND_BROADCAST, 2, 2, []]);
    const synced = await client.sync({ context: undefined, positions: [], resumeToken: '', limit: 100 }, provider('pat-provider'));
    expect(synced.messages.filter((m) => m.conversationId === 'audience-role-provider').map((m) => [m.text, m.kind])).toEqual([
      ['Ward 3 handover at 14:00', messagingV1.MessageKind.MESSAGE_KIND_ANNOUNCEMENT],
      ['Protocol update', messagingV1.MessageKind.MESSAGE_KIND_ANNOUNCEMENT],
    ]);
    await client.markRead({ context: undefined, conversationId: 'audience-role-provider', seq: 2 }, provider('pat-provider'));
    const counts = await client.getUnreadCounts({ context: undefined }, provider('pat-provider'));
    expect(counts.counts.find((c) => c.conversationId === 'audience-role-provider')).toBeUndefined();

    // A patient (no such role) sees nothing of it, even after having had it.
    const patientList = await client.listConversations({ context: undefined, page: { pageSize: 50, pageToken: '' } }, as('pat-provider'));
    expect(patientList.conversations.map((c) => c.conversationId)).not.toContain('audience-role-provider');
    const patientSync = await client.sync({ context: undefined, positions: [], resumeToken: '', limit: 100 }, as('pat-provider'));
    expect(patientSync.messages.filter((m) => m.conversationId === 'audience-role-provider')).toHaveLength(0);
    const denied = await errorOf(
      client.getHistory({ context: undefined, conversationId: 'audience-role-provider', fromSeq: 0, direction: messagingV1.Direction.DIRECTION_FORWARD, limit: 10 }, as('patient')),
    );
    expect(denied.code).toBe(ErrorCode.ERROR_CODE_PERMISSION_DENIED);
    // Another tenant's provider does not even see that it exists.
    const elsewhere = await errorOf(
      client.getHistory(
        { context: undefined, conversationId: 'audience-role-provider', fromSeq: 0, direction: messagingV1.Direction.DIRECTION_FORWARD, limit: 10 },
        { ...as('doc', otherTenant), roles: ['provider'] },
      ),
    );
    expect(elsewhere.code).toBe(ErrorCode.ERROR_CODE_NOT_FOUND);
  });

  it('writes committed messages to Kafka sb.messages keyed by conversation', async () => {
    const { ack } = await send(client, 'gina', { recipientUserId: 'hank' }, 'durable');
    const kafka = new Kafka({ clientId: 'messaging-test', brokers: env.KAFKA_BROKERS!.split(','), logLevel: logLevel.NOTHING });
    const consumer = kafka.consumer({ groupId: `test-${newId()}` });
    await consumer.connect();
    await consumer.subscribe({ topic: 'sb.messages', fromBeginning: true });
    const found = await new Promise<eventsV1.Envelope | undefined>((resolve) => {
      const timer = setTimeout(() => resolve(undefined), 30_000);
      void consumer.run({
        eachMessage: async ({ message }) => {
          if (message.key?.toString() !== ack!.conversationId) return;
          const envelope = eventsV1.Envelope.decode(message.value!);
          if (envelope.event?.$case === 'messageCreated' && envelope.event.value.message?.messageId === ack!.messageId) {
            clearTimeout(timer);
            resolve(envelope);
          }
        },
      });
    });
    await consumer.disconnect();
    expect(found?.tenantId).toBe(tenant);
    expect(found?.event?.$case === 'messageCreated' && found.event.value.memberIds).toEqual(['gina', 'hank']);
  });

  it('syncs what a device missed across conversations, page by page with a resume token', async () => {
    const [me, p1, p2] = ['sync-me', 'sync-p1', 'sync-p2'];
    const first = await send(client, p1, { recipientUserId: me }, 'a1');
    await send(client, me, { recipientUserId: p1 }, 'a2');
    await send(client, p1, { recipientUserId: me }, 'a3');
    const other = await send(client, p2, { recipientUserId: me }, 'b1');
    await send(client, p2, { recipientUserId: me }, 'b2');
    // The device already has a1 of the first conversation.
    let page = await client.sync(
      { context: undefined, positions: [{ conversationId: first.ack!.conversationId, lastSeq: 1 }], resumeToken: '', limit: 2 },
      as(me),
    );
    const seen = [...page.messages];
    while (page.hasMore) {
      expect(page.messages).toHaveLength(2);
      page = await client.sync({ context: undefined, positions: [], resumeToken: page.resumeToken, limit: 2 }, as(me));
      seen.push(...page.messages);
    }
    const byConversation = (id: string) => seen.filter((m) => m.conversationId === id).map((m) => m.text);
    expect(byConversation(first.ack!.conversationId)).toEqual(['a2', 'a3']);
    expect(byConversation(other.ack!.conversationId)).toEqual(['b1', 'b2']);
    expect(seen).toHaveLength(4);
    expect(page.positions).toEqual(
      expect.arrayContaining([
        { conversationId: first.ack!.conversationId, lastSeq: 3 },
        { conversationId: other.ack!.conversationId, lastSeq: 2 },
      ]),
    );
    const bad = await errorOf(client.sync({ context: undefined, positions: [], resumeToken: 'bm90IGpzb24', limit: 2 }, as(me)));
    expect([bad.code, bad.field]).toEqual([ErrorCode.ERROR_CODE_INVALID_ARGUMENT, 'resume_token']);
  });

  it('keeps receipts as watermarks per user and per device, and lists conversations with unread counts', async () => {
    const [sender, reader] = ['rcpt-sender', 'rcpt-reader'];
    const first = await send(client, sender, { recipientUserId: reader }, 'one');
    const conversationId = first.ack!.conversationId;
    await send(client, sender, { conversationId }, 'two');
    await send(client, sender, { conversationId }, 'three');
    const device = (deviceId: string) => ({ context: { tenantId: tenant, userId: reader, deviceId, internal: false } });
    const events: eventsV1.ReceiptUpdated[] = [];
    const subscription = nats.subscribe(subjects.conversation(tenant, conversationId), {
      callback: (_err, msg) => {
        const event = decodeEnvelope(msg).envelope.event;
        if (event?.$case === 'receiptUpdated') events.push(event.value);
      },
    });
    await nats.flush();

    expect(await client.markDelivered({ context: undefined, conversationId, seq: 2 }, device('phone'))).toEqual({ deliveredSeq: 2, readSeq: 0 });
    // Beyond the last message is clamped; going back changes nothing.
    expect(await client.markDelivered({ context: undefined, conversationId, seq: 99 }, device('laptop'))).toEqual({ deliveredSeq: 3, readSeq: 0 });
    expect(await client.markDelivered({ context: undefined, conversationId, seq: 1 }, device('phone'))).toEqual({ deliveredSeq: 3, readSeq: 0 });
    expect(await client.markRead({ context: undefined, conversationId, seq: 2 }, device('laptop'))).toEqual({ deliveredSeq: 3, readSeq: 2 });

    const { receipts } = await client.getReceipts({ context: undefined, conversationId }, as(sender));
    expect(receipts.map(({ updatedAt: _updatedAt, ...r }) => r)).toEqual([
      { userId: reader, deliveredSeq: 3, readSeq: 2, devices: [{ deviceId: 'laptop', deliveredSeq: 3 }, { deviceId: 'phone', deliveredSeq: 2 }] },
      // What a user sent is read and delivered for them.
      { userId: sender, deliveredSeq: 3, readSeq: 3, devices: [] },
    ]);

    const list = await client.listConversations({ context: undefined, page: undefined }, as(reader));
    const listed = list.conversations.find((c) => c.conversationId === conversationId)!;
    expect(listed).toMatchObject({ lastSeq: 3, readSeq: 2, deliveredSeq: 3, unreadCount: 1 });
    expect(listed.lastMessage).toMatchObject({ seq: 3, text: 'three', senderId: sender });
    expect((await client.getUnreadCounts({ context: undefined }, as(reader))).counts).toContainEqual({ conversationId, unread: 1, lastSeq: 3, readSeq: 2 });
    expect((await client.getUnreadCounts({ context: undefined }, as(sender))).counts.map((c) => c.conversationId)).not.toContain(conversationId);

    // One event per watermark that moved, none for the mark that changed nothing.
    await eventually(() => (events.length >= 3 ? true : undefined));
    await new Promise((r) => setTimeout(r, 300));
    subscription.unsubscribe();
    expect(events.map((e) => [e.userId, e.deliveredSeq, e.readSeq, e.deviceId])).toEqual([
      [reader, 2, 0, 'phone'],
      [reader, 3, 0, 'laptop'],
      [reader, 3, 2, ''],
    ]);
  });

  it('refuses non-members, other tenants and bad input with specific errors', async () => {
    const { ack } = await send(client, 'ivan', { recipientUserId: 'judy' }, 'private');
    const conversationId = ack!.conversationId;
    expect((await errorOf(send(client, 'mallory', { conversationId }, 'let me in'))).code).toBe(ErrorCode.ERROR_CODE_PERMISSION_DENIED);
    // Another tenant cannot even see that the conversation exists.
    const crossTenant = await errorOf(send(client, 'ivan', { conversationId }, 'hi', newId(), otherTenant));
    expect(crossTenant.code).toBe(ErrorCode.ERROR_CODE_NOT_FOUND);
    expect((await errorOf(send(client, 'ivan', { recipientUserId: 'ivan' }, 'me'))).code).toBe(ErrorCode.ERROR_CODE_INVALID_ARGUMENT);
    // A client id names one message: reusing it for another body is refused, and the original stays.
    const reused = newId();
    await send(client, 'ivan', { conversationId }, 'original', reused);
    const conflict = await errorOf(send(client, 'ivan', { conversationId }, 'something else', reused));
    expect([conflict.code, conflict.field]).toEqual([ErrorCode.ERROR_CODE_ALREADY_EXISTS, 'client_message_id']);
    const latest = await client.getHistory({ context: undefined, conversationId, fromSeq: 0, direction: messagingV1.Direction.DIRECTION_BACKWARD, limit: 1 }, as('ivan'));
    expect(latest.messages.map((m) => m.text)).toEqual(['original']);
    const badId = await errorOf(send(client, 'ivan', { conversationId: 'x.>' }, 'hi'));
    expect([badId.code, badId.field]).toEqual([ErrorCode.ERROR_CODE_INVALID_ARGUMENT, 'conversation_id']);
    expect((await errorOf(send(client, 'ivan', { conversationId }, ''))).field).toBe('text');
    expect((await errorOf(send(client, 'ivan', { conversationId }, 'x'.repeat(20_000)))).field).toBe('text');
    const noTenant = await errorOf(client.getConversation({ context: undefined, conversationId }, { context: { tenantId: '', userId: 'ivan', deviceId: '', internal: false } }));
    expect(noTenant.code).toBe(ErrorCode.ERROR_CODE_UNAUTHENTICATED);
  });

  it('SendMessages: one internal call carries many users\' sends, each acked or refused on its own like SendMessage', async () => {
    const { ack } = await send(client, 'bm-a', { recipientUserId: 'bm-b' }, 'start');
    const conversationId = ack!.conversationId;
    const reused = newId();
    const response = await client.sendMessages(
      {
        context: internal().context,
        items: [
          item('bm-a', { conversationId }, 'one'),
          item('bm-outsider', { conversationId }, 'let me in'),
          item('bm-b', { conversationId }, 'two', reused),
          item('bm-b', { recipientUserId: 'bm-c' }, 'a new direct conversation'),
          item('bm-a', { conversationId: 'x.>' }, 'bad id'),
          item('bm-a', { conversationId }, ''),
        ],
      },
      internal(),
    );
    const [one, outsider, two, created, badId, empty] = outcomes(response);
    expect(one).toMatchObject({ ack: { conversationId, duplicate: false } });
    expect(two).toMatchObject({ ack: { conversationId, clientMessageId: reused, duplicate: false } });
    expect(created).toMatchObject({ ack: { seq: 1 } });
    expect(outsider).toMatchObject({ code: ErrorCode.ERROR_CODE_PERMISSION_DENIED });
    expect(badId).toMatchObject({ code: ErrorCode.ERROR_CODE_INVALID_ARGUMENT, field: 'conversation_id' });
    expect(empty).toMatchObject({ code: ErrorCode.ERROR_CODE_INVALID_ARGUMENT, field: 'text' });
    // A retry of an item (same client id) answers with the original ack and stores nothing new.
    const retried = outcomes(await client.sendMessages({ context: internal().context, items: [item('bm-b', { conversationId }, 'two', reused)] }, internal()));
    expect(retried).toEqual([{ ack: { ...(two as { ack: messagingV1.MessageAck }).ack, duplicate: true } }]);
    const history = await client.getHistory({ context: undefined, conversationId, fromSeq: 0, direction: messagingV1.Direction.DIRECTION_FORWARD, limit: 10 }, as('bm-a'));
    // Gap-free, and only the acknowledged items are stored, each once, under its own sender.
    expect(history.messages.map((m) => m.seq)).toEqual([1, 2, 3]);
    expect(history.messages.map((m) => [m.senderId, m.text]).sort()).toEqual([
      ['bm-a', 'one'],
      ['bm-a', 'start'],
      ['bm-b', 'two'],
    ]);
  });

  it('SendMessages stores a call\'s items together as they say: consecutive sequences in item order, retries inside the batch, outsiders refused, new pairs created once', async () => {
    const serial = await oneAtATime({ SEND_BATCH_MAX: '64' });
    try {
      const conversationId = (await send(serial.client, 'ord-a', { recipientUserId: 'ord-b' }, 'start')).ack!.conversationId;
      // Addressed by id once, so the replica knows the conversation's kind and the items below reach its queue in their order.
      await send(serial.client, 'ord-b', { conversationId }, 'by id');
      const reused = newId();
      // Stored exactly as sent, whatever quotes, backslashes or SQL it holds.
      const one = `it's "one" \\ E'\\x00' $$ $j$ '); DROP TABLE messages; -- ünï 🙂`;
      const response = await serial.client.sendMessages(
        {
          context: internal().context,
          items: [
            item('ord-e', { recipientUserId: 'ord-f' }, 'another new pair'),
            item('ord-a', { conversationId }, one),
            item('ord-outsider', { conversationId }, 'let me in'),
            item('ord-b', { conversationId }, 'two', reused),
            item('ord-b', { conversationId }, 'two', reused),
            item('ord-b', { conversationId }, 'not two', reused),
            item('ord-a', { conversationId }, 'three'),
            item('ord-c', { recipientUserId: 'ord-d' }, 'new pair 1'),
            item('ord-d', { recipientUserId: 'ord-c' }, 'new pair 2'),
            item('ord-c', { recipientUserId: 'ord-d' }, 'new pair 3'),
          ],
        },
        internal(),
      );
      const [otherPair, first, outsider, two, twoAgain, notTwo, three, pair1, pair2, pair3] = outcomes(response);
      expect(otherPair).toMatchObject({ ack: { seq: 1 } });
      expect([first, two, three].map((o) => (o as { ack: messagingV1.MessageAck }).ack.seq)).toEqual([3, 4, 5]);
      expect(outsider).toMatchObject({ code: ErrorCode.ERROR_CODE_PERMISSION_DENIED, field: 'conversation_id' });
      // The same send twice in one batch is stored once; the second is answered as a retry.
      expect(twoAgain).toEqual({ ack: { ...(two as { ack: messagingV1.MessageAck }).ack, duplicate: true } });
      expect(notTwo).toMatchObject({ code: ErrorCode.ERROR_CODE_ALREADY_EXISTS, field: 'client_message_id' });
      // The first messages of a new pair create one conversation and take its sequences in order.
      const pairAcks = [pair1, pair2, pair3].map((o) => (o as { ack: messagingV1.MessageAck }).ack);
      expect(pairAcks.map((a) => a.seq)).toEqual([1, 2, 3]);
      expect(new Set(pairAcks.map((a) => a.conversationId)).size).toBe(1);
      const history = async (id: string, reader: string) =>
        (await serial.client.getHistory({ context: undefined, conversationId: id, fromSeq: 0, direction: messagingV1.Direction.DIRECTION_FORWARD, limit: 20 }, as(reader))).messages.map((m) => [m.seq, m.senderId, m.text]);
      expect(await history(conversationId, 'ord-a')).toEqual([
        [1, 'ord-a', 'start'],
        [2, 'ord-b', 'by id'],
        [3, 'ord-a', one],
        [4, 'ord-b', 'two'],
        [5, 'ord-a', 'three'],
      ]);
      expect(await history(pairAcks[0]!.conversationId, 'ord-d')).toEqual([
        [1, 'ord-c', 'new pair 1'],
        [2, 'ord-d', 'new pair 2'],
        [3, 'ord-c', 'new pair 3'],
      ]);
      // The senders' own watermarks moved to their last message.
      const receipts = await serial.client.getReceipts({ context: undefined, conversationId }, as('ord-a'));
      expect(receipts.receipts.map((r) => [r.userId, r.readSeq])).toEqual([
        ['ord-a', 5],
        ['ord-b', 4],
      ]);
      // The call's ten items went into one transaction (after those of 'start' and 'by id').
      const metrics = await (await fetch(`http://127.0.0.1:${serial.service.opsPort}/metrics`)).text();
      expect(Number(/^messaging_send_batch_size_count(?:\{[^}]*\})? (\d+)/m.exec(metrics)?.[1])).toBe(3);
      expect(Number(/^messaging_send_batch_size_sum(?:\{[^}]*\})? (\d+)/m.exec(metrics)?.[1])).toBe(12);
    } finally {
      serial.client.close();
      expect(await serial.service.stop()).toBe(0);
    }
  });

  it('SendMessages: refuses callers that are not internal, items of another tenant, and sends into another tenant\'s conversation', async () => {
    const { ack } = await send(client, 'bt-a', { recipientUserId: 'bt-b' }, 'tenant A only');
    const conversationId = ack!.conversationId;
    // A user may not speak for other users, even naming only themselves.
    const asUser = await errorOf(client.sendMessages({ context: as('bt-a').context, items: [item('bt-a', { conversationId }, 'sneaky')] }, as('bt-a')));
    expect(asUser.code).toBe(ErrorCode.ERROR_CODE_PERMISSION_DENIED);
    // An internal call of the other tenant cannot reach tenant A's conversation: it does not exist there.
    const [crossTenant] = outcomes(await client.sendMessages({ context: internal(otherTenant).context, items: [item('bt-a', { conversationId }, 'cross')] }, internal(otherTenant)));
    expect(crossTenant).toMatchObject({ code: ErrorCode.ERROR_CODE_NOT_FOUND });
    // An item whose own context names another tenant than the call is refused; the others of the call still commit.
    const foreign = item('bt-a', { conversationId }, 'foreign context');
    foreign.request!.context = { tenantId: otherTenant, userId: 'bt-a', deviceId: '', internal: false };
    const [refused, fine] = outcomes(await client.sendMessages({ context: internal().context, items: [foreign, item('bt-b', { conversationId }, 'fine')] }, internal()));
    expect(refused).toMatchObject({ code: ErrorCode.ERROR_CODE_PERMISSION_DENIED, field: 'items.request.context.tenant_id' });
    expect(fine).toMatchObject({ ack: { conversationId, seq: 2 } });
    // An item's user is an id like any other.
    const [badUser] = outcomes(await client.sendMessages({ context: internal().context, items: [item('x.>', { conversationId }, 'bad user')] }, internal()));
    expect(badUser).toMatchObject({ code: ErrorCode.ERROR_CODE_INVALID_ARGUMENT, field: 'items.user_id' });
    const history = await client.getHistory({ context: undefined, conversationId, fromSeq: 0, direction: messagingV1.Direction.DIRECTION_FORWARD, limit: 10 }, as('bt-a'));
    expect(history.messages.map((m) => m.text)).toEqual(['tenant A only', 'fine']);
  });

  it('row-level security hides other tenants rows even from a query that forgets the tenant', async () => {
    await send(client, 'kim', { recipientUserId: 'lee' }, 'tenant A secret');
    const pool = createPool({ connectionString: env.DATABASE_URL!, applicationName: 'rls-test', schema: 'messaging' });
    try {
      const leaked = await withTenantTransaction(pool, otherTenant, (db) => db.query(`SELECT * FROM messages WHERE body = 'tenant A secret'`));
      expect(leaked.rows).toHaveLength(0);
      const own = await withTenantTransaction(pool, tenant, (db) => db.query(`SELECT * FROM messages WHERE body = 'tenant A secret'`));
      expect(own.rows).toHaveLength(1);
      const noTenantSet = await pool.query(`SELECT count(*)::int AS n FROM messages`);
      expect(noTenantSet.rows[0].n).toBe(0);
    } finally {
      await pool.end();
    }
  });
});

describe('messaging and its database', () => {
  it('says it cannot reach PostgreSQL and exits non-zero when the database is down at start', async () => {
    const closedPort = await freePort();
    await expect(
      launchService({
        service: 'messaging',
        env: { ...env, DATABASE_URL: `postgres://switchboard:switchboard@127.0.0.1:${closedPort}/switchboard`, GRPC_PORT: String(await freePort()) },
        opsPort: await freePort(),
      }),
    ).rejects.toThrow(/exited with 1 before it was ready[\s\S]*cannot reach PostgreSQL/);
  });

  it('reports not-ready while the database is unreachable and recovers when it returns', async () => {
    // A TCP proxy in front of PostgreSQL lets the test cut the database away for real.
    const pg = new URL(env.DATABASE_URL!);
    const target = { host: pg.hostname, port: Number(pg.port) };
    const proxyPort = await freePort();
    const sockets = new Set<Socket>();
    let proxy: Server | undefined;
    const openProxy = () =>
      new Promise<void>((resolve) => {
        proxy = createServer((inbound) => {
          const outbound = new Socket().connect(target.port, target.host);
          sockets.add(inbound).add(outbound);
          inbound.pipe(outbound).pipe(inbound);
          const drop = () => (inbound.destroy(), outbound.destroy());
          inbound.on('error', drop).on('close', drop);
          outbound.on('error', drop).on('close', drop);
        }).listen(proxyPort, '127.0.0.1', resolve);
      });
    const cutProxy = () =>
      new Promise<void>((resolve) => {
        for (const socket of sockets) socket.destroy();
        sockets.clear();
        proxy!.close(() => resolve());
      });
    await openProxy();
    pg.port = String(proxyPort);
    const opsPort = await freePort();
    const service = await launchService({ service: 'messaging', env: { ...env, DATABASE_URL: pg.toString(), GRPC_PORT: String(await freePort()) }, opsPort });
    const readyz = async () => (await fetch(`http://127.0.0.1:${opsPort}/readyz`)).status;
    const waitFor = async (status: number) => {
      const deadline = Date.now() + 15_000;
      while ((await readyz()) !== status && Date.now() < deadline) await new Promise((r) => setTimeout(r, 200));
      return readyz();
    };
    try {
      expect(await readyz()).toBe(200);
      await cutProxy();
      expect(await waitFor(503)).toBe(503);
      expect((await fetch(`http://127.0.0.1:${opsPort}/healthz`)).status).toBe(200);
      await openProxy();
      expect(await waitFor(200)).toBe(200);
    } finally {
      await service.stop();
      await cutProxy();
    }
  });
});
