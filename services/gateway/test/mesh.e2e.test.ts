import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { service as healthService } from 'grpc-health-check';
import { SignJWT, base64url } from 'jose';
import WebSocket from 'ws';
import { DEV_JWT_SECRET, SwitchboardClient, mintDevToken, type Encoding } from '@switchboard/client';
import { freePort, infraEnv, launchService, startFreezableProxy, startMesh, type Mesh } from '@switchboard/devenv';
import { ErrorCode } from '@switchboard/errors';
import { newId } from '@switchboard/ids';
import { createClient } from '@switchboard/grpc';
import { messagingV1, type framesV1 } from '@switchboard/proto';

const HEARTBEAT_MS = 400;
const MAX_FRAME_BYTES = 4096;
const tenant = `t${newId().slice(0, 12)}`;
const user = (name: string) => `${name}-${newId().slice(0, 8)}`;

let mesh: Mesh;
const clients: SwitchboardClient[] = [];
const sockets: WebSocket[] = [];

async function connect(gateway: number, userId: string, encoding: Encoding = 'json', tenantId = tenant, roles?: string[]): Promise<SwitchboardClient> {
  const client = new SwitchboardClient({
    url: mesh.gateways[gateway]!.url,
    token: () => mintDevToken({ secret: DEV_JWT_SECRET, tenantId, userId, ...(roles ? { claims: { roles } } : {}) }),
    encoding,
  });
  clients.push(client);
  await client.connect();
  return client;
}

/** Resolves with the next `count` messages pushed to a client. */
function nextMessages(client: SwitchboardClient, count = 1, timeoutMs = 10_000): Promise<messagingV1.Message[]> {
  return new Promise((resolve, reject) => {
    const received: messagingV1.Message[] = [];
    const timer = setTimeout(() => reject(new Error(`got ${received.length} of ${count} messages`)), timeoutMs);
    const onMessage = (message: messagingV1.Message) => {
      received.push(message);
      if (received.length === count) {
        clearTimeout(timer);
        client.off('message', onMessage);
        resolve(received);
      }
    };
    client.on('message', onMessage);
  });
}

type Raw = { ws: WebSocket; frames: framesV1.ServerFrame[]; closed: Promise<{ code: number; reason: string }> };

/** A bare socket for what the client library would never send. */
async function rawSocket(gateway: number, options: { token?: string; protocols?: string[]; autoPong?: boolean } = {}): Promise<Raw> {
  const token = options.token ?? (await mintDevToken({ secret: DEV_JWT_SECRET, tenantId: tenant, userId: user('raw') }));
  const ws = new WebSocket(mesh.gateways[gateway]!.url, options.protocols ?? ['switchboard.v1.json'], {
    headers: { authorization: `Bearer ${token}` },
    autoPong: options.autoPong ?? true,
  });
  sockets.push(ws);
  const frames: framesV1.ServerFrame[] = [];
  ws.on('message', (data, isBinary) => {
    if (!isBinary) frames.push(JSON.parse(data.toString()));
  });
  const closed = new Promise<{ code: number; reason: string }>((resolve) => ws.on('close', (code, reason) => resolve({ code, reason: reason.toString() })));
  await new Promise<void>((resolve, reject) => {
    ws.once('open', () => resolve());
    ws.once('error', reject);
  });
  await waitFor(() => frames.some((f) => 'welcome' in f));
  return { ws, frames, closed };
}

/** What the server answers to an upgrade it refuses: status and body, and whether a socket ever opened. */
function handshake(gateway: number, headers: Record<string, string>, protocols: string[] = ['switchboard.v1.json'], path = '/ws') {
  return new Promise<{ status: number; body: string; opened: boolean }>((resolve) => {
    const url = mesh.gateways[gateway]!.url.replace(/\/ws$/, path);
    const ws = new WebSocket(url, protocols, { headers });
    ws.on('open', () => {
      ws.close();
      resolve({ status: 101, body: '', opened: true });
    });
    ws.on('unexpected-response', (_req, res) => {
      let body = '';
      res.on('data', (chunk: Buffer) => (body += chunk.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body, opened: false }));
    });
    ws.on('error', () => undefined);
  });
}

