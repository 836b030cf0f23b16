import { randomBytes } from 'node:crypto';
import { writeFileSync, mkdtempSync } from 'node:fs';
import { connect as netConnect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { connect as tlsConnect } from 'node:tls';
import { build } from 'hdr-histogram-js';
import { generate } from 'selfsigned';
import { startMesh, type Mesh, type ServiceProcess } from '@switchboard/devenv';
import { ErrorCode } from '@switchboard/errors';
import { createClient } from '@switchboard/grpc';
import { newId } from '@switchboard/ids';
import { messagingV1, roomV1 } from '@switchboard/proto';
import { adminClient, handshake, launchGateway, operator, rawConnect, Report, SECURITY_GATEWAY_ENV, token, until, type RawConnection } from './support';

// Security suite, part 2: tenant limits, floods, noisy neighbours, a frame
// fuzzer, slow clients and the transport (origin, TLS 1.3).
const report = new Report('security suite: limits, floods, fuzzing, slow clients, transport');
const SHED_BYTES = 16 * 1024;
const MAX_BYTES = 64 * 1024;
let mesh: Mesh;
const extra: ServiceProcess[] = [];
const open: RawConnection[] = [];
const newTenant = () => `t${newId().slice(0, 10)}`;
let admin: ReturnType<typeof adminClient>;

beforeAll(async () => {
  mesh = await startMesh({
    gateways: 2,
    ports: 'free',
    env: { LOG_LEVEL: 'warn' },
    // A long heartbeat: the slow-reader case leaves a socket unread for a while on purpose.
    gatewayEnv: { ...SECURITY_GATEWAY_ENV, HEARTBEAT_INTERVAL_MS: '120000', CONNECTION_FRAMES_PER_SECOND: '50', SEND_BUFFER_SHED_BYTES: String(SHED_BYTES), SEND_BUFFER_MAX_BYTES: String(MAX_BYTES) },
  });
  admin = adminClient(mesh.gateways[0]!.grpcAddress);
}, 120_000);

afterAll(async () => {
  for (const c of open) c.ws.terminate();
  admin?.close();
  await Promise.all(extra.map((p) => p.stop()));
  await mesh?.stop();
  report.print();
});

async function connect(gateway: number, tenantId: string, userId: string): Promise<RawConnection> {
  const c = await rawConnect(mesh.gateways[gateway]!.url, await token(tenantId, userId));
  open.push(c);
  return c;
}

const send = (c: RawConnection, to: string, text = 'hello') => c.request({ sendMessage: { recipientUserId: to, clientMessageId: newId(), text } });

describe('tenant limits: defaults, overrides through the admin API, shared by every gateway', () => {
  it('refuses the admin API to a user context', async () => {
    const t = newTenant();
    const err = await admin.getTenantLimits({ context: undefined }, { context: { tenantId: t, userId: 'alice', deviceId: '', internal: false } }).catch((e) => e);
    expect(err.code).toBe(ErrorCode.ERROR_CODE_PERMISSION_DENIED);
    report.held('a user context calling SetTenantLimits/GetTenantLimits', 'PERMISSION_DENIED');
  });

  it('shows defaults, applies overrides, and resets them', async () => {
    const t = newTenant();
    const before = await admin.getTenantLimits({ context: undefined }, operator(t));
    expect(before.overrides).toMatchObject({ maxConnections: 0 });
    const set = await admin.setTenantLimits({ context: undefined, overrides: { ...before.overrides!, maxRoomSize: 7 }, reset: [] }, operator(t));
    expect(set.limits!.effective!.maxRoomSize).toBe(7);
    const reset = await admin.setTenantLimits({ context: undefined, overrides: undefined, reset: ['max_room_size'] }, operator(t));
    expect(reset.limits!.effective!.maxRoomSize).toBe(before.defaults!.maxRoomSize);
    const bad = await admin.setTenantLimits({ context: undefined, overrides: undefined, reset: ['no_such_limit'] }, operator(t)).catch((e) => e);
    expect(bad.code).toBe(ErrorCode.ERROR_CODE_INVALID_ARGUMENT);
  });

  it('refuses a connection over the tenant limit with 4029 on any gateway, and admits again once one closes', async () => {
    const t = newTenant();
    await admin.setTenantLimits({ context: undefined, overrides: { maxConnections: 2, messagesPerSecondPerUser: 0, messagesPerSecondPerTenant: 0, bytesPerSecondPerTenant: 0, maxFrameBytes: 0, maxRoomSize: 0 }, reset: [] }, operator(t));
    await new Promise((r) => setTimeout(r, 200));
    const first = await connect(0, t, 'u1');
    await connect(1, t, 'u2');
    // The upgrade completes (so a browser can read the reason), then the connection closes.
    const third = await rawConnect(mesh.gateways[0]!.url, await token(t, 'u3'));
    expect(third.welcome).toBeUndefined();
    expect(await third.closed).toEqual({ code: 4029, reason: 'tenant connection limit reached (2)' });
    report.held('a third connection with max_connections 2 (two gateways)', 'close 4029 "tenant connection limit reached (2)"');
    first.ws.close();
    await first.closed;
    await eventuallyConnects(t);
  });

  it('rate limits a user across gateways with RATE_LIMITED and retryAfterMs, without touching another user', async () => {
    const t = newTenant();
    await admin.setTenantLimits({ context: undefined, overrides: { maxConnections: 0, messagesPerSecondPerUser: 3, messagesPerSecondPerTenant: 0, bytesPerSecondPerTenant: 0, maxFrameBytes: 0, maxRoomSize: 0 }, reset: [] }, operator(t));
    await new Promise((r) => setTimeout(r, 200));
    const [onFirst, onSecond, other] = [await connect(0, t, 'fast'), await connect(1, t, 'fast'), await connect(1, t, 'calm')];
    const answers = await Promise.all(Array.from({ length: 12 }, (_, i) => send(i % 2 ? onFirst : onSecond, 'peer')));
    const limited = answers.filter((a) => a.error?.code === 'ERROR_CODE_RATE_LIMITED');
    // 12 sends land in at most two one-second windows of 3.
    expect(answers.filter((a) => a.messageAck).length).toBeLessThanOrEqual(6);
    expect(limited.length).toBeGreaterThanOrEqual(6);
    for (const a of limited) {
      expect(a.error.retryAfterMs).toBeGreaterThan(0);
      expect(a.error.retryAfterMs).toBeLessThanOrEqual(1000);
      expect(a.error.message).toBe('message rate limit exceeded (3 per second per user)');
    }
    expect(await send(other, 'peer')).toHaveProperty('messageAck');
    report.held('12 sends at once by one user on two gateways, limit 3/s', `${limited.length} RATE_LIMITED with retryAfterMs, another user unaffected`);
  });

  it('limits the tenant as a whole, its bandwidth and its frame size', async () => {
    const t = newTenant();
    await admin.setTenantLimits({ context: undefined, overrides: { maxConnections: 0, messagesPerSecondPerUser: 0, messagesPerSecondPerTenant: 4, bytesPerSecondPerTenant: 0, maxFrameBytes: 0, maxRoomSize: 0 }, reset: [] }, operator(t));
    await new Promise((r) => setTimeout(r, 200));
    const users = await Promise.all(['a', 'b', 'c', 'd'].map((u, i) => connect(i % 2, t, u)));
    const answers = await Promise.all(users.flatMap((c) => [send(c, 'peer'), send(c, 'peer'), send(c, 'peer')]));
    const tenantLimited = answers.filter((a) => a.error?.message === 'tenant message rate limit exceeded (4 per second)');
    expect(tenantLimited.length).toBeGreaterThanOrEqual(4);
    report.held('12 sends at once by 4 users, tenant limit 4/s', `${tenantLimited.length} RATE_LIMITED for the tenant`);

    const b = newTenant();
    await admin.setTenantLimits({ context: undefined, overrides: { maxConnections: 0, messagesPerSecondPerUser: 0, messagesPerSecondPerTenant: 0, bytesPerSecondPerTenant: 3000, maxFrameBytes: 0, maxRoomSize: 0 }, reset: [] }, operator(b));
    await new Promise((r) => setTimeout(r, 200));
    const wide = await connect(0, b, 'wide');
    const results = [await send(wide, 'peer', 'x'.repeat(2000)), await send(wide, 'peer', 'x'.repeat(2000))];
    expect(results[1]!.error).toMatchObject({ code: 'ERROR_CODE_RATE_LIMITED', message: 'tenant bandwidth limit exceeded (3000 bytes/s)' });
    expect(results[1]!.error.retryAfterMs).toBeGreaterThan(0);
    report.held('two 2 KB frames with a 3000 bytes/s tenant budget', 'second refused RATE_LIMITED (bandwidth) with retryAfterMs');

    const f = newTenant();
    await admin.setTenantLimits({ context: undefined, overrides: { maxConnections: 0, messagesPerSecondPerUser: 0, messagesPerSecondPerTenant: 0, bytesPerSecondPerTenant: 0, maxFrameBytes: 1024, maxRoomSize: 0 }, reset: [] }, operator(f));
    await new Promise((r) => setTimeout(r, 200));
    const small = await connect(1, f, 'small');
    expect(small.welcome!.maxFrameBytes).toBe(1024);
    const big = await send(small, 'peer', 'y'.repeat(1500));
    expect(big.error?.code ?? small.frames.find((x) => x.error?.code === 'ERROR_CODE_FRAME_TOO_LARGE')?.error.code).toBe('ERROR_CODE_FRAME_TOO_LARGE');
    expect(await small.request({ ping: { clientTimeMs: 1 } })).toHaveProperty('pong');
    report.held('a 1.5 KB frame with the tenant max_frame_bytes 1024', 'FRAME_TOO_LARGE, connection kept');
  });

  it('applies the tenant room size in the room service', async () => {
    const t = newTenant();
    const limits = (maxRoomSize: number) => ({ maxConnections: 0, messagesPerSecondPerUser: 0, messagesPerSecondPerTenant: 0, bytesPerSecondPerTenant: 0, maxFrameBytes: 0, maxRoomSize });
    await admin.setTenantLimits({ context: undefined, overrides: limits(2), reset: [] }, operator(t));
    await new Promise((r) => setTimeout(r, 1200));
    const rooms = createClient(roomV1.RoomServiceClient, mesh.addresses.room);
    const asOwner = { context: { tenantId: t, userId: 'owner', deviceId: '', internal: false } };
    const create = () => rooms.createRoom(roomV1.CreateRoomRequest.fromPartial({ name: 'ward', memberIds: ['m1', 'm2'] }), asOwner);
    const refused = await create().catch((e) => e);
    expect(refused.code).toBe(ErrorCode.ERROR_CODE_QUOTA_EXCEEDED);
    await admin.setTenantLimits({ context: undefined, overrides: limits(3), reset: [] }, operator(t));
    await new Promise((r) => setTimeout(r, 1200));
    expect((await create()).room!.memberCount).toBe(3);
    rooms.close();
    report.held('a room of 3 members with the tenant max_room_size 2', `${ErrorCode[refused.code]} (${refused.message}); admitted once raised to 3`);
  });

  it('counts usage per tenant (admin API) and reports per-tenant metrics', async () => {
    const t = newTenant();
    await admin.setTenantLimits({ context: undefined, overrides: { maxConnections: 0, messagesPerSecondPerUser: 1, messagesPerSecondPerTenant: 0, bytesPerSecondPerTenant: 0, maxFrameBytes: 0, maxRoomSize: 0 }, reset: [] }, operator(t));
    await new Promise((r) => setTimeout(r, 200));
    const c = await connect(0, t, 'counted');
    await Promise.all([send(c, 'peer'), send(c, 'peer'), send(c, 'peer')]);
    const polled = await pollUsage(t);
    expect(polled.connections).toBe(1);
    expect(polled.connectionsOpened).toBe(1);
    expect(polled.frames).toBeGreaterThanOrEqual(3);
    expect(polled.bytesIn).toBeGreaterThan(0);
    expect(polled.bytesOut).toBeGreaterThan(0);
    expect(polled.rejects.find((r) => r.reason === 'rate_user')!.count).toBeGreaterThanOrEqual(1);
    const metrics = await (await fetch(`http://127.0.0.1:${mesh.gateways[0]!.process.opsPort}/metrics`)).text();
    expect(metrics).toMatch(new RegExp(`gateway_tenant_rejects_total\\{[^}]*tenant="${t}"[^}]*reason="rate_user"|gateway_tenant_rejects_total\\{[^}]*reason="rate_user"[^}]*tenant="(${t}|\\(other\\))"`));
    report.held('usage of a tenant through GetTenantUsage', `connections=${polled.connections} frames=${polled.frames} messages=${polled.messages} rejects=${JSON.stringify(polled.rejects)}`);
  });
});

async function pollUsage(t: string) {
  const deadline = Date.now() + 10_000;
  for (;;) {
    const u = await admin.getTenantUsage({ context: undefined }, operator(t));
    if ((u.messages >= 1 && u.rejects.some((r) => r.reason === 'rate_user')) || Date.now() > deadline) return u;
    await new Promise((r) => setTimeout(r, 200));
  }
}

async function eventuallyConnects(t: string) {
  const deadline = Date.now() + 10_000;
  for (;;) {
    const c = await rawConnect(mesh.gateways[1]!.url, await token(t, 'u5'));
    open.push(c);
    const closedEarly = await Promise.race([c.closed, new Promise((r) => setTimeout(() => r(undefined), 300))]);
    if (!closedEarly) return;
    if (Date.now() > deadline) throw new Error('no slot freed after a close');
  }
}

describe('floods', () => {
  it('refuses a flooding connection with RATE_LIMITED, then closes it with 4008; the same user elsewhere is served', async () => {
    const t = newTenant();
    const flooder = await connect(0, t, 'flood');
    const calm = await connect(0, t, 'flood');
    for (let i = 0; i < 400; i += 1) flooder.ws.send(JSON.stringify({ requestId: `f${i}`, ping: { clientTimeMs: i } }));
    const closed = await flooder.closed;
    expect(closed).toEqual({ code: 4008, reason: 'rate limited: too many frames' });
    const limited = flooder.frames.filter((f) => f.error?.code === 'ERROR_CODE_RATE_LIMITED');
    expect(limited.length).toBeGreaterThan(0);
    expect(limited[0]!.error.retryAfterMs).toBeGreaterThan(0);
    expect(await calm.request({ ping: { clientTimeMs: 1 } })).toHaveProperty('pong');
    report.held('400 frames at once on one connection (50/s allowed)', `${limited.length} RATE_LIMITED, then close 4008; another connection of the user unaffected`);
  });

  it('noisy neighbour: tenant A floods, tenant B is never refused (latencies printed)', async () => {
    const noisy = newTenant();
    const quiet = newTenant();
    await admin.setTenantLimits({ context: undefined, overrides: { maxConnections: 0, messagesPerSecondPerUser: 0, messagesPerSecondPerTenant: 20, bytesPerSecondPerTenant: 0, maxFrameBytes: 0, maxRoomSize: 0 }, reset: [] }, operator(noisy));
    const sender = await connect(1, quiet, 'b-sender');
    await connect(0, quiet, 'b-recipient');
    const measure = async (count: number) => {
      const histogram = build();
      const answers = [];
      for (let i = 0; i < count; i += 1) {
        const started = performance.now();
        answers.push(await send(sender, 'b-recipient', `b-${i}`));
        histogram.recordValue(Math.max(1, Math.round((performance.now() - started) * 1000)));
        await new Promise((r) => setTimeout(r, 50));
      }
      return { answers, p50: histogram.getValueAtPercentile(50) / 1000, p99: histogram.getValueAtPercentile(99) / 1000 };
    };
    const baseline = await measure(20);
    const flooders = await Promise.all(Array.from({ length: 6 }, (_, i) => connect(i % 2, noisy, `a-${i}`)));
    let flooding = true;
    let floodFrames = 0;
    const flood = (async () => {
      while (flooding) {
        for (const f of flooders) {
          if (f.ws.readyState !== f.ws.OPEN) continue;
          f.ws.send(JSON.stringify({ requestId: `n${floodFrames++}`, sendMessage: { recipientUserId: 'victim', clientMessageId: newId(), text: 'noise' } }));
        }
        await new Promise((r) => setTimeout(r, 25));
      }
    })();
    const underFlood = await measure(30);
    flooding = false;
    await flood;
    const noisyRefused = flooders.flatMap((f) => f.frames).filter((f) => f.error?.code === 'ERROR_CODE_RATE_LIMITED').length;
    expect(noisyRefused).toBeGreaterThan(0);
    expect(underFlood.answers.filter((a) => !a.messageAck)).toEqual([]);
    expect(baseline.answers.filter((a) => !a.messageAck)).toEqual([]);
    console.log(`noisy neighbour: tenant B send->ack p50/p99 ${baseline.p50.toFixed(1)}/${baseline.p99.toFixed(1)} ms alone, ${underFlood.p50.toFixed(1)}/${underFlood.p99.toFixed(1)} ms while tenant A sent ${floodFrames} frames (${noisyRefused} refused)`);
    report.held(`tenant A flooding (${floodFrames} sends, 20/s allowed)`, `A refused ${noisyRefused} times; all ${underFlood.answers.length} of B's sends acked, none refused`);
  });
});

/** A client WebSocket frame built by hand: the fuzzer sends what no library would. */
function wsFrame(opcode: number, payload: Buffer, options: { fin?: boolean; rsv?: number; masked?: boolean; declaredLength?: bigint } = {}): Buffer {
  const fin = options.fin ?? true;
  const masked = options.masked ?? true;
  const first = (fin ? 0x80 : 0) | ((options.rsv ?? 0) << 4) | (opcode & 0x0f);
  const length = options.declaredLength ?? BigInt(payload.length);
  let header: Buffer;
  if (length < 126n) header = Buffer.from([first, (masked ? 0x80 : 0) | Number(length)]);
  else if (length < 65536n) {
    header = Buffer.alloc(4);
    header[0] = first;
    header[1] = (masked ? 0x80 : 0) | 126;
    header.writeUInt16BE(Number(length), 2);
  } else {
    header = Buffer.alloc(10);
    header[0] = first;
    header[1] = (masked ? 0x80 : 0) | 127;
    header.writeBigUInt64BE(length, 2);
  }
  if (!masked) return Buffer.concat([header, payload]);
  const mask = randomBytes(4);
  const body = Buffer.from(payload.map((byte, i) => byte ^ mask[i % 4]!));
  return Buffer.concat([header, mask, body]);
}

/** A small seeded generator, so a failing case can be replayed. */
function prng(seed: number) {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

describe('frame fuzzer over raw sockets', () => {
  const CASES = 240;
  const SEED = 7;

  it(`survives ${CASES} hostile frames (seed ${SEED}) and every other connection keeps working`, async () => {
    const t = newTenant();
    const control = await connect(1, t, 'control');
    const controlSameGateway = await connect(0, t, 'control2');
    const random = prng(SEED);
    const pick = <T>(items: T[]) => items[Math.floor(random() * items.length)]!;
    const randomJson = (depth: number): unknown => {
      const r = random();
      if (depth > 3 || r < 0.3) return pick([null, true, 0, -1, 1e308, 'x', '\u0000', '\ud800', 'a'.repeat(Math.floor(random() * 300))]);
      if (r < 0.6) return Array.from({ length: Math.floor(random() * 4) }, () => randomJson(depth + 1));
      return Object.fromEntries(Array.from({ length: Math.floor(random() * 4) }, () => [pick(['sendMessage', 'requestId', 'ping', 'getHistory', 'sync', 'text', 'conversationId', '__proto__', 'constructor', 'refreshToken', 'typing', 'positions']), randomJson(depth + 1)]));
    };
    const kinds: Record<string, () => Buffer> = {
      'random bytes': () => randomBytes(1 + Math.floor(random() * 200)),
      'text frame of random bytes (bad UTF-8)': () => wsFrame(0x1, randomBytes(1 + Math.floor(random() * 100))),
      'reserved bits set': () => wsFrame(0x1, Buffer.from('{"ping":{}}'), { rsv: 1 + Math.floor(random() * 7) }),
      'reserved opcode': () => wsFrame(pick([3, 4, 5, 6, 7, 11, 12, 13, 14, 15]), Buffer.from('{}')),
      'unmasked client frame': () => wsFrame(0x1, Buffer.from('{"ping":{}}'), { masked: false }),
      'declared length of 2^40 bytes': () => wsFrame(0x1, Buffer.from('{}'), { declaredLength: 2n ** 40n }),
      'oversized frame': () => wsFrame(0x1, Buffer.alloc(70 * 1024, 'a')),
      'fragmented control frame': () => wsFrame(0x9, Buffer.from('p'), { fin: false }),
      'continuation without a start': () => wsFrame(0x0, Buffer.from('{}')),
      'control frame over 125 bytes': () => wsFrame(0x9, Buffer.alloc(200, 'p')),
      'binary frame on a JSON connection': () => wsFrame(0x2, randomBytes(50)),
      'deeply nested JSON': () => wsFrame(0x1, Buffer.from(`{"ping":${'['.repeat(20_000)}${']'.repeat(20_000)}}`)),
      'deeply nested objects': () => wsFrame(0x1, Buffer.from(`${'{"a":'.repeat(5000)}1${'}'.repeat(5000)}`)),
      'random JSON': () => wsFrame(0x1, Buffer.from(JSON.stringify(randomJson(0)) ?? 'null')),
      'frame kinds with wrong types': () =>
        wsFrame(0x1, Buffer.from(JSON.stringify({ requestId: pick(['x', 'y'.repeat(100), 5]), [pick(['sendMessage', 'getHistory', 'sync', 'markRead', 'refreshToken', 'listConversations', 'typing', 'subscribeEvents'])]: randomJson(1) }))),
      'truncated frame': () => wsFrame(0x1, Buffer.from('{"ping":{}}')).subarray(0, 5),
    };
    const names = Object.keys(kinds);
    const outcomes = new Map<string, Map<string, number>>();
    const runCase = async (index: number) => {
      const kind = names[index % names.length]!;
      const bytes = kinds[kind]!();
      const c = await rawConnect(mesh.gateways[0]!.url, await token(t, `fuzz-${index}`));
      const before = c.frames.length;
      (c.ws as unknown as { _socket: Socket })._socket.write(bytes);
      const result = await Promise.race([
        c.closed.then((closed) => `closed ${closed.code}`),
        until(() => c.frames.slice(before).find((f) => f.error)?.error.code, 1500, 'answer').then((code) => `error ${code}`, () => 'no answer'),
      ]);
      c.ws.terminate();
      const counts = outcomes.get(kind) ?? new Map<string, number>();
      counts.set(result, (counts.get(result) ?? 0) + 1);
      outcomes.set(kind, counts);
    };
    for (let start = 0; start < CASES; start += 12) {
      await Promise.all(Array.from({ length: Math.min(12, CASES - start) }, (_, i) => runCase(start + i)));
    }
    // The gateways are up and every other connection works.
    expect(mesh.gateways.every((g) => g.process.child.exitCode === null)).toBe(true);
    expect(await control.request({ ping: { clientTimeMs: 1 } })).toHaveProperty('pong');
    expect(await controlSameGateway.request({ ping: { clientTimeMs: 2 } })).toHaveProperty('pong');
    const fresh = await connect(0, t, 'after-fuzz');
    expect(await fresh.request({ ping: { clientTimeMs: 3 } })).toHaveProperty('pong');
    for (const [kind, counts] of outcomes) report.held(`fuzz: ${kind}`, [...counts].map(([outcome, n]) => `${n}x ${outcome}`).join(', '));
  });
});

describe('slow clients', () => {
  it('closes a slowloris handshake (headers trickled, or nothing sent) and serves everyone else meanwhile', async () => {
    const t = newTenant();
    const control = await connect(0, t, 'control');
    const port = Number(new URL(mesh.gateways[0]!.url).port);
    const trickle = netConnect(port, '127.0.0.1');
    const silent = netConnect(port, '127.0.0.1');
    const closedAt = (socket: Socket) => new Promise<number>((resolve) => socket.on('close', () => resolve(Date.now())));
    const trickleClosed = closedAt(trickle);
    const silentClosed = closedAt(silent);
    trickle.on('error', () => undefined);
    silent.on('error', () => undefined);
    trickle.write('GET /ws HTTP/1.1\r\nHost: gateway\r\n');
    const timer = setInterval(() => trickle.writable && trickle.write(`X-Slow-${Date.now()}: a\r\n`), 300);
    expect(await control.request({ ping: { clientTimeMs: 1 } })).toHaveProperty('pong');
    await Promise.race([Promise.all([trickleClosed, silentClosed]), new Promise((_, reject) => setTimeout(() => reject(new Error('slow handshakes were not closed')), 15_000))]);
    clearInterval(timer);
    report.held('a handshake trickling one header every 300 ms, and a socket that sends nothing', 'both closed by the gateway (HANDSHAKE_TIMEOUT_MS)');
  });

  it('bounds what it holds for a reader that stops reading: pushes dropped, then a resync push, nothing lost', async () => {
    const t = newTenant();
    await admin.setTenantLimits({ context: undefined, overrides: { maxConnections: 0, messagesPerSecondPerUser: 100_000, messagesPerSecondPerTenant: 100_000, bytesPerSecondPerTenant: 0, maxFrameBytes: 0, maxRoomSize: 0 }, reset: [] }, operator(t));
    const reader = await connect(0, t, 'slow-reader');
    const bystander = await connect(0, t, 'bystander');
    // The writer calls messaging directly: only the reader's socket is under test.
    const messaging = createClient(messagingV1.MessagingServiceClient, mesh.addresses.messaging);
    const asWriter = { context: { tenantId: t, userId: 'writer', deviceId: '', internal: false } };
    const socket = (reader.ws as unknown as { _socket: Socket })._socket;
    socket.pause();
    const text = 'z'.repeat(16_000);
    let sent = 0;
    let conversationId = '';
    const sendRound = async (round: number) => {
      const acks = await Promise.all(
        Array.from({ length: 20 }, () =>
          messaging.sendMessage(messagingV1.SendMessageRequest.fromPartial({ target: { $case: 'recipientUserId', value: 'slow-reader' }, clientMessageId: newId(), text }), asWriter),
        ),
      );
      sent += acks.length;
      conversationId = acks[0]!.ack!.conversationId;
      expect(await bystander.request({ ping: { clientTimeMs: round } })).toHaveProperty('pong');
    };
    for (let round = 0; round < 60 && sent < 1200; round += 1) {
      await sendRound(round);
      // The gateway started dropping instead of queueing.
      if ((await droppedPushes(mesh.gateways[0]!.process.opsPort)) > 0) break;
    }
    // The push that crossed the mark may have been a receipt, not a message: one more round while the reader
    // still reads nothing is certainly dropped (the connection stays behind until its buffer drains).
    await sendRound(60);
    messaging.close();
    socket.resume();
    const resync = await until(() => reader.frames.find((f) => f.resync)?.resync, 30_000, 'resync push');
    expect(resync.droppedPushes).toBeGreaterThan(0);
    const received = reader.frames.filter((f) => f.message).length;
    expect(received).toBeLessThan(sent);
    // Catching up by sequence finds every message.
    const history = await reader.request({ getHistory: { conversationId, direction: 'DIRECTION_BACKWARD', limit: 1 } });
    expect(history.historyPage.messages[0].seq).toBe(sent);
    report.held(`${sent} messages of 16 KB to a client that stopped reading`, `${received} pushed before the high-water mark, ${resync.droppedPushes} dropped, then resync; history has all ${sent}`);
  }, 120_000);
});

/** gateway_pushes_dropped_total{reason="behind"} of one gateway. */
async function droppedPushes(opsPort: number): Promise<number> {
  const metrics = await (await fetch(`http://127.0.0.1:${opsPort}/metrics`)).text();
  const line = metrics.split('\n').find((l) => l.startsWith('gateway_pushes_dropped_total') && l.includes('reason="behind"'));
  return line ? Number(line.split(' ').pop()) : 0;
}

describe('transport', () => {
  it('refuses a cross-site origin at the handshake (allow-list), accepts the allowed one and non-browser clients', async () => {
    const gateway = await launchGateway(mesh, 'gateway-origin', { ALLOWED_ORIGINS: 'https://app.example' });
    extra.push(gateway.process);
    const bearer = { authorization: `Bearer ${await token(newTenant(), 'o')}` };
    const evil = await handshake(gateway.url, { ...bearer, origin: 'https://evil.example' });
    expect(evil).toEqual({ status: 403, body: 'origin https://evil.example is not allowed' });
    expect((await handshake(gateway.url, { ...bearer, origin: 'https://app.example.evil.example' })).status).toBe(403);
    expect((await handshake(gateway.url, { ...bearer, origin: 'https://app.example' })).status).toBe(101);
    expect((await handshake(gateway.url, bearer)).status).toBe(101);
    report.held('a handshake from Origin https://evil.example (cross-site WebSocket hijacking)', '403');
  });

  it('speaks TLS 1.3 only when a certificate is configured', async () => {
    const pems = await generate([{ name: 'commonName', value: 'localhost' }], { keySize: 2048, days: 1, extensions: [{ name: 'subjectAltName', altNames: [{ type: 7, ip: '127.0.0.1' }] }] } as never);
    const dir = mkdtempSync(path.join(tmpdir(), 'sb-tls-'));
    writeFileSync(path.join(dir, 'cert.pem'), pems.cert);
    writeFileSync(path.join(dir, 'key.pem'), pems.private);
    const gateway = await launchGateway(mesh, 'gateway-tls', { TLS_CERT_FILE: path.join(dir, 'cert.pem'), TLS_KEY_FILE: path.join(dir, 'key.pem') });
    extra.push(gateway.process);
    const secure = await rawConnect(`wss://127.0.0.1:${gateway.port}/ws`, await token(newTenant(), 'tls'), { ca: pems.cert });
    open.push(secure);
    expect(await secure.request({ ping: { clientTimeMs: 1 } })).toHaveProperty('pong');
    const protocol = await new Promise<string | null>((resolve, reject) => {
      const s = tlsConnect({ port: gateway.port, host: '127.0.0.1', ca: pems.cert }, () => {
        resolve(s.getProtocol());
        s.end();
      });
      s.on('error', reject);
    });
    expect(protocol).toBe('TLSv1.3');
    const old = await new Promise<string>((resolve) => {
      const s = tlsConnect({ port: gateway.port, host: '127.0.0.1', ca: pems.cert, maxVersion: 'TLSv1.2' }, () => resolve('connected'));
      s.on('error', (err) => resolve(err.message));
    });
    expect(old).not.toBe('connected');
    const plain = await handshake(`ws://127.0.0.1:${gateway.port}/ws`, {});
    expect(plain.status).not.toBe(101);
    report.held('a TLS 1.2 client and a plain-text client against the TLS gateway', `refused (${old.slice(0, 60)}); TLS 1.3 client served`);
  });
});
