import { DEV_JWT_SECRET, SwitchboardClient, mintDevToken } from '@switchboard/client';
import { errorOf, eventually, natsSeedFile, infraEnv, startMesh, type Mesh } from '@switchboard/devenv';
import { ErrorCode, type SwitchboardError } from '@switchboard/errors';
import { createClient, type PromiseClient } from '@switchboard/grpc';
import { newId } from '@switchboard/ids';
import { connectNats, EVENT_STREAM, eventStreamClients, type NatsConnection } from '@switchboard/nats';
import { gatewayV1, type eventsV1 } from '@switchboard/proto';

// Live event broadcasting end to end: PublishEvent on a gateway's admin API,
// the JetStream stream, two gateway processes tailing it, real WebSocket
// clients subscribing with patterns. "Receives nothing" is shown without
// timing: every check ends with a marker event that the subscriber's pattern
// matches, published last; a connection gets its events in stream order, so
// once the marker arrived everything published before it would have too.
const tenant = `t${newId().slice(0, 12)}`;
const otherTenant = `o${newId().slice(0, 12)}`;
const user = (name: string) => `${name}-${newId().slice(0, 8)}`;
const MAX_SUBSCRIPTIONS = 4;
const MAX_REPLAY = 40;
const MAX_PAYLOAD = 1024;

let mesh: Mesh;
let admins: PromiseClient<gatewayV1.GatewayAdminServiceClient>[];
let nc: NatsConnection;
const clients: SwitchboardClient[] = [];

/** An operator's (internal) context for a tenant. */
const internal = (tenantId: string) => ({ context: { tenantId, userId: '', deviceId: '', internal: true } });

type Subscriber = { client: SwitchboardClient; events: eventsV1.BroadcastEvent[] };

async function subscriber(gateway: number, events: string[] | undefined, tenantId = tenant): Promise<Subscriber> {
  const client = new SwitchboardClient({
    url: mesh.gateways[gateway]!.url,
    token: () => mintDevToken({ secret: DEV_JWT_SECRET, tenantId, userId: user('sub'), ...(events ? { claims: { events } } : {}) }),
    reconnect: { enabled: false },
  });
  clients.push(client);
  const received: eventsV1.BroadcastEvent[] = [];
  client.on('event', (event) => received.push(event));
  await client.connect();
  return { client, events: received };
}

async function publish(topic: string, payload: string, options: { tenantId?: string; gateway?: number; requestId?: string; contentType?: string } = {}): Promise<gatewayV1.PublishEventResponse> {
  const tenantId = options.tenantId ?? tenant;
  return admins[options.gateway ?? 0]!.publishEvent(
    { context: undefined, topic, payload: Buffer.from(payload), contentType: options.contentType ?? 'text/plain', requestId: options.requestId ?? '' },
    internal(tenantId),
  );
}

const text = (event: eventsV1.BroadcastEvent) => Buffer.from(event.payload).toString();

/** Publishes one marker on `topic` and waits until every subscriber got it: everything published before has arrived by then. */
async function settle(subs: Subscriber | Subscriber[], topic: string, tenantId = tenant): Promise<void> {
  const marker = `marker-${newId().slice(0, 8)}`;
  await publish(topic, marker, { tenantId });
  for (const sub of Array.isArray(subs) ? subs : [subs]) {
    await eventually(() => sub.events.some((e) => text(e) === marker), 15_000, `marker on ${topic}`);
    // The marker is not part of what a test looks at.
    sub.events.splice(sub.events.findIndex((e) => text(e) === marker), 1);
  }
}

beforeAll(async () => {
  mesh = await startMesh({
    gateways: 2,
    ports: 'free',
    gatewayEnv: { EVENT_SUBSCRIPTIONS_PER_CONNECTION: String(MAX_SUBSCRIPTIONS), EVENT_REPLAY_MAX_EVENTS: String(MAX_REPLAY), EVENT_MAX_PAYLOAD_BYTES: String(MAX_PAYLOAD) },
  });
  admins = mesh.gateways.map((g) => createClient(gatewayV1.GatewayAdminServiceClient, g.grpcAddress));
  nc = await connectNats({ servers: infraEnv().NATS_URL!, name: 'events-e2e', nkeySeedFile: natsSeedFile('tools') });
}, 120_000);

