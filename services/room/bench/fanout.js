#!/usr/bin/env node
// Fan-out of a room with 1,000 connected members through the real mesh:
// a member posts into the room (gateway → messaging commit, with room's
// CheckPermission → outbox → NATS sb.<t>.conv.<roomId>) and every other
// member's device receives it on one of two gateways. Latency is measured
// per receiving device from the message's *intended* send time (a fixed
// schedule, so a stall counts against every message it delays) into an HDR
// histogram; throughput is deliveries per second. The members' sockets are
// spread over several client processes (each process reports its receive
// times; clocks are the same machine's). Bounded, loopback only.
//
//   node services/room/bench/fanout.js [members=1000] [messagesPerMinute=600] [seconds=30] [clientProcesses=4] [via=messaging|nats]
//
// via=nats publishes the MessageCreated events on the room's subject
// directly, as messaging's relay does, to measure room membership → gateway
// fan-out alone (no messaging commit).
'use strict';
const { fork } = require('node:child_process');
const hdr = require('hdr-histogram-js');

const now = () => performance.timeOrigin + performance.now();

if (process.argv[2] === '--members-process') {
  // A client process: connects its share of the members and reports what they receive.
  const { DEV_JWT_SECRET, SwitchboardClient, mintDevToken } = require('@switchboard/client');
  const clients = [];
  let roomId = '';
  process.on('message', async (command) => {
    if (command.type === 'connect') {
      const batch = 50;
      for (let i = 0; i < command.members.length; i += batch) {
        await Promise.all(
          command.members.slice(i, i + batch).map(async ({ userId, url }) => {
            const c = new SwitchboardClient({ url, token: () => mintDevToken({ secret: DEV_JWT_SECRET, tenantId: command.tenant, userId }), reconnect: { enabled: false }, requestTimeoutMs: 30_000 });
            let received = [];
            c.joined = false;
            c.on('frame', (frame) => {
              const event = frame.kind?.$case === 'roomEvent' ? frame.kind.value.event : undefined;
              if (event?.$case === 'membership' && event.value.userId === userId && event.value.change === 1) c.joined = true;
            });
            c.on('message', (message) => {
              if (message.conversationId === roomId && message.text.startsWith('bench ')) received.push([Number(message.text.slice(6)), now()]);
            });
            c.flushReceived = () => {
              const out = received;
              received = [];
              return out;
            };
            await c.connect();
            clients.push({ userId, c });
          }),
        );
      }
      process.send({ type: 'connected', count: clients.length });
    } else if (command.type === 'room') {
      roomId = command.roomId;
    } else if (command.type === 'send') {
      const sender = clients[command.index % clients.length].c;
      sender.sendMessage({ conversationId: roomId, text: `bench ${command.n}`, clientMessageId: `b${command.n}x${command.stamp}` }).then(
        () => process.send({ type: 'ack', n: command.n }),
        (err) => process.send({ type: 'nack', n: command.n, error: err.message }),
      );
    } else if (command.type === 'collect') {
      const deliveries = clients.flatMap(({ c }) => c.flushReceived());
      process.send({ type: 'collected', deliveries, joined: clients.filter(({ c }) => c.joined).length });
    } else if (command.type === 'close') {
      for (const { c } of clients) c.close();
      process.exit(0);
    }
  });
  return;
}

const members = Number(process.argv[2] ?? 1000);
const perMinute = Number(process.argv[3] ?? 600);
const seconds = Number(process.argv[4] ?? 30);
const processes = Number(process.argv[5] ?? 4);
const via = process.argv[6] ?? 'messaging';

