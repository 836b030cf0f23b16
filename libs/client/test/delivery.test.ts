// The client's messaging guarantees against a scripted gateway + messaging
// backend on 127.0.0.1: in-order, exactly-once hand-off with gaps fetched by
// get_history; resume with sync after a reconnect; the outbox of
// unacknowledged sends. No assertion depends on timing: tests wait for
// conditions, and the scripted server holds replies until the test releases them.
import { PermissionDeniedError, UnavailableError } from '@switchboard/errors';
import { sep } from 'node:path';
import { commonV1, framesV1, messagingV1 } from '@switchboard/proto';
import {
  OutboxFullError,
  SendNotAcknowledgedError,
  SwitchboardClient,
  mintDevToken,
  type ClientEvents,
  type SwitchboardClientOptions,
} from '../src';
import { FakeGateway, SECRET, type Peer } from './support/fake-gateway';
import { FakeMessaging } from './support/fake-messaging';

type ServerKind = NonNullable<framesV1.ServerFrame['kind']>;
type ClientKindCase = NonNullable<framesV1.ClientFrame['kind']>['$case'];

/**
 * How the scripted server treats one frame: undefined = answer it now from
 * the messaging fake; a kind = send that; 'hold' = answer when released (computed
 * then); 'hold-early' = answer computed now, sent when released; 'silent' = never.
 */
type Script = (frame: framesV1.ClientFrame, peer: Peer) => ServerKind | 'hold' | 'hold-early' | 'silent' | undefined;

const token = () => mintDevToken({ secret: SECRET, tenantId: 't1', userId: 'alice', deviceId: 'laptop' });

let gateway: FakeGateway;
let messaging: FakeMessaging;
let script: Script | undefined;
let held: { frame: framesV1.ClientFrame; send: () => void }[] = [];
const clients: SwitchboardClient[] = [];

async function start(): Promise<void> {
  messaging = new FakeMessaging();
  script = undefined;
  held = [];
  gateway = await FakeGateway.start({
    reply: (frame, peer) => {
      const decision = script?.(frame, peer);
      if (decision === undefined) return messaging.answer(frame);
      if (decision === 'silent') return undefined;
      if (decision === 'hold') {
        held.push({ frame, send: () => peer.send(messaging.answer(frame), frame.requestId) });
        return undefined;
      }
      if (decision === 'hold-early') {
        const answer = messaging.answer(frame);
        held.push({ frame, send: () => peer.send(answer, frame.requestId) });
        return undefined;
      }
      return decision;
    },
  });
}

/** Sends the held answers, oldest first. */
function release(): void {
  for (const h of held.splice(0)) h.send();
}

function newClient(options: Partial<SwitchboardClientOptions> = {}): SwitchboardClient {
  const client = new SwitchboardClient({ url: gateway.url, token, reconnect: { baseDelayMs: 1, maxDelayMs: 5 }, ...options });
  clients.push(client);
  return client;
}

function record<E extends keyof ClientEvents>(client: SwitchboardClient, event: E): ClientEvents[E][0][] {
  const seen: ClientEvents[E][0][] = [];
  (client.on as (e: E, l: (arg: ClientEvents[E][0]) => void) => unknown)(event, (arg) => seen.push(arg));
  return seen;
}

function next<E extends keyof ClientEvents>(client: SwitchboardClient, event: E): Promise<ClientEvents[E][0]> {
  return new Promise((resolve) => (client.once as (e: E, l: (arg: ClientEvents[E][0]) => void) => unknown)(event, resolve));
}

/** Polls a condition (every 2 ms, up to 5 s). */
async function waitFor(condition: () => boolean, what: string): Promise<void> {
  const deadline = Date.now() + 5000;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 2));
  }
}

function push(peer: Peer, conversationId: string, ...seqs: number[]): void {
  for (const seq of seqs) peer.send({ $case: 'message', value: { message: messaging.get(conversationId, seq) } });
}

type ClientKindValues = { [K in NonNullable<framesV1.ClientFrame['kind']> as K['$case']]: K['value'] };

