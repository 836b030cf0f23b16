import { emptyCounters, sleep, type Device, type DeviceCounters } from './device';
import type { KafkaPresence } from './kafka-check';
import type { AckedMessage, Ledger, SendStats } from './ledger';

/** One fault's verdict: every message acknowledged during its phase against every device of every member. */
export interface PhaseResult {
  name: string;
  description: string;
  acked: number;
  /** (message, recipient device) pairs that must exist: every device of every member, the sender's own included. */
  expected: number;
  /** Pairs the device holds after recovery (live + recovered). */
  delivered: number;
  /** Pairs the client library handed to the app by itself (live push, its own gap fill or resume). */
  live: number;
  /** Pairs the suite had to fetch with get_history after the phase (the documented recovery path). */
  recovered: number;
  /** Of those, pairs on devices whose connection never dropped during the phase: the live path lost them silently. */
  recoveredWhileConnected: number;
  lost: number;
  duplicated: number;
  reordered: number;
  /**
   * Pairs still undelivered to connected devices when the quiet probe after
   * the fault's restore ended (no new traffic for up to 10 s): delivery that
   * waits for something else to happen.
   */
  stalled: number;
  stalledSamples: string[];
  counters: DeviceCounters;
  /** Idempotency or sequence violations (one message stored twice, one seq for two messages). */
  integrity: string[];
  kafka: KafkaPresence;
  send: SendStats;
  timeline: string[];
  lostSamples: string[];
  crashes: string[];
  durationMs: number;
  passed: boolean;
  reasons: string[];
}

export function devicesByUser(devices: Device[]): Map<string, Device[]> {
  const map = new Map<string, Device[]>();
  for (const device of devices) {
    const list = map.get(device.spec.userId) ?? [];
    list.push(device);
    map.set(device.spec.userId, list);
  }
  return map;
}

function recipients(ledger: Ledger, byUser: Map<string, Device[]>, message: AckedMessage): Device[] {
  return ledger.membersOf(message.conversationId).flatMap((user) => byUser.get(user) ?? []);
}

/**
 * Pairs of messages acked up to `ackedBefore` that a connected device does
 * not hold: with no new traffic to trigger a gap fill, these wait for
 * something else (a reconnect, a later message) to reach the device.
 */
export function undelivered(ledger: Ledger, devices: Device[], phase: string, ackedBefore: number): { count: number; samples: string[] } {
  const byUser = devicesByUser(devices);
  let count = 0;
  const samples: string[] = [];
  for (const message of ledger.ackedIn(phase)) {
    if (message.ackedAt > ackedBefore) continue;
    for (const device of recipients(ledger, byUser, message)) {
      if (!device.connected || device.view(message.conversationId).held.has(message.seq)) continue;
      count += 1;
      if (samples.length < 6) samples.push(`${message.conversationId}#${message.seq} not on ${device.name} (connected via ${device.gateway}, ${device.counters.disconnects} disconnect(s) this phase)`);
    }
  }
  return { count, samples };
}

/** Pairs of this phase not yet held by their device. */
function outstanding(ledger: Ledger, byUser: Map<string, Device[]>, phase: string): number {
  let missing = 0;
  for (const message of ledger.ackedIn(phase)) {
    for (const device of recipients(ledger, byUser, message)) {
      if (!device.view(message.conversationId).held.has(message.seq)) missing += 1;
    }
  }
  return missing;
}

/**
 * Lets live delivery finish: returns once every pair is held, or nothing new
 * arrived for `quietMs`, or after `timeoutMs`.
 */
export async function settle(ledger: Ledger, devices: Device[], phase: string, timeoutMs: number, quietMs: number): Promise<void> {
  const byUser = devicesByUser(devices);
  const deadline = Date.now() + timeoutMs;
  let last = outstanding(ledger, byUser, phase);
  let lastChange = Date.now();
  while (last > 0 && Date.now() < deadline && Date.now() - lastChange < quietMs) {
    await sleep(200);
    const now = outstanding(ledger, byUser, phase);
    if (now !== last) {
      last = now;
      lastChange = Date.now();
    }
  }
}

/** Every device fetches what it misses of its conversations up to the highest acknowledged seq. */
export async function recoverAll(ledger: Ledger, devices: Device[], conversationsOf: (userId: string) => string[]): Promise<string[]> {
  const problems: string[] = [];
  await Promise.all(
    devices.map(async (device) => {
      for (const conversationId of conversationsOf(device.spec.userId)) {
        try {
          await device.recover(conversationId, ledger.maxSeq(conversationId));
        } catch (err) {
          problems.push((err as Error).message);
        }
      }
    }),
  );
  return problems;
}

export function sumCounters(devices: Device[]): DeviceCounters {
  const total = emptyCounters();
  for (const device of devices) {
    const c = device.counters;
    total.rawDuplicates += c.rawDuplicates;
    total.connOutOfOrder += c.connOutOfOrder;
    total.connGaps += c.connGaps;
    total.duplicated += c.duplicated;
    total.reordered += c.reordered;
    total.appGaps += c.appGaps;
    total.lateAfterRecovery += c.lateAfterRecovery;
    total.conflicting += c.conflicting;
    total.disconnects += c.disconnects;
    total.welcomes += c.welcomes;
    for (const sample of c.samples) if (total.samples.length < 12) total.samples.push(sample);
  }
  return total;
}

/** Counts the phase's pairs by how they reached their device (after recovery), and what is lost. */
export function tally(ledger: Ledger, devices: Device[], phase: string) {
  const byUser = devicesByUser(devices);
  let expected = 0;
  let live = 0;
  let recovered = 0;
  let recoveredWhileConnected = 0;
  let lost = 0;
  const lostSamples: string[] = [];
  const mismatches: string[] = [];
  for (const message of ledger.ackedIn(phase)) {
    for (const device of recipients(ledger, byUser, message)) {
      expected += 1;
      const held = device.view(message.conversationId).held.get(message.seq);
      if (!held) {
        lost += 1;
        if (lostSamples.length < 10) {
          lostSamples.push(
            `${message.conversationId}#${message.seq} (${message.messageId}, sent by ${message.sender}, ${message.attempts} attempt(s)) missing on ${device.name} (now via ${device.gateway ?? 'no gateway'}, ${device.connected ? 'connected' : 'NOT connected'})`,
          );
        }
        continue;
      }
      if (held.messageId !== message.messageId) {
        if (mismatches.length < 10) mismatches.push(`${device.name} holds ${message.conversationId}#${message.seq} as ${held.messageId}, acked as ${message.messageId}`);
      }
      if (held.source === 'live') live += 1;
      else {
        recovered += 1;
        if (device.counters.disconnects === 0) recoveredWhileConnected += 1;
      }
    }
  }
  return { expected, delivered: live + recovered, live, recovered, recoveredWhileConnected, lost, lostSamples, mismatches };
}