async function waitFor(condition: () => boolean, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 20));
  }
}

beforeAll(async () => {
  mesh = await startMesh({
    gateways: 2,
    ports: 'free',
    // A wide receipt window, so the coalescing test holds on a loaded machine too.
    gatewayEnv: { HEARTBEAT_INTERVAL_MS: String(HEARTBEAT_MS), MAX_FRAME_BYTES: String(MAX_FRAME_BYTES), RECEIPT_COALESCE_MS: '1000' },
  });
}, 120_000);

afterAll(async () => {
  for (const client of clients) client.close();
  for (const ws of sockets) ws.terminate();
  await mesh?.stop();
});

describe('the first path: a direct message across two gateway processes', () => {
  it('is committed, acknowledged to the sender and delivered to the recipient on the other gateway', async () => {
    const [alice, bob] = [user('alice'), user('bob')];
    const aliceClient = await connect(0, alice);
    const bobClient = await connect(1, bob, 'proto');
    expect(aliceClient.welcome?.gatewayId).toBe('gateway-1');
    expect(bobClient.welcome?.gatewayId).toBe('gateway-2');

    const arriving = nextMessages(bobClient);
    // The sender's own devices see the conversation too, in sequence order.
    const aliceSees = nextMessages(aliceClient, 2);
    const ack = await aliceClient.sendMessage({ recipientUserId: bob, text: 'Your lab results are ready' });
    expect(ack.seq).toBe(1);
    expect(ack.duplicate).toBe(false);
    const [message] = await arriving;
    expect(message).toMatchObject({ messageId: ack.messageId, conversationId: ack.conversationId, seq: 1, senderId: alice, text: 'Your lab results are ready', tenantId: tenant });

    // And back, over the binary encoding.
    const replyAck = await bobClient.sendMessage({ conversationId: ack.conversationId, text: 'Thank you' });
    expect(replyAck.seq).toBe(2);
    const seen = await aliceSees;
    expect(seen.map((m) => [m.seq, m.text])).toEqual([
      [1, 'Your lab results are ready'],
      [2, 'Thank you'],
    ]);
  });

  it('delivers to every device of the recipient, and a retried send is stored and delivered once', async () => {
    const [carol, dave] = [user('carol'), user('dave')];
    const carolClient = await connect(0, carol);
    const davePhone = await connect(1, dave);
    const daveLaptop = await connect(0, dave);
    const phone: messagingV1.Message[] = [];
    davePhone.on('message', (m) => phone.push(m));
    const laptop = nextMessages(daveLaptop);
    const clientMessageId = newId();
    const first = await carolClient.sendMessage({ recipientUserId: dave, text: 'once', clientMessageId });
    const retry = await carolClient.sendMessage({ recipientUserId: dave, text: 'once', clientMessageId });
    expect(retry).toMatchObject({ messageId: first.messageId, seq: first.seq, duplicate: true });
    expect((await laptop)[0]!.messageId).toBe(first.messageId);
    await waitFor(() => phone.length > 0);
    await new Promise((r) => setTimeout(r, 500));
    expect(phone.map((m) => m.messageId)).toEqual([first.messageId]);
  });

  it('answers each of many sends that leave together in one batch on its own: acks to their senders, a refusal to the outsider', async () => {
    // Sends from several users of two tenants at once on one gateway: they travel to messaging in shared
    // SendMessages calls, one per tenant, and each answer must still reach the frame it belongs to.
    const otherTenant = `t${newId().slice(0, 12)}`;
    const pairs = await Promise.all(
      Array.from({ length: 6 }, async (_, i) => {
        const tenantId = i % 2 ? otherTenant : tenant;
        const [from, to] = [user(`batch-from${i}`), user(`batch-to${i}`)];
        return { tenantId, from, to, sender: await connect(0, from, 'json', tenantId), recipient: await connect(1, to, 'json', tenantId) };
      }),
    );
    const received = pairs.map((p) => {
      const messages: messagingV1.Message[] = [];
      p.recipient.on('message', (m) => messages.push(m));
      return messages;
    });
    const first = await pairs[0]!.sender.sendMessage({ recipientUserId: pairs[0]!.to, text: 'opens the conversation' });
    const outsider = await connect(0, user('batch-outsider'));
    const clientMessageIds = pairs.map(() => newId());
    const [refused, ...acks] = await Promise.allSettled([
      outsider.sendMessage({ conversationId: first.conversationId, text: 'let me in' }),
      ...pairs.map((p, i) => p.sender.sendMessage({ recipientUserId: p.to, text: `batched ${i}`, clientMessageId: clientMessageIds[i]! })),
    ]);
    expect(refused.status).toBe('rejected');
    expect((refused as PromiseRejectedResult).reason).toMatchObject({ code: ErrorCode.ERROR_CODE_PERMISSION_DENIED });
    for (const [i, result] of acks.entries()) {
      expect(result.status).toBe('fulfilled');
      expect((result as PromiseFulfilledResult<messagingV1.MessageAck>).value).toMatchObject({ clientMessageId: clientMessageIds[i], seq: i === 0 ? 2 : 1, duplicate: false });
    }
    for (const [i, messages] of received.entries()) {
      await waitFor(() => messages.some((m) => m.text === `batched ${i}`), 10_000);
      expect(messages.find((m) => m.text === `batched ${i}`)).toMatchObject({ senderId: pairs[i]!.from, tenantId: pairs[i]!.tenantId });
    }
    // Nobody got anyone else's message.
    for (const [i, messages] of received.entries()) expect(messages.every((m) => m.senderId === pairs[i]!.from)).toBe(true);
  });

  it('keeps tenants apart: the same user id in another tenant receives nothing', async () => {
    const [erin, frank] = [user('erin'), user('frank')];
    const erinClient = await connect(0, erin);
    const frankHere = await connect(1, frank);
    const frankElsewhere = await connect(1, frank, 'json', `t${newId().slice(0, 12)}`);
    const leaked: messagingV1.Message[] = [];
    frankElsewhere.on('message', (m) => leaked.push(m));
    const arriving = nextMessages(frankHere);
    await erinClient.sendMessage({ recipientUserId: frank, text: 'for tenant A only' });
    await arriving;
    await new Promise((r) => setTimeout(r, 300));
    expect(leaked).toEqual([]);
  });
});

