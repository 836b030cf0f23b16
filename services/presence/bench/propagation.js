#!/usr/bin/env node
// Presence propagation at scale through the real mesh (gateways, presence,
// Redis, NATS), loopback only and bounded in time.
//   node services/presence/bench/propagation.js [users=4000] [seconds=60] [processes=4] [gateways=2] [watchesPerUser=5] [changesPerSecond=20] [churnPerMinute=0.1]
// Users are spread over `processes` client processes (each under the 20,000
// descriptor limit) and over the gateways; each watches `watchesPerUser`
// others. During the run:
//   - status changes at a fixed rate: a user sets BUSY/AVAILABLE with the
//     intended send time in its custom message; every watcher device records
//     (arrival - intended send) into an HDR histogram (no coordinated
//     omission: the schedule does not wait for anything);
//   - churn: `churnPerMinute` of the users close and reconnect each minute,
//     spread evenly; watchers record (arrival - presence's commit time) for
//     the offline and online changes this causes;
//   - at the end one gateway is SIGKILLed and every watcher records
//     (arrival of OFFLINE - kill time) for each of its users.
// Where the time goes: an observer subscribed to the tenant's presence
// subjects records (NATS arrival - presence's commit time) per kind, i.e.
// presence's part; the rest is gateway, coalescing window and client.
// Redis work is INFO commandstats deltas over the measured window.
'use strict';
const { fork } = require('node:child_process');
const hdr = require('hdr-histogram-js');

if (process.argv[2] === '--child') {
  child();
} else {
  parent().catch((err) => {
    console.error(err);
    process.exit(1);
  });
}

function histogram() {
  return hdr.build({ lowestDiscernibleValue: 1, highestTrackableValue: 120_000_000, numberOfSignificantValueDigits: 3 });
}

function summary(name, h) {
  if (h.totalCount === 0) return `${name}: no samples`;
  const ms = (us) => (us / 1000).toFixed(1);
  return `${name}: n=${h.totalCount} p50=${ms(h.getValueAtPercentile(50))} ms p99=${ms(h.getValueAtPercentile(99))} ms max=${ms(h.maxValue)} ms`;
}

async function redisCalls(redis) {
  const info = await redis.info('commandstats');
  const calls = {};
  for (const line of info.split('\n')) {
    const m = /^cmdstat_([^:]+):calls=(\d+)/.exec(line.trim());
    if (m) calls[m[1]] = Number(m[2]);
  }
  return calls;
}

