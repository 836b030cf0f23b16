#!/usr/bin/env node
// The drop of a dead gateway alone: presence's own code (built dist) against
// the real Redis and NATS, no gateways or clients competing for the CPU.
//   node services/presence/bench/drop.js [connections=4000] [runs=3] [alsoElsewhere=0.1]
// Seeds `connections` users with one device on the dying gateway (a share
// `alsoElsewhere` of them with a second device on a live gateway, who must
// stay online), then runs Liveness.dropGateway and prints: how long it took,
// when the last PresenceChanged reached a NATS subscriber, Redis time inside
// the scripts (INFO commandstats, evalsha usec), Redis's CPU time over the
// drop (INFO cpu, including the 500 ms wait after it) and this process's CPU.
'use strict';
const { createRedis } = require('@switchboard/redis');
const { connectNats, decodeEnvelope } = require('@switchboard/nats');
const { infraEnv, natsSeedFile } = require('@switchboard/devenv');
const { PresenceStore } = require('../dist/store');
const { ChangeAnnouncer, Cause } = require('../dist/announcer');
const { Liveness } = require('../dist/liveness');

const quiet = { warn() {}, info() {}, debug() {}, error() {} };

async function scriptStats(redis) {
  const info = await redis.info('commandstats');
  const m = /cmdstat_evalsha:calls=(\d+),usec=(\d+)/.exec(info);
  const inner = {};
  for (const line of info.split('\n')) {
    const c = /^cmdstat_([^:]+):calls=(\d+),usec=(\d+)/.exec(line.trim());
    if (c) inner[c[1]] = { calls: Number(c[2]), usec: Number(c[3]) };
  }
  // Redis's own CPU time: unlike the usec above (wall time inside the script), it does not grow when the machine is busy and Redis waits for a core.
  const cpu = await redis.info('cpu');
  const cpuMs = ['used_cpu_user', 'used_cpu_sys'].reduce((sum, field) => sum + 1000 * Number(new RegExp(`${field}:([0-9.]+)`).exec(cpu)[1]), 0);
  return m ? { calls: Number(m[1]), usec: Number(m[2]), inner, cpuMs } : { calls: 0, usec: 0, inner, cpuMs };
}

async function main() {
  const [connections = 4000, runs = 3, alsoElsewhere = 0.1] = process.argv.slice(2).map(Number);
  const env = infraEnv();
  const redis = createRedis(env.REDIS_URL, 'drop-bench', { autoPipelining: true });
  await redis.connect();
  const nats = await connectNats({ servers: env.NATS_URL, nkeySeedFile: natsSeedFile(), name: 'drop-bench' });
  const watcher = await connectNats({ servers: env.NATS_URL, nkeySeedFile: natsSeedFile(), name: 'drop-bench-watcher' });
  const store = new PresenceStore(redis, 3600, 3600_000, 300_000);
  const announcer = new ChangeAnnouncer(store, nats, quiet, 1000);
  const liveness = new Liveness(store, announcer, nats, {}, quiet);
  try {
    for (let run = 0; run < runs; run += 1) {
      const tenantId = `drop${Date.now()}`;
      const dying = `gw-dying-${run}`;
      const users = Array.from({ length: connections }, (_, i) => `u${i}`);
      const now = Date.now();
      const device = { platform: 1, label: 'Phone', appVersion: '1', userAgent: 'bench', connectedAt: now };
      for (let b = 0; b < users.length; b += 500) {
        await Promise.all(
          users.slice(b, b + 500).map(async (userId, j) => {
            await store.connect(tenantId, userId, { deviceId: 'd1', gatewayId: dying, connectionId: `c${b + j}` }, device, now, now + 60_000);
            if ((b + j) % Math.round(1 / alsoElsewhere) === 0) await store.connect(tenantId, userId, { deviceId: 'd2', gatewayId: 'gw-live', connectionId: `l${b + j}` }, device, now, now + 60_000);
          }),
        );
      }
      // Announce the connects first so the drop's OFFLINE is news (as in production).
      for (let b = 0; b < users.length; b += 500) await announcer.announceMany(tenantId, await store.read(tenantId, users.slice(b, b + 500)), Date.now(), Cause.PRESENCE_CHANGE_CAUSE_CONNECTED);
      let offline = 0;
      let last = 0;
      const sub = watcher.subscribe(`sb.${tenantId}.presence.>`, {
        callback: (err, msg) => {
          if (err) return;
          const event = decodeEnvelope(msg).envelope.event;
          const changes = event?.$case === 'presenceChanged' ? [event.value] : event?.$case === 'presenceChangedBatch' ? event.value.changes : [];
          for (const change of changes) {
            if (change.status !== 4) continue;
            offline += 1;
            last = performance.now();
          }
        },
      });
      await watcher.flush();
      const before = await scriptStats(redis);
      const cpu = process.cpuUsage();
      const started = performance.now();
      const startedTicks = process.hrtime.bigint() / 1000n;
      const result = await liveness.dropGateway(dying, Cause.PRESENCE_CHANGE_CAUSE_GATEWAY_DOWN);
      const took = performance.now() - started;
      if (process.env.DROP_WINDOWS) console.log(`window ${startedTicks} ${process.hrtime.bigint() / 1000n}`);
      const used = process.cpuUsage(cpu);
      await nats.flush();
      await new Promise((r) => setTimeout(r, 500));
      const after = await scriptStats(redis);
      sub.unsubscribe();
      if (process.env.DROP_COMMANDS) {
        const rows = Object.entries(after.inner).map(([cmd, v]) => [cmd, v.calls - (before.inner[cmd]?.calls ?? 0), v.usec - (before.inner[cmd]?.usec ?? 0)]).filter((r) => r[1] > 0 && r[0] !== 'evalsha').sort((x, y) => y[2] - x[2]);
        console.log('  inside the scripts: ' + rows.map(([cmd, calls, usec]) => `${cmd} ${calls}× ${(usec / 1000).toFixed(0)} ms`).join(', '));
      }
      const stillOnline = await redis.zcard(`sb:{${tenantId}}:presence:online`);
      console.log(
        `${result.connections} connections, ${result.usersOffline} users offline (${stillOnline} still online): drop ${took.toFixed(0)} ms, ` +
          `last OFFLINE at the subscriber ${(last - started).toFixed(0)} ms (${offline} received); ` +
          `redis scripts ${after.calls - before.calls} calls ${((after.usec - before.usec) / 1000).toFixed(0)} ms, redis CPU ${(after.cpuMs - before.cpuMs).toFixed(0)} ms; presence CPU ${((used.user + used.system) / 1000).toFixed(0)} ms`,
      );
      await redis.eval(`for _, k in ipairs(redis.call('KEYS', ARGV[1])) do redis.call('DEL', k) end`, 0, `sb:{${tenantId}}:*`);
    }
  } finally {
    announcer.close();
    await redis.quit();
    await nats.close();
    await watcher.close();
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