describe('tenant-wide broadcasts', () => {
  it('reach every connected device whose token carries the audience role, on every gateway, and later devices by sync', async () => {
    const messaging = createClient(messagingV1.MessagingServiceClient, mesh.addresses.messaging);
    try {
      const role = `nurse${newId().slice(0, 6)}`;
      const [nurseA, nurseB, patient] = [user('nurse-a'), user('nurse-b'), user('patient')];
      const nurseOnOne = await connect(0, nurseA, 'json', tenant, [role]);
      const nurseOnTwo = await connect(1, nurseB, 'proto', tenant, [role]);
      const patientClient = await connect(1, patient);
      const leaked: messagingV1.Message[] = [];
      patientClient.on('message', (m) => leaked.push(m));
      const arriving = [nextMessages(nurseOnOne), nextMessages(nurseOnTwo)];
      const { ack } = await messaging.sendBroadcast(
        { context: undefined, audience: { $case: 'audienceId', value: `role:${role}` }, clientMessageId: newId(), text: 'Code blue drill at 15:00', kind: 0, metadata: {} },
        { context: { tenantId: tenant, userId: 'ops-system', deviceId: '', internal: true } },
      );
      for (const received of await Promise.all(arriving)) {
        expect(received[0]).toMatchObject({ messageId: ack!.messageId, conversationId: `audience-role-${role}`, senderId: 'ops-system', text: 'Code blue drill at 15:00' });
      }
      // A nurse who connects afterwards finds it by sync; the patient never saw it.
      const late = await connect(0, user('nurse-c'), 'json', tenant, [role]);
      const page = await late.sync();
      expect(page.messages.map((m) => m.messageId)).toContain(ack!.messageId);
      await new Promise((r) => setTimeout(r, 300));
      expect(leaked).toEqual([]);
    } finally {
      messaging.close();
    }
  });
});