/** The values of the frames of one kind a peer received, in order. */
function framesOf<C extends ClientKindCase>(peer: Peer, kind: C): ClientKindValues[C][] {
  const out: ClientKindValues[C][] = [];
  for (const frame of peer.received) if (frame.kind?.$case === kind) out.push(frame.kind.value as unknown as ClientKindValues[C]);
  return out;
}

const seqs = (messages: messagingV1.Message[], conversationId: string) => messages.filter((m) => m.conversationId === conversationId).map((m) => m.seq);
const range = (from: number, to: number) => Array.from({ length: to - from + 1 }, (_, i) => from + i);
const FORWARD = messagingV1.Direction.DIRECTION_FORWARD;

/**
 * Records the timers the client library creates (by the call stack) so a
 * test can tell which are still pending: neither fired nor cleared.
 */
function trackClientTimers(): { pending: () => string[]; restore: () => void } {
  const created: { handle: { _destroyed?: boolean }; stack: string }[] = [];
  const marker = `${sep}libs${sep}client${sep}src${sep}`;
  const wrap = <F extends (...args: never[]) => unknown>(real: F) =>
    ((...args: Parameters<F>) => {
      const handle = real(...args) as { _destroyed?: boolean };
      const limit = Error.stackTraceLimit;
      Error.stackTraceLimit = 100;
      const stack = new Error().stack ?? '';
      Error.stackTraceLimit = limit;
      if (stack.includes(marker)) created.push({ handle, stack });
      return handle;
    }) as unknown as F;
  const realTimeout = global.setTimeout;
  const realInterval = global.setInterval;
  const timeout = jest.spyOn(global, 'setTimeout').mockImplementation(wrap(realTimeout));
  const interval = jest.spyOn(global, 'setInterval').mockImplementation(wrap(realInterval));
  return {
    // Node marks a Timeout _destroyed once it fired (one-shot) or was cleared.
    pending: () =>
      created
        .filter((t) => t.handle._destroyed !== true)
        .map((t) => t.stack.split('\n').find((line) => line.includes(marker))?.trim() ?? t.stack),
    restore: () => {
      timeout.mockRestore();
      interval.mockRestore();
    },
  };
}

const afterTest: (() => void)[] = [];

afterEach(async () => {
  for (const undo of afterTest.splice(0)) undo();
  await Promise.all(clients.splice(0).map((c) => c.close()));
  await gateway?.stop();
});

