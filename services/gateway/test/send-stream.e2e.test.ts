import * as grpc from '@grpc/grpc-js';
import WebSocket from 'ws';
import { DEV_JWT_SECRET, SwitchboardClient, mintDevToken } from '@switchboard/client';
import { freePort, infraEnv, launchService, startFreezableProxy, startMesh, type FreezableProxy, type Mesh, type ServiceProcess } from '@switchboard/devenv';
import { ErrorCode } from '@switchboard/errors';
import { newId } from '@switchboard/ids';
import { callMetadata, channelCredentials, TENANT_METADATA } from '@switchboard/grpc';
import { messagingV1, type framesV1 } from '@switchboard/proto';

// The gateway's sends travel to messaging as batches on one long-lived
// SendMessagesStream per tenant. These tests hold the stream to what the
// unary SendMessages promised: each send its own ack or error, the same
// checks, and a broken stream failing exactly the sends it carried.

const tenant = `t${newId().slice(0, 12)}`;
const otherTenant = `t${newId().slice(0, 12)}`;
const user = (name: string) => `${name}-${newId().slice(0, 8)}`;

let mesh: Mesh;
const clients: SwitchboardClient[] = [];
const sockets: WebSocket[] = [];

beforeAll(async () => {
  mesh = await startMesh({ gateways: 1, ports: 'free' });
}, 120_000);

afterAll(async () => {
  for (const client of clients) client.close();
  for (const ws of sockets) ws.terminate();
  await mesh?.stop();
});

async function waitFor(condition: () => boolean, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 20));
  }
}

type StreamAnswer = messagingV1.SendMessagesStreamResponse;
type Stream = grpc.ClientDuplexStream<messagingV1.SendMessagesStreamRequest, StreamAnswer>;

/** A SendMessagesStream to the mesh's messaging with the given call metadata, collecting answers and the final status. */
function openStream(metadata: grpc.Metadata) {
  const client = new messagingV1.MessagingServiceClient(mesh.addresses.messaging, channelCredentials());
  const call: Stream = client.sendMessagesStream(metadata);
  const answers: StreamAnswer[] = [];
  call.on('data', (answer: StreamAnswer) => answers.push(answer));
  const ended = new Promise<{ code: number; details: string }>((resolve) => {
    call.on('error', (err: grpc.ServiceError) => resolve({ code: err.code, details: err.details }));
    call.on('status', (status: grpc.StatusObject) => resolve({ code: status.code, details: status.details }));
  });
  return { client, call, answers, ended };
}

function item(from: string, to: string, text: string, extra: Partial<messagingV1.SendMessageRequest> = {}): messagingV1.SendMessagesItem {
  return {
    userId: from,
    deviceId: '',
    roles: [],
    deadlineMs: 5000,
    traceContext: {},
    request: { context: undefined, clientMessageId: newId(), kind: 0, text, attachments: [], mentions: [], metadata: {}, target: { $case: 'recipientUserId', value: to }, ...extra },
  };
}

const internal = (tenantId = tenant) => ({ tenantId, userId: '', deviceId: '', internal: true });

