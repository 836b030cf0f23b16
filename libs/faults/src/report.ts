import type { PhaseResult } from './check';

/** The one line per fault: the verdict counts first, then what explains them. */
export function resultLine(r: PhaseResult): string {
  const c = r.counters;
  const errors = [...r.send.errors].map(([code, n]) => `${code}:${n}`).join(',') || 'none';
  const kafka = r.kafka.error && r.kafka.found < r.kafka.expected ? `kafka=${r.kafka.found}/${r.kafka.expected} (error: ${r.kafka.error})` : `kafka=${r.kafka.found}/${r.kafka.expected} kafka-dups=${r.kafka.duplicates} kafka-out-of-order=${r.kafka.outOfOrder}`;
  return [
    `${r.name.padEnd(14)} ${r.passed ? 'PASS' : 'FAIL'}`,
    `acked=${r.acked} delivered=${r.delivered}/${r.expected} lost=${r.lost} duplicated=${r.duplicated} reordered=${r.reordered}`,
    `| live=${r.live} recovered=${r.recovered} (on unbroken connections: ${r.recoveredWhileConnected}) stalled=${r.stalled} raw-dups=${c.rawDuplicates} conn-gaps=${c.connGaps} conn-out-of-order=${c.connOutOfOrder} ${kafka}`,
    `| sends: retried=${r.send.retried} dup-acks=${r.send.duplicateAcks} gave-up=${r.send.gaveUp} refused=${r.send.refused} errors=${errors} reconnects=${c.welcomes} ${(r.durationMs / 1000).toFixed(1)}s`,
  ].join(' ');
}

/** What to look at when a phase failed (or showed something worth a look). */
export function detailLines(r: PhaseResult): string[] {
  const lines: string[] = [];
  for (const line of r.timeline) lines.push(`  timeline: ${line}`);
  for (const reason of r.reasons) lines.push(`  FAILED: ${reason}`);
  for (const line of r.integrity) lines.push(`  integrity: ${line}`);
  for (const line of r.lostSamples) lines.push(`  lost: ${line}`);
  for (const line of r.stalledSamples) lines.push(`  stalled: ${line}`);
  if (r.kafka.missing.length > 0) lines.push(`  kafka: missing ${r.kafka.missing.slice(0, 5).join(', ')}${r.kafka.missing.length > 5 ? ` and ${r.kafka.missing.length - 5} more` : ''}`);
  for (const line of r.kafka.samples) lines.push(`  kafka: ${line}`);
  for (const line of r.counters.samples) lines.push(`  seen: ${line}`);
  for (const line of r.send.notes) lines.push(`  send: ${line}`);
  for (const line of r.crashes) lines.push(`  crash: ${line}`);
  return lines;
}

export const LEGEND = [
  'acked: messages whose sender got a message_ack; delivered: (message, device) pairs held by every device of every member after recovery, out of all pairs;',
  'lost: pairs missing after recovery; kafka: acked messages found in sb.messages (a missing one fails the run); duplicated: a seq the client library handed to the app twice;',
  'reordered: a seq the client library handed after a higher one; live/recovered: pairs handed by the library vs fetched by the suite with get_history;',
  'stalled: pairs not yet on a connected device after up to 10 s of no new traffic once the fault was repaired (delivery waiting for a trigger);',
  'kafka-out-of-order: first copies in sb.messages behind a higher seq of the same conversation (order per key); kafka-dups: extra copies (at least once: allowed);',
  'raw-dups: message pushes of a seq the device was pushed before (any connection); conn-gaps / conn-out-of-order: the gateway broke its per-connection order.',
].join('\n');
