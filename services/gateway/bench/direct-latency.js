#!/usr/bin/env node
// End-to-end delivery latency of direct messages through the real mesh:
// sender on gateway-1 → messaging (commit) → outbox → NATS → gateway-2 →
// recipient. Latency is measured at the recipient from the *intended* send
// time (fixed schedule, so a stall counts against every message it delays:
// no coordinated omission) into an HDR histogram. Bounded, loopback only.
//   node services/gateway/bench/direct-latency.js [pairs=200] [messagesPerMinute=12000] [seconds=30]
'use strict';
const hdr = require('hdr-histogram-js');
const { DEV_JWT_SECRET, SwitchboardClient, mintDevToken } = require('@switchboard/client');
const { startMesh } = require('@switchboard/devenv');

const pairs = Number(process.argv[2] ?? 200);
const perMinute = Number(process.argv[3] ?? 12_000);
const seconds = Number(process.argv[4] ?? 30);

async function client(url, tenantId, userId) {
  const c = new SwitchboardClient({ url, token: () => mintDevToken({ secret: DEV_JWT_SECRET, tenantId, userId }), reconnect: { enabled: false } });
  await c.connect();
  return c;
}

(async () => {
  const mesh = await startMesh({ gateways: 2, ports: 'free', env: { LOG_LEVEL: 'warn' } });
  const tenant = `lat${Date.now()}`;
  const histogram = hdr.build({ lowestDiscernibleValue: 1, highestTrackableValue: 60_000_000, numberOfSignificantValueDigits: 3 });
  const counts = { sent: 0, acked: 0, delivered: 0, failed: 0 };
  const intended = new Map();
  const clients = [];
  try {
    const senders = [];
    for (let i = 0; i < pairs; i += 1) {
      const sender = await client(mesh.gateways[0].url, tenant, `s${i}`);
      const recipient = await client(mesh.gateways[1].url, tenant, `r${i}`);
      recipient.on('message', (message) => {
        const at = intended.get(message.clientMessageId);
        if (at === undefined) return;
        intended.delete(message.clientMessageId);
        counts.delivered += 1;
        histogram.recordValue(Math.max(1, Math.round((performance.now() - at) * 1000)));
      });
      clients.push(sender, recipient);
      senders.push({ sender, to: `r${i}` });
    }
    // Warm-up: one message per pair creates the conversations (not measured).
    await Promise.all(senders.map(({ sender, to }) => sender.sendMessage({ recipientUserId: to, text: 'warm-up' })));
    await new Promise((r) => setTimeout(r, 1000));

    const intervalMs = 60_000 / perMinute;
    const start = performance.now();
    const total = Math.floor((seconds * 1000) / intervalMs);
    for (let n = 0; n < total; n += 1) {
      const due = start + n * intervalMs;
      const wait = due - performance.now();
      if (wait > 1) await new Promise((r) => setTimeout(r, wait));
      const { sender, to } = senders[n % senders.length];
      const clientMessageId = `m${n}x${Date.now()}`;
      intended.set(clientMessageId, due);
      counts.sent += 1;
      sender.sendMessage({ recipientUserId: to, text: `message ${n}`, clientMessageId }).then(
        () => (counts.acked += 1),
        () => (counts.failed += 1),
      );
    }
    const deadline = performance.now() + 15_000;
    while (counts.delivered < counts.acked + counts.failed && counts.delivered < counts.sent && performance.now() < deadline) await new Promise((r) => setTimeout(r, 100));
    const elapsed = (performance.now() - start) / 1000;
    const ms = (p) => (histogram.getValueAtPercentile(p) / 1000).toFixed(1);
    const result = {
      pairs,
      connections: pairs * 2,
      targetPerMinute: perMinute,
      achievedPerMinute: Math.round((counts.acked / elapsed) * 60),
      ...counts,
      lost: counts.acked - counts.delivered,
      p50Ms: Number(ms(50)),
      p99Ms: Number(ms(99)),
      p999Ms: Number(ms(99.9)),
      maxMs: Number((histogram.maxValue / 1000).toFixed(1)),
    };
    console.log(
      `direct messages: ${result.connections} connections, ${result.achievedPerMinute}/min (target ${perMinute}), ` +
        `sent=${counts.sent} acked=${counts.acked} delivered=${counts.delivered} lost=${result.lost} failed=${counts.failed}; ` +
        `latency p50=${result.p50Ms} ms p99=${result.p99Ms} ms p99.9=${result.p999Ms} ms max=${result.maxMs} ms`,
    );
    console.log(JSON.stringify(result));
  } finally {
    for (const c of clients) c.close();
    await mesh.stop();
  }
})().catch((err) => {
  console.error(err);
  process.exit(1);
});