afterAll(async () => {
  for (const client of clients) await client.close();
  for (const admin of admins ?? []) admin.close();
  await nc?.close();
  await mesh?.stop();
});

describe('the event stream', () => {
  it('exists with the gateways\' retention, discard policy, message bound and duplicate window', async () => {
    const { jsm } = await eventStreamClients(nc);
    const info = await jsm.streams.info(EVENT_STREAM);
    expect(info.config).toMatchObject({ subjects: ['sb.*.evt.>'], retention: 'limits', discard: 'old', max_age: 24 * 3600_000 * 1e6, duplicate_window: 120_000 * 1e6, max_msg_size: MAX_PAYLOAD + 8192 });
  });
});

describe('PublishEvent to subscribers', () => {
  it('reaches subscribers on both gateways with its stream_seq, payload and content type', async () => {
    const alice = await subscriber(0, ['labs.>']);
    const bob = await subscriber(1, ['labs.results.*']);
    await alice.client.subscribeEvents('labs.>');
    await bob.client.subscribeEvents('labs.results.*');

    const published = await publish('labs.results.ward7', '{"potassium":4.1}', { contentType: 'application/json', gateway: 1 });
    expect(published.duplicate).toBe(false);
    expect(published.event).toMatchObject({ topic: 'labs.results.ward7', contentType: 'application/json' });
    expect(published.event!.streamSeq).toBeGreaterThan(0);

    for (const sub of [alice, bob]) {
      const [event] = await eventually(() => sub.events.length > 0 && sub.events, 15_000, 'the event');
      expect(event).toMatchObject({ topic: 'labs.results.ward7', contentType: 'application/json', streamSeq: published.event!.streamSeq });
      expect(text(event!)).toBe('{"potassium":4.1}');
    }
  });

  it('`*` matches exactly one token and `>` one or more, and neither matches more', async () => {
    const star = await subscriber(0, ['labs.>', '*.results']);
    const rest = await subscriber(1, ['labs.>']);
    const first = await subscriber(1, ['*.results']);
    await star.client.subscribeEvents('labs.*');
    await rest.client.subscribeEvents('labs.>');
    await first.client.subscribeEvents('*.results');

    for (const topic of ['labs', 'labs.results', 'labs.results.ward7', 'imaging.results', 'imaging.orders', 'labs.orders.x.y']) await publish(topic, topic);
    await settle([star, rest, first], 'labs.results');

    expect(star.events.map(text)).toEqual(['labs.results']);
    expect(rest.events.map(text)).toEqual(['labs.results', 'labs.results.ward7', 'labs.orders.x.y']);
    expect(first.events.map(text)).toEqual(['labs.results', 'imaging.results']);
    // Stream order, each once.
    for (const sub of [star, rest, first]) {
      const seqs = sub.events.map((e) => e.streamSeq);
      expect(seqs).toEqual([...seqs].sort((a, b) => a - b));
      expect(new Set(seqs).size).toBe(seqs.length);
    }
  });

  it('a subscriber of another tenant with the same pattern receives none of this tenant\'s events', async () => {
    const mine = await subscriber(0, ['ward.>']);
    const theirs = await subscriber(1, ['ward.>'], otherTenant);
    await mine.client.subscribeEvents('ward.>');
    await theirs.client.subscribeEvents('ward.>');

    await publish('ward.7.admitted', 'ours');
    await publish('ward.7.admitted', 'theirs', { tenantId: otherTenant });
    await settle(mine, 'ward.end');
    await settle(theirs, 'ward.end', otherTenant);

    expect(mine.events.map(text)).toEqual(['ours']);
    expect(theirs.events.map(text)).toEqual(['theirs']);
    expect(theirs.events.every((e) => e.topic === 'ward.7.admitted')).toBe(true);
  });
});