describe('SendMessagesStream: SendMessages batches on one stream', () => {
  it('answers each batch by its id with per-send outcomes, and refuses a batch with a bad deadline or another tenant on its own', async () => {
    const { client, call, answers } = openStream(callMetadata({ context: internal() }));
    try {
      const [a, b] = [user('sa'), user('sb')];
      call.write({ id: 7, deadlineMs: 5000, request: { context: internal(), items: [item(a, b, 'first'), item(a, a, 'to myself')] } });
      call.write({ id: 8, deadlineMs: 0, request: { context: internal(), items: [item(a, b, 'no deadline')] } });
      call.write({ id: 9, deadlineMs: 5000, request: { context: internal(otherTenant), items: [item(a, b, 'wrong tenant')] } });
      call.write({ id: 10, deadlineMs: 5000, request: { context: internal(), items: [item(b, a, 'reply')] } });
      await waitFor(() => answers.length === 4);
      const byId = new Map(answers.map((answer) => [answer.id, answer.outcome]));
      const seven = byId.get(7);
      expect(seven?.$case).toBe('response');
      const [sent, toSelf] = seven?.$case === 'response' ? seven.value.results : [];
      expect(sent?.outcome).toMatchObject({ $case: 'ack', value: { seq: 1, duplicate: false } });
      expect(toSelf?.outcome).toMatchObject({ $case: 'error', value: { code: ErrorCode.ERROR_CODE_INVALID_ARGUMENT, field: 'recipient_user_id' } });
      expect(byId.get(8)).toMatchObject({ $case: 'error', value: { code: ErrorCode.ERROR_CODE_INVALID_ARGUMENT, field: 'deadline_ms' } });
      expect(byId.get(9)).toMatchObject({ $case: 'error', value: { code: ErrorCode.ERROR_CODE_PERMISSION_DENIED, field: 'context.tenant_id' } });
      // The refused batches changed nothing: the reply is the conversation's second message.
      const ten = byId.get(10);
      expect(ten?.$case === 'response' && ten.value.results[0]?.outcome).toMatchObject({ $case: 'ack', value: { seq: 2 } });
    } finally {
      call.end();
      client.close();
    }
  });

  it('refuses users (each batch answered PERMISSION_DENIED) and an internal claim without its proof (the stream fails UNAUTHENTICATED)', async () => {
    const asUser = openStream(callMetadata({ context: { tenantId: tenant, userId: user('u'), deviceId: '', internal: false } }));
    try {
      asUser.call.write({ id: 1, deadlineMs: 5000, request: { context: undefined, items: [item(user('x'), user('y'), 'sneaky')] } });
      await waitFor(() => asUser.answers.length === 1);
      expect(asUser.answers[0]).toMatchObject({ id: 1, outcome: { $case: 'error', value: { code: ErrorCode.ERROR_CODE_PERMISSION_DENIED } } });
    } finally {
      asUser.call.end();
      asUser.client.close();
    }
    const unproven = new grpc.Metadata();
    unproven.set(TENANT_METADATA.tenant, tenant);
    unproven.set(TENANT_METADATA.internal, 'true');
    const forged = openStream(unproven);
    try {
      forged.call.write({ id: 1, deadlineMs: 5000, request: { context: undefined, items: [item(user('x'), user('y'), 'forged')] } });
      expect(await forged.ended).toMatchObject({ code: grpc.status.UNAUTHENTICATED });
      expect(forged.answers).toEqual([]);
    } finally {
      forged.client.close();
    }
  });
});