(async () => {
  const { startMesh } = require('@switchboard/devenv');
  const { createClient } = require('@switchboard/grpc');
  const { roomV1, eventsV1, messagingV1 } = require('@switchboard/proto');
  const { connectNats, newEnvelope, publishEnvelope, subjects } = require('@switchboard/nats');
  const { infraEnv, natsSeedFile } = require('@switchboard/devenv');

  const mesh = await startMesh({ gateways: 2, ports: 'free', env: { LOG_LEVEL: 'warn' } });
  const tenant = `fan${Date.now()}`;
  const internal = { context: { tenantId: tenant, userId: '', deviceId: '', internal: true }, deadlineMs: 30_000 };
  const room = createClient(roomV1.RoomServiceClient, mesh.addresses.room);
  const children = [];
  const nats = await connectNats({ servers: infraEnv().NATS_URL, nkeySeedFile: natsSeedFile(), name: 'room-fanout-bench' });
  try {
    const userIds = Array.from({ length: members }, (_, i) => `m${i}`);
    let roomId = '';
    // Members alternate between the two gateways; each client process takes a share.
    const shares = Array.from({ length: processes }, () => []);
    userIds.forEach((userId, i) => shares[i % processes].push({ userId, url: mesh.gateways[i % 2].url }));
    const pending = new Map();
    const counts = { sent: 0, acked: 0, failed: 0 };
    const errors = new Map();
    for (const share of shares) {
      const child = fork(__filename, ['--members-process'], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
      child.on('message', (m) => {
        if (m.type === 'ack') counts.acked += 1;
        else if (m.type === 'nack') {
          counts.failed += 1;
          errors.set(m.error, (errors.get(m.error) ?? 0) + 1);
        } else pending.get(child)?.(m);
      });
      children.push(child);
      await new Promise((resolve) => {
        pending.set(child, resolve);
        child.send({ type: 'connect', tenant, members: share });
      });
    }
    const connectedAt = now();
    console.error(`connected ${members} members over ${processes} processes and 2 gateways`);
    // The room is made while everyone is connected: each member's join reaches their gateway live
    // (RoomMembershipChanged on their user subject) and subscribes their connection to the room.
    const { room: created } = await room.createRoom(
      { context: undefined, name: 'Fan-out bench', topic: '', description: '', avatarRef: '', metadata: {}, visibility: roomV1.RoomVisibility.ROOM_VISIBILITY_PRIVATE, settings: { announcementOnly: false, historyVisibleToNewMembers: true, memberLimit: 0 }, memberIds: [], ownerId: userIds[0], requestId: '' },
      internal,
    );
    roomId = created.roomId;
    for (const child of children) child.send({ type: 'room', roomId });
    for (let i = 1; i < members; i += 500) {
      await room.addMembers({ context: undefined, roomId, userIds: userIds.slice(i, i + 500), role: eventsV1.RoomRole.ROOM_ROLE_MEMBER }, internal);
    }
    for (;;) {
      let joined = 0;
      for (const child of children) {
        joined += (await new Promise((resolve) => {
          pending.set(child, resolve);
          child.send({ type: 'collect' });
        })).joined;
      }
      if (joined === members) break;
      await new Promise((r) => setTimeout(r, 500));
    }
    console.error(`all ${members} members joined the room live`);

    const intended = new Map();
    const intervalMs = 60_000 / perMinute;
    const total = Math.floor((seconds * 1000) / intervalMs);
    const start = now();
    for (let n = 0; n < total; n += 1) {
      const due = start + n * intervalMs;
      const wait = due - now();
      if (wait > 1) await new Promise((r) => setTimeout(r, wait));
      intended.set(n, due);
      counts.sent += 1;
      if (via === 'nats') {
        const message = messagingV1.Message.fromPartial({ tenantId: tenant, conversationId: roomId, messageId: `x${n}`, seq: n + 1, senderId: userIds[n % members], clientMessageId: `b${n}`, kind: 1, text: `bench ${n}`, createdAt: new Date() });
        publishEnvelope(nats, subjects.conversation(tenant, roomId), newEnvelope(tenant, { $case: 'messageCreated', value: { message, memberIds: [] } }));
        counts.acked += 1;
      } else {
        children[n % processes].send({ type: 'send', n, index: Math.floor(n / processes), stamp: Math.round(connectedAt) });
      }
    }
    const sendEnd = now();
    // Wait for the tail, then gather every device's receive times.
    // Every member's device, the sender's included (its other devices must see what it sent).
    const expected = () => counts.acked * members;
    const histogram = hdr.build({ lowestDiscernibleValue: 1, highestTrackableValue: 120_000_000, numberOfSignificantValueDigits: 3 });
    let delivered = 0;
    let lastDelivery = 0;
    const deadline = now() + 30_000;
    while (now() < deadline) {
      await new Promise((r) => setTimeout(r, 1000));
      for (const child of children) {
        const { deliveries } = await new Promise((resolve) => {
          pending.set(child, resolve);
          child.send({ type: 'collect' });
        });
        for (const [n, at] of deliveries) {
          histogram.recordValue(Math.max(1, Math.round((at - intended.get(n)) * 1000)));
          lastDelivery = Math.max(lastDelivery, at);
          delivered += 1;
        }
      }
      if (counts.acked + counts.failed === counts.sent && delivered >= expected()) break;
    }
    const ms = (p) => Number((histogram.getValueAtPercentile(p) / 1000).toFixed(1));
    const result = {
      via,
      members,
      clientProcesses: processes,
      targetMessagesPerMinute: perMinute,
      sendSeconds: Number(((sendEnd - start) / 1000).toFixed(1)),
      ...counts,
      deliveriesExpected: expected(),
      delivered,
      lost: expected() - delivered,
      deliveriesPerSecond: Math.round(delivered / ((lastDelivery - start) / 1000)),
      p50Ms: ms(50),
      p99Ms: ms(99),
      p999Ms: ms(99.9),
      maxMs: Number((histogram.maxValue / 1000).toFixed(1)),
      errors: Object.fromEntries(errors),
    };
    console.log(
      `room fan-out (${via}): ${members} members, ${counts.acked} of ${counts.sent} messages accepted at ${perMinute}/min → ${delivered} of ${expected()} deliveries ` +
        `(${result.deliveriesPerSecond}/s); latency to every device p50=${result.p50Ms} ms p99=${result.p99Ms} ms p99.9=${result.p999Ms} ms max=${result.maxMs} ms`,
    );
    console.log(JSON.stringify(result));
  } finally {
    for (const child of children) child.send({ type: 'close' });
    room.close();
    await nats.close();
    await mesh.stop();
  }
})().catch((err) => {
  console.error(err);
  process.exit(1);
});