describe('receipts', () => {
  it('reach the sender coalesced and the reader\'s other devices, and clear unread counts everywhere', async () => {
    const [sender, reader] = [user('sender'), user('reader')];
    const senderClient = await connect(0, sender);
    const phone = await connect(1, reader);
    const laptop = await connect(0, reader);
    const arriving = nextMessages(phone, 3);
    const first = await senderClient.sendMessage({ recipientUserId: reader, text: 'one' });
    await senderClient.sendMessage({ conversationId: first.conversationId, text: 'two' });
    await senderClient.sendMessage({ conversationId: first.conversationId, text: 'three' });
    await arriving;

    const receiptFrames = (client: SwitchboardClient) => {
      const frames: framesV1.ReceiptEvent[] = [];
      client.on('frame', (frame) => {
        if (frame.kind?.$case === 'receipt') frames.push(frame.kind.value);
      });
      return frames;
    };
    const toSender = receiptFrames(senderClient);
    const toLaptop = receiptFrames(laptop);
    const readerState = (frames: framesV1.ReceiptEvent[]) => frames.flatMap((f) => f.receipts).filter((r) => r.userId === reader).at(-1);

    await Promise.all([1, 2, 3].map((seq) => phone.markDelivered(first.conversationId, seq)));
    expect(await phone.markRead(first.conversationId, 3)).toEqual({ conversationId: first.conversationId, deliveredSeq: 3, readSeq: 3 });

    await waitFor(() => readerState(toSender)?.readSeq === 3);
    await waitFor(() => readerState(toLaptop)?.readSeq === 3);
    // Four watermark moves, fewer frames: updates within the window travel together.
    expect(toSender.length).toBeLessThan(4);
    expect(readerState(toSender)).toMatchObject({ conversationId: first.conversationId, deliveredSeq: 3, readSeq: 3 });
    const list = await laptop.listConversations();
    expect(list.conversations.find((c) => c.conversationId === first.conversationId)).toMatchObject({ unreadCount: 0, readSeq: 3, lastMessage: { text: 'three' } });
  });
});

describe('handshake refusals: no socket without a valid token and a known protocol version', () => {
  const key = new TextEncoder().encode(DEV_JWT_SECRET);
  const bearer = (token: string) => ({ authorization: `Bearer ${token}` });

  it.each([
    ['no token', async () => ({})],
    ['a wrongly signed token', async () => bearer(await mintDevToken({ secret: 'not-the-secret', tenantId: tenant, userId: 'x' }))],
    ['an expired token', async () => bearer(await mintDevToken({ secret: DEV_JWT_SECRET, tenantId: tenant, userId: 'x', nowSeconds: Math.floor(Date.now() / 1000) - 7200, ttlSeconds: 60 }))],
    ['a token without tenant', async () => bearer(await new SignJWT({}).setProtectedHeader({ alg: 'HS256' }).setSubject('x').setExpirationTime('5m').sign(key))],
    [
      'an alg:none token',
      async () =>
        bearer(
          `${base64url.encode(JSON.stringify({ alg: 'none', typ: 'JWT' }))}.${base64url.encode(JSON.stringify({ sub: 'x', tid: tenant, exp: Math.floor(Date.now() / 1000) + 300 }))}.`,
        ),
    ],
  ])('refuses %s with 401', async (_name, headers) => {
    const result = await handshake(0, await headers());
    expect(result).toMatchObject({ status: 401, opened: false });
  });

  it('refuses a protocol version it does not speak with 400, naming the ones it does', async () => {
    const token = await mintDevToken({ secret: DEV_JWT_SECRET, tenantId: tenant, userId: 'x' });
    const result = await handshake(0, { authorization: `Bearer ${token}` }, ['switchboard.v9.json']);
    expect(result.status).toBe(400);
    expect(result.body).toContain('switchboard.v1.json, switchboard.v1.proto');
  });

  it('accepts the token as a bearer subprotocol entry (browsers) and never echoes it', async () => {
    const token = await mintDevToken({ secret: DEV_JWT_SECRET, tenantId: tenant, userId: user('browser') });
    const ws = new WebSocket(mesh.gateways[0]!.url, ['switchboard.v1.json', `bearer.${token}`]);
    sockets.push(ws);
    await new Promise((resolve, reject) => ws.once('open', resolve).once('error', reject));
    expect(ws.protocol).toBe('switchboard.v1.json');
  });

  it('answers 404 off the WebSocket path', async () => {
    const token = await mintDevToken({ secret: DEV_JWT_SECRET, tenantId: tenant, userId: 'x' });
    expect((await handshake(0, { authorization: `Bearer ${token}` }, ['switchboard.v1.json'], '/other')).status).toBe(404);
  });
});