describe('in-order delivery', () => {
  it('starts a conversation at the first message it sees and hands contiguous pushes over at once', async () => {
    await start();
    messaging.append('c', 11);
    const client = newClient();
    const got = record(client, 'message');
    await client.connect();
    const peer = await gateway.peer(0);
    push(peer, 'c', 10, 11);
    await waitFor(() => got.length === 2, 'two messages');
    expect(seqs(got, 'c')).toEqual([10, 11]);
    expect(framesOf(peer, 'getHistory')).toEqual([]);
    expect(client.positions()).toEqual(new Map([['c', 11]]));
  });

  it('unpacks a coalesced batch of pushes in order, through the same in-order path', async () => {
    await start();
    messaging.append('c', 4);
    const client = newClient();
    const got = record(client, 'message');
    await client.connect();
    const peer = await gateway.peer(0);
    const frame = (seq: number): framesV1.ServerFrame => ({ requestId: '', kind: { $case: 'message', value: { message: messaging.get('c', seq) } } });
    // One WebSocket message carrying four pushes, one of them a duplicate.
    peer.send({ $case: 'batch', value: { frames: [frame(1), frame(2), frame(2), frame(3)] } });
    push(peer, 'c', 4);
    await waitFor(() => got.length === 4, 'four messages');
    expect(seqs(got, 'c')).toEqual([1, 2, 3, 4]);
    expect(client.deliveryStats()).toMatchObject({ delivered: 4, duplicates: 1 });
  });

  it('drops duplicates silently and counts them', async () => {
    await start();
    messaging.append('c', 3);
    const client = newClient();
    const got = record(client, 'message');
    const errors = record(client, 'error');
    await client.connect();
    const peer = await gateway.peer(0);
    push(peer, 'c', 1, 2, 2, 1, 3, 3);
    await client.ping(); // everything pushed before the pong has been processed
    expect(seqs(got, 'c')).toEqual([1, 2, 3]);
    expect(client.deliveryStats()).toMatchObject({ delivered: 3, duplicates: 3, held: 0, historyFetches: 0 });
    expect(errors).toEqual([]);
  });

  it('holds a gapped push, fetches the gap FORWARD with get_history and hands everything over in order', async () => {
    await start();
    messaging.append('c', 5);
    const client = newClient();
    const got = record(client, 'message');
    await client.connect();
    const peer = await gateway.peer(0);
    push(peer, 'c', 1, 5);
    await waitFor(() => got.length === 5, 'five messages');
    expect(seqs(got, 'c')).toEqual([1, 2, 3, 4, 5]);
    expect(got.map((m) => m.messageId)).toEqual(['c-1', 'c-2', 'c-3', 'c-4', 'c-5']);
    expect(framesOf(peer, 'getHistory')).toEqual([{ conversationId: 'c', fromSeq: 1, direction: FORWARD, limit: 3 }]);
    expect(client.deliveryStats()).toMatchObject({ delivered: 5, duplicates: 0, held: 0, historyFetches: 1 });
  });

  it('keeps order and exactly-once across concurrent pushes, several gaps and a slow history page', async () => {
    await start();
    messaging.append('c', 9);
    let slowHistory = true;
    script = (frame) => (frame.kind?.$case === 'getHistory' && slowHistory ? 'hold' : undefined);
    const client = newClient();
    const got = record(client, 'message');
    await client.connect();
    const peer = await gateway.peer(0);

    push(peer, 'c', 1, 4); // gap 2..3: a fetch goes out and is held
    await waitFor(() => held.length === 1, 'the first history request');
    push(peer, 'c', 3, 7, 4, 2); // 3 and 7 held (a second gap), 4 a duplicate, 2 closes the first gap
    await waitFor(() => got.length === 4, 'four messages');
    expect(seqs(got, 'c')).toEqual([1, 2, 3, 4]);

    slowHistory = false;
    release(); // the first page (2, 3) is now all duplicates; the fill goes on with 5..6
    await waitFor(() => got.length === 7, 'seven messages');
    push(peer, 'c', 9, 8, 9);
    await waitFor(() => got.length === 9, 'nine messages');
    await client.ping();

    expect(seqs(got, 'c')).toEqual(range(1, 9));
    expect(framesOf(peer, 'getHistory').map((g) => [g.fromSeq, g.limit])).toEqual([
      [1, 2],
      [4, 2],
      [7, 1],
    ]);
    // Duplicates: the second push of 4; 2 and 3 from the slow page; the second push of 9; 8 from the last page.
    expect(client.deliveryStats()).toMatchObject({ delivered: 9, duplicates: 5, held: 0, historyFetches: 3 });
    expect(client.positions().get('c')).toBe(9);
  });

  it('pages a long gap with limit ≤ 200 until it reaches the held message', async () => {
    await start();
    messaging.append('c', 460);
    const client = newClient();
    const got = record(client, 'message');
    await client.connect();
    const peer = await gateway.peer(0);
    push(peer, 'c', 1, 460);
    await waitFor(() => got.length === 460, 'all 460 messages');
    expect(seqs(got, 'c')).toEqual(range(1, 460));
    expect(framesOf(peer, 'getHistory').map((g) => [g.fromSeq, g.limit, g.direction])).toEqual([
      [1, 200, FORWARD],
      [201, 200, FORWARD],
      [401, 58, FORWARD],
    ]);
  });

  it('keeps conversations independent: a gap in one does not hold up another', async () => {
    await start();
    messaging.append('a', 3);
    messaging.append('b', 2);
    script = (frame) => (frame.kind?.$case === 'getHistory' ? 'hold' : undefined);
    const client = newClient();
    const got = record(client, 'message');
    await client.connect();
    const peer = await gateway.peer(0);
    push(peer, 'a', 1, 3);
    push(peer, 'b', 1, 2);
    await waitFor(() => got.length === 3 && held.length === 1, 'a1, b1, b2 and the fetch for a');
    expect(got.map((m) => `${m.conversationId}${m.seq}`)).toEqual(['a1', 'b1', 'b2']);
    release();
    await waitFor(() => got.length === 5, 'a2 and a3');
    expect(seqs(got, 'a')).toEqual([1, 2, 3]);
  });

  it('starts from initialPositions instead of the first message seen', async () => {
    await start();
    messaging.append('c', 5);
    const client = newClient({ initialPositions: { c: 5 } });
    const got = record(client, 'message');
    await client.connect();
    await next(client, 'synced');
    const peer = await gateway.peer(0);
    messaging.append('c', 3);
    push(peer, 'c', 4, 8);
    await waitFor(() => got.length === 3, 'three messages');
    expect(seqs(got, 'c')).toEqual([6, 7, 8]);
    expect(framesOf(peer, 'getHistory').map((g) => [g.fromSeq, g.limit])).toEqual([[5, 2]]);
    expect(client.deliveryStats().duplicates).toBe(1);
  });

  it('takes a conversation joined (conversation push) from its first message, and forgets what it held on leaving', async () => {
    await start();
    messaging.append('room', 3);
    messaging.append('gone', 5);
    const client = newClient();
    const got = record(client, 'message');
    await client.connect();
    const peer = await gateway.peer(0);
    const conversation = (conversationId: string) => messagingV1.Conversation.fromPartial({ tenantId: 't1', conversationId });
    peer.send({ $case: 'conversation', value: { conversation: conversation('room'), member: true } });
    push(peer, 'room', 3);
    await waitFor(() => got.length === 3, 'room 1..3');
    expect(seqs(got, 'room')).toEqual([1, 2, 3]);
    expect(framesOf(peer, 'getHistory')[0]).toMatchObject({ conversationId: 'room', fromSeq: 0, limit: 2 });

    script = (frame) => (frame.kind?.$case === 'getHistory' ? 'hold' : undefined);
    push(peer, 'gone', 1, 5);
    await waitFor(() => held.length === 1, 'the fetch for gone');
    peer.send({ $case: 'conversation', value: { conversation: conversation('gone'), member: false } });
    await client.ping();
    expect(client.deliveryStats().held).toBe(0);
    release();
    await client.ping();
    expect(seqs(got, 'gone')).toEqual([1]);
  });

  it('rejects invalid initialPositions', () => {
    expect(() => new SwitchboardClient({ url: 'ws://127.0.0.1:1/ws', token: 'x', initialPositions: { 'a.b': 1 } })).toThrow(/conversation id/);
    expect(() => new SwitchboardClient({ url: 'ws://127.0.0.1:1/ws', token: 'x', initialPositions: new Map([['c', -1]]) })).toThrow(/non-negative/);
  });
});

