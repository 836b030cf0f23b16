import * as path from 'node:path';
import { DEV_JWT_SECRET } from '@switchboard/client';
import { newId } from '@switchboard/ids';
import { Balancer } from './balancer';
import { recoverAll, settle, sumCounters, tally, undelivered, type PhaseResult } from './check';
import { Device, sleep } from './device';
import { FAULT_NAMES, FAULTS, type Fault, type FaultContext, type FaultName } from './faults';
import { CLI_PORTS, FaultInfra, SERVICE_PIDS, type InfraPorts } from './infra';
import { kafkaPresence } from './kafka-check';
import { Ledger } from './ledger';
import { FaultMesh } from './mesh';
import { detailLines, LEGEND, resultLine } from './report';
import { Traffic } from './traffic';

export interface SuiteOptions {
  /** Simulated devices (two per user, users in a ring of direct conversations). Default 10. */
  clients?: number;
  /** Messages per second over all devices. Default 40. */
  rate?: number;
  /** Traffic time per fault. Default 20. */
  phaseSeconds?: number;
  /** Which faults, in order. Default: all five. */
  faults?: FaultName[];
  /** Names the instance's data directory (.data/faults/<label>-<pid>-…). */
  label?: string;
  /** First port block tried for the suite's own PostgreSQL, Redis, NATS and Kafka. */
  basePorts?: InfraPorts;
  /** Keep the instance's data (logs included) even when everything passed. */
  keepData?: boolean;
  seed?: number;
  /** Hard bound on the whole run; the suite stops, cleans up and fails past it. */
  maxSeconds?: number;
  /** Progress lines. */
  log?: (line: string) => void;
  /** Result lines (one per fault, details, the summary). */
  out?: (line: string) => void;
  signal?: AbortSignal;
}

export interface SuiteResult {
  phases: PhaseResult[];
  passed: boolean;
  dataDir: string;
  durationMs: number;
  error?: string;
  summary: string;
}

export const DEFAULTS = { clients: 10, rate: 40, phaseSeconds: 20 } as const;
/** Longest quiet probe after a fault's restore. */
const PROBE_MS = 10_000;

/** A small deterministic generator, so a run can be repeated with --seed. */
function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * Runs the fault suite: its own infrastructure instance, the services as
 * real processes, simulated devices sending and receiving through two
 * gateways, one phase per fault with a full check after each, and a clean
 * teardown whatever happens.
 */
