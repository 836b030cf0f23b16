/**
 * One load-generator worker process: holds a share of the connections (at
 * most 20,000 open files per process here), sends its senders' share of the
 * schedule, and measures every message its devices receive from the time the
 * schedule intended it to be sent. Driven over IPC by the coordinator.
 */
import type * as hdr from 'hdr-histogram-js';
import { DEFAULT_BACKOFF, retryDelay } from '@switchboard/client';
import { decodeBody, encodeBody } from './body';
import { encodeHistogram, newHistogram, nowMs, recordMs } from './histogram';
import type { FromWorker, LoadStart, SenderAssignment, ToWorker, WarmUp, WorkerCounts, WorkerInit } from './protocol';
import { schedule } from './protocol';
import { SeqTracker } from './seq-tracker';
import { socketioTransport } from './socketio-transport';
import { switchboardTransport } from './switchboard-transport';
import type { ClientSpec, LoadConnection, LoadTransport, PushedMessage } from './transport';

const ACK_TIMEOUT_MS = 15_000;

interface Device {
  spec: ClientSpec;
  connection: LoadConnection | undefined;
  /** Closed on purpose by churn; the close is not a failure. */
  churning: boolean;
  seqs: Map<string, SeqTracker>;
  /** Messages recovered by a sync after a reconnect (`conversation:seq`): the same one pushed live as well is the expected overlap, not a duplicate. */
  synced: Set<string>;
}

let init: WorkerInit;
let transport: LoadTransport;
const devices: Device[] = [];
const counts: WorkerCounts = {
  connectAttempts: 0,
  connected: 0,
  connectFailed: 0,
  open: 0,
  sent: 0,
  acked: 0,
  failed: 0,
  resent: 0,
  retried: 0,
  delivered: 0,
  recovered: 0,
  duplicates: 0,
  reconnects: 0,
  warmDelivered: 0,
};
const errors: Record<string, number> = {};
const histograms: Record<'delivery' | 'ack' | 'connect' | 'reconnect', hdr.Histogram> = {
  delivery: newHistogram(),
  ack: newHistogram(),
  connect: newHistogram(),
  reconnect: newHistogram(),
};
let run = '';
let warmRun = '';
/**
 * Sends waiting for their ack, by client message id: when they were meant to
 * go, when they last went, and what to send again. Swept by one timer, not
 * one per send. A device that churns keeps its entries and sends them again
 * (same client ids) once it is back, as a client with an outbox does: a send
 * whose ack was lost with the connection is acknowledged then (as a
 * duplicate when it had been stored), so churn runs can prove zero loss.
 */
interface PendingSend {
  device: Device;
  target: SenderAssignment['target'];
  text: string;
  intendedMs: number;
  sentMs: number;
  /** Refusals retried so far (the backoff grows with them). */
  retries?: number;
}
const pending = new Map<string, PendingSend>();
let scheduleDone = true;
const cpuStart = process.cpuUsage();

function send(message: FromWorker): void {
  process.send!(message);
}

function countError(text: string): void {
  // gRPC's deadline messages carry timings; without them the same failure adds up under one key.
  const key = text.replace(/ after [0-9.]+s.*$/, '').slice(0, 120);
  errors[key] = (errors[key] ?? 0) + 1;
}

function onPushed(device: Device, message: PushedMessage, recovered: boolean): void {
  if (message.senderId === device.spec.userId) return; // the sender's own echo is not a delivery
  const body = decodeBody(message.text);
  if (!body) return;
  if (message.seq !== undefined) {
    let tracker = device.seqs.get(message.conversationId);
    if (!tracker) device.seqs.set(message.conversationId, (tracker = new SeqTracker()));
    const key = `${message.conversationId}:${message.seq}`;
    if (!tracker.see(message.seq)) {
      // A sync after a reconnect overlaps with what is pushed live meanwhile (clients drop these by seq).
      if (!recovered && !device.synced.has(key)) counts.duplicates += 1;
      return;
    }
    if (recovered) device.synced.add(key);
  }
  if (body.run === warmRun) {
    counts.warmDelivered += 1;
    return;
  }
  if (body.run !== run) return;
  counts.delivered += 1;
  if (recovered) counts.recovered += 1;
  recordMs(histograms.delivery, nowMs() - body.intendedMs);
}

