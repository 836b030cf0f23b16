/**
 * What a load message carries so that any receiving device, in any worker
 * process, can measure it: the run, the message number, and the time it was
 * INTENDED to be sent (the schedule's, not the moment the sender got round to
 * it, so a stall counts against every message it delays: no coordinated omission).
 */
export interface LoadBody {
  run: string;
  n: number;
  intendedMs: number;
}

export function encodeBody(body: LoadBody, padTo = 0): string {
  const text = `lg|${body.run}|${body.n}|${body.intendedMs.toFixed(3)}|`;
  return padTo > text.length ? text + 'x'.repeat(padTo - text.length) : text;
}

export function decodeBody(text: string): LoadBody | undefined {
  if (!text.startsWith('lg|')) return undefined;
  const [, run, n, intended] = text.split('|', 4);
  const body = { run: run ?? '', n: Number(n), intendedMs: Number(intended) };
  return Number.isFinite(body.n) && Number.isFinite(body.intendedMs) ? body : undefined;
}