describe('resume after reconnect', () => {
  it('does not sync on the first connect without initialPositions', async () => {
    await start();
    const client = newClient();
    const synced = record(client, 'synced');
    await client.connect();
    const peer = await gateway.peer(0);
    await client.ping();
    expect(framesOf(peer, 'sync')).toEqual([]);
    expect(synced).toEqual([]);
  });

  it('syncs on the first connect from restored positions, before sends go out', async () => {
    await start();
    messaging.append('c', 5);
    const first = newClient();
    const firstGot = record(first, 'message');
    await first.connect();
    push(await gateway.peer(0), 'c', 1, 2, 3);
    await waitFor(() => firstGot.length === 3, 'c1..3');
    const saved = first.positions();
    await first.close();

    const client = newClient({ initialPositions: saved });
    const got = record(client, 'message');
    const synced = next(client, 'synced');
    await client.connect();
    const ack = client.sendMessage({ conversationId: 'c', text: 'after the sync' });
    expect(await synced).toEqual({ pages: 1, messages: 2 });
    expect(seqs(got, 'c')).toEqual([4, 5]);
    expect((await ack).seq).toBe(6);
    const peer = await gateway.peer(1);
    expect(peer.received.map((f) => f.kind?.$case)).toEqual(['sync', 'sendMessage']);
    expect(framesOf(peer, 'sync')[0]!.positions).toEqual([{ conversationId: 'c', lastSeq: 3 }]);
  });

  it('after a drop, syncs from its positions page by page and delivers what it missed once, in order, though live pushes overlap the sync', async () => {
    await start();
    messaging.append('a', 3);
    const client = newClient({ syncPageSize: 2 });
    const got = record(client, 'message');
    const order: string[] = [];
    client.on('message', (m) => order.push(`${m.conversationId}${m.seq}`));
    client.on('synced', () => order.push('synced'));
    await client.connect();
    push(await gateway.peer(0), 'a', 1, 2, 3);
    await waitFor(() => got.length === 3, 'a1..3');

    script = (frame) => (frame.kind?.$case === 'sync' ? 'hold' : undefined);
    (await gateway.peer(0)).ws.terminate();
    messaging.append('a', 3); // a4..a6 while offline
    messaging.append('b', 2); // a conversation this device has never seen
    const peer = await gateway.peer(1);
    await waitFor(() => held.length === 1, 'the first sync request');

    // Live traffic during the sync: a7 is new, a5 is also in the sync, b2 arrives before b's history.
    messaging.append('a', 1);
    push(peer, 'a', 7, 5);
    push(peer, 'b', 2);
    await client.ping();
    expect(got).toHaveLength(3); // all held: the sync brings what lies before them

    script = undefined;
    release();
    await waitFor(() => order.includes('synced'), 'synced');
    await client.ping();

    expect(seqs(got, 'a')).toEqual(range(1, 7));
    expect(seqs(got, 'b')).toEqual([1, 2]);
    expect(order[order.length - 1]).toBe('synced');
    const syncs = framesOf(peer, 'sync');
    expect(syncs[0]).toEqual({ positions: [{ conversationId: 'a', lastSeq: 3 }], resumeToken: '', limit: 2 });
    expect(syncs.slice(1).every((s) => s.resumeToken !== '' && s.positions.length === 0)).toBe(true);
    expect(syncs).toHaveLength(3); // a4 a5 | a6 a7 | b1 b2
    expect(framesOf(peer, 'getHistory')).toEqual([]); // the sync filled the gaps
    expect(client.positions()).toEqual(new Map([['a', 7], ['b', 2]]));
  });

  it('fills from history a gap that the sync could not close', async () => {
    await start();
    messaging.append('a', 2);
    const client = newClient();
    const got = record(client, 'message');
    await client.connect();
    push(await gateway.peer(0), 'a', 1, 2);
    await waitFor(() => got.length === 2, 'a1..2');
    // The sync answer is computed before a3..a4 are committed and sent after a4 was pushed.
    script = (frame) => (frame.kind?.$case === 'sync' ? 'hold-early' : undefined);
    (await gateway.peer(0)).ws.terminate();
    const peer = await gateway.peer(1);
    await waitFor(() => held.length === 1, 'the sync request');
    messaging.append('a', 2);
    push(peer, 'a', 4);
    await client.ping();
    script = undefined;
    const synced = next(client, 'synced');
    release();
    await synced;
    await waitFor(() => got.length === 4, 'a1..4');
    expect(seqs(got, 'a')).toEqual([1, 2, 3, 4]);
    expect(framesOf(peer, 'getHistory').map((g) => [g.fromSeq, g.limit])).toEqual([[2, 1]]);
  });

  it('retries a sync that fails with a retryable error', async () => {
    await start();
    messaging.append('a', 2);
    let failures = 1;
    const unavailable: ServerKind = { $case: 'error', value: { code: commonV1.ErrorCode.ERROR_CODE_UNAVAILABLE, message: 'messaging down', field: '', retryAfterMs: 0 } };
    const client = newClient({ initialPositions: { a: 0 } });
    script = (frame) => (frame.kind?.$case === 'sync' && failures-- > 0 ? unavailable : undefined);
    const got = record(client, 'message');
    const synced = next(client, 'synced');
    await client.connect();
    await synced;
    expect(seqs(got, 'a')).toEqual([1, 2]);
    expect(framesOf(await gateway.peer(0), 'sync')).toHaveLength(2);
  });
});