async function open(device: Device, histogram: hdr.Histogram): Promise<void> {
  const started = nowMs();
  device.connection = await transport.connect(device.spec, {
    message: (m) => onPushed(device, m, false),
    ack: (clientMessageId, error, retryAfterMs) => {
      const sent = pending.get(clientMessageId);
      if (!sent) return;
      if (error && retryAfterMs !== undefined) {
        // As the client library does: the same send again after its default backoff (never before the hint);
        // its latency keeps counting from the intended send.
        counts.retried += 1;
        const delay = retryDelay(sent.retries ?? 0, retryAfterMs, DEFAULT_BACKOFF.baseDelayMs, DEFAULT_BACKOFF.maxDelayMs);
        sent.retries = (sent.retries ?? 0) + 1;
        sent.sentMs = nowMs() + delay;
        setTimeout(() => {
          if (pending.get(clientMessageId) === sent) sent.device.connection?.send(sent.target, clientMessageId, sent.text);
        }, delay);
        return;
      }
      pending.delete(clientMessageId);
      if (error) {
        counts.failed += 1;
        countError(`send: ${error}`);
      } else {
        counts.acked += 1;
        recordMs(histograms.ack, nowMs() - sent.intendedMs);
      }
    },
    closed: () => {
      counts.open -= 1;
      device.connection = undefined;
      if (!device.churning) countError('connection closed by the server');
    },
  });
  counts.open += 1;
  recordMs(histogram, nowMs() - started);
}

async function connectAll(): Promise<void> {
  const intervalMs = 1000 / init.rampPerSecond;
  const started = nowMs();
  const progress = setInterval(() => send({ type: 'progress', worker: init.worker, connected: counts.connected, failed: counts.connectFailed }), 500);
  const attempts: Promise<void>[] = [];
  let inFlight = 0;
  for (let i = 0; i < devices.length; i += 1) {
    const due = started + i * intervalMs;
    const wait = due - nowMs();
    if (wait > 1) await new Promise((r) => setTimeout(r, wait));
    // Closed loop: at most this many handshakes waiting, as clients that wait for an answer would;
    // an open-loop storm only measures how many handshakes time out on a machine this small.
    while (inFlight >= init.maxPendingConnects) await new Promise((r) => setTimeout(r, 5));
    counts.connectAttempts += 1;
    inFlight += 1;
    attempts.push(
      open(devices[i]!, histograms.connect).then(
        () => void (counts.connected += 1),
        (err: Error) => {
          counts.connectFailed += 1;
          countError(`connect: ${err.message}`);
        },
      ).finally(() => (inFlight -= 1)),
    );
  }
  await Promise.all(attempts);
  clearInterval(progress);
  send({ type: 'connected', worker: init.worker, connected: counts.connected, failed: counts.connectFailed, errors });
}

function sendOne(assignment: SenderAssignment, runId: string, n: number, intendedMs: number): void {
  const device = devices[assignment.local]!;
  const clientMessageId = `${runId}-${n}`;
  counts.sent += 1;
  if (!device.connection && !device.churning) {
    counts.failed += 1;
    countError('send: sender not connected');
    return;
  }
  const text = encodeBody({ run: runId, n, intendedMs }, init.messageBytes);
  // While churning it waits in `pending` and goes out after the reconnect.
  pending.set(clientMessageId, { device, target: assignment.target, text, intendedMs, sentMs: nowMs() });
  device.connection?.send(assignment.target, clientMessageId, text);
}

/** After a reconnect: everything of this device still without an ack goes again, with its client id. */
function resendPending(device: Device): void {
  for (const [clientMessageId, send] of pending) {
    if (send.device !== device || !device.connection) continue;
    send.sentMs = nowMs();
    counts.resent += 1;
    device.connection.send(send.target, clientMessageId, send.text);
  }
}

/** One message per sender, not measured: creates direct conversations and subscriptions before the clock starts. */
async function warmUp(message: WarmUp): Promise<void> {
  warmRun = message.run;
  const before = { acked: counts.acked, failed: counts.failed };
  // Paced: a few sends in flight at a time, so creating thousands of conversations is not itself a storm.
  const deadline = Date.now() + 120_000;
  for (const assignment of message.senders) {
    while (pending.size >= 8 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 2));
    sendOne(assignment, warmRun, assignment.sender, nowMs());
  }
  while (pending.size > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  const result = { acked: counts.acked - before.acked, failed: counts.failed - before.failed };
  // Warm-up sends are not part of the measured counts.
  counts.sent -= message.senders.length;
  counts.acked = before.acked;
  counts.failed = before.failed;
  histograms.ack.reset();
  send({ type: 'warm', worker: init.worker, ...result });
}