async function parent() {
  const [users = 4000, seconds = 60, processes = 4, gateways = 2, watches = 5, changesPerSecond = 20, churnPerMinute = 0.1] = process.argv.slice(2).map(Number);
  const { startMesh, infraEnv, natsSeedFile } = require('@switchboard/devenv');
  const { createRedis } = require('@switchboard/redis');
  const mesh = await startMesh({ gateways, ports: 'free', env: { LOG_LEVEL: 'warn' }, gatewayEnv: { SHUTDOWN_DEADLINE_MS: '5000' } });
  const redis = createRedis(infraEnv().REDIS_URL, 'bench');
  await redis.connect();
  const tenant = `bench${Date.now()}`;
  const children = [];
  const totals = { status: histogram(), churn: histogram(), churnOffline: histogram(), crash: histogram() };
  const published = { status: histogram(), online: histogram(), offline: histogram(), crash: histogram() };
  let observing = false;
  const lastObserved = new Map();
  let crashAt = 0;
  const { connectNats, decodeEnvelope } = require('@switchboard/nats');
  const nats = await connectNats({ servers: infraEnv().NATS_URL, nkeySeedFile: natsSeedFile(), name: 'bench-observer' });
  nats.subscribe(`sb.${tenant}.presence.>`, {
    callback: (err, msg) => {
      if (err || !observing) return;
      const event = decodeEnvelope(msg).envelope.event;
      // A dead gateway's users come batched (PresenceChangedBatch), every other change one per user.
      const changes = event?.$case === 'presenceChanged' ? [event.value] : event?.$case === 'presenceChangedBatch' ? event.value.changes : [];
      for (const change of changes) observe(change);
    },
  });
  function observe(change) {
    if (!change.changedAt) return;
    const now = Date.now();
    const first = lastObserved.get(change.userId);
    if (change.customMessage) lastObserved.set(change.userId, change.customMessage);
    if (crashAt) return published.crash.recordValue(Math.max(1, (now - crashAt) * 1000));
    const lag = Math.max(1, (now - change.changedAt.getTime()) * 1000);
    if (change.status === 4) published.offline.recordValue(lag);
    // A new custom message is a status change; the same one again is the user coming back online.
    else if (change.customMessage && first !== change.customMessage) published.status.recordValue(lag);
    else published.online.recordValue(lag);
  }
  try {
    const started = Date.now();
    for (let p = 0; p < processes; p += 1) {
      const child = fork(__filename, ['--child'], { stdio: 'inherit' });
      children.push(child);
      child.send({ type: 'setup', tenant, users, processes, index: p, gateways: mesh.gateways.map((g) => g.url), watches });
    }
    await Promise.all(children.map((c) => once(c, 'ready')));
    console.log(`${users} users connected over ${gateways} gateways by ${processes} processes in ${((Date.now() - started) / 1000).toFixed(1)} s; each watches ${watches}`);
    // Let the last connections' first refresh pass.
    await new Promise((r) => setTimeout(r, 8000));

    // Idle: what keeping everyone online costs Redis (leases, heartbeats, sweeps), with nobody changing anything.
    const idleBefore = await redisCalls(redis);
    const idleStart = Date.now();
    await new Promise((r) => setTimeout(r, 15_000));
    const idleAfter = await redisCalls(redis);
    const idleTotal = Object.entries(idleAfter).reduce((sum, [cmd, calls]) => sum + calls - (idleBefore[cmd] ?? 0), 0);
    const idleRate = idleTotal / ((Date.now() - idleStart) / 1000);

    const before = await redisCalls(redis);
    const windowStart = Date.now();
    observing = true;
    for (const child of children) child.send({ type: 'run', seconds, changesPerSecond: changesPerSecond / processes, churnPerMinute });
    await Promise.all(children.map((c) => once(c, 'ran')));
    const windowMs = Date.now() - windowStart;
    const after = await redisCalls(redis);
    await new Promise((r) => setTimeout(r, 2000));

    // Gateway crash: the last gateway's users.
    const victim = mesh.gateways.length - 1;
    const killedAt = Date.now();
    // Both clocks, to cut CPU samples (wall) and --cpu-prof profiles (monotonic µs) to the crash.
    console.log(`killing ${mesh.gateways[victim].name} at ${killedAt} (monotonic ${process.hrtime.bigint() / 1000n} µs)`);
    crashAt = killedAt;
    // PROPAGATION_CPU=1: every process's CPU in 500 ms slices after the kill (who the drop and delivery compete with).
    const sampling = process.env.PROPAGATION_CPU ? sampleCpu(await cpuTargets(mesh, children, redis, victim), 3000) : undefined;
    await mesh.gateways[victim].process.kill();
    for (const child of children) child.send({ type: 'crash', gateway: victim, killedAt });
    await new Promise((r) => setTimeout(r, 6000));
    // Presence's own account of the drop: when it started (after the missed heartbeats) and how long it took.
    for (const line of mesh.services.filter((s) => s.name.startsWith('presence')).flatMap((s) => s.output)) {
      if (!line.includes('missed its heartbeats') || !line.includes(mesh.gateways[victim].name)) continue;
      const entry = JSON.parse(line);
      const at = typeof entry.time === 'number' ? entry.time : Date.parse(entry.time);
      console.log(`presence dropped ${entry.gateway}: ${entry.connections} connections in ${entry.ms} ms, finished ${at - killedAt} ms after the kill`);
      // Detection's parts, after the kill: the link seen closing, the gateway popped as dead; then the drop's: the take, the first OFFLINE batch published.
      if (entry.detectedAt) {
        const link = entry.linkClosedAt ? `link closed +${entry.linkClosedAt - killedAt} ms, ` : '';
        console.log(`  ${link}popped as dead +${entry.detectedAt - killedAt} ms, taken in ${entry.takeMs} ms, first OFFLINE batch published +${entry.detectedAt - killedAt + entry.firstAnnouncedMs} ms`);
      }
    }
    if (sampling) console.log(await sampling);
    for (const child of children) child.send({ type: 'report' });
    const reports = await Promise.all(children.map((c) => once(c, 'report')));
    let counts = { statusSent: 0, reconnects: 0, crashExpected: 0, errors: 0 };
    for (const report of reports) {
      for (const key of Object.keys(totals)) totals[key].add(hdr.decodeFromCompressedBase64(report.histograms[key]));
      for (const key of Object.keys(counts)) counts[key] += report.counts[key];
    }
    const delta = {};
    let total = 0;
    for (const [cmd, calls] of Object.entries(after)) {
      const d = calls - (before[cmd] ?? 0);
      if (d > 0) delta[cmd] = d;
      total += d;
    }
    const top = Object.entries(delta).sort((a, b) => b[1] - a[1]).slice(0, 8).map(([c, d]) => `${c}=${(d / (windowMs / 1000)).toFixed(0)}/s`).join(' ');
    console.log(`window ${(windowMs / 1000).toFixed(1)} s: ${counts.statusSent} status changes sent, ${counts.reconnects} reconnects, ${counts.errors} errors`);
    console.log(summary('status change → every watcher device', totals.status));
    console.log(summary('churn, reconnected → every watcher device', totals.churn));
    console.log(summary('churn, disconnected → every watcher device', totals.churnOffline));
    console.log(summary(`gateway SIGKILL → OFFLINE on every watcher device (${counts.crashExpected} expected)`, totals.crash));
    console.log(summary('  presence part: status change committed → published on NATS', published.status));
    console.log(summary('  presence part: reconnect committed → published', published.online));
    console.log(summary('  presence part: disconnect committed → published', published.offline));
    console.log(summary('  presence part: gateway SIGKILL → OFFLINE published on NATS', published.crash));
    console.log(`redis commands while idle (${users} connected): ${idleRate.toFixed(0)}/s`);
    console.log(`redis commands under load: ${(total / (windowMs / 1000)).toFixed(0)}/s  (${top})`);
  } finally {
    for (const child of children) child.kill();
    await redis.quit();
    await nats.close();
    await mesh.stop();
  }
}