describe('bad frames: a specific error or close code, and everyone else carries on', () => {
  it('answers malformed JSON, unknown kinds and binary frames with error frames and keeps the connection', async () => {
    const raw = await rawSocket(0);
    raw.ws.send('{not json');
    raw.ws.send(JSON.stringify({ requestId: 'r1', launchMissiles: {} }));
    raw.ws.send(Buffer.from([1, 2, 3]), { binary: true });
    raw.ws.send(JSON.stringify({ requestId: 'r2', sendMessage: { recipientUserId: 'a.b', clientMessageId: 'c1', text: 'x' } }));
    raw.ws.send(JSON.stringify({ requestId: 'r3', ping: { clientTimeMs: 7 } }));
    // Replies correlate by request id, not by order: r2 goes to messaging, r3 is answered here.
    await waitFor(() => raw.frames.some((f) => f.requestId === 'r2') && raw.frames.some((f) => f.requestId === 'r3'));
    const errors = raw.frames.filter((f) => 'error' in f).map((f) => (f as unknown as { requestId?: string; error: { code: string; field?: string } }));
    expect(errors.map((e) => e.error.code)).toEqual([
      'ERROR_CODE_INVALID_ARGUMENT',
      'ERROR_CODE_UNSUPPORTED',
      'ERROR_CODE_UNSUPPORTED',
      'ERROR_CODE_INVALID_ARGUMENT',
    ]);
    expect(errors[3]).toMatchObject({ requestId: 'r2', error: { field: 'recipient_user_id' } });
    expect(raw.frames.find((f) => f.requestId === 'r3')).toMatchObject({ pong: { clientTimeMs: 7 } });
  });

  it('closes a frame over the size limit with 1009 and invalid UTF-8 with 1007, and the gateway serves on', async () => {
    const bystander = await connect(0, user('bystander'));
    const big = await rawSocket(0);
    big.ws.send('x'.repeat(MAX_FRAME_BYTES + 1));
    expect((await big.closed).code).toBe(1009);
    const invalid = await rawSocket(0);
    invalid.ws.send(Buffer.from([0x7b, 0xc3, 0x28, 0x7d]), { binary: false });
    expect((await invalid.closed).code).toBe(1007);
    const pong = await bystander.ping();
    expect(pong.serverTimeMs).toBeGreaterThan(0);
  });
});

describe('liveness and token lifetime', () => {
  it('terminates a peer that stops answering pings, and keeps one that answers', async () => {
    const silent = await rawSocket(0, { autoPong: false });
    const healthy = await rawSocket(0);
    const started = Date.now();
    const { code } = await silent.closed;
    expect(code).toBe(1006);
    expect(Date.now() - started).toBeLessThan(HEARTBEAT_MS * 6);
    expect(healthy.ws.readyState).toBe(WebSocket.OPEN);
  });

  it('ends a connection whose token expires with 4001', async () => {
    const token = await mintDevToken({ secret: DEV_JWT_SECRET, tenantId: tenant, userId: user('short'), ttlSeconds: 2 });
    const raw = await rawSocket(1, { token });
    expect(await raw.closed).toEqual({ code: 4001, reason: 'token expired' });
  });
});

