// The client against a scripted peer (test/support/fake-gateway.ts) on
// 127.0.0.1: handshake, correlation, timeouts, reconnection, drain, dead
// connection detection. The real gateway is exercised end to end elsewhere.
import { once } from 'node:events';
import WebSocket, { WebSocketServer } from 'ws';
import {
  DeadlineExceededError,
  FrameTooLargeError,
  InvalidArgumentError,
  PermissionDeniedError,
  SwitchboardError,
  UnavailableError,
  UnsupportedError,
} from '@switchboard/errors';
import { commonV1, framesV1 } from '@switchboard/proto';
import {
  HandshakeError,
  mintDevToken,
  standardTransport,
  SwitchboardClient,
  type ClientEvents,
  type DisconnectedEvent,
  type ReconnectingEvent,
  type StandardWebSocketConstructor,
  type SwitchboardClientOptions,
} from '../src';
import { FakeGateway, SECRET, defaultReply, type FakeGatewayOptions } from './support/fake-gateway';

const token = () => mintDevToken({ secret: SECRET, tenantId: 't1', userId: 'alice', deviceId: 'laptop' });

let gateway: FakeGateway;
const clients: SwitchboardClient[] = [];

async function startGateway(options: FakeGatewayOptions = {}): Promise<FakeGateway> {
  gateway = await FakeGateway.start(options);
  return gateway;
}

function newClient(options: Partial<SwitchboardClientOptions> = {}): SwitchboardClient {
  const client = new SwitchboardClient({ url: gateway.url, token, ...options });
  clients.push(client);
  return client;
}

/** Collects every emission of an event. */
function record<E extends keyof ClientEvents>(client: SwitchboardClient, event: E): ClientEvents[E][0][] {
  const seen: ClientEvents[E][0][] = [];
  (client.on as (e: E, l: (arg: ClientEvents[E][0]) => void) => unknown)(event, (arg) => seen.push(arg));
  return seen;
}

