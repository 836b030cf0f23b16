import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { loadavg } from 'node:os';

/** Clock ticks per second of /proc/<pid>/stat's CPU times. */
const TICKS = (() => {
  try {
    return Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
  } catch {
    return 100;
  }
})();
const PAGE = (() => {
  try {
    return Number(execFileSync('getconf', ['PAGESIZE'], { encoding: 'utf8' }).trim()) || 4096;
  } catch {
    return 4096;
  }
})();

export interface ProcSample {
  rssBytes: number;
  /** User + system CPU time in ms since the process started. */
  cpuMs: number;
}

/** RSS and CPU time of a process (and, with `tree`, all its descendants: PostgreSQL's backends). */
export function sample(pid: number, tree = false): ProcSample {
  const pids = tree ? [pid, ...descendants(pid)] : [pid];
  let rssBytes = 0;
  let cpuMs = 0;
  for (const p of pids) {
    try {
      const stat = readFileSync(`/proc/${p}/stat`, 'utf8');
      // Fields after the command (which may contain spaces) start at state, field 3.
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      cpuMs += ((Number(fields[11]) + Number(fields[12])) / TICKS) * 1000;
      // The root of a tree also carries what its exited children used (PostgreSQL backends come and go).
      if (tree && p === pid) cpuMs += ((Number(fields[13]) + Number(fields[14])) / TICKS) * 1000;
      rssBytes += Number(fields[21]) * PAGE;
    } catch {
      // The process (a short-lived backend) is gone: it counts as nothing.
    }
  }
  return { rssBytes, cpuMs };
}

function descendants(root: number): number[] {
  const children = new Map<number, number[]>();
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      const list = children.get(ppid) ?? [];
      list.push(Number(entry));
      children.set(ppid, list);
    } catch {
      // gone
    }
  }
  const out: number[] = [];
  const stack = [root];
  while (stack.length > 0) {
    for (const child of children.get(stack.pop()!) ?? []) {
      out.push(child);
      stack.push(child);
    }
  }
  return out;
}

/** The 1-minute load average, recorded next to every figure (the machine is shared). */
export function load1(): number {
  return Math.round(loadavg()[0]! * 100) / 100;
}
