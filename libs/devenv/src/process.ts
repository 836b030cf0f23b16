import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createServer } from 'node:net';
import * as path from 'node:path';
import { natsCredentialsDir, repoRoot } from './infra';

export const SERVICES = ['messaging', 'presence', 'room', 'notification', 'gateway'] as const;
export type ServiceName = (typeof SERVICES)[number];

export interface LaunchOptions {
  service: ServiceName;
  /** Shown as the log prefix and used in error messages, e.g. "gateway-2". */
  name?: string;
  env: Record<string, string>;
  /** The ops port whose /readyz decides readiness. */
  opsPort: number;
  /** Where each output line goes; default: kept in memory only. */
  onLine?: (name: string, line: string) => void;
  readyTimeoutMs?: number;
}

export interface ServiceProcess {
  name: string;
  child: ChildProcess;
  opsPort: number;
  /** Everything the process printed, for assertions and failure reports. */
  output: string[];
  exited: Promise<number | null>;
  /** SIGTERM (graceful drain), then SIGKILL after `graceMs`. */
  stop(graceMs?: number): Promise<number | null>;
  kill(): Promise<number | null>;
}

/**
 * Every service process launched from this realm and not yet exited. A test
 * file's jest environment (jest-environment.ts) kills what its file left
 * running — a frozen or forgotten replica would otherwise hold locks the next
 * file's services need and keep jest from exiting. A global symbol, so the
 * environment (another realm) finds the same set.
 */
export const LAUNCHED = Symbol.for('switchboard.devenv.launched');
type Launched = Set<ServiceProcess>;
function launched(): Launched {
  const holder = globalThis as unknown as Record<symbol, Launched | undefined>;
  return (holder[LAUNCHED] ??= new Set());
}

/** Ports this process already handed out: the kernel may offer a just-closed port again, and two services given one port collide. */
const handedOut = new Set<number>();

/** A port nobody listens on right now, and never the same one twice in this process. */
export async function freePort(host = '127.0.0.1'): Promise<number> {
  for (;;) {
    const port = await listenOnce(host);
    if (!handedOut.has(port)) {
      handedOut.add(port);
      return port;
    }
  }
}

function listenOnce(host: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, host, () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolve(port));
    });
  });
}

/** Polls /readyz until it answers 200, the process exits, or the timeout passes. */
export async function waitReady(service: Pick<ServiceProcess, 'name' | 'opsPort' | 'exited' | 'output'>, timeoutMs = 30_000): Promise<void> {
  let exitCode: number | null | undefined;
  void service.exited.then((code) => (exitCode = code));
  const deadline = Date.now() + timeoutMs;
  let last = '';
  while (Date.now() < deadline) {
    if (exitCode !== undefined) {
      throw new Error(`${service.name} exited with ${exitCode} before it was ready:\n${service.output.slice(-20).join('\n')}`);
    }
    try {
      const res = await fetch(`http://127.0.0.1:${service.opsPort}/readyz`);
      if (res.status === 200) return;
      last = await res.text();
    } catch (err) {
      last = (err as Error).message;
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`${service.name} not ready within ${timeoutMs} ms (${last}):\n${service.output.slice(-20).join('\n')}`);
}

/** Starts one service's built entry point as its own process and waits until it is ready. */
export async function launchService(options: LaunchOptions): Promise<ServiceProcess> {
  const name = options.name ?? options.service;
  const entry = path.join(repoRoot, 'services', options.service, 'dist', 'main.js');
  // Each service connects to NATS as its own user (libs/nats NATS_PERMISSIONS); options.env may name another seed.
  const credentials = natsCredentialsDir(options.env);
  const seedFile = credentials ? path.join(credentials, `${options.service}.nk`) : undefined;
  if (seedFile && !options.env.NATS_NKEY_SEED_FILE && !existsSync(seedFile)) {
    throw new Error(`${name}: no NATS user at ${seedFile}; run bash libs/devenv/infra/infra.sh up (it makes the users and restarts NATS with them)`);
  }
  const natsUser = seedFile ? { NATS_NKEY_SEED_FILE: seedFile } : {};
  const child = spawn(process.execPath, [entry], {
    env: { ...process.env, ...natsUser, ...options.env, OPS_PORT: String(options.opsPort) },
    stdio: ['ignore', 'pipe', 'pipe'],
    // Its own process group: Ctrl-C in a terminal reaches only the launcher,
    // which stops the services in order with one SIGTERM each (a second
    // signal would make a service skip its graceful drain).
    detached: true,
  });
  const output: string[] = [];
  const collect = (chunk: Buffer) => {
    for (const line of chunk.toString('utf8').split('\n')) {
      if (!line) continue;
      output.push(line);
      if (output.length > 2000) output.shift();
      options.onLine?.(name, line);
    }
  };
  child.stdout!.on('data', collect);
  child.stderr!.on('data', collect);
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code, signal) => resolve(code ?? (signal ? 128 : null))));
  const stop = async (graceMs = 15_000) => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
      const code = await exited;
      clearTimeout(timer);
      // A drain that failed says why in its last lines; show them where the test's failure is read.
      if (code !== 0) process.stderr.write(`[devenv] ${name} stopped with exit code ${code}; its last lines:\n${output.slice(-30).join('\n')}\n`);
      return code;
    }
    return exited;
  };
  const processHandle: ServiceProcess = {
    name,
    child,
    opsPort: options.opsPort,
    output,
    exited,
    stop,
    kill: async () => {
      child.kill('SIGKILL');
      return exited;
    },
  };
  launched().add(processHandle);
  void exited.then(() => launched().delete(processHandle));
  try {
    await waitReady(processHandle, options.readyTimeoutMs);
  } catch (err) {
    child.kill('SIGKILL');
    throw err;
  }
  return processHandle;
}
