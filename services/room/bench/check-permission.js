#!/usr/bin/env node
// CheckPermission as messaging calls it (internal caller naming the user, on
// every post): latency from a histogram and calls per second, against the
// real room service and PostgreSQL, with `concurrency` calls in flight.
// Bounded, loopback only.
//   node services/room/bench/check-permission.js [concurrency=16] [seconds=10] [members=1000]
'use strict';
const hdr = require('hdr-histogram-js');
const { launchWithClient } = require('@switchboard/devenv');
const { roomV1, eventsV1 } = require('@switchboard/proto');

const concurrency = Number(process.argv[2] ?? 16);
const seconds = Number(process.argv[3] ?? 10);
const members = Number(process.argv[4] ?? 1000);

(async () => {
  const { service, client } = await launchWithClient('room', roomV1.RoomServiceClient, { LOG_LEVEL: 'warn' });
  const tenant = `perm${Date.now()}`;
  const internal = { context: { tenantId: tenant, userId: '', deviceId: '', internal: true }, deadlineMs: 30_000 };
  try {
    const userIds = Array.from({ length: members }, (_, i) => `u${i}`);
    const { room } = await client.createRoom(
      { context: undefined, name: 'Permission bench', topic: '', description: '', avatarRef: '', metadata: {}, visibility: 2, settings: undefined, memberIds: [], ownerId: userIds[0], requestId: '' },
      internal,
    );
    for (let i = 1; i < members; i += 500) {
      await client.addMembers({ context: undefined, roomId: room.roomId, userIds: userIds.slice(i, i + 500), role: eventsV1.RoomRole.ROOM_ROLE_MEMBER }, internal);
    }
    const histogram = hdr.build({ lowestDiscernibleValue: 1, highestTrackableValue: 60_000_000, numberOfSignificantValueDigits: 3 });
    let calls = 0;
    let denied = 0;
    const end = performance.now() + seconds * 1000;
    await Promise.all(
      Array.from({ length: concurrency }, async (_, worker) => {
        for (let n = worker; performance.now() < end; n += concurrency) {
          const started = performance.now();
          // Every tenth asks for someone who is not a member: the answer, not an error.
          const userId = n % 10 === 9 ? `stranger${n}` : userIds[n % members];
          const answer = await client.checkPermission({ context: undefined, roomId: room.roomId, userId, permissions: [roomV1.Permission.PERMISSION_POST] }, internal);
          histogram.recordValue(Math.max(1, Math.round((performance.now() - started) * 1000)));
          calls += 1;
          if (!answer.allowed) denied += 1;
        }
      }),
    );
    const ms = (p) => Number((histogram.getValueAtPercentile(p) / 1000).toFixed(2));
    const result = { concurrency, seconds, members, calls, denied, perSecond: Math.round(calls / seconds), p50Ms: ms(50), p99Ms: ms(99), p999Ms: ms(99.9), maxMs: Number((histogram.maxValue / 1000).toFixed(2)) };
    console.log(`CheckPermission: ${result.perSecond}/s with ${concurrency} in flight; p50=${result.p50Ms} ms p99=${result.p99Ms} ms p99.9=${result.p999Ms} ms`);
    console.log(JSON.stringify(result));
  } finally {
    client.close();
    await service.stop();
  }
})().catch((err) => {
  console.error(err);
  process.exit(1);
});