describe('graceful shutdown of a gateway', () => {
  it('tells clients to reconnect with jitter, closes the rest with 1012 at the deadline and exits 0', async () => {
    const env = infraEnv();
    const port = await freePort();
    const gateway = await launchService({
      service: 'gateway',
      name: 'gateway-draining',
      env: { ...env, PORT: String(port), GRPC_PORT: String(await freePort()), GATEWAY_ID: 'gateway-draining', MESSAGING_ADDR: mesh.addresses.messaging, SHUTDOWN_DEADLINE_MS: '3000', RECONNECT_JITTER_MS: '1000' },
      opsPort: await freePort(),
    });
    const token = await mintDevToken({ secret: DEV_JWT_SECRET, tenantId: tenant, userId: user('stubborn') });
    const ws = new WebSocket(`ws://127.0.0.1:${port}/ws`, ['switchboard.v1.json'], { headers: { authorization: `Bearer ${token}` } });
    sockets.push(ws);
    const frames: Record<string, unknown>[] = [];
    ws.on('message', (data) => frames.push(JSON.parse(data.toString())));
    const closed = new Promise<number>((resolve) => ws.on('close', (code) => resolve(code)));
    await waitFor(() => frames.some((f) => 'welcome' in f));

    const exit = gateway.stop(10_000);
    await waitFor(() => frames.some((f) => 'reconnect' in f));
    const reconnect = frames.find((f) => 'reconnect' in f) as { reconnect: { reconnectWithinMs: number; reason: string } };
    expect(reconnect.reconnect).toEqual({ reason: 'gateway draining', reconnectWithinMs: 1000 });
    // This client ignores the request, so the gateway closes it at its deadline.
    expect(await closed).toBe(1012);
    expect(await exit).toBe(0);
  });
});