/** The next emission of an event (unlike events.once, not rejected by an 'error' in between). */
function next<E extends keyof ClientEvents>(client: SwitchboardClient, event: E): Promise<ClientEvents[E][0]> {
  return new Promise((resolve) => (client.once as (e: E, l: (arg: ClientEvents[E][0]) => void) => unknown)(event, resolve));
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

afterEach(async () => {
  await Promise.all(clients.splice(0).map((c) => c.close()));
  await gateway?.stop();
});

describe('handshake', () => {
  it.each(['json', 'proto'] as const)('connects with %s and resolves with the Welcome', async (encoding) => {
    await startGateway();
    const client = newClient({ encoding });
    const welcomes = record(client, 'welcome');
    const welcome = await client.connect();
    expect(welcome).toMatchObject({ userId: 'alice', tenantId: 't1', deviceId: 'laptop', gatewayId: 'gw-test', maxFrameBytes: 65_536 });
    expect(welcome.tokenExpiresAt).toBeInstanceOf(Date);
    expect(welcomes).toEqual([welcome]);
    expect(client.state).toBe('open');
    const peer = await gateway.peer(0);
    expect(peer.encoding).toBe(encoding);
    expect(peer.ws.protocol).toBe(`switchboard.v1.${encoding}`);
    expect(peer.via).toBe('header');
  });

  it.each(['query', 'subprotocol'] as const)('can carry the token in the %s', async (tokenPlacement) => {
    await startGateway();
    const client = newClient({ tokenPlacement });
    await client.connect();
    const peer = await gateway.peer(0);
    expect(peer.via).toBe(tokenPlacement);
    // The server never selects the bearer entry.
    expect(peer.ws.protocol).toBe('switchboard.v1.json');
  });

  it('rejects with HandshakeError 401 for a bad token, without reconnecting', async () => {
    await startGateway();
    const client = newClient({ token: await mintDevToken({ secret: 'wrong', tenantId: 't1', userId: 'alice' }) });
    const reconnecting = record(client, 'reconnecting');
    const err = await client.connect().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(HandshakeError);
    expect(err).toMatchObject({ status: 401, code: commonV1.ErrorCode.ERROR_CODE_UNAUTHENTICATED });
    expect((err as Error).message).toContain('401');
    await sleep(50);
    expect(reconnecting).toEqual([]);
    expect(gateway.peers).toHaveLength(0);
  });

  it('rejects with HandshakeError 400 when the server speaks no offered version', async () => {
    await startGateway({ protocols: ['switchboard.v2.json'] });
    const err = await newClient().connect().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(HandshakeError);
    expect(err).toMatchObject({ status: 400, code: commonV1.ErrorCode.ERROR_CODE_UNSUPPORTED });
  });

  it('rejects with UnavailableError when nothing listens', async () => {
    await startGateway();
    const url = gateway.url;
    await gateway.stop();
    const client = new SwitchboardClient({ url, token });
    clients.push(client);
    await expect(client.connect()).rejects.toBeInstanceOf(UnavailableError);
    expect(client.state).toBe('idle');
  });

  it('gives up on a connection that sends no Welcome within connectTimeoutMs', async () => {
    const silent = new WebSocketServer({ host: '127.0.0.1', port: 0, handleProtocols: (p) => [...p][0] ?? false });
    await once(silent, 'listening');
    try {
      const port = (silent.address() as { port: number }).port;
      const client = new SwitchboardClient({ url: `ws://127.0.0.1:${port}/ws`, token, connectTimeoutMs: 100 });
      clients.push(client);
      await expect(client.connect()).rejects.toBeInstanceOf(DeadlineExceededError);
    } finally {
      for (const c of silent.clients) c.terminate();
      await new Promise((r) => silent.close(r));
    }
  });

  it('asks the token provider before every connect', async () => {
    await startGateway();
    let calls = 0;
    const client = newClient({
      token: () => {
        calls++;
        return mintDevToken({ secret: SECRET, tenantId: 't1', userId: `alice-${calls}` });
      },
      reconnect: { baseDelayMs: 1, maxDelayMs: 1 },
    });
    expect((await client.connect()).userId).toBe('alice-1');
    (await gateway.peer(0)).ws.terminate();
    expect((await next(client, 'welcome')).userId).toBe('alice-2');
    expect(calls).toBe(2);
  });
});

describe('requests', () => {
  it('correlates replies by request id, whatever their order', async () => {
    const held: { frame: framesV1.ClientFrame; send: () => void }[] = [];
    await startGateway({
      reply: (frame, peer) => {
        held.push({ frame, send: () => peer.send(defaultReply(frame), frame.requestId) });
        if (held.length === 3) for (const h of held.reverse()) h.send();
        return undefined;
      },
    });
    const client = newClient();
    await client.connect();
    const [a, b, c] = await Promise.all([
      client.sendMessage({ recipientUserId: 'bob', text: 'one', clientMessageId: 'c-a' }),
      client.sendMessage({ conversationId: 'conv-9', text: 'two', clientMessageId: 'c-b' }),
      client.markRead('conv-9', 7),
    ]);
    expect(a.clientMessageId).toBe('c-a');
    expect(b).toMatchObject({ clientMessageId: 'c-b', conversationId: 'conv-9' });
    expect(c).toEqual({ conversationId: 'conv-9', deliveredSeq: 7, readSeq: 7 });
    const ids = held.map((h) => h.frame.requestId);
    expect(new Set(ids).size).toBe(3);
    expect(ids.every((id) => id !== '')).toBe(true);
  });

  it('sends the frame the protocol expects and generates a client message id', async () => {
    await startGateway();
    const client = newClient({ encoding: 'proto' });
    await client.connect();
    await client.sendMessage({ recipientUserId: 'bob', text: 'hi' });
    const frame = (await gateway.peer(0)).received[0]!;
    expect(frame.kind?.$case).toBe('sendMessage');
    const value = (frame.kind as { value: framesV1.SendMessage }).value;
    expect(value.target).toEqual({ $case: 'recipientUserId', value: 'bob' });
    expect(value.text).toBe('hi');
    expect(value.clientMessageId).toMatch(/^[0-9a-f]{32}$/);
  });

  it('resolves request() with the reply kind and convenience methods with its value', async () => {
    await startGateway();
    const client = newClient();
    await client.connect();
    const reply = await client.request({ $case: 'ping', value: { clientTimeMs: 5 } });
    expect(reply.$case).toBe('pong');
    expect(reply.value.clientTimeMs).toBe(5);
    const pong = await client.ping();
    expect(pong.rttMs).toBeGreaterThanOrEqual(0);
    expect(await client.listConversations({ pageSize: 10 })).toEqual({ conversations: [], page: { nextPageToken: '' } });
  });

  it('rejects with the server error as a SwitchboardError', async () => {
    await startGateway({
      reply: () => ({ $case: 'error', value: { code: commonV1.ErrorCode.ERROR_CODE_RATE_LIMITED, message: 'slow down', field: '', retryAfterMs: 1200 } }),
    });
    const client = newClient();
    await client.connect();
    const err = await client.markRead('conv-9', 3).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(SwitchboardError);
    expect(err).toMatchObject({ code: commonV1.ErrorCode.ERROR_CODE_RATE_LIMITED, message: 'slow down', retryAfterMs: 1200 });
  });

  it('rejects with UNSUPPORTED for a reserved frame kind the server does not implement', async () => {
    await startGateway();
    const client = newClient();
    await client.connect();
    await expect(client.request({ $case: 'typing', value: { conversationId: 'c', typing: true } })).rejects.toMatchObject({
      code: commonV1.ErrorCode.ERROR_CODE_UNSUPPORTED,
    });
  });

  it('times out with DeadlineExceededError and ignores the late reply', async () => {
    let release: (() => void) | undefined;
    await startGateway({
      reply: (frame, peer) => {
        release = () => peer.send(defaultReply(frame), frame.requestId);
        return undefined;
      },
    });
    const client = newClient();
    const errors = record(client, 'error');
    await client.connect();
    await expect(client.ping({ timeoutMs: 50 })).rejects.toBeInstanceOf(DeadlineExceededError);
    release!();
    await sleep(30);
    expect(errors).toEqual([]);
    expect(client.state).toBe('open');
  });

  it('rejects pending requests with UnavailableError when the connection drops', async () => {
    await startGateway({ reply: () => undefined });
    const client = newClient({ reconnect: { enabled: false } });
    await client.connect();
    const pending = client.getHistory({ conversationId: 'c' });
    await sleep(20);
    (await gateway.peer(0)).ws.terminate();
    await expect(pending).rejects.toBeInstanceOf(UnavailableError);
  });

  it('rejects at once when not connected', async () => {
    await startGateway();
    await expect(newClient().ping()).rejects.toBeInstanceOf(UnavailableError);
  });

  it('refuses locally a frame above the Welcome max_frame_bytes', async () => {
    await startGateway({ maxFrameBytes: 200 });
    const client = newClient();
    await client.connect();
    await expect(client.sendMessage({ recipientUserId: 'bob', text: 'x'.repeat(500) })).rejects.toBeInstanceOf(FrameTooLargeError);
    expect((await gateway.peer(0)).received).toHaveLength(0);
  });

  it('validates the sendMessage target', async () => {
    await startGateway();
    const client = newClient();
    await client.connect();
    await expect(client.sendMessage({ text: 'nobody' })).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(client.sendMessage({ text: 'both', conversationId: 'c', recipientUserId: 'u' })).rejects.toBeInstanceOf(InvalidArgumentError);
  });
});

describe('pushes', () => {
  it('emits message and frame for pushed frames', async () => {
    await startGateway();
    const client = newClient({ encoding: 'proto' });
    const frames = record(client, 'frame');
    await client.connect();
    const message = next(client, 'message');
    (await gateway.peer(0)).send({
      $case: 'message',
      value: {
        message: {
          tenantId: 't1', conversationId: 'dm', messageId: 'm1', seq: 3, senderId: 'bob', clientMessageId: 'x', kind: 1,
          text: 'hello', attachments: [], mentions: [], createdAt: new Date(), editedAt: undefined, deleted: false, metadata: {},
        },
      },
    });
    expect(await message).toMatchObject({ conversationId: 'dm', seq: 3, senderId: 'bob', text: 'hello' });
    expect(frames.map((f) => f.kind?.$case)).toEqual(['welcome', 'message']);
  });

  it('reports undecodable frames via error and keeps working', async () => {
    await startGateway();
    const client = newClient();
    const errors = record(client, 'error');
    await client.connect();
    const peer = await gateway.peer(0);
    peer.sendRaw('{"requestId": not json', false);
    peer.sendRaw(Buffer.from([1, 2, 3]), true);
    peer.sendRaw('{"requestId":"","fromTheFuture":{}}', false);
    await expect(client.ping()).resolves.toMatchObject({ clientTimeMs: expect.any(Number) });
    expect(errors).toHaveLength(2);
    expect(errors[0]).toBeInstanceOf(InvalidArgumentError);
    expect(errors[1]).toBeInstanceOf(UnsupportedError);
  });

  it('does not throw on a bad frame when nobody listens for error', async () => {
    await startGateway();
    const warnings: string[] = [];
    const log = () => undefined;
    const client = newClient({ logger: { debug: log, info: log, error: log, warn: (_o, m) => warnings.push(m ?? '') } });
    await client.connect();
    (await gateway.peer(0)).sendRaw('garbage', false);
    await client.ping();
    expect(warnings).toContain('frame is not valid JSON');
  });
});

describe('reconnection', () => {
  it('reconnects with exponential backoff and full jitter after the server drops the connection', async () => {
    await startGateway();
    const client = newClient({ random: () => 0.5, reconnect: { baseDelayMs: 40, maxDelayMs: 100, stableAfterMs: 60_000 } });
    const reconnecting = record(client, 'reconnecting');
    const disconnected = record(client, 'disconnected');
    await client.connect();
    for (let i = 0; i < 4; i++) {
      (await gateway.peer(i)).ws.terminate();
      await next(client, 'welcome');
    }
    // attempt n waits random * min(max, base * 2^(n-1)) = 0.5 * [40, 80, 100, 100]
    expect(reconnecting).toEqual<ReconnectingEvent[]>([
      { attempt: 1, delayMs: 20 },
      { attempt: 2, delayMs: 40 },
      { attempt: 3, delayMs: 50 },
      { attempt: 4, delayMs: 50 },
    ]);
    expect(disconnected.every((d) => d.willReconnect && d.code === 1006)).toBe(true);
    expect(gateway.peers).toHaveLength(5);
  });

  it('backs off across failed attempts while the gateway is down, and resumes when it is back', async () => {
    await startGateway();
    const client = newClient({ random: () => 0.99, reconnect: { baseDelayMs: 20, maxDelayMs: 80 } });
    const reconnecting = record(client, 'reconnecting');
    await client.connect();
    const port = Number(new URL(gateway.url).port);
    await gateway.stop();
    await sleep(200);
    expect(client.state).toBe('reconnecting');
    expect(reconnecting.length).toBeGreaterThanOrEqual(3);
    expect(reconnecting.slice(0, 3).map((r) => r.attempt)).toEqual([1, 2, 3]);
    expect(reconnecting.slice(0, 3).map((r) => r.delayMs)).toEqual([19, 39, 79]);
    expect(reconnecting.every((r) => r.delayMs <= 80)).toBe(true);
    // Bring a gateway back on the same port.
    gateway = await startGatewayOnPort(port);
    const welcome = await next(client, 'welcome');
    expect(welcome.userId).toBe('alice');
  });

  it('resets the attempts once a connection has been stable for stableAfterMs', async () => {
    await startGateway();
    const client = newClient({ random: () => 0.5, reconnect: { baseDelayMs: 40, maxDelayMs: 1000, stableAfterMs: 80 } });
    const reconnecting = record(client, 'reconnecting');
    await client.connect();
    (await gateway.peer(0)).ws.terminate();
    await next(client, 'welcome');
    (await gateway.peer(1)).ws.terminate(); // before stableAfterMs: attempt 2
    await next(client, 'welcome');
    await sleep(150); // stable now
    (await gateway.peer(2)).ws.terminate();
    await next(client, 'welcome');
    expect(reconnecting.map((r) => r.attempt)).toEqual([1, 2, 1]);
    expect(reconnecting.map((r) => r.delayMs)).toEqual([20, 40, 20]);
  });

  it('does not reconnect after close(), and the server sees 1000', async () => {
    await startGateway();
    const client = newClient();
    const disconnected = record(client, 'disconnected');
    const closed = record(client, 'closed');
    await client.connect();
    const peer = await gateway.peer(0);
    await client.close();
    expect(await peer.closed).toEqual({ code: 1000, reason: 'client closed' });
    await sleep(50);
    expect(gateway.peers).toHaveLength(1);
    expect(client.state).toBe('closed');
    expect(disconnected).toEqual<DisconnectedEvent[]>([{ code: 1000, reason: 'client closed', willReconnect: false }]);
    expect(closed).toEqual([{}]);
  });

  it('does not reconnect after 4003 (session revoked)', async () => {
    await startGateway();
    const client = newClient({ reconnect: { baseDelayMs: 1 } });
    const closed = next(client, 'closed');
    const errors = record(client, 'error');
    const disconnected = next(client, 'disconnected');
    await client.connect();
    (await gateway.peer(0)).ws.close(4003, 'session revoked');
    expect(await disconnected).toEqual({ code: 4003, reason: 'session revoked', willReconnect: false });
    expect((await closed).error).toBeInstanceOf(PermissionDeniedError);
    expect(errors[0]).toBeInstanceOf(PermissionDeniedError);
    await sleep(30);
    expect(gateway.peers).toHaveLength(1);
  });

  it('reconnects after 4001 (token expired) with a fresh token from the provider', async () => {
    await startGateway();
    const tokens: string[] = [];
    const client = newClient({
      token: async () => {
        const t = await mintDevToken({ secret: SECRET, tenantId: 't1', userId: 'alice', ttlSeconds: 100 + tokens.length });
        tokens.push(t);
        return t;
      },
      reconnect: { baseDelayMs: 1 },
    });
    await client.connect();
    (await gateway.peer(0)).ws.close(4001, 'token expired');
    await next(client, 'welcome');
    expect(tokens).toHaveLength(2);
    expect(tokens[0]).not.toBe(tokens[1]);
  });

  it('stops reconnecting when a static token is refused with 401', async () => {
    await startGateway();
    const client = newClient({ token: await token(), reconnect: { baseDelayMs: 1 } });
    await client.connect();
    const port = Number(new URL(gateway.url).port);
    await gateway.stop();
    gateway = await startGatewayOnPort(port, 'another-secret');
    const closed = await next(client, 'closed');
    expect(closed.error).toBeInstanceOf(HandshakeError);
    expect((closed.error as HandshakeError).status).toBe(401);
    expect(client.state).toBe('closed');
  });
});

describe('server-requested reconnect (drain)', () => {
  it('closes and reconnects after a jittered delay in [0, reconnect_within_ms), without counting a failure', async () => {
    await startGateway();
    const client = newClient({ random: () => 0.5, reconnect: { baseDelayMs: 40, stableAfterMs: 60_000 } });
    const reconnecting = record(client, 'reconnecting');
    const disconnected = record(client, 'disconnected');
    await client.connect();
    const first = await gateway.peer(0);
    const requested = next(client, 'reconnect-requested');
    const started = Date.now();
    first.send({ $case: 'reconnect', value: { reason: 'draining', reconnectWithinMs: 200 } });
    expect(await requested).toEqual({ reason: 'draining', reconnectWithinMs: 200, delayMs: 100 });
    expect(await first.closed).toEqual({ code: 1000, reason: 'reconnect requested' });
    expect(Date.now() - started).toBeGreaterThanOrEqual(90);
    await next(client, 'welcome');
    expect(disconnected).toEqual([{ code: 1000, reason: 'reconnect requested', willReconnect: true }]);
    expect(reconnecting).toEqual([{ attempt: 0, delayMs: 0 }]);
    // The drain did not advance the backoff: the next failure is attempt 1.
    (await gateway.peer(1)).ws.terminate();
    await next(client, 'welcome');
    expect(reconnecting[1]).toEqual({ attempt: 1, delayMs: 20 });
  });

  it('keeps its jittered moment when the server closes first with 1012', async () => {
    await startGateway();
    const client = newClient({ random: () => 0.5 });
    const reconnecting = record(client, 'reconnecting');
    await client.connect();
    const first = await gateway.peer(0);
    first.send({ $case: 'reconnect', value: { reason: 'draining', reconnectWithinMs: 400 } });
    await next(client, 'reconnect-requested');
    first.ws.close(1012, 'service restart');
    const disconnected = await next(client, 'disconnected');
    expect(disconnected).toEqual({ code: 1012, reason: 'service restart', willReconnect: true });
    await next(client, 'welcome');
    expect(reconnecting).toHaveLength(1);
    expect(reconnecting[0]!.attempt).toBe(0);
    expect(reconnecting[0]!.delayMs).toBeGreaterThan(100);
    expect(reconnecting[0]!.delayMs).toBeLessThanOrEqual(200);
  });

  it('answers requests on the old connection until the moment comes', async () => {
    await startGateway();
    const client = newClient({ random: () => 0.99 });
    await client.connect();
    (await gateway.peer(0)).send({ $case: 'reconnect', value: { reason: 'draining', reconnectWithinMs: 300 } });
    await next(client, 'reconnect-requested');
    await expect(client.ping()).resolves.toBeDefined();
    expect(gateway.peers).toHaveLength(1);
  });
});

describe('dead connection detection', () => {
  it('terminates and reconnects when nothing arrives for heartbeat_interval_ms * 2 + grace', async () => {
    await startGateway({ heartbeatIntervalMs: 40, autoPing: false });
    const client = newClient({ heartbeatGraceMs: 40, reconnect: { baseDelayMs: 1 } });
    await client.connect();
    const started = Date.now();
    const disconnected = await next(client, 'disconnected');
    const elapsed = Date.now() - started;
    expect(disconnected).toEqual({ code: 1006, reason: 'no heartbeat from the server', willReconnect: true });
    expect(elapsed).toBeGreaterThanOrEqual(110);
    expect(elapsed).toBeLessThan(1000);
    await next(client, 'welcome');
  });

  it('stays connected while the server pings', async () => {
    await startGateway({ heartbeatIntervalMs: 40, autoPing: true });
    const client = newClient({ heartbeatGraceMs: 40 });
    const disconnected = record(client, 'disconnected');
    await client.connect();
    await sleep(400);
    expect(disconnected).toEqual([]);
    expect(client.state).toBe('open');
  });

  it('detects a peer that stops pinging mid-connection', async () => {
    await startGateway({ heartbeatIntervalMs: 40, autoPing: true });
    const client = newClient({ heartbeatGraceMs: 40, reconnect: { enabled: false } });
    await client.connect();
    await sleep(200);
    expect(client.state).toBe('open');
    gateway.stopPinging();
    const disconnected = await next(client, 'disconnected');
    expect(disconnected.reason).toBe('no heartbeat from the server');
    expect(disconnected.willReconnect).toBe(false);
  });
});

describe('standard (browser-style) transport', () => {
  it('connects with the token in the subprotocol and keeps the watchdog fed with Ping frames', async () => {
    await startGateway({ heartbeatIntervalMs: 40, autoPing: false });
    const client = newClient({
      transport: standardTransport(WebSocket as unknown as StandardWebSocketConstructor),
      tokenPlacement: 'subprotocol',
      encoding: 'proto',
      heartbeatGraceMs: 40,
    });
    const disconnected = record(client, 'disconnected');
    await client.connect();
    const peer = await gateway.peer(0);
    expect(peer.via).toBe('subprotocol');
    await sleep(300);
    expect(disconnected).toEqual([]);
    expect(peer.received.filter((f) => f.kind?.$case === 'ping').length).toBeGreaterThanOrEqual(3);
    expect((await client.sendMessage({ recipientUserId: 'bob', text: 'hi' })).clientMessageId).not.toBe('');
  });
});

async function startGatewayOnPort(port: number, secret = SECRET): Promise<FakeGateway> {
  // Same scripted gateway, fixed port (a restart of "the same" gateway).
  return FakeGateway.start({ port, secret });
}