function startLoad(message: LoadStart): void {
  run = message.run;
  scheduleDone = false;
  const mine = new Map<number, SenderAssignment>(message.senders.map((s) => [s.sender, s]));
  const times = schedule(message.startMs, message.segments);
  let n = 0;
  let next = times.next();
  const tick = () => {
    const now = nowMs();
    while (!next.done && next.value <= now) {
      const assignment = mine.get(n % message.senderCount);
      if (assignment) sendOne(assignment, run, n, next.value);
      n += 1;
      next = times.next();
    }
    if (next.done) {
      scheduleDone = true;
      return;
    }
    setTimeout(tick, Math.max(0, Math.min(next.value - now, 20)));
  };
  setTimeout(tick, Math.max(0, message.startMs - nowMs()));
  if (init.churnPerMinute > 0) startChurn();
}

/** Closes and reopens a share of the connections per minute, spread over the minute; a reopened device syncs what it missed. */
function startChurn(): void {
  let owed = 0;
  const timer = setInterval(() => {
    if (scheduleDone) return clearInterval(timer);
    owed += (init.churnPerMinute * devices.length) / 60;
    while (owed >= 1) {
      owed -= 1;
      const device = devices[Math.floor(Math.random() * devices.length)]!;
      if (!device.connection || device.churning) continue;
      void reconnect(device);
    }
  }, 1000);
}

async function reconnect(device: Device): Promise<void> {
  device.churning = true;
  const closed = new Promise<void>((resolve) => {
    const check = setInterval(() => {
      if (!device.connection) {
        clearInterval(check);
        resolve();
      }
    }, 5);
  });
  device.connection!.close();
  await closed;
  try {
    await open(device, histograms.reconnect);
    counts.reconnects += 1;
    resendPending(device);
    if (transport.hasRecovery) {
      const positions = [...device.seqs].map(([conversationId, tracker]) => ({ conversationId, lastSeq: tracker.contiguous }));
      for (const message of await device.connection!.sync(positions)) onPushed(device, message, true);
    }
  } catch (err) {
    countError(`reconnect: ${(err as Error).message}`);
  } finally {
    device.churning = false;
  }
  if (!device.connection) {
    // The reconnect failed: what waited for it fails now.
    for (const [clientMessageId, send] of pending) {
      if (send.device !== device) continue;
      pending.delete(clientMessageId);
      counts.failed += 1;
      countError('send: sender not reconnected');
    }
  }
}

function report(): void {
  const cpu = process.cpuUsage(cpuStart);
  const openByUrl: Record<string, number> = {};
  for (const device of devices) if (device.connection) openByUrl[device.spec.url] = (openByUrl[device.spec.url] ?? 0) + 1;
  send({
    openByUrl,
    type: 'report',
    worker: init.worker,
    counts: { ...counts },
    errors,
    histograms: {
      delivery: encodeHistogram(histograms.delivery),
      ack: encodeHistogram(histograms.ack),
      connect: encodeHistogram(histograms.connect),
      reconnect: encodeHistogram(histograms.reconnect),
    },
    cpuMs: (cpu.user + cpu.system) / 1000,
    rssBytes: process.memoryUsage.rss(),
    scheduleDone,
  });
}

// Sends without an ack in time are failures (one sweep for all of them).
setInterval(() => {
  const limit = nowMs() - ACK_TIMEOUT_MS;
  for (const [id, sent] of pending) {
    if (sent.sentMs > limit) continue;
    pending.delete(id);
    counts.failed += 1;
    countError('send: no ack within 15 s');
  }
}, 1000).unref();

process.on('message', (message: ToWorker) => {
  switch (message.type) {
    case 'init':
      init = message;
      transport = init.transport === 'socketio' ? socketioTransport({ secret: init.secret, tenantId: init.tenantId }) : switchboardTransport({ secret: init.secret, tenantId: init.tenantId });
      for (const spec of init.clients) devices.push({ spec, connection: undefined, churning: false, seqs: new Map(), synced: new Set() });
      send({ type: 'ready', worker: init.worker });
      return;
    case 'connect':
      void connectAll();
      return;
    case 'warmup':
      void warmUp(message);
      return;
    case 'load':
      startLoad(message);
      return;
    case 'report':
      report();
      return;
    case 'close':
      for (const device of devices) {
        device.churning = true;
        device.connection?.close();
      }
      setTimeout(() => process.exit(0), 500);
      return;
  }
});
process.on('disconnect', () => process.exit(0));
