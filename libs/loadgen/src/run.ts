import { fork, type ChildProcess } from 'node:child_process';
import { cpus, totalmem } from 'node:os';
import * as path from 'node:path';
import { DEV_JWT_SECRET } from '@switchboard/client';
import { mergeEncoded, summarize, type LatencySummary } from './histogram';
import { cpuTop, heapTop, InspectorSession, saveProfile, type ProfileLine } from './profiler';
import { parseHistogram, scrape, STAGES, stageTiming, type HistogramSnapshot, type StageTiming } from './stages';
import { load1, sample, type ProcSample } from './procstat';
import { scheduledCount, type FromWorker, type RateSegment, type SenderAssignment, type ToWorker, type WorkerReport } from './protocol';
import { analyzeDatabase, gatewayHeap, startSocketio, startSwitchboard, type Target } from './targets';
import type { ClientSpec } from './transport';

/** Everything a run can vary; scenarios are presets of these. */
export interface LoadOptions {
  label: string;
  target: 'switchboard' | 'socketio';
  /** Switchboard gateways, or Socket.IO instances. */
  gateways: number;
  connections: number;
  /** New connections per second over all workers. */
  rampPerSecond: number;
  /** idle: connect and measure only; direct: pairs, each sender to its own recipient; room: rooms of roomSize, members send to their room. */
  pattern: 'idle' | 'direct' | 'room';
  roomSize: number;
  /** Steady message rate over the whole run, messages per minute. */
  perMinute: number;
  durationS: number;
  /** A stretch at `factor` times the steady rate, starting `atS` seconds into the load. */
  spike?: { atS: number; durationS: number; factor: number };
  /** Share of connections closed and reopened per minute during the load (they sync what they missed). */
  churnPerMinute: number;
  /** Seconds of quiet after the ramp, over which idle CPU is measured. */
  idleS: number;
  /** Most handshakes waiting at once over all workers (closed-loop ramp). */
  maxPendingConnects: number;
  /** Load-generator worker processes; 0 picks one per 2,500 connections (2 at least). */
  workers: number;
  /** Loopback source addresses 127.0.0.1 … 127.0.0.N. */
  sourceAddresses: number;
  messageBytes: number;
  /** Most seconds to wait for outstanding deliveries after the schedule ends. */
  drainS: number;
  gatewayEnv?: Record<string, string>;
  /** Extra environment for every Switchboard service (the gateways too; gatewayEnv wins for them). */
  serviceEnv?: Record<string, string>;
  /** File the services' log lines (warnings and errors) are appended to. */
  serviceLog?: string;
  /** Directory for CPU (load phase) and heap (ramp) profiles of the first gateway, and a CPU profile of messaging over the load, taken over the inspector. */
  profileDir?: string;
  /** Progress lines (default: stderr). */
  log?: (line: string) => void;
}

export const DEFAULT_OPTIONS: LoadOptions = {
  label: 'run',
  target: 'switchboard',
  gateways: 2,
  connections: 1000,
  rampPerSecond: 500,
  maxPendingConnects: 128,
  pattern: 'direct',
  roomSize: 100,
  perMinute: 6000,
  durationS: 30,
  churnPerMinute: 0,
  idleS: 5,
  workers: 0,
  sourceAddresses: 4,
  messageBytes: 100,
  drainS: 30,
};

// Spawned scripts are the built ones (also when this module runs from source under ts-jest).
const MAX_CLIENTS_PER_WORKER = 19_000;

export interface EdgeMemory {
  name: string;
  connections: number;
  rssBeforeBytes: number;
  rssAfterBytes: number;
  heapBeforeBytes?: number;
  heapAfterBytes?: number;
  /** (RSS connected − RSS empty) per 1,000 connections, MB (2^20 bytes). */
  rssPerThousandMB: number;
  heapPerThousandMB?: number;
  idleCpuPercent: number;
}