describe('authorisation of subscriptions', () => {
  it('refuses a pattern the token\'s events claim does not cover, and that connection receives nothing of it', async () => {
    const narrow = await subscriber(0, ['labs.results.*']);
    const wider = (await errorOf(narrow.client.subscribeEvents('labs.>'))) as SwitchboardError;
    expect(wider).toMatchObject({ code: ErrorCode.ERROR_CODE_PERMISSION_DENIED, field: 'pattern' });
    expect(wider.message).toContain("the token's events claim (labs.results.*) does not cover labs.>");
    const elsewhere = (await errorOf(narrow.client.subscribeEvents('imaging.*'))) as SwitchboardError;
    expect(elsewhere.code).toBe(ErrorCode.ERROR_CODE_PERMISSION_DENIED);

    const none = await subscriber(1, undefined);
    const unclaimed = (await errorOf(none.client.subscribeEvents('labs.results.x'))) as SwitchboardError;
    expect(unclaimed).toMatchObject({ code: ErrorCode.ERROR_CODE_PERMISSION_DENIED, message: 'this connection may subscribe to no events: its token has no events claim' });

    // Covered: accepted; the refused patterns' events never arrive.
    await narrow.client.subscribeEvents('labs.results.*');
    await publish('labs.orders.1', 'not covered');
    await publish('imaging.ct', 'not covered');
    await settle(narrow, 'labs.results.end');
    expect(narrow.events).toEqual([]);
  });

  it('refuses a token whose events claim is not a list of valid patterns at the handshake', async () => {
    const client = new SwitchboardClient({
      url: mesh.gateways[0]!.url,
      token: () => mintDevToken({ secret: DEV_JWT_SECRET, tenantId: tenant, userId: user('bad'), claims: { events: ['labs.>.x'] } }),
      reconnect: { enabled: false },
    });
    clients.push(client);
    const err = await errorOf(client.connect());
    expect(err).toMatchObject({ status: 401 });
    expect(err.message).toMatch(/invalid events claim: events has > at position 2 of 3/);
  });

  it('bounds the subscriptions of one connection, and subscribing a held pattern again costs nothing', async () => {
    const sub = await subscriber(0, ['>']);
    for (let index = 0; index < MAX_SUBSCRIPTIONS; index += 1) await sub.client.subscribeEvents(`quota.${index}`);
    await sub.client.subscribeEvents('quota.0');
    const over = (await errorOf(sub.client.subscribeEvents('quota.extra'))) as SwitchboardError;
    expect(over).toMatchObject({ code: ErrorCode.ERROR_CODE_QUOTA_EXCEEDED, field: 'pattern' });
    expect(over.message).toContain(`at most ${MAX_SUBSCRIPTIONS} event subscriptions`);
    // After an unsubscribe there is room again.
    await sub.client.unsubscribeEvents('quota.3');
    await sub.client.subscribeEvents('quota.extra');
  });
});

