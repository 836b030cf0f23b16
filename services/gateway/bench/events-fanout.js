#!/usr/bin/env node
// Broadcast-event latency: PublishEvent on one gateway to every subscribed
// socket on two gateways (JetStream store, each gateway's stream tail, the
// pattern match, the push), from the publish call to each arrival; printed
// as p50/p99/max from an HDR histogram. Needs the local infrastructure
// (infra.sh up) and a build.
//   node services/gateway/bench/events-fanout.js [subscribers=1000] [eventsPerSecond=50] [seconds=20]
'use strict';
const hdr = require('hdr-histogram-js');
const { DEV_JWT_SECRET, SwitchboardClient, mintDevToken } = require('@switchboard/client');
const { startMesh } = require('@switchboard/devenv');
const { createClient } = require('@switchboard/grpc');
const { newId } = require('@switchboard/ids');
const { gatewayV1 } = require('@switchboard/proto');

const subscribers = Number(process.argv[2] ?? 1000);
const perSecond = Number(process.argv[3] ?? 50);
const seconds = Number(process.argv[4] ?? 20);

async function main() {
  const tenant = `bench${newId().slice(0, 8)}`;
  const mesh = await startMesh({ gateways: 2, ports: 'free', env: { LOG_LEVEL: 'warn' } });
  const admin = createClient(gatewayV1.GatewayAdminServiceClient, mesh.gateways[0].grpcAddress);
  const histogram = hdr.build({ lowestDiscernibleValue: 1, highestTrackableValue: 60_000_000, numberOfSignificantValueDigits: 3 });
  const clients = [];
  let received = 0;
  try {
    for (let index = 0; index < subscribers; index += 1) {
      const client = new SwitchboardClient({
        url: mesh.gateways[index % 2].url,
        token: () => mintDevToken({ secret: DEV_JWT_SECRET, tenantId: tenant, userId: `u${index}`, claims: { events: ['ward.>'] } }),
        reconnect: { enabled: false },
        requestTimeoutMs: 30_000,
      });
      client.on('event', (event) => {
        // Microseconds from the publish call (same machine, same clock).
        histogram.recordValue(Math.max(1, Math.round((performance.timeOrigin + performance.now()) * 1000 - Number(Buffer.from(event.payload).toString()))));
        received += 1;
      });
      await client.connect();
      // Half the sockets on a wildcard in the middle, half on the tail wildcard.
      await client.subscribeEvents(index % 2 === 0 ? 'ward.*.vitals' : 'ward.>');
      clients.push(client);
    }
    const total = perSecond * seconds;
    const started = Date.now();
    for (let n = 0; n < total; n += 1) {
      const due = started + (n * 1000) / perSecond;
      if (due > Date.now()) await new Promise((r) => setTimeout(r, due - Date.now()));
      const sentMicros = Math.round((performance.timeOrigin + performance.now()) * 1000);
      void admin.publishEvent(
        { context: undefined, topic: `ward.${n % 10}.vitals`, payload: Buffer.from(String(sentMicros)), contentType: 'text/plain', requestId: '' },
        { context: { tenantId: tenant, userId: '', deviceId: '', internal: true } },
      );
    }
    const expected = total * subscribers;
    const deadline = Date.now() + 30_000;
    while (received < expected && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
    const ms = (p) => (histogram.getValueAtPercentile(p) / 1000).toFixed(2);
    console.log(
      `events-fanout: ${subscribers} subscribers on 2 gateways, ${perSecond} events/s for ${seconds} s: ${received} of ${expected} deliveries; ` +
        `latency p50 ${ms(50)} ms, p99 ${ms(99)} ms, max ${(histogram.maxValue / 1000).toFixed(2)} ms`,
    );
  } finally {
    for (const client of clients) await client.close();
    admin.close();
    await mesh.stop();
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
