#!/usr/bin/env node
// Notification pipeline throughput, end to end: messageCreated records into
// Kafka `sb.messages` → the notification service (its own consumer group,
// presence asked for every batch, routing, PostgreSQL) → NotificationCreated
// on NATS `sb.<t>.user.<u>`. Bounded: N records, a deadline, then it stops
// the processes it started and prints the figures.
//
//   node services/notification/bench/throughput.js [N=20000] [USERS=500]
//
// Needs the local infrastructure (`npm run infra -- up`) and a build.
const { freePort, infraEnv, launchService, natsSeedFile } = require('@switchboard/devenv');
const { newId } = require('@switchboard/ids');
const { createIdempotentProducer, createKafka, envelopeRecord, TOPICS } = require('@switchboard/kafka');
const { connectNats, decodeEnvelope, newEnvelope } = require('@switchboard/nats');
const { messagingV1 } = require('@switchboard/proto');

const { readdirSync, readFileSync } = require('node:fs');
const path = require('node:path');
const { execFileSync } = require('node:child_process');
const { loadavg } = require('node:os');

const N = Number(process.argv[2] ?? 20000);
const USERS = Number(process.argv[3] ?? 500);
const DEADLINE_MS = 180_000;

async function launch(service, env) {
  const grpcPort = await freePort();
  const proc = await launchService({ service, env: { ...infraEnv(), LOG_LEVEL: 'error', GRPC_PORT: String(grpcPort), ...env }, opsPort: await freePort(), readyTimeoutMs: 60_000 });
  return { proc, address: `127.0.0.1:${grpcPort}` };
}

const TICKS = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;

/** User + system CPU ms of a process, and with `tree` of its descendants too (PostgreSQL's backends, and what exited ones used). */
function cpuMs(pid, tree = false) {
  const stat = (p) => {
    try {
      const text = readFileSync(`/proc/${p}/stat`, 'utf8');
      return text.slice(text.lastIndexOf(')') + 2).split(' ');
    } catch {
      return undefined;
    }
  };
  const pids = [pid];
  if (tree) {
    const children = new Map();
    for (const entry of readdirSync('/proc')) {
      const fields = /^\d+$/.test(entry) && stat(entry);
      if (fields) children.set(Number(fields[1]), [...(children.get(Number(fields[1])) ?? []), Number(entry)]);
    }
    for (let i = 0; i < pids.length; i += 1) pids.push(...(children.get(pids[i]) ?? []));
  }
  let ms = 0;
  for (const p of pids) {
    const fields = stat(p);
    if (!fields) continue;
    ms += ((Number(fields[11]) + Number(fields[12])) / TICKS) * 1000;
    if (tree && p === pid) ms += ((Number(fields[13]) + Number(fields[14])) / TICKS) * 1000;
  }
  return ms;
}

function postmasterPid() {
  const { repoRoot } = require('@switchboard/devenv');
  return Number(readFileSync(path.join(repoRoot, '.data', 'infra', 'postgres', 'postmaster.pid'), 'utf8').split('\n')[0]);
}

function percentile(sorted, p) {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

async function main() {
  const env = infraEnv();
  const started = [];
  const tenantId = newId();
  const nats = await connectNats({ servers: env.NATS_URL, nkeySeedFile: natsSeedFile(), name: 'notification-bench' });
  const producer = createIdempotentProducer(createKafka({ brokers: env.KAFKA_BROKERS, clientId: 'notification-bench' }));
  await producer.connect();
  try {
    const presence = await launch('presence', {});
    started.push(presence.proc);
    const notification = await launch('notification', { KAFKA_GROUP_ID: `notification-bench-${newId()}`, MAX_EVENT_AGE_MS: '600000', PRESENCE_ADDR: presence.address });
    started.push(notification.proc);

    const seen = new Set();
    const latencies = [];
    let last = 0;
    let done;
    const finished = new Promise((resolve) => (done = resolve));
    nats.subscribe(`sb.${tenantId}.user.>`, {
      callback: (err, msg) => {
        if (err) return;
        const { envelope } = decodeEnvelope(msg);
        if (envelope.event?.$case !== 'notificationCreated') return;
        const id = envelope.event.value.notificationId;
        if (seen.has(id)) return;
        seen.add(id);
        last = Date.now();
        latencies.push(last - envelope.event.value.createdAt.getTime());
        if (seen.size === N) done();
      },
    });
    await nats.flush();

    const sender = newId();
    const users = Array.from({ length: USERS }, () => newId());
    const records = [];
    for (let i = 0; i < N; i += 1) {
      const conversationId = newId();
      const message = {
        tenantId, conversationId, messageId: newId(), seq: 1, senderId: sender, clientMessageId: newId(), kind: messagingV1.MessageKind.MESSAGE_KIND_TEXT,
        text: `bench ${i}`, attachments: [], mentions: [], createdAt: new Date(), editedAt: undefined, deleted: false, metadata: {},
      };
      records.push({ key: conversationId, message, memberIds: [sender, users[i % USERS]] });
    }
    // CPU of the notification process and of PostgreSQL (all backends) over the run, per notification.
    const postgres = postmasterPid();
    const cpuBefore = { notification: cpuMs(notification.proc.child.pid), postgres: cpuMs(postgres, true) };
    const loadBefore = loadavg()[0];
    const start = Date.now();
    for (let i = 0; i < records.length; i += 1000) {
      const now = new Date();
      await producer.send({
        topic: TOPICS.messages,
        acks: -1,
        messages: records.slice(i, i + 1000).map((r) => envelopeRecord(r.key, { ...newEnvelope(tenantId, { $case: 'messageCreated', value: { message: r.message, memberIds: r.memberIds } }), occurredAt: now })),
      });
    }
    const produced = Date.now();
    const timer = setTimeout(done, DEADLINE_MS);
    await finished;
    clearTimeout(timer);
    const cpu = { notification: cpuMs(notification.proc.child.pid) - cpuBefore.notification, postgres: cpuMs(postgres, true) - cpuBefore.postgres };
    const seconds = (last - start) / 1000;
    latencies.sort((a, b) => a - b);
    const result = {
      notifications: seen.size,
      expected: N,
      users: USERS,
      produceSeconds: (produced - start) / 1000,
      endToEndSeconds: seconds,
      notificationsPerSecond: Math.round(seen.size / seconds),
      latencyMs: { p50: percentile(latencies, 50), p99: percentile(latencies, 99), max: latencies[latencies.length - 1] },
      cpuMs: { notification: Math.round(cpu.notification), postgres: Math.round(cpu.postgres) },
      cpuMsPerNotification: { notification: +(cpu.notification / seen.size).toFixed(3), postgres: +(cpu.postgres / seen.size).toFixed(3) },
      load1: { before: +loadBefore.toFixed(2), after: +loadavg()[0].toFixed(2) },
    };
    console.log(JSON.stringify(result, null, 2));
    if (seen.size !== N) process.exitCode = 1;
  } finally {
    for (const proc of started.reverse()) await proc.stop();
    await producer.disconnect();
    await nats.close();
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