export async function runFaultSuite(options: SuiteOptions = {}): Promise<SuiteResult> {
  const started = Date.now();
  const clients = Math.max(2, Math.floor(options.clients ?? DEFAULTS.clients));
  const rate = options.rate ?? DEFAULTS.rate;
  const phaseSeconds = options.phaseSeconds ?? DEFAULTS.phaseSeconds;
  const faults = (options.faults ?? [...FAULT_NAMES]).map((name) => {
    const fault = FAULTS[name];
    if (!fault) throw new Error(`unknown fault ${name}; known: ${Object.keys(FAULTS).join(', ')}`);
    return fault;
  });
  const seed = options.seed ?? Math.floor(Math.random() * 2 ** 31);
  const random = mulberry32(seed);
  const log = options.log ?? (() => undefined);
  const out = options.out ?? log;
  const maxSeconds = options.maxSeconds ?? 180 + faults.length * (phaseSeconds + 150);

  const abort = new AbortController();
  const onAbort = () => abort.abort();
  options.signal?.addEventListener('abort', onAbort);
  const overall = setTimeout(() => {
    log(`the run exceeded ${maxSeconds}s: stopping`);
    abort.abort();
  }, maxSeconds * 1000);

  const infra = await FaultInfra.create({ label: options.label ?? 'cli', basePorts: options.basePorts ?? CLI_PORTS, log });
  let mesh: FaultMesh | undefined;
  const devices: Device[] = [];
  const phases: PhaseResult[] = [];
  let error: string | undefined;
  let passed = false;
  try {
    log(`seed ${seed}; ${clients} clients, ${rate} msgs/s, ${phaseSeconds}s per fault: ${faults.map((f) => f.name).join(', ')}`);
    log(`own infrastructure in ${infra.dataDir} on ports ${JSON.stringify(infra.ports)}`);
    const infraStarted = Date.now();
    await infra.up();
    log(`infrastructure up in ${((Date.now() - infraStarted) / 1000).toFixed(1)}s`);
    if (abort.signal.aborted) throw new Error('aborted');

    mesh = await FaultMesh.start({ infraEnv: infra.env(), logDir: path.join(infra.dataDir, 'logs'), pidFile: path.join(infra.dataDir, SERVICE_PIDS), log });
    log(`services up: ${mesh.all.map((s) => `${s.name} (pid ${s.process?.child.pid})`).join(', ')}; logs in ${path.join(infra.dataDir, 'logs')}`);

    const balancer = new Balancer();
    for (const gateway of mesh.gateways) balancer.add(gateway.name, gateway.url);

    // Users with two devices each (one when there are too few clients for a ring of pairs); a user's devices live on
    // different gateways; half the devices speak JSON, half binary protobuf (mixed over users and gateways).
    const tenantId = `faults-${newId().slice(0, 10)}`;
    const perUser = clients >= 6 ? 2 : 1;
    const userCount = Math.ceil(clients / perUser);
    const userIds = Array.from({ length: userCount }, (_, i) => `u${i}-${newId().slice(0, 6)}`);
    for (let i = 0; i < clients; i += 1) {
      const userId = userIds[Math.floor(i / perUser)]!;
      devices.push(new Device({ index: i, tenantId, userId, deviceId: `d${i % perUser}`, home: mesh.gateways[i % mesh.gateways.length]!.name, secret: DEV_JWT_SECRET, encoding: (i + (i >> 1)) % 2 === 0 ? 'json' : 'proto' }, balancer));
    }
    await Promise.all(devices.map((d) => d.connect(60_000)));
    log(`${devices.length} devices of ${userCount} users connected (tenant ${tenantId})`);

    const ledger = new Ledger();
    const conversationsByUser = new Map<string, string[]>();
    const conversationsOf = (userId: string) => conversationsByUser.get(userId) ?? [];
    const traffic = new Traffic(devices, ledger, conversationsOf, rate, random);
    const byUser = new Map<string, Device[]>();
    for (const device of devices) byUser.set(device.spec.userId, [...(byUser.get(device.spec.userId) ?? []), device]);

    // A ring of direct conversations: each created by its first message (the membership path of a new conversation is checked too).
    const setupStarted = Date.now();
    const pairs: [string, string][] = userCount === 2 ? [[userIds[0]!, userIds[1]!]] : userIds.map((u, i) => [u, userIds[(i + 1) % userCount]!]);
    for (const [a, b] of pairs) {
      const sender = byUser.get(a)![0]!;
      const entry = await traffic.sendUntilAcked(sender, 'setup', { recipientUserId: b }, traffic.nextClientId(sender, 'setup'), Date.now() + 60_000);
      if (!entry) throw new Error(`could not create the conversation of ${a} and ${b}: ${ledger.send.notes.join('; ')}`);
      ledger.setMembers(entry.conversationId, [a, b]);
      for (const user of [a, b]) conversationsByUser.set(user, [...conversationsOf(user), entry.conversationId]);
    }
    const setup = await checkPhase({ name: 'setup', description: 'conversations created by their first message, no fault', startedAt: setupStarted, timeline: [`${pairs.length} direct conversations created`], faultError: undefined });
    report(setup);

    for (const fault of faults) {
      if (abort.signal.aborted) break;
      report(await runPhase(fault));
    }
    if (abort.signal.aborted) throw new Error('stopped before every fault ran (interrupted or out of time)');
    passed = phases.every((p) => p.passed);

    // -- the phase machinery, closing over the run's state --

    async function runPhase(fault: Fault): Promise<PhaseResult> {
      const phaseStarted = Date.now();
      ledger.beginPhase();
      for (const device of devices) device.beginPhase(fault.name);
      const timeline: string[] = [];
      const note = (line: string) => {
        timeline.push(`+${((Date.now() - phaseStarted) / 1000).toFixed(1)}s ${line}`);
        log(`${fault.name}: ${line}`);
      };
      const phaseMs = phaseSeconds * 1000;
      const stall = { count: 0, samples: [] as string[] };
      let pausedAt: number | undefined;
      const pause = () => {
        if (pausedAt !== undefined) return;
        traffic.pause();
        pausedAt = Date.now();
      };
      // Everything acked at least a second ago must be on every connected device, with no new traffic to help.
      const probe = async () => {
        pause();
        const start = Date.now();
        const left = () => undelivered(ledger, devices, fault.name, Date.now() - 1000);
        const newest = () => ledger.ackedIn(fault.name).reduce((max, m) => Math.max(max, m.ackedAt), 0);
        while (Date.now() - start < PROBE_MS) {
          if (left().count === 0 && traffic.inFlight === 0 && Date.now() - newest() >= 1000) break;
          await sleep(100);
        }
        const remaining = left();
        const waited = ((Date.now() - start) / 1000).toFixed(1);
        const sinceRepair = `paused ${((start - pausedAt!) / 1000).toFixed(1)}s before the repair finished`;
        const stillSending = traffic.inFlight > 0 ? `; ${traffic.inFlight} retried sends still in flight` : '';
        if (remaining.count === 0) note(`quiet probe: everything acked reached every connected device within ${waited}s of the repair without new traffic (${sinceRepair}${stillSending})`);
        else note(`quiet probe: ${remaining.count} (message, device) pairs still undelivered ${waited}s after the repair without new traffic (${sinceRepair}; ${traffic.inFlight} sends in flight)`);
        stall.count += remaining.count;
        stall.samples.push(...remaining.samples);
        pausedAt = undefined;
        traffic.resume();
      };
      const ctx: FaultContext = { mesh: mesh!, infra, balancer, devices, random, phaseSeconds, trafficEndsAt: phaseStarted + phaseMs, note, pause, probe };
      note(`traffic on (${rate} msgs/s); ${fault.description}`);
      traffic.start(fault.name);
      let faultError: string | undefined;
      const running = (async () => {
        await sleep(fault.startAt * phaseMs);
        await fault.run(ctx);
      })().catch((err: unknown) => {
        faultError = (err as Error).message;
        note(`the fault could not be carried out: ${faultError}`);
      });
      await sleep(Math.max(0, ctx.trafficEndsAt - Date.now()));
      await running;
      // A little traffic after everything is back, then stop and let what is in flight be acked.
      await sleep(1000);
      await traffic.stop(60_000);
      note(`traffic off: ${ledger.ackedIn(fault.name).length} messages acked`);
      return checkPhase({ name: fault.name, description: fault.description, startedAt: phaseStarted, timeline, faultError, stall });
    }

    async function checkPhase(phase: { name: string; description: string; startedAt: number; timeline: string[]; faultError: string | undefined; stall?: { count: number; samples: string[] } }): Promise<PhaseResult> {
      const reconnected = await Promise.all(devices.map((d) => d.waitConnected(30_000)));
      const disconnected = devices.filter((_, i) => !reconnected[i]).map((d) => d.name);
      await settle(ledger, devices, phase.name, 20_000, 3000);
      const recoveryProblems = await recoverAll(ledger, devices, conversationsOf);
      const counts = tally(ledger, devices, phase.name);
      const acked = ledger.ackedIn(phase.name);
      const kafka = await kafkaPresence(infra.kafkaBrokers, acked.map((m) => m.messageId), 60_000);
      const counters = sumCounters(devices);
      const send = ledger.send;
      const integrity = [
        ...ledger.integrity.filter((i) => i.phase === phase.name).map((i) => i.note),
        ...counts.mismatches,
        ...(counters.conflicting > 0 ? [`${counters.conflicting} time(s) a device got one seq with two message ids`] : []),
      ];
      const crashes: string[] = [];
      for (const slot of mesh!.all) {
        if (slot.crashes.length > 0) crashes.push(...slot.crashes.map((c) => `${c}; last warnings: ${mesh!.warnings(slot, 4).join(' / ')}`));
        slot.crashes.length = 0;
        for (const interruption of slot.interruptions) phase.timeline.push(`outside interference: ${interruption}`);
        slot.interruptions.length = 0;
      }
      const reasons: string[] = [];
      if (counts.lost > 0) reasons.push(`${counts.lost} (message, device) pairs lost`);
      if (counters.reordered > 0) reasons.push(`${counters.reordered} messages handed to the app out of order`);
      if (kafka.found < kafka.expected) reasons.push(`${kafka.expected - kafka.found} acked messages missing from Kafka ${'sb.messages'}${kafka.error ? ` (${kafka.error})` : ''}`);
      if (integrity.length > 0) reasons.push(`${integrity.length} idempotency/sequence violations`);
      if (send.gaveUp > 0) reasons.push(`${send.gaveUp} sends never acknowledged`);
      if (send.refused > 0) reasons.push(`${send.refused} sends refused for good`);
      if (phase.faultError) reasons.push(`fault not carried out: ${phase.faultError}`);
      if (disconnected.length > 0) reasons.push(`${disconnected.length} devices could not reconnect: ${disconnected.slice(0, 5).join(', ')}`);
      for (const problem of recoveryProblems) reasons.push(`recovery: ${problem}`);
      if (crashes.length > 0) reasons.push(`${crashes.length} unexpected service exit(s)`);
      return {
        name: phase.name,
        description: phase.description,
        acked: acked.length,
        expected: counts.expected,
        delivered: counts.delivered,
        live: counts.live,
        recovered: counts.recovered,
        recoveredWhileConnected: counts.recoveredWhileConnected,
        lost: counts.lost,
        duplicated: counters.duplicated,
        reordered: counters.reordered,
        stalled: phase.stall?.count ?? 0,
        stalledSamples: phase.stall?.samples ?? [],
        counters,
        integrity,
        kafka,
        send,
        timeline: phase.timeline,
        lostSamples: counts.lostSamples,
        crashes,
        durationMs: Date.now() - phase.startedAt,
        passed: reasons.length === 0,
        reasons,
      };
    }

    function report(result: PhaseResult): void {
      phases.push(result);
      out(resultLine(result));
      const noteworthy = !result.passed || result.duplicated > 0 || result.recoveredWhileConnected > 0 || result.stalled > 0 || result.counters.connGaps > 0 || result.counters.connOutOfOrder > 0 || result.kafka.outOfOrder > 0 || result.kafka.misKeyed > 0 || result.timeline.some((l) => l.startsWith('outside'));
      if (noteworthy) for (const line of detailLines(result)) out(line);
      if (!result.passed) {
        for (const slot of mesh!.all) {
          const warnings = mesh!.warnings(slot, 5);
          if (warnings.length > 0) out(`  ${slot.name} warnings: ${warnings.join(' / ')}`);
        }
      }
    }
  } catch (err) {
    error = (err as Error).message;
    log(`the suite stopped: ${error}`);
  } finally {
    clearTimeout(overall);
    options.signal?.removeEventListener('abort', onAbort);
    await Promise.all(devices.map((d) => d.close()));
    if (mesh) {
      await mesh.stop().catch(() => undefined);
      mesh.killAllNow();
    }
    const purge = passed && !error && !options.keepData;
    await infra.down(purge);
    log(purge ? 'infrastructure stopped and removed' : `infrastructure stopped; data and logs kept in ${infra.dataDir}`);
  }
  const durationMs = Date.now() - started;
  const failed = phases.filter((p) => !p.passed).map((p) => p.name);
  const summary = error
    ? `fault suite: ERROR ${error} (${phases.length} phase(s) ran, ${(durationMs / 1000).toFixed(0)}s)`
    : `fault suite: ${passed ? 'PASS' : `FAIL (${failed.join(', ')})`}: ${phases.length} phases, ${phases.reduce((n, p) => n + p.acked, 0)} acked messages, ` +
      `${phases.reduce((n, p) => n + p.lost, 0)} lost, ${phases.reduce((n, p) => n + p.duplicated, 0)} duplicated, ${phases.reduce((n, p) => n + p.reordered, 0)} reordered, ` +
      `${phases.reduce((n, p) => n + (p.kafka.expected - p.kafka.found), 0)} missing from Kafka, in ${(durationMs / 1000).toFixed(0)}s (seed ${seed})`;
  out(summary);
  return { phases, passed: passed && !error, dataDir: infra.dataDir, durationMs, summary, ...(error ? { error } : {}) };
}

export { LEGEND };