export interface LoadResult {
  label: string;
  options: Omit<LoadOptions, 'log'>;
  machine: { cpus: number; model: string; memoryGiB: number; node: string };
  startedAt: string;
  load1: { start: number; afterRamp: number; end: number };
  ramp: { seconds: number; connected: number; failed: number; connectLatency: LatencySummary };
  edges: EdgeMemory[];
  messages: {
    scheduled: number;
    sent: number;
    acked: number;
    failed: number;
    /** Refusals (OVERLOADED, RATE_LIMITED) sent again after their retry hint. */
    retried: number;
    expectedDeliveries: number;
    delivered: number;
    recovered: number;
    duplicates: number;
    lost: number;
    ackedPerMinute: number;
    deliveredPerSecond: number;
    latency: LatencySummary;
    ackLatency: LatencySummary;
  };
  churn: { reconnects: number; reconnectLatency: LatencySummary; resent?: number };
  cpu: { servicesMs: number; infraMs: number; perDeliveredUs: number; byProcess: Record<string, number> };
  loadgen: { workers: number; cpuMs: number; rssBytes: number };
  samples: { t: number; connected: number; edgeRssBytes: number; load1: number }[];
  /** Where the first gateway's live heap (sampled over the ramp) and CPU (over the load) went. */
  profiles?: { heap?: ProfileLine[]; idleCpu?: ProfileLine[]; cpu?: ProfileLine[]; messagingCpu?: ProfileLine[]; notificationCpu?: ProfileLine[] };
  /** Server-side time of each stage of a send over the load window (Switchboard only). */
  stages?: StageTiming[];
  errors: Record<string, number>;
}

interface Worker {
  index: number;
  child: ChildProcess;
  clients: ClientSpec[];
  waiters: ((message: FromWorker) => boolean)[];
  progress: number;
}

function waitFor<T extends FromWorker['type']>(worker: Worker, type: T, timeoutMs = 600_000): Promise<Extract<FromWorker, { type: T }>> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`worker ${worker.index}: no ${type} within ${timeoutMs} ms`)), timeoutMs);
    worker.waiters.push((message) => {
      if (message.type !== type) return false;
      clearTimeout(timer);
      resolve(message as Extract<FromWorker, { type: T }>);
      return true;
    });
  });
}