/** The processes of the run by name: services, surviving gateways, client processes, Redis, NATS. */
async function cpuTargets(mesh, children, redis, victim) {
  const targets = [];
  for (const s of mesh.services) if (!s.name.startsWith('gateway')) targets.push([s.name, s.child.pid]);
  mesh.gateways.forEach((g, i) => i !== victim && targets.push([g.name, g.process.child.pid]));
  children.forEach((c, i) => targets.push([`clients-${i}`, c.pid]));
  targets.push(['redis', Number(/process_id:(\d+)/.exec(await redis.info('server'))[1])]);
  const fs = require('node:fs');
  for (const pid of fs.readdirSync('/proc').filter((d) => /^\d+$/.test(d))) {
    try {
      const cmd = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8');
      // This worktree's NATS (its config lives under the worktree's .data/).
      if (cmd.includes('nats-server') && cmd.includes(`${require('node:path').resolve(__dirname, '../../..')}/.data/`)) targets.push(['nats', Number(pid)]);
    } catch {
      // gone meanwhile
    }
  }
  return targets;
}

/** CPU ms per process in 500 ms slices over `ms` (from /proc/<pid>/stat, 10 ms ticks). */
async function sampleCpu(targets, ms) {
  const fs = require('node:fs');
  const ticks = (pid) => {
    try {
      const fields = fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
      return Number(fields[11]) + Number(fields[12]);
    } catch {
      return NaN;
    }
  };
  const slices = [];
  let last = targets.map(([, pid]) => ticks(pid));
  for (let t = 500; t <= ms; t += 500) {
    await new Promise((r) => setTimeout(r, 500));
    const now = targets.map(([, pid]) => ticks(pid));
    slices.push(now.map((n, i) => (n - last[i]) * 10));
    last = now;
  }
  const rows = targets.map(([name], i) => `  ${name.padEnd(14)} ${slices.map((s) => String(s[i]).padStart(5)).join(' ')}   total ${slices.reduce((sum, s) => sum + (s[i] || 0), 0)} ms`);
  return [`CPU ms per 500 ms after the kill (${slices.length} slices):`, ...rows].join('\n');
}

function once(child, type) {
  return new Promise((resolve, reject) => {
    const onMessage = (msg) => {
      if (msg.type === type) {
        child.off('message', onMessage);
        resolve(msg);
      }
    };
    child.on('message', onMessage);
    child.once('exit', (code) => reject(new Error(`client process exited with ${code}`)));
  });
}