describe('a gateway whose send stream breaks', () => {
  let proxy: FreezableProxy;
  let gateway: ServiceProcess;
  let port: number;

  beforeAll(async () => {
    // Messaging behind a proxy that can freeze (bytes dropped) and cut every connection.
    proxy = await startFreezableProxy(mesh.addresses.messaging);
    port = await freePort();
    gateway = await launchService({
      service: 'gateway',
      name: 'gateway-stream',
      env: {
        ...infraEnv(),
        PORT: String(port),
        GRPC_PORT: String(await freePort()),
        GATEWAY_ID: 'gateway-stream',
        MESSAGING_ADDR: proxy.address,
        PRESENCE_ADDR: mesh.addresses.presence,
        ROOM_ADDR: mesh.addresses.room,
        // Far beyond the test: a send that fails here failed because the stream broke, not at its deadline.
        BACKEND_DEADLINE_MS: '30000',
        SHUTDOWN_DEADLINE_MS: '3000',
      },
      opsPort: await freePort(),
    });
  }, 60_000);

  afterAll(async () => {
    proxy?.close();
  });

  it('fails exactly the sends it carried, each with its own UNAVAILABLE, and the retried sends are stored and delivered once', async () => {
    const [from, to] = [user('from'), user('to')];
    const recipient = new SwitchboardClient({ url: mesh.gateways[0]!.url, token: () => mintDevToken({ secret: DEV_JWT_SECRET, tenantId: tenant, userId: to }) });
    clients.push(recipient);
    await recipient.connect();
    const received: messagingV1.Message[] = [];
    recipient.on('message', (message) => received.push(message));

    const token = await mintDevToken({ secret: DEV_JWT_SECRET, tenantId: tenant, userId: from });
    const ws = new WebSocket(`ws://127.0.0.1:${port}/ws`, ['switchboard.v1.json'], { headers: { authorization: `Bearer ${token}` } });
    sockets.push(ws);
    const frames: (framesV1.ServerFrame & { messageAck?: messagingV1.MessageAck; error?: { code: string; field?: string } })[] = [];
    ws.on('message', (data) => frames.push(JSON.parse(data.toString())));
    await waitFor(() => frames.some((f) => 'welcome' in f));
    const answer = (requestId: string) => frames.find((f) => f.requestId === requestId);
    const send = (requestId: string, clientMessageId: string, text: string, recipientUserId = to) =>
      ws.send(JSON.stringify({ requestId, sendMessage: { recipientUserId, clientMessageId, text } }));

    // Through the stream: one batch, its own ack to the good send and its own refusal to the bad one.
    send('opens', newId(), 'opens');
    send('self', newId(), 'to myself', from);
    await waitFor(() => !!answer('opens') && !!answer('self'));
    // (JSON frames leave out fields at their default: no `duplicate` is duplicate: false.)
    expect(answer('opens')?.messageAck).toMatchObject({ seq: 1 });
    expect(answer('opens')?.messageAck?.duplicate ?? false).toBe(false);
    expect(answer('self')?.error).toMatchObject({ code: 'ERROR_CODE_INVALID_ARGUMENT', field: 'recipient_user_id' });

    // Three sends leave while messaging is unreachable; then the connection (and the stream on it) breaks.
    proxy.freeze();
    const ids = ['lost-1', 'lost-2', 'lost-3'].map((requestId) => ({ requestId, clientMessageId: newId() }));
    for (const { requestId, clientMessageId } of ids) send(requestId, clientMessageId, requestId);
    await new Promise((r) => setTimeout(r, 300));
    expect(ids.some(({ requestId }) => answer(requestId))).toBe(false);
    proxy.cut();
    await waitFor(() => ids.every(({ requestId }) => answer(requestId)));
    for (const { requestId } of ids) expect(answer(requestId)?.error?.code).toBe('ERROR_CODE_UNAVAILABLE');
    proxy.thaw();

    // The sender retries each with its client message id: a new stream carries them, each acked once, delivered once.
    const acked = new Set<string>();
    for (let attempt = 0; acked.size < ids.length && attempt < 50; attempt += 1) {
      const round = ids.filter(({ requestId }) => !acked.has(requestId)).map((id) => ({ ...id, retry: `${id.requestId}-retry-${attempt}` }));
      for (const { retry, clientMessageId, requestId } of round) send(retry, clientMessageId, requestId);
      await waitFor(() => round.every(({ retry }) => answer(retry)));
      for (const { retry, requestId } of round) if (answer(retry)?.messageAck) acked.add(requestId);
      if (acked.size < ids.length) await new Promise((r) => setTimeout(r, 200));
    }
    expect(acked.size).toBe(ids.length);
    await waitFor(() => ids.every(({ requestId }) => received.some((m) => m.text === requestId)));
    await new Promise((r) => setTimeout(r, 300));
    for (const { requestId } of ids) expect(received.filter((m) => m.text === requestId)).toHaveLength(1);
    expect(received.map((m) => m.seq).sort((x, y) => Number(x) - Number(y))).toEqual([1, 2, 3, 4]);
    ws.close();
    // With its stream open, the gateway still shuts down cleanly.
    expect(await gateway.stop(10_000)).toBe(0);
  });
});