describe('outbox', () => {
  it('retries a send whose connection dropped before the ack after the resume sync, with the same client_message_id, and resolves once', async () => {
    await start();
    script = (frame, peer) => {
      if (frame.kind?.$case === 'sendMessage' && peer === gateway.peers[0]) {
        messaging.send(frame.kind.value); // committed, but the ack is lost with the connection
        setImmediate(() => peer.ws.terminate());
        return 'silent';
      }
      return undefined;
    };
    const client = newClient();
    await client.connect();
    const disconnected = next(client, 'disconnected');
    let settled = 0;
    const first = client.sendMessage({ conversationId: 'c', text: 'hello' });
    void first.then(() => settled++, () => settled++);
    await disconnected;
    const pending = client.pendingSends();
    expect(pending).toEqual([
      expect.objectContaining({ conversationId: 'c', text: 'hello', attempts: 1, clientMessageId: expect.stringMatching(/^[0-9a-f]{32}$/) }),
    ]);
    const clientMessageId = pending[0]!.clientMessageId;
    // Made while reconnecting: goes out after the retry.
    const second = client.sendMessage({ conversationId: 'c', text: 'second', clientMessageId: 'cm-second' });

    const ack = await first;
    expect(ack).toMatchObject({ clientMessageId, conversationId: 'c', seq: 1, duplicate: true });
    expect(await second).toMatchObject({ clientMessageId: 'cm-second', seq: 2, duplicate: false });
    const peer = await gateway.peer(1);
    expect(peer.received.map((f) => f.kind?.$case)).toEqual(['sync', 'sendMessage', 'sendMessage']);
    expect(framesOf(peer, 'sendMessage').map((s) => s.clientMessageId)).toEqual([clientMessageId, 'cm-second']);
    expect(framesOf(gateway.peers[0]!, 'sendMessage')[0]!.clientMessageId).toBe(clientMessageId);
    expect(messaging.countByClientId(clientMessageId)).toBe(1);
    await client.ping();
    expect(settled).toBe(1);
    expect(client.pendingSends()).toEqual([]);
  });

  it('retries on the same connection when an attempt times out', async () => {
    await start();
    let sends = 0;
    script = (frame) => {
      if (frame.kind?.$case === 'sendMessage' && sends++ === 0) {
        messaging.send(frame.kind.value);
        return 'silent';
      }
      return undefined;
    };
    const client = newClient();
    await client.connect();
    const ack = await client.sendMessage({ conversationId: 'c', text: 'slow', clientMessageId: 'cm-slow' }, { timeoutMs: 30 });
    expect(ack).toMatchObject({ clientMessageId: 'cm-slow', seq: 1, duplicate: true });
    expect(framesOf(await gateway.peer(0), 'sendMessage').map((s) => s.clientMessageId)).toEqual(['cm-slow', 'cm-slow']);
    expect(gateway.peers).toHaveLength(1);
  });

  it.each([
    ['INVALID_ARGUMENT', commonV1.ErrorCode.ERROR_CODE_INVALID_ARGUMENT],
    ['PERMISSION_DENIED', commonV1.ErrorCode.ERROR_CODE_PERMISSION_DENIED],
    ['NOT_FOUND', commonV1.ErrorCode.ERROR_CODE_NOT_FOUND],
  ])('does not retry a send refused with %s, not even after a reconnect', async (_name, code) => {
    await start();
    script = (frame) =>
      frame.kind?.$case === 'sendMessage' ? { $case: 'error', value: { code, message: 'refused', field: '', retryAfterMs: 0 } } : undefined;
    const client = newClient();
    await client.connect();
    const err = await client.sendMessage({ conversationId: 'c', text: 'no' }).catch((e: unknown) => e);
    expect(err).toMatchObject({ code, message: 'refused' });
    expect(err).not.toBeInstanceOf(SendNotAcknowledgedError);
    expect(client.pendingSends()).toEqual([]);
    (await gateway.peer(0)).ws.terminate();
    await next(client, 'synced');
    await client.ping();
    expect(framesOf(gateway.peers[0]!, 'sendMessage')).toHaveLength(1);
    expect(framesOf(gateway.peers[1]!, 'sendMessage')).toHaveLength(0);
  });

  it('retries a rate-limited send after retryAfterMs and gives up after maxAttempts with a typed error', async () => {
    await start();
    script = (frame) =>
      frame.kind?.$case === 'sendMessage'
        ? { $case: 'error', value: { code: commonV1.ErrorCode.ERROR_CODE_RATE_LIMITED, message: 'slow down', field: '', retryAfterMs: 5 } }
        : undefined;
    const client = newClient();
    await client.connect();
    const err = await client.sendMessage({ conversationId: 'c', text: 'x', clientMessageId: 'cm-x' }, { maxAttempts: 3 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(SendNotAcknowledgedError);
    expect(err).toMatchObject({
      reason: 'attempts',
      attempts: 3,
      clientMessageId: 'cm-x',
      mayHaveBeenCommitted: true,
      code: commonV1.ErrorCode.ERROR_CODE_RATE_LIMITED,
      retryAfterMs: 5,
    });
    expect(framesOf(await gateway.peer(0), 'sendMessage').map((s) => s.clientMessageId)).toEqual(['cm-x', 'cm-x', 'cm-x']);
    expect(client.pendingSends()).toEqual([]);
  });

  it('retries a send the server shed (OVERLOADED) after retryAfterMs, with the same client id, and resolves with its ack', async () => {
    await start();
    let refusals = 0;
    script = (frame) => {
      if (frame.kind?.$case !== 'sendMessage' || refusals >= 2) return undefined;
      refusals += 1;
      return { $case: 'error', value: { code: commonV1.ErrorCode.ERROR_CODE_OVERLOADED, message: 'shed', field: '', retryAfterMs: 5 } };
    };
    const client = newClient();
    await client.connect();
    const ack = await client.sendMessage({ conversationId: 'c', text: 'x', clientMessageId: 'cm-shed' });
    expect(ack).toMatchObject({ clientMessageId: 'cm-shed' });
    expect(framesOf(await gateway.peer(0), 'sendMessage').map((s) => s.clientMessageId)).toEqual(['cm-shed', 'cm-shed', 'cm-shed']);
    expect(client.pendingSends()).toEqual([]);
  });

  it('gives up at the deadline with a typed error', async () => {
    await start();
    script = (frame) => (frame.kind?.$case === 'sendMessage' ? 'silent' : undefined);
    const client = newClient();
    await client.connect();
    const err = await client.sendMessage({ conversationId: 'c', text: 'x' }, { deadlineMs: 40 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(SendNotAcknowledgedError);
    expect(err).toMatchObject({ reason: 'deadline', attempts: 1, code: commonV1.ErrorCode.ERROR_CODE_DEADLINE_EXCEEDED });
    expect(client.pendingSends()).toEqual([]);
  });

  it('enforces outboxLimit without sending, and takes new sends once acks free room', async () => {
    await start();
    script = (frame) => (frame.kind?.$case === 'sendMessage' ? 'hold' : undefined);
    const client = newClient({ outboxLimit: 2 });
    await client.connect();
    const a = client.sendMessage({ conversationId: 'c', text: 'a', clientMessageId: 'cm-a' });
    const b = client.sendMessage({ conversationId: 'c', text: 'b', clientMessageId: 'cm-b' });
    await expect(client.sendMessage({ conversationId: 'c', text: 'c' })).rejects.toBeInstanceOf(OutboxFullError);
    expect(client.pendingSends().map((p) => p.clientMessageId)).toEqual(['cm-a', 'cm-b']);
    // The same client_message_id again is the same send, not a new one.
    const again = client.sendMessage({ conversationId: 'c', text: 'a', clientMessageId: 'cm-a' });
    await waitFor(() => held.length === 2, 'two sends at the server');
    expect(framesOf(await gateway.peer(0), 'sendMessage')).toHaveLength(2);
    script = undefined;
    release();
    const [ackA] = await Promise.all([a, b]);
    expect(await again).toEqual(ackA);
    await expect(client.sendMessage({ conversationId: 'c', text: 'd' })).resolves.toMatchObject({ seq: 3 });
  });

  it('rejects sends when the client is neither connected nor connecting', async () => {
    await start();
    const client = newClient();
    await expect(client.sendMessage({ conversationId: 'c', text: 'x' })).rejects.toBeInstanceOf(UnavailableError);
    await expect(client.sendMessage({ conversationId: 'c', text: 'x', clientMessageId: 'not ok!' })).rejects.toMatchObject({
      field: 'client_message_id',
    });
  });

  it('close() rejects in-flight and backing-off sends and leaves no timers', async () => {
    await start();
    const timers = trackClientTimers();
    afterTest.push(timers.restore);
    script = (frame) => {
      if (frame.kind?.$case !== 'sendMessage') return undefined;
      if (frame.kind.value.clientMessageId === 'cm-limited') {
        return { $case: 'error', value: { code: commonV1.ErrorCode.ERROR_CODE_RATE_LIMITED, message: 'later', field: '', retryAfterMs: 60_000 } };
      }
      return 'silent';
    };
    const client = newClient();
    await client.connect();
    const inflight = client.sendMessage({ conversationId: 'c', text: 'a', clientMessageId: 'cm-inflight' }).catch((e: unknown) => e);
    const limited = client.sendMessage({ conversationId: 'c', text: 'b', clientMessageId: 'cm-limited' }).catch((e: unknown) => e);
    await client.ping(); // the rate-limit answer has arrived: cm-limited waits 60 s to retry
    expect(client.pendingSends().map((p) => [p.clientMessageId, p.attempts])).toEqual([
      ['cm-inflight', 1],
      ['cm-limited', 1],
    ]);
    await client.close();
    for (const err of [await inflight, await limited]) {
      expect(err).toBeInstanceOf(SendNotAcknowledgedError);
      expect(err).toMatchObject({ reason: 'closed', attempts: 1 });
    }
    expect(client.pendingSends()).toEqual([]);
    expect(timers.pending()).toEqual([]);
  });

  it('close() while reconnecting rejects queued sends and stops a paused sync', async () => {
    await start();
    const timers = trackClientTimers();
    afterTest.push(timers.restore);
    const client = newClient();
    await client.connect();
    script = (frame, peer) => {
      if (frame.kind?.$case === 'sync') {
        return { $case: 'error', value: { code: commonV1.ErrorCode.ERROR_CODE_UNAVAILABLE, message: 'down', field: '', retryAfterMs: 60_000 } };
      }
      if (frame.kind?.$case === 'sendMessage' && peer === gateway.peers[0]) {
        setImmediate(() => peer.ws.terminate());
        return 'silent';
      }
      return 'silent';
    };
    const sent = client.sendMessage({ conversationId: 'c', text: 'a', clientMessageId: 'cm-1' }).catch((e: unknown) => e);
    await next(client, 'disconnected');
    const queued = client.sendMessage({ conversationId: 'c', text: 'b', clientMessageId: 'cm-2' }).catch((e: unknown) => e);
    const peer = await gateway.peer(1);
    // The sync failed and waits 60 s to retry; the outbox went ahead (unanswered).
    await waitFor(() => framesOf(peer, 'sendMessage').length === 2, 'both sends on the new connection');
    await client.close();
    expect(await sent).toMatchObject({ reason: 'closed', attempts: 2 });
    expect(await queued).toMatchObject({ reason: 'closed', attempts: 1 });
    expect(timers.pending()).toEqual([]);
  });

  it('rejects sends made during a first connect that fails', async () => {
    await start();
    const url = gateway.url;
    await gateway.stop();
    const client = new SwitchboardClient({ url, token });
    clients.push(client);
    const connecting = client.connect().catch((e: unknown) => e);
    const send = client.sendMessage({ conversationId: 'c', text: 'x' }).catch((e: unknown) => e);
    expect(await connecting).toBeInstanceOf(UnavailableError);
    expect(await send).toBeInstanceOf(SendNotAcknowledgedError);
    expect(await send).toMatchObject({ reason: 'closed', attempts: 0, mayHaveBeenCommitted: false });
  });

  it('reports a permanent error as the server sent it', async () => {
    await start();
    script = (frame) =>
      frame.kind?.$case === 'sendMessage'
        ? { $case: 'error', value: { code: commonV1.ErrorCode.ERROR_CODE_PERMISSION_DENIED, message: 'not a member', field: 'conversation_id', retryAfterMs: 0 } }
        : undefined;
    const client = newClient();
    await client.connect();
    const err = await client.sendMessage({ conversationId: 'c', text: 'x' }).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: new PermissionDeniedError('').code, field: 'conversation_id' });
  });
});