function tell(worker: Worker, message: ToWorker): void {
  worker.child.send(message);
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** The rate profile: steady, with the spike (if any) cut into it. */
export function segmentsOf(options: Pick<LoadOptions, 'perMinute' | 'durationS' | 'spike'>): RateSegment[] {
  const total = options.durationS * 1000;
  if (!options.spike) return [{ durationMs: total, perMinute: options.perMinute }];
  const at = Math.min(options.spike.atS * 1000, total);
  const spike = Math.min(options.spike.durationS * 1000, total - at);
  return [
    { durationMs: at, perMinute: options.perMinute },
    { durationMs: spike, perMinute: options.perMinute * options.spike.factor },
    { durationMs: total - at - spike, perMinute: options.perMinute },
  ].filter((s) => s.durationMs > 0);
}

/**
 * One bounded run: start the system under test, spread the clients over
 * worker processes and source addresses, ramp, measure idle, warm up, send
 * the schedule, drain, collect, stop everything. Never leaves a process behind.
 */
export async function runLoad(partial: Partial<LoadOptions>): Promise<LoadResult> {
  const options: LoadOptions = { ...DEFAULT_OPTIONS, ...partial };
  const log = options.log ?? ((line: string) => process.stderr.write(`${line}\n`));
  if (options.pattern === 'direct' && options.connections % 2 !== 0) throw new Error('direct messages need an even number of connections (pairs)');
  if (options.pattern === 'room' && (options.roomSize < 2 || options.connections % options.roomSize !== 0)) {
    throw new Error(`room size ${options.roomSize} must be at least 2 and divide the connections (${options.connections})`);
  }
  const startedAt = new Date().toISOString();
  const loadStart = load1();
  const tenantId = `load${Date.now().toString(36)}`;
  log(`[${options.label}] starting ${options.target} with ${options.gateways} ${options.target === 'switchboard' ? 'gateway(s)' : 'instance(s)'} (load ${loadStart})`);
  const profiling = options.profileDir !== undefined && options.target === 'switchboard';
  // Every client of a run is one tenant's user: that tenant's connection limit (TENANT_MAX_CONNECTIONS, 10,000 by
  // default) must hold the whole run, or the connections scenario's 15,000 would measure the quota instead.
  const serviceEnv = { TENANT_MAX_CONNECTIONS: String(Math.max(10_000, options.connections)), ...options.serviceEnv, ...(profiling ? { NODE_OPTIONS: '--inspect=127.0.0.1:0' } : {}) };
  const gatewayEnv = { ...options.gatewayEnv, ...(profiling ? { NODE_OPTIONS: `${options.gatewayEnv?.NODE_OPTIONS ?? ''} --inspect=127.0.0.1:0`.trim() } : {}) };
  const target: Target =
    options.target === 'switchboard'
      ? await startSwitchboard({ gateways: options.gateways, gatewayEnv, serviceEnv, ...(options.serviceLog ? { serviceLog: options.serviceLog } : {}) })
      : await startSocketio({ instances: options.gateways });
  const profiles: NonNullable<LoadResult['profiles']> = {};
  let inspector: InspectorSession | undefined;
  /** Messaging holds the commit path: its CPU profile over the load shows what a send costs there. */
  let messagingInspector: InspectorSession | undefined;
  const messagingProcess = target.processes.find((p) => p.name === 'messaging');
  /** Notification consumes every committed message from Kafka: its share of a message's cost shows in its profile. */
  let notificationInspector: InspectorSession | undefined;
  const notificationProcess = target.processes.find((p) => p.name === 'notification');
  /** The other services (room, presence, the other gateways): their background work is part of every message's cost. */
  const otherInspectors: { name: string; session: InspectorSession }[] = [];
  const workers: Worker[] = [];
  // Ctrl-C or a kill still stops what this run started (the services run in their own process groups).
  const abort = () => {
    for (const worker of workers) worker.child.kill('SIGKILL');
    void target.stop().finally(() => process.exit(130));
  };
  process.once('SIGINT', abort);
  process.once('SIGTERM', abort);
  try {
    // Plan the clients: user i connects to entry i % gateways, so the two ends of a pair are on different gateways.
    const userIds = Array.from({ length: options.connections }, (_, i) => `u${i}`);
    let roomIds: string[] = [];
    if (options.pattern === 'room') {
      const lists = [];
      for (let from = 0; from < options.connections; from += options.roomSize) lists.push(userIds.slice(from, from + options.roomSize));
      log(`[${options.label}] creating ${lists.length} room(s) of ${options.roomSize}`);
      roomIds = await target.createRooms(tenantId, lists);
    }
    const specs: ClientSpec[] = userIds.map((userId, i) => ({
      index: i,
      userId,
      url: target.urls[i % target.urls.length]!,
      localAddress: `127.0.0.${1 + (i % options.sourceAddresses)}`,
      rooms: options.pattern === 'room' ? [roomIds[Math.floor(i / options.roomSize)]!] : [],
    }));
    const workerCount = Math.max(options.workers || Math.max(2, Math.ceil(options.connections / 2500)), Math.ceil(options.connections / MAX_CLIENTS_PER_WORKER));
    for (let w = 0; w < workerCount; w += 1) {
      const child = fork(path.join(__dirname, '..', 'dist', 'worker.js'), [], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
      const worker: Worker = { index: w, child, clients: specs.filter((_, i) => i % workerCount === w), waiters: [], progress: 0 };
      child.on('message', (message: FromWorker) => {
        if (message.type === 'progress') worker.progress = message.connected;
        const at = worker.waiters.findIndex((accept) => accept(message));
        if (at >= 0) worker.waiters.splice(at, 1);
      });
      workers.push(worker);
    }
    await Promise.all(
      workers.map((worker) => {
        const ready = waitFor(worker, 'ready', 30_000);
        tell(worker, {
          type: 'init',
          worker: worker.index,
          transport: options.target,
          secret: DEV_JWT_SECRET,
          tenantId,
          clients: worker.clients,
          rampPerSecond: options.rampPerSecond / workerCount,
          maxPendingConnects: Math.max(1, Math.floor(options.maxPendingConnects / workerCount)),
          churnPerMinute: options.churnPerMinute,
          messageBytes: options.messageBytes,
        });
        return ready;
      }),
    );

    // Ramp, sampling memory against connections as it goes.
    const edges = target.processes.filter((p) => p.edge);
    const edgeRss = () => edges.reduce((sum, p) => sum + sample(p.pid).rssBytes, 0);
    const emptyRss = edges.map((p) => sample(p.pid).rssBytes);
    const emptyHeap = await Promise.all(edges.map((p) => (p.opsPort ? gatewayHeap(p.opsPort) : undefined)));
    const samples: LoadResult['samples'] = [];
    if (profiling) {
      inspector = await InspectorSession.attach(edges[0]!.output ?? []);
      if (messagingProcess) messagingInspector = await InspectorSession.attach(messagingProcess.output ?? []);
      if (notificationProcess) notificationInspector = await InspectorSession.attach(notificationProcess.output ?? []);
      for (const p of target.processes) {
        if (p === edges[0] || p === messagingProcess || p === notificationProcess) continue;
        otherInspectors.push({ name: p.name, session: await InspectorSession.attach(p.output ?? []) });
      }
      await inspector.call('HeapProfiler.enable');
      await inspector.call('HeapProfiler.startSampling', { samplingInterval: 8192 });
    }
    const t0 = Date.now();
    const sampler = setInterval(() => {
      samples.push({ t: (Date.now() - t0) / 1000, connected: workers.reduce((n, w) => n + w.progress, 0), edgeRssBytes: edgeRss(), load1: load1() });
    }, 1000);
    log(`[${options.label}] ramping ${options.connections} connections over ${workers.length} workers at ${options.rampPerSecond}/s`);
    const rampStart = Date.now();
    const connectedReplies = await Promise.all(
      workers.map((worker) => {
        const done = waitFor(worker, 'connected');
        tell(worker, { type: 'connect' });
        return done;
      }),
    );
    for (const [i, reply] of connectedReplies.entries()) workers[i]!.progress = reply.connected;
    const rampSeconds = (Date.now() - rampStart) / 1000;
    const connected = connectedReplies.reduce((n, r) => n + r.connected, 0);
    const connectFailed = connectedReplies.reduce((n, r) => n + r.failed, 0);
    log(`[${options.label}] ${connected} connected, ${connectFailed} failed in ${rampSeconds.toFixed(1)} s`);

    // Idle: memory per connection and CPU with nothing to do.
    if (inspector) {
      await inspector.call('Profiler.enable');
      await inspector.call('Profiler.setSamplingInterval', { interval: 500 });
      await inspector.call('Profiler.start');
    }
    const idleStart = edges.map((p) => sample(p.pid));
    const idleClock = Date.now();
    await sleep(options.idleS * 1000);
    const idleMs = Date.now() - idleClock;
    const afterRampLoad = load1();
    const openByUrl: Record<string, number> = {};
    for (const r of await collect(workers)) for (const [url, n] of Object.entries(r.openByUrl)) openByUrl[url] = (openByUrl[url] ?? 0) + n;
    const edgeMemory: EdgeMemory[] = await Promise.all(
      edges.map(async (p, i) => {
        const now = sample(p.pid);
        const heapAfter = p.opsPort ? await gatewayHeap(p.opsPort) : undefined;
        // Per connection actually open at the end of the idle window (a failed connect costs nothing).
        const conns = openByUrl[target.urls[i]!] ?? 0;
        const perThousand = (bytes: number) => Math.round(((bytes / Math.max(1, conns)) * 1000 * 10) / 2 ** 20) / 10;
        return {
          name: p.name,
          connections: conns,
          rssBeforeBytes: emptyRss[i]!,
          rssAfterBytes: now.rssBytes,
          ...(emptyHeap[i] !== undefined ? { heapBeforeBytes: emptyHeap[i] } : {}),
          ...(heapAfter !== undefined ? { heapAfterBytes: heapAfter } : {}),
          rssPerThousandMB: perThousand(now.rssBytes - emptyRss[i]!),
          ...(heapAfter !== undefined && emptyHeap[i] !== undefined ? { heapPerThousandMB: perThousand(heapAfter - emptyHeap[i]!) } : {}),
          idleCpuPercent: Math.round(((now.cpuMs - idleStart[i]!.cpuMs) / idleMs) * 1000) / 10,
        };
      }),
    );
    if (inspector) {
      const idle = await inspector.call<{ profile: Parameters<typeof cpuTop>[0] }>('Profiler.stop');
      saveProfile(path.join(options.profileDir!, `${options.label}.${edges[0]!.name}.idle.cpuprofile`), idle.profile);
      profiles.idleCpu = cpuTop(idle.profile);
      await inspector.call('HeapProfiler.collectGarbage');
      const { profile } = await inspector.call<{ profile: Parameters<typeof heapTop>[0] }>('HeapProfiler.stopSampling');
      saveProfile(path.join(options.profileDir!, `${options.label}.${edges[0]!.name}.heapprofile`), profile);
      profiles.heap = heapTop(profile);
    }
    for (const e of edgeMemory) log(`[${options.label}] ${e.name}: ${e.connections} connections, ${e.rssPerThousandMB} MB RSS per 1,000, idle CPU ${e.idleCpuPercent}%`);

    const segments = segmentsOf(options);
    const scheduled = options.pattern === 'idle' ? 0 : scheduledCount(segments);
    let senders: SenderAssignment[] = [];
    let fanout = 0;
    if (options.pattern === 'direct') {
      fanout = 1;
      senders = Array.from({ length: options.connections / 2 }, (_, k) => ({ local: 2 * k, sender: k, target: { recipientUserId: userIds[2 * k + 1]! } }));
    } else if (options.pattern === 'room') {
      fanout = options.roomSize - 1;
      senders = specs.map((s, k) => ({ local: s.index, sender: k, target: { conversationId: s.rooms[0]! } }));
    }
    // Worker-local indexes: client i is the (i div workers)-th of worker i mod workers.
    const forWorker = (list: SenderAssignment[], w: number) => list.filter((s) => s.local % workers.length === w).map((s) => ({ ...s, local: Math.floor(s.local / workers.length) }));

    const before = new Map<string, ProcSample>();
    const stageSnapshots = () =>
      Promise.all(
        STAGES.map(async (stage) => {
          const ops = target.processes.find((p) => p.name === stage.process)?.opsPort;
          return ops === undefined ? undefined : parseHistogram(await scrape(ops), stage.metric, stage.label);
        }),
      );
    let stagesBefore: (HistogramSnapshot | undefined)[] = [];
    let loadClock = Date.now();
    if (options.pattern !== 'idle') {
      // Warm-up: direct pairs each send once (creates the conversation and the recipient's subscription); rooms once per room.
      const warm = options.pattern === 'direct' ? senders : senders.filter((s) => s.local % options.roomSize === 0);
      const warmReplies = await Promise.all(
        workers.map((worker) => {
          const done = waitFor(worker, 'warm');
          tell(worker, { type: 'warmup', run: `${tenantId}w`, senders: forWorker(warm, worker.index) });
          return done;
        }),
      );
      const warmAcked = warmReplies.reduce((n, r) => n + r.acked, 0);
      const warmExpected = warmAcked * fanout;
      const warmDeadline = Date.now() + 30_000;
      let warmDelivered = 0;
      while (Date.now() < warmDeadline) {
        warmDelivered = (await collect(workers)).reduce((n, r) => n + r.counts.warmDelivered, 0);
        if (warmDelivered >= warmExpected) break;
        await sleep(500);
      }
      log(`[${options.label}] warm-up: ${warmAcked}/${warm.length} acked, ${warmDelivered}/${warmExpected} delivered`);
      await analyzeDatabase();

      for (const p of target.processes) before.set(p.name, sample(p.pid));
      for (const p of target.infra) before.set(p.name, sample(p.pid, p.tree));
      stagesBefore = await stageSnapshots();
      for (const session of [inspector, messagingInspector, notificationInspector, ...otherInspectors.map((o) => o.session)]) {
        if (!session) continue;
        await session.call('Profiler.enable');
        await session.call('Profiler.setSamplingInterval', { interval: 500 });
        await session.call('Profiler.start');
      }
      const startMs = performance.timeOrigin + performance.now() + 1000;
      loadClock = Date.now() + 1000;
      log(`[${options.label}] sending ${scheduled} messages over ${options.durationS} s (${segments.map((s) => `${s.perMinute}/min for ${s.durationMs / 1000} s`).join(', ')})`);
      for (const worker of workers) {
        tell(worker, { type: 'load', run: tenantId, startMs, segments, senderCount: senders.length, senders: forWorker(senders, worker.index) });
      }
      await sleep(options.durationS * 1000 + 1000);
      const drainDeadline = Date.now() + options.drainS * 1000;
      for (;;) {
        const reports = await collect(workers);
        const t = totals(reports);
        const settled = reports.every((r) => r.scheduleDone) && t.acked + t.failed >= t.sent && t.delivered >= t.acked * fanout;
        if (settled || Date.now() > drainDeadline) break;
        await sleep(500);
      }
    }
    const endClock = Date.now();
    clearInterval(sampler);
    const stagesAfter = options.pattern !== 'idle' ? await stageSnapshots() : [];
    const stages = stagesAfter.flatMap((after, i) => (after && stagesBefore[i] ? [stageTiming(STAGES[i]!.what, stagesBefore[i]!, after)] : []));
    if (inspector && options.pattern !== 'idle') {
      const { profile } = await inspector.call<{ profile: Parameters<typeof cpuTop>[0] }>('Profiler.stop');
      saveProfile(path.join(options.profileDir!, `${options.label}.${edges[0]!.name}.cpuprofile`), profile);
      profiles.cpu = cpuTop(profile);
    }
    if (messagingInspector && options.pattern !== 'idle') {
      const { profile } = await messagingInspector.call<{ profile: Parameters<typeof cpuTop>[0] }>('Profiler.stop');
      saveProfile(path.join(options.profileDir!, `${options.label}.messaging.cpuprofile`), profile);
      profiles.messagingCpu = cpuTop(profile);
    }
    for (const { name, session } of options.pattern !== 'idle' ? otherInspectors : []) {
      const { profile } = await session.call<{ profile: Parameters<typeof cpuTop>[0] }>('Profiler.stop');
      saveProfile(path.join(options.profileDir!, `${options.label}.${name}.cpuprofile`), profile);
    }
    if (notificationInspector && options.pattern !== 'idle') {
      const { profile } = await notificationInspector.call<{ profile: Parameters<typeof cpuTop>[0] }>('Profiler.stop');
      saveProfile(path.join(options.profileDir!, `${options.label}.notification.cpuprofile`), profile);
      profiles.notificationCpu = cpuTop(profile);
    }
    const cpuByProcess: Record<string, number> = {};
    let servicesMs = 0;
    let infraMs = 0;
    if (options.pattern !== 'idle') {
      for (const p of target.processes) servicesMs += cpuByProcess[p.name] = Math.round(sample(p.pid).cpuMs - before.get(p.name)!.cpuMs);
      for (const p of target.infra) infraMs += cpuByProcess[p.name] = Math.round(sample(p.pid, p.tree).cpuMs - before.get(p.name)!.cpuMs);
    }
    const reports = await collect(workers);
    const t = totals(reports);
    const latency = summarize(mergeEncoded(reports.map((r) => r.histograms.delivery)));
    const errors: Record<string, number> = {};
    for (const r of reports) for (const [k, v] of Object.entries(r.errors)) errors[k] = (errors[k] ?? 0) + v;
    const loadSeconds = Math.max(1, (endClock - loadClock) / 1000);
    const expectedDeliveries = t.acked * fanout;
    const { log: _log, ...recorded } = options;
    const result: LoadResult = {
      label: options.label,
      options: recorded,
      machine: { cpus: cpus().length, model: cpus()[0]?.model ?? '', memoryGiB: Math.round(totalmem() / 2 ** 30), node: process.version },
      startedAt,
      load1: { start: loadStart, afterRamp: afterRampLoad, end: load1() },
      ramp: { seconds: rampSeconds, connected, failed: connectFailed, connectLatency: summarize(mergeEncoded(reports.map((r) => r.histograms.connect))) },
      edges: edgeMemory,
      messages: {
        scheduled,
        sent: t.sent,
        acked: t.acked,
        failed: t.failed,
        retried: t.retried,
        expectedDeliveries,
        delivered: t.delivered,
        recovered: t.recovered,
        duplicates: t.duplicates,
        lost: Math.max(0, expectedDeliveries - t.delivered),
        ackedPerMinute: Math.round((t.acked / Math.max(1, options.durationS)) * 60),
        deliveredPerSecond: Math.round(t.delivered / loadSeconds),
        latency,
        ackLatency: summarize(mergeEncoded(reports.map((r) => r.histograms.ack))),
      },
      churn: { reconnects: t.reconnects, resent: t.resent, reconnectLatency: summarize(mergeEncoded(reports.map((r) => r.histograms.reconnect))) },
      cpu: { servicesMs, infraMs, perDeliveredUs: t.delivered > 0 ? Math.round(((servicesMs + infraMs) * 1000) / t.delivered) : 0, byProcess: cpuByProcess },
      loadgen: { workers: workers.length, cpuMs: Math.round(reports.reduce((n, r) => n + r.cpuMs, 0)), rssBytes: reports.reduce((n, r) => n + r.rssBytes, 0) },
      samples,
      ...(profiling ? { profiles } : {}),
      ...(stages.length > 0 ? { stages } : {}),
      errors,
    };
    return result;
  } finally {
    process.off('SIGINT', abort);
    process.off('SIGTERM', abort);
    inspector?.close();
    messagingInspector?.close();
    notificationInspector?.close();
    for (const { session } of otherInspectors) session.close();
    await Promise.all(
      workers.map(
        (worker) =>
          new Promise<void>((resolve) => {
            if (worker.child.exitCode !== null) return resolve();
            const timer = setTimeout(() => worker.child.kill('SIGKILL'), 10_000);
            worker.child.once('exit', () => {
              clearTimeout(timer);
              resolve();
            });
            tell(worker, { type: 'close' });
          }),
      ),
    );
    await target.stop();
  }
}

async function collect(workers: Worker[]): Promise<WorkerReport[]> {
  return Promise.all(
    workers.map((worker) => {
      const reply = waitFor(worker, 'report', 60_000);
      tell(worker, { type: 'report' });
      return reply;
    }),
  );
}

function totals(reports: WorkerReport[]) {
  const sum = (key: keyof WorkerReport['counts']) => reports.reduce((n, r) => n + r.counts[key], 0);
  return {
    sent: sum('sent'),
    acked: sum('acked'),
    failed: sum('failed'),
    delivered: sum('delivered'),
    recovered: sum('recovered'),
    duplicates: sum('duplicates'),
    reconnects: sum('reconnects'),
    resent: sum('resent'),
    retried: sum('retried'),
  };
}