describe('bad input is refused with a specific error and changes nothing', () => {
  it.each([
    ['labs.>.x', /pattern has > at position 2 of 3/],
    ['labs..x', /pattern has an empty token at position 2/],
    ['la*bs', /mixes a wildcard with other characters/],
    ['', /pattern is required/],
    ['labs.r\u00e9sults', /token "résults" must be 1-128 characters/],
  ])('subscribe_events with pattern %j', async (pattern, message) => {
    const sub = await subscriber(1, ['>']);
    const err = (await errorOf(sub.client.subscribeEvents(pattern))) as SwitchboardError;
    expect(err).toMatchObject({ code: ErrorCode.ERROR_CODE_INVALID_ARGUMENT, field: 'pattern' });
    expect(err.message).toMatch(message);
  });

  it('PublishEvent with a bad topic, payload, content type or request id stores nothing', async () => {
    const watcher = await subscriber(0, ['>']);
    await watcher.client.subscribeEvents('>');
    const refusals: [Parameters<typeof publish>, string, RegExp][] = [
      [['labs.*', 'x'], 'topic', /contains the wildcard \*/],
      [['labs.>', 'x'], 'topic', /contains the wildcard >/],
      [['labs..x', 'x'], 'topic', /empty token at position 2/],
      [['', 'x'], 'topic', /topic is required/],
      [[`labs.${'x'.repeat(300)}`, 'x'], 'topic', /at most 256/],
      [['labs.big', 'x'.repeat(MAX_PAYLOAD + 1)], 'payload', new RegExp(`payload is ${MAX_PAYLOAD + 1} bytes; an event carries at most ${MAX_PAYLOAD}`)],
      [['labs.type', 'x', { contentType: 'json' }], 'content_type', /MIME type/],
      [['labs.type', 'x', { contentType: 'text/html\r\nx-injected: 1' }], 'content_type', /MIME type/],
      [['labs.type', 'x', { contentType: `text/${'x'.repeat(130)}` }], 'content_type', /MIME type/],
      [['labs.id', 'x', { requestId: 'a.b' }], 'request_id', /request_id must be 1-128 characters/],
    ];
    for (const [args, field, message] of refusals) {
      const err = (await errorOf(publish(...args))) as SwitchboardError;
      expect({ field: err.field, code: err.code }).toEqual({ field, code: ErrorCode.ERROR_CODE_INVALID_ARGUMENT });
      expect(err.message).toMatch(message);
    }
    // Exactly the payload bound is fine.
    await publish('labs.max', 'y'.repeat(MAX_PAYLOAD));
    await settle(watcher, 'end');
    expect(watcher.events.map((e) => e.topic)).toEqual(['labs.max']);
  });

  it('PublishEvent with a user\'s (non-internal) context is PERMISSION_DENIED and publishes nothing', async () => {
    const watcher = await subscriber(1, ['>']);
    await watcher.client.subscribeEvents('>');
    const err = (await errorOf(
      admins[0]!.publishEvent({ context: undefined, topic: 'labs.forged', payload: Buffer.from('x'), contentType: '', requestId: '' }, { context: { tenantId: tenant, userId: 'mallory', deviceId: '', internal: false } }),
    )) as SwitchboardError;
    expect(err).toMatchObject({ code: ErrorCode.ERROR_CODE_PERMISSION_DENIED, message: 'publishing events is for internal callers only' });
    await settle(watcher, 'end');
    expect(watcher.events).toEqual([]);
  });
});

describe('idempotent publishing', () => {
  it('stores a retried publish with the same request_id once and answers the stored event', async () => {
    const watcher = await subscriber(0, ['orders.>']);
    await watcher.client.subscribeEvents('orders.>');
    const requestId = `r-${newId()}`;
    const first = await publish('orders.created', 'first', { requestId });
    const retry = await publish('orders.created', 'retried body', { requestId, gateway: 1 });
    expect(first.duplicate).toBe(false);
    expect(retry.duplicate).toBe(true);
    expect(retry.event).toMatchObject({ streamSeq: first.event!.streamSeq, topic: 'orders.created', contentType: 'text/plain' });
    expect(Buffer.from(retry.event!.payload).toString()).toBe('first');
    // The same request id in another tenant is another event.
    const elsewhere = await publish('orders.created', 'other tenant', { requestId, tenantId: otherTenant });
    expect(elsewhere.duplicate).toBe(false);
    await settle(watcher, 'orders.end');
    expect(watcher.events.map((e) => [e.streamSeq, text(e)])).toEqual([[first.event!.streamSeq, 'first']]);
  });
});

