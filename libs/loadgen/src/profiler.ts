import { writeFileSync } from 'node:fs';
import WebSocket from 'ws';

/**
 * CPU and heap profiles of a running gateway over the inspector protocol
 * (the gateway starts with --inspect on a free port). Unlike --heap-prof,
 * which writes at exit when the connections are gone, this samples the heap
 * while the connections are open: what they cost.
 */
export class InspectorSession {
  private next = 0;
  private readonly waiting = new Map<number, { resolve(v: unknown): void; reject(e: Error): void }>();

  private constructor(private readonly ws: WebSocket) {
    ws.on('message', (data) => {
      const message = JSON.parse(String(data)) as { id?: number; result?: unknown; error?: { message: string } };
      if (message.id === undefined) return;
      const waiter = this.waiting.get(message.id);
      this.waiting.delete(message.id);
      if (message.error) waiter?.reject(new Error(message.error.message));
      else waiter?.resolve(message.result);
    });
  }

  /** Finds the inspector URL the process printed ("Debugger listening on ws://…"). */
  static async attach(output: string[]): Promise<InspectorSession> {
    const line = output.find((l) => l.includes('Debugger listening on ws://'));
    if (!line) throw new Error('the process did not start an inspector (NODE_OPTIONS=--inspect=127.0.0.1:0)');
    const ws = new WebSocket(line.slice(line.indexOf('ws://')).trim(), { perMessageDeflate: false, maxPayload: 2 ** 30 });
    await new Promise((resolve, reject) => ws.once('open', resolve).once('error', reject));
    return new InspectorSession(ws);
  }

  call<T>(method: string, params: object = {}): Promise<T> {
    const id = (this.next += 1);
    return new Promise<T>((resolve, reject) => {
      this.waiting.set(id, { resolve: resolve as (v: unknown) => void, reject });
      this.ws.send(JSON.stringify({ id, method, params }));
    });
  }

  close(): void {
    this.ws.close();
  }
}

interface HeapNode {
  callFrame: { functionName: string; url: string; lineNumber: number };
  selfSize: number;
  children: HeapNode[];
}

interface CpuProfile {
  nodes: { id: number; callFrame: { functionName: string; url: string; lineNumber: number } }[];
  samples: number[];
  timeDeltas: number[];
}

export interface ProfileLine {
  where: string;
  share: number;
  value: number;
}

const place = (f: { functionName: string; url: string; lineNumber: number }) =>
  `${f.functionName || '(anonymous)'} ${f.url.replace(/^.*node_modules\/\.pnpm\/[^/]+\/node_modules\//, '').replace(/^.*\/(services|libs)\//, '$1/').replace(/^file:\/\//, '')}:${f.lineNumber + 1}`;

function top(totals: Map<string, number>, limit: number): ProfileLine[] {
  const sum = [...totals.values()].reduce((a, b) => a + b, 0) || 1;
  return [...totals]
    .sort((a, b) => b[1] - a[1])
    .slice(0, limit)
    .map(([where, value]) => ({ where, value, share: Math.round((value / sum) * 1000) / 10 }));
}

/** Live sampled heap by allocating function (bytes). */
export function heapTop(profile: { head: HeapNode }, limit = 15): ProfileLine[] {
  const totals = new Map<string, number>();
  const stack = [profile.head];
  while (stack.length > 0) {
    const node = stack.pop()!;
    if (node.selfSize > 0) totals.set(place(node.callFrame), (totals.get(place(node.callFrame)) ?? 0) + node.selfSize);
    stack.push(...node.children);
  }
  return top(totals, limit);
}

/** Self CPU time by function (ms). */
export function cpuTop(profile: CpuProfile, limit = 15): ProfileLine[] {
  const byId = new Map(profile.nodes.map((n) => [n.id, place(n.callFrame)]));
  const totals = new Map<string, number>();
  profile.samples.forEach((id, i) => {
    const key = byId.get(id)!;
    totals.set(key, (totals.get(key) ?? 0) + (profile.timeDeltas[i] ?? 0) / 1000);
  });
  return top(totals, limit);
}

export function saveProfile(file: string, profile: unknown): void {
  writeFileSync(file, JSON.stringify(profile));
}
