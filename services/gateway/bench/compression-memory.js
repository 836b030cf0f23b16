#!/usr/bin/env node
// Memory cost of permessage-deflate on one gateway: N connections of one user
// receive the same message larger than the compression threshold; the
// gateway's RSS and heap are read from its /metrics with compression offered
// and not. Bounded, loopback only, stops by itself.
//   node services/gateway/bench/compression-memory.js [connections=1000] [messageBytes=4096]
'use strict';
const { DEV_JWT_SECRET, SwitchboardClient, mintDevToken } = require('@switchboard/client');
const { freePort, infraEnv, launchService } = require('@switchboard/devenv');

const connections = Number(process.argv[2] ?? 1000);
const messageBytes = Number(process.argv[3] ?? 4096);

async function memory(opsPort) {
  const text = await (await fetch(`http://127.0.0.1:${opsPort}/metrics`)).text();
  const read = (kind) => Number(new RegExp(`^process_memory_bytes\\{kind="${kind}"\\} (\\d+)`, 'm').exec(text)[1]);
  return { rss: read('rss'), heap: read('heap_used') };
}

async function run(messaging, compression) {
  const env = infraEnv();
  const port = await freePort();
  const opsPort = await freePort();
  const gateway = await launchService({
    service: 'gateway',
    name: `gateway-${compression ? 'deflate' : 'plain'}`,
    env: { ...env, LOG_LEVEL: 'warn', PORT: String(port), GRPC_PORT: String(await freePort()), MESSAGING_ADDR: messaging, WS_COMPRESSION: String(compression) },
    opsPort,
  });
  const empty = await memory(opsPort);
  const tenant = `bench${Date.now()}`;
  const reader = 'reader';
  const clients = [];
  const received = { count: 0 };
  for (let i = 0; i < connections; i += 1) {
    const client = new SwitchboardClient({ url: `ws://127.0.0.1:${port}/ws`, token: () => mintDevToken({ secret: DEV_JWT_SECRET, tenantId: tenant, userId: reader }), reconnect: { enabled: false } });
    client.on('message', () => (received.count += 1));
    await client.connect();
    clients.push(client);
  }
  global.gc?.();
  const before = await memory(opsPort);
  const sender = new SwitchboardClient({ url: `ws://127.0.0.1:${port}/ws`, token: () => mintDevToken({ secret: DEV_JWT_SECRET, tenantId: tenant, userId: 'sender' }), reconnect: { enabled: false } });
  await sender.connect();
  const words = 'patient results are ready for review at the nursing station '.repeat(Math.ceil(messageBytes / 60)).slice(0, messageBytes);
  try {
    for (let round = 0; round < 3; round += 1) {
      await sender.sendMessage({ recipientUserId: reader, text: `${round} ${words}` });
    }
  } catch (err) {
    console.error(gateway.output.slice(-10).join('\n'));
    throw err;
  }
  const deadline = Date.now() + 60_000;
  while (received.count < connections * 3 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
  const after = await memory(opsPort);
  for (const client of [...clients, sender]) client.close();
  await gateway.stop();
  return { compression, delivered: received.count, empty, before, after };
}

(async () => {
  const env = infraEnv();
  const grpcPort = await freePort();
  const messaging = await launchService({ service: 'messaging', env: { ...env, LOG_LEVEL: 'warn', GRPC_PORT: String(grpcPort) }, opsPort: await freePort() });
  try {
    for (const compression of [false, true]) {
      const r = await run(`127.0.0.1:${grpcPort}`, compression);
      // Per 1,000 connections, above the process with no connections at all.
      const perThousand = (bytes) => (((bytes - r.empty.rss) / connections) * 1000) / 2 ** 20;
      console.log(
        `compression=${r.compression ? 'on ' : 'off'} connections=${connections} delivered=${r.delivered}/${connections * 3} ` +
          `empty process rss=${(r.empty.rss / 2 ** 20).toFixed(0)} MB; per 1000 connections: idle=${perThousand(r.before.rss).toFixed(1)} MB, ` +
          `after 3 x ${messageBytes} B messages=${perThousand(r.after.rss).toFixed(1)} MB`,
      );
    }
  } finally {
    await messaging.stop();
  }
})().catch((err) => {
  console.error(err);
  process.exit(1);
});