describe('replay', () => {
  it('delivers the events stored after replay_after_seq in order, then live ones, none twice, while publishing goes on', async () => {
    const topic = (n: number) => `vitals.bed${n % 3}.hr`;
    const before: gatewayV1.PublishEventResponse[] = [];
    for (let n = 0; n < 10; n += 1) before.push(await publish(topic(n), `before-${n}`));
    await publish('other.topic', 'not matching');
    const after = before[3]!.event!.streamSeq;

    const sub = await subscriber(1, ['vitals.>']);
    // Publishing continues while the replay runs: these land before, during or after it.
    const during = (async () => {
      const sent: gatewayV1.PublishEventResponse[] = [];
      for (let n = 10; n < 30; n += 1) sent.push(await publish(topic(n), `during-${n}`, { gateway: n % 2 }));
      return sent;
    })();
    await sub.client.subscribeEvents('vitals.*.hr', { replayAfterSeq: after });
    const sentDuring = await during;
    const live = await publish('vitals.bed1.hr', 'live');
    await eventually(() => sub.events.some((e) => text(e) === 'live'), 15_000, 'the live event');

    const expected = [...before.slice(4), ...sentDuring, live].map((r) => r.event!.streamSeq);
    expect(sub.events.map((e) => e.streamSeq)).toEqual(expected);
    expect(sub.events.slice(0, 6).map(text)).toEqual(['before-4', 'before-5', 'before-6', 'before-7', 'before-8', 'before-9']);
  });

  it('replays only the subscriber\'s tenant and pattern', async () => {
    const mark = await publish('replay.a.x', 'mark');
    await publish('replay.a.y', 'mine');
    await publish('replay.b.y', 'other pattern');
    await publish('replay.a.y', 'other tenant', { tenantId: otherTenant });
    const sub = await subscriber(0, ['replay.>']);
    await sub.client.subscribeEvents('replay.a.*', { replayAfterSeq: mark.event!.streamSeq });
    // Replayed events come before the subscription's answer.
    expect(sub.events.map(text)).toEqual(['mine']);
  });

  it('refuses a replay over the cap with FAILED_PRECONDITION and keeps no subscription', async () => {
    const start = await publish('bulk.start', 'start');
    for (let n = 0; n < MAX_REPLAY + 1; n += 1) await publish(`bulk.${n}`, `bulk-${n}`);
    const sub = await subscriber(0, ['bulk.*', 'side.*']);
    const err = (await errorOf(sub.client.subscribeEvents('bulk.*', { replayAfterSeq: start.event!.streamSeq }))) as SwitchboardError;
    expect(err).toMatchObject({ code: ErrorCode.ERROR_CODE_FAILED_PRECONDITION, field: 'replay_after_seq' });
    expect(err.message).toContain(`${MAX_REPLAY + 1} stored events match bulk.* after stream_seq ${start.event!.streamSeq}, more than the ${MAX_REPLAY} a replay delivers`);
    await sub.client.subscribeEvents('side.*');
    await publish('bulk.after', 'not subscribed');
    await settle(sub, 'side.end');
    expect(sub.events).toEqual([]);
    // A live subscription whose restart with a too long replay is refused stays as it was: the marker on bulk.* arrives.
    await sub.client.subscribeEvents('bulk.*');
    expect((await errorOf(sub.client.subscribeEvents('bulk.*', { replayAfterSeq: start.event!.streamSeq }))).code).toBe(ErrorCode.ERROR_CODE_FAILED_PRECONDITION);
    await settle(sub, 'bulk.end');
    expect(sub.events).toEqual([]);
  });
});

describe('unsubscribe', () => {
  it('stops delivery of that pattern at once, and others continue', async () => {
    const sub = await subscriber(1, ['news.>', 'end.*']);
    await sub.client.subscribeEvents('news.>');
    await sub.client.subscribeEvents('end.*');
    await publish('news.one', 'one');
    await eventually(() => sub.events.length === 1, 15_000, 'the first event');
    await sub.client.unsubscribeEvents('news.>');
    // Unsubscribing what is not subscribed is no error.
    await sub.client.unsubscribeEvents('news.>');
    await publish('news.two', 'two');
    await settle(sub, 'end.x');
    expect(sub.events.map(text)).toEqual(['one']);
  });
});