function child() {
  const { DEV_JWT_SECRET, SwitchboardClient, mintDevToken } = require('@switchboard/client');
  const histograms = { status: histogram(), churn: histogram(), churnOffline: histogram(), crash: histogram() };
  const counts = { statusSent: 0, reconnects: 0, crashExpected: 0, errors: 0 };
  let setup;
  const mine = [];
  const devices = new Map();
  let crash;
  const lastMessage = new Map();
  const away = new Set();

  const userId = (i) => `u${i}`;
  const gatewayOf = (i) => i % setup.gateways.length;

  async function open(i) {
    const client = new SwitchboardClient({
      url: setup.gateways[gatewayOf(i)],
      token: () => mintDevToken({ secret: DEV_JWT_SECRET, tenantId: setup.tenant, userId: userId(i), deviceId: `d${i}` }),
      reconnect: { enabled: false },
    });
    client.on('error', () => undefined);
    client.on('frame', (frame) => {
      if (frame.kind?.$case !== 'presence') return;
      const now = Date.now();
      for (const change of frame.kind.value.changes) {
        const key = `${i}/${change.userId}`;
        const m = /^t(\d+)$/.exec(change.customMessage);
        if (crash && change.status === 4 && Number(change.userId.slice(1)) % setup.gateways.length === crash.gateway) {
          histograms.crash.recordValue(Math.max(1, (now - crash.killedAt) * 1000));
        } else if (m && change.status !== 4 && lastMessage.get(key) !== change.customMessage) {
          // A status change seen for the first time: from its intended send time.
          lastMessage.set(key, change.customMessage);
          histograms.status.recordValue(Math.max(1, (now - Number(m[1])) * 1000));
        } else if (change.changedAt) {
          // A connect or disconnect (the chosen status comes back with the user): from presence's commit.
          histograms[change.status === 4 ? 'churnOffline' : 'churn'].recordValue(Math.max(1, (now - change.changedAt.getTime()) * 1000));
        }
      }
    });
    await client.connect();
    devices.set(i, client);
    return client;
  }

  async function watch(i) {
    const targets = [];
    for (let k = 1; k <= setup.watches; k += 1) targets.push(userId((i + k * 7919) % setup.users));
    await devices.get(i).request({ $case: 'watchPresence', value: { userIds: targets } });
  }

  process.on('message', async (msg) => {
    if (msg.type === 'setup') {
      setup = msg;
      for (let i = msg.index; i < msg.users; i += msg.processes) mine.push(i);
      for (let b = 0; b < mine.length; b += 50) await Promise.all(mine.slice(b, b + 50).map((i) => open(i)));
      for (let b = 0; b < mine.length; b += 50) await Promise.all(mine.slice(b, b + 50).map((i) => watch(i)));
      // Which users this process's devices watch, to count the crash deliveries expected.
      process.send({ type: 'ready' });
    } else if (msg.type === 'run') {
      // Only the measured window counts (not the connection storm of the setup).
      for (const h of Object.values(histograms)) h.reset();
      const end = Date.now() + msg.seconds * 1000;
      const statusEvery = 1000 / msg.changesPerSecond;
      const churnEvery = 60_000 / (msg.churnPerMinute * mine.length);
      const startAt = performance.now();
      let n = 0;
      let c = 0;
      const busy = new Set();
      await new Promise((resolve) => {
        const tick = () => {
          const elapsed = performance.now() - startAt;
          if (Date.now() >= end) return resolve();
          while (n * statusEvery <= elapsed) {
            const i = mine[(n * 31) % mine.length];
            const intended = Math.round(performance.timeOrigin + startAt + n * statusEvery);
            n += 1;
            const client = devices.get(i);
            if (!client || busy.has(i)) continue;
            counts.statusSent += 1;
            // BUSY and AWAY in turn, each carrying its intended send time.
            const status = away.has(i) ? 3 : 2;
            if (status === 2) away.add(i);
            else away.delete(i);
            client.request({ $case: 'setPresence', value: { status, customMessage: `t${intended}`, customMessageExpiresAt: undefined } }).catch(() => (counts.errors += 1));
          }
          while (c * churnEvery <= elapsed) {
            const i = mine[(c * 17 + 3) % mine.length];
            c += 1;
            if (busy.has(i)) continue;
            busy.add(i);
            counts.reconnects += 1;
            const old = devices.get(i);
            devices.delete(i);
            old
              .close()
              .then(() => open(i))
              .then(() => watch(i))
              .catch(() => (counts.errors += 1))
              .finally(() => busy.delete(i));
          }
          setTimeout(tick, 5);
        };
        tick();
      });
      process.send({ type: 'ran' });
    } else if (msg.type === 'crash') {
      crash = { gateway: msg.gateway, killedAt: msg.killedAt };
      for (const i of mine) {
        for (let k = 1; k <= setup.watches; k += 1) if (((i + k * 7919) % setup.users) % setup.gateways.length === msg.gateway && gatewayOf(i) !== msg.gateway) counts.crashExpected += 1;
      }
    } else if (msg.type === 'report') {
      const encoded = {};
      for (const [k, h] of Object.entries(histograms)) encoded[k] = hdr.encodeIntoCompressedBase64(h);
      process.send({ type: 'report', histograms: encoded, counts });
      for (const client of devices.values()) client.close().catch(() => undefined);
      setTimeout(() => process.exit(0), 500).unref();
    }
  });
}