describe('a gateway in front of a messaging that does not serve the stream yet (a rolling deploy)', () => {
  // The older messaging: the same service without SendMessagesStream (grpc-js answers an unregistered
  // method UNIMPLEMENTED), every unary method forwarded to the mesh's real messaging.
  const seen = { sendMessages: 0 };
  let olderMessaging: grpc.Server;
  let upstream: grpc.Client;
  let gateway: ServiceProcess;
  let port: number;

  beforeAll(async () => {
    upstream = new grpc.Client(mesh.addresses.messaging, channelCredentials());
    const implementation: grpc.UntypedServiceImplementation = {};
    for (const [name, method] of Object.entries(messagingV1.MessagingServiceService as grpc.ServiceDefinition)) {
      if (method.requestStream || method.responseStream) continue;
      implementation[name] = (call: grpc.ServerUnaryCall<unknown, unknown>, callback: grpc.sendUnaryData<unknown>) => {
        if (name === 'sendMessages') seen.sendMessages += 1;
        upstream.makeUnaryRequest(method.path, method.requestSerialize, method.responseDeserialize, call.request, call.metadata, callback);
      };
    }
    olderMessaging = new grpc.Server();
    olderMessaging.addService(messagingV1.MessagingServiceService, implementation);
    const olderPort = await new Promise<number>((resolve, reject) =>
      olderMessaging.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, bound) => (err ? reject(err) : resolve(bound))),
    );
    port = await freePort();
    gateway = await launchService({
      service: 'gateway',
      name: 'gateway-older-messaging',
      env: {
        ...infraEnv(),
        PORT: String(port),
        GRPC_PORT: String(await freePort()),
        GATEWAY_ID: 'gateway-older-messaging',
        MESSAGING_ADDR: `127.0.0.1:${olderPort}`,
        PRESENCE_ADDR: mesh.addresses.presence,
        ROOM_ADDR: mesh.addresses.room,
        SHUTDOWN_DEADLINE_MS: '3000',
      },
      opsPort: await freePort(),
    });
  }, 60_000);

  afterAll(async () => {
    olderMessaging?.forceShutdown();
    upstream?.close();
  });

  it('sends the refused batch again as a unary call, and every later one too: each send acked once and delivered once', async () => {
    const [from, to] = [user('old-from'), user('old-to')];
    const recipient = new SwitchboardClient({ url: mesh.gateways[0]!.url, token: () => mintDevToken({ secret: DEV_JWT_SECRET, tenantId: tenant, userId: to }) });
    clients.push(recipient);
    await recipient.connect();
    const received: messagingV1.Message[] = [];
    recipient.on('message', (message) => received.push(message));

    const sender = new SwitchboardClient({ url: `ws://127.0.0.1:${port}/ws`, token: () => mintDevToken({ secret: DEV_JWT_SECRET, tenantId: tenant, userId: from }) });
    clients.push(sender);
    await sender.connect();

    // The first send meets the refusal; it must still be stored, not failed.
    const first = await sender.sendMessage({ recipientUserId: to, text: 'first' });
    expect(first.seq).toBe(1);
    const unaryAfterFirst = seen.sendMessages;
    expect(unaryAfterFirst).toBeGreaterThanOrEqual(1);
    // Later sends, some in one turn, all as unary calls; a bad one still gets its own error.
    const later = await Promise.all(['second', 'third', 'fourth'].map((text) => sender.sendMessage({ recipientUserId: to, text })));
    expect(later.map((ack) => ack.seq).sort()).toEqual([2, 3, 4]);
    await expect(sender.sendMessage({ recipientUserId: from, text: 'to myself' })).rejects.toMatchObject({ code: ErrorCode.ERROR_CODE_INVALID_ARGUMENT });
    expect(seen.sendMessages).toBeGreaterThan(unaryAfterFirst);

    await waitFor(() => received.length >= 4);
    await new Promise((r) => setTimeout(r, 300));
    expect(received.map((m) => m.text).sort()).toEqual(['first', 'fourth', 'second', 'third']);
    sender.close();
    expect(await gateway.stop(10_000)).toBe(0);
  });
});