describe('operations: every service answers health, reflection and metrics', () => {
  const Health = grpc.makeGenericClientConstructor(healthService, 'Health');
  const reflectionProto = path.join(path.dirname(require.resolve('@grpc/reflection/package.json')), 'build', 'proto', 'grpc', 'reflection', 'v1', 'reflection.proto');
  const reflection = grpc.loadPackageDefinition(protoLoader.loadSync(reflectionProto, { keepCase: true })) as unknown as {
    grpc: { reflection: { v1: { ServerReflection: new (address: string, creds: grpc.ChannelCredentials) => grpc.Client & { ServerReflectionInfo(): grpc.ClientDuplexStream<unknown, { list_services_response?: { service: { name: string }[] } }> } } } };
  };

  function healthOf(address: string, service: string): Promise<string> {
    const client = new Health(address, grpc.credentials.createInsecure()) as grpc.Client & Record<string, Function>;
    return new Promise((resolve, reject) =>
      client.check({ service }, (err: Error | null, res: { status: string }) => {
        client.close();
        if (err) reject(err);
        else resolve(res.status);
      }),
    );
  }

  function servicesOf(address: string): Promise<string[]> {
    const client = new reflection.grpc.reflection.v1.ServerReflection(address, grpc.credentials.createInsecure());
    return new Promise((resolve, reject) => {
      const call = client.ServerReflectionInfo();
      call.on('data', (res) => {
        resolve((res.list_services_response?.service ?? []).map((s: { name: string }) => s.name).sort());
        call.end();
        client.close();
      });
      call.on('error', reject);
      call.write({ list_services: '' });
    });
  }

  it.each([
    ['messaging', 'switchboard.messaging.v1.MessagingService'],
    ['presence', 'switchboard.presence.v1.PresenceService'],
    ['room', 'switchboard.room.v1.RoomService'],
    ['notification', 'switchboard.notification.v1.NotificationService'],
    ['gateway', 'switchboard.gateway.v1.GatewayAdminService'],
  ] as const)('%s serves gRPC health (SERVING) and reflection of %s', async (name, serviceName) => {
    const address = name === 'gateway' ? mesh.gateways[0]!.grpcAddress : mesh.addresses[name];
    expect(await healthOf(address, '')).toBe('SERVING');
    expect(await healthOf(address, serviceName)).toBe('SERVING');
    // Reflection describes this service's API, and only it.
    expect(await servicesOf(address)).toEqual([serviceName]);
  });

  it('sheds sends past its bound with OVERLOADED at once, while an earlier send still waits for messaging', async () => {
    // Messaging behind a proxy that can be frozen: bytes stop flowing, so a send waits until its deadline.
    const proxy = await startFreezableProxy(mesh.addresses.messaging);
    const port = await freePort();
    const gateway = await launchService({
      service: 'gateway',
      name: 'gateway-shedding',
      env: {
        ...infraEnv(),
        PORT: String(port),
        GRPC_PORT: String(await freePort()),
        GATEWAY_ID: 'gateway-shedding',
        MESSAGING_ADDR: proxy.address,
        PRESENCE_ADDR: mesh.addresses.presence,
        ROOM_ADDR: mesh.addresses.room,
        MAX_PENDING_SENDS: '1',
        OVERLOAD_RETRY_AFTER_MS: '250',
        BACKEND_DEADLINE_MS: '3000',
        SHUTDOWN_DEADLINE_MS: '3000',
      },
      opsPort: await freePort(),
    });
    try {
      const token = await mintDevToken({ secret: DEV_JWT_SECRET, tenantId: tenant, userId: user('shed') });
      const ws = new WebSocket(`ws://127.0.0.1:${port}/ws`, ['switchboard.v1.json'], { headers: { authorization: `Bearer ${token}` } });
      sockets.push(ws);
      const frames: { requestId?: string; error?: { code: string; retryAfterMs?: number } }[] = [];
      ws.on('message', (data) => frames.push(JSON.parse(data.toString())));
      await waitFor(() => frames.some((f) => 'welcome' in f));
      proxy.freeze();
      const sendFrame = (requestId: string) =>
        ws.send(JSON.stringify({ requestId, sendMessage: { recipientUserId: user('shed-to'), clientMessageId: newId(), text: requestId } }));
      sendFrame('waits');
      await new Promise((r) => setTimeout(r, 200));
      sendFrame('shed');
      await waitFor(() => frames.some((f) => f.requestId === 'shed'));
      // Refused while the first send is still unanswered: a fast, specific, retryable refusal, not a timeout.
      expect(frames.some((f) => f.requestId === 'waits')).toBe(false);
      expect(frames.find((f) => f.requestId === 'shed')).toMatchObject({ error: { code: 'ERROR_CODE_OVERLOADED', retryAfterMs: 250 } });
      // The frozen send ends at its deadline as retryable; once messaging answers again, sends go through.
      await waitFor(() => frames.some((f) => f.requestId === 'waits'), 10_000);
      expect(frames.find((f) => f.requestId === 'waits')?.error?.code).toMatch(/ERROR_CODE_(UNAVAILABLE|DEADLINE_EXCEEDED)/);
      proxy.thaw();
      proxy.cut();
      // A channel that reconnects may refuse the first tries as UNAVAILABLE; a client tries again.
      let acked = false;
      for (let attempt = 0; !acked && attempt < 50; attempt += 1) {
        sendFrame(`after-${attempt}`);
        await waitFor(() => frames.some((f) => f.requestId === `after-${attempt}`), 10_000);
        acked = 'messageAck' in frames.find((f) => f.requestId === `after-${attempt}`)!;
        if (!acked) await new Promise((r) => setTimeout(r, 200));
      }
      expect(acked).toBe(true);
      const closed = new Promise((resolve) => ws.once('close', resolve));
      ws.close();
      await closed;
    } finally {
      expect(await gateway.stop(10_000)).toBe(0);
      proxy.close();
    }
  });

  it('serves Prometheus metrics that count what just happened', async () => {
    const client = await connect(0, user('metrics'));
    await client.ping();
    const text = await (await fetch(`http://127.0.0.1:${mesh.gateways[0]!.process.opsPort}/metrics`)).text();
    expect(text).toMatch(/^gateway_connections(\{[^}]*\})? [1-9]/m);
    expect(text).toMatch(/^gateway_frames_received_total\{[^}]*kind="ping"[^}]*\} [1-9]/m);
    expect(text).toMatch(/^gateway_frame_duration_seconds_count\{[^}]*kind="ping"[^}]*\} [1-9]/m);
    expect(text).toMatch(/^gateway_handshakes_rejected_total\{[^}]*reason="unauthenticated"[^}]*\} [1-9]/m);
    const messaging = mesh.services.find((s) => s.name === 'messaging')!;
    const messagingMetrics = await (await fetch(`http://127.0.0.1:${messaging.opsPort}/metrics`)).text();
    expect(messagingMetrics).toMatch(/^rpc_server_duration_seconds_count\{[^}]*method="SendMessage"[^}]*code="OK"[^}]*\} [1-9]/m);
  });
});
