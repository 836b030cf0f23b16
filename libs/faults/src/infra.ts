import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync, appendFileSync } from 'node:fs';
import { createServer } from 'node:net';
import * as path from 'node:path';
import { repoRoot } from '@switchboard/devenv';

/**
 * The suite's own infrastructure instance: PostgreSQL, Redis, NATS and Kafka
 * started by libs/devenv/infra/infra.sh with their own data directory and
 * their own port block, so that restarting NATS or Kafka never touches the
 * shared instance on the default ports (nor another run of this suite).
 */

export interface InfraPorts {
  pg: number;
  redis: number;
  nats: number;
  natsMonitor: number;
  kafka: number;
  kafkaController: number;
}

/** The block the command line starts from (shifted when any port of it is taken). */
export const CLI_PORTS: InfraPorts = { pg: 55432, redis: 63800, nats: 42230, natsMonitor: 8230, kafka: 19192, kafkaController: 19193 };
/** The block the CI test starts from: different from the CLI's, so both can run at once. */
export const CI_PORTS: InfraPorts = { pg: 55452, redis: 63820, nats: 42250, natsMonitor: 8250, kafka: 19212, kafkaController: 19213 };

const INFRA_SCRIPT = path.join(repoRoot, 'libs', 'devenv', 'infra', 'infra.sh');
/** Every instance of the suite lives under here (git-ignored with the rest of .data). */
export const FAULTS_DATA_ROOT = path.join(repoRoot, '.data', 'faults');
const OWNER_FILE = 'owner.json';
/** Service processes a run started (`<pid> <service>` per line). */
export const SERVICE_PIDS = 'services.pids';

export type InfraServer = 'nats' | 'kafka';

/** Where infra.sh keeps each restartable server's pid, and what its command line must contain. */
const SERVERS: Record<InfraServer, { pidFile: string; pattern: string }> = {
  nats: { pidFile: path.join('nats', 'nats.pid'), pattern: 'nats-server' },
  kafka: { pidFile: path.join('kafka', 'kafka.pid'), pattern: 'kafka.Kafka' },
};

/** True when nobody listens on 127.0.0.1:port (we could bind it). */
export async function portFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const server = createServer();
    server.once('error', () => resolve(false));
    server.listen(port, '127.0.0.1', () => server.close(() => resolve(true)));
  });
}

/** The first block `base + k*step` (k = 0, 1, …) whose six ports are all free. */
export async function pickPorts(base: InfraPorts, tries = 20, step = 3): Promise<InfraPorts> {
  for (let k = 0; k < tries; k += 1) {
    const candidate = Object.fromEntries(Object.entries(base).map(([key, port]) => [key, port + k * step])) as unknown as InfraPorts;
    const free = await Promise.all(Object.values(candidate).map((port) => portFree(port)));
    if (free.every(Boolean)) return candidate;
  }
  throw new Error(`no free port block for the fault suite's infrastructure near ${JSON.stringify(base)}`);
}

/** A live process (a zombie, killed and not yet reaped, is not). */
function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EPERM') return false;
  }
  try {
    // /proc/<pid>/stat: "pid (comm) S …"; the state follows the last ')'.
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return true;
  }
}

/** The pid of a server when it runs and is the one its pid file names (guards against pid reuse). */
function serverPid(dataDir: string, server: InfraServer): number | undefined {
  const { pidFile, pattern } = SERVERS[server];
  const file = path.join(dataDir, pidFile);
  if (!existsSync(file)) return undefined;
  const pid = Number.parseInt(readFileSync(file, 'utf8').trim(), 10);
  if (!Number.isSafeInteger(pid) || pid <= 1 || !alive(pid)) return undefined;
  try {
    const cmdline = readFileSync(`/proc/${pid}/cmdline`, 'utf8').replace(/\0/g, ' ');
    return cmdline.includes(pattern) ? pid : undefined;
  } catch {
    return undefined;
  }
}

/** Service processes a dead run left behind: SIGKILL, each by its pid, only when its command line is that service's. */
function stopLeftServices(file: string, log: (line: string) => void): void {
  if (!existsSync(file)) return;
  for (const line of readFileSync(file, 'utf8').split('\n')) {
    const [pidText, service] = line.trim().split(' ');
    const pid = Number.parseInt(pidText ?? '', 10);
    if (!service || !Number.isSafeInteger(pid) || pid <= 1 || !alive(pid)) continue;
    try {
      const cmdline = readFileSync(`/proc/${pid}/cmdline`, 'utf8').replace(/\0/g, ' ');
      if (!cmdline.includes(path.join('services', service, 'dist', 'main.js'))) continue;
      process.kill(pid, 'SIGKILL');
      log(`stopped ${service} (pid ${pid}) left by that run`);
    } catch {
      // gone meanwhile
    }
  }
}

export interface InfraRunResult {
  code: number | null;
  output: string;
}

export class FaultInfra {
  private constructor(
    readonly dataDir: string,
    readonly ports: InfraPorts,
    private readonly log: (line: string) => void,
  ) {}

  /**
   * Prepares a new instance: stops and removes instances left by runs that
   * died (their owner process is gone), picks a free port block and a fresh
   * data directory. Nothing is started yet: call up().
   */
  static async create(options: { label: string; basePorts: InfraPorts; log: (line: string) => void }): Promise<FaultInfra> {
    mkdirSync(FAULTS_DATA_ROOT, { recursive: true });
    await FaultInfra.reapStale(options.log);
    const ports = await pickPorts(options.basePorts);
    const dataDir = path.join(FAULTS_DATA_ROOT, `${options.label}-${process.pid}-${Date.now().toString(36)}`);
    mkdirSync(dataDir, { recursive: true });
    writeFileSync(path.join(dataDir, OWNER_FILE), `${JSON.stringify({ pid: process.pid, ports, startedAt: new Date().toISOString() })}\n`);
    return new FaultInfra(dataDir, ports, options.log);
  }

  /** Instances whose owner died (a killed run): their servers are stopped and their data removed. */
  static async reapStale(log: (line: string) => void): Promise<void> {
    if (!existsSync(FAULTS_DATA_ROOT)) return;
    for (const entry of readdirSync(FAULTS_DATA_ROOT)) {
      const dir = path.join(FAULTS_DATA_ROOT, entry);
      const ownerFile = path.join(dir, OWNER_FILE);
      if (!existsSync(ownerFile)) continue;
      let owner: { pid?: number };
      try {
        owner = JSON.parse(readFileSync(ownerFile, 'utf8')) as { pid?: number };
      } catch {
        continue;
      }
      if (typeof owner.pid === 'number' && alive(owner.pid)) continue;
      log(`removing the instance of a finished run: ${dir}`);
      stopLeftServices(path.join(dir, SERVICE_PIDS), log);
      const result = await runInfra(['down', '--purge'], { SB_DATA_DIR: dir }, path.join(FAULTS_DATA_ROOT, 'reap.log'));
      if (result.code !== 0) log(`could not remove ${dir}: ${result.output.split('\n').slice(-5).join(' | ')}`);
    }
  }

  /** The connection settings every service gets (the instance's ports, never the defaults). */
  env(): Record<string, string> {
    const { pg, redis, nats, kafka } = this.ports;
    return {
      DATABASE_URL: `postgres://switchboard:switchboard@127.0.0.1:${pg}/switchboard`,
      DATABASE_ADMIN_URL: `postgres://postgres@127.0.0.1:${pg}/switchboard`,
      REDIS_URL: `redis://127.0.0.1:${redis}`,
      NATS_URL: `nats://127.0.0.1:${nats}`,
      KAFKA_BROKERS: `127.0.0.1:${kafka}`,
      // infra.sh writes the instance's NATS users there; launchService gives each service its own.
      SB_NATS_CREDENTIALS_DIR: path.join(this.dataDir, 'nats', 'credentials'),
      // The instance's secret for internal gRPC calls (infra.sh up makes it).
      ...(existsSync(path.join(this.dataDir, 'grpc-internal-token')) ? { GRPC_INTERNAL_TOKEN: readFileSync(path.join(this.dataDir, 'grpc-internal-token'), 'utf8').trim() } : {}),
    };
  }

  get kafkaBrokers(): string {
    return `127.0.0.1:${this.ports.kafka}`;
  }

  private scriptEnv(): Record<string, string> {
    const { pg, redis, nats, natsMonitor, kafka, kafkaController } = this.ports;
    return {
      SB_DATA_DIR: this.dataDir,
      SB_PG_PORT: String(pg),
      SB_REDIS_PORT: String(redis),
      SB_NATS_PORT: String(nats),
      SB_NATS_MONITOR_PORT: String(natsMonitor),
      SB_KAFKA_PORT: String(kafka),
      SB_KAFKA_CONTROLLER_PORT: String(kafkaController),
    };
  }

  /** infra.sh up: starts whatever of the instance is not running and waits until all are healthy. */
  async up(): Promise<void> {
    const result = await runInfra(['up'], this.scriptEnv(), path.join(this.dataDir, 'infra-sh.log'));
    if (result.code !== 0) {
      throw new Error(`infra.sh up failed (exit ${result.code}) for ${this.dataDir}:\n${result.output.split('\n').slice(-25).join('\n')}`);
    }
  }

  /** infra.sh down [--purge]. */
  async down(purge: boolean): Promise<void> {
    const result = await runInfra(purge ? ['down', '--purge'] : ['down'], this.scriptEnv(), purge ? path.join(FAULTS_DATA_ROOT, 'down.log') : path.join(this.dataDir, 'infra-sh.log'));
    if (result.code !== 0) this.log(`infra.sh down failed (exit ${result.code}): ${result.output.split('\n').slice(-5).join(' | ')}`);
  }

  pidOf(server: InfraServer): number | undefined {
    return serverPid(this.dataDir, server);
  }

  /** Sends `signal` to the server of this instance (pid from its pid file, checked) and waits until it is gone. */
  async kill(server: InfraServer, signal: NodeJS.Signals = 'SIGKILL', timeoutMs = 60_000): Promise<number> {
    const pid = this.pidOf(server);
    if (pid === undefined) throw new Error(`${server} of ${this.dataDir} is not running`);
    process.kill(pid, signal);
    const deadline = Date.now() + timeoutMs;
    while (alive(pid)) {
      if (Date.now() > deadline) {
        process.kill(pid, 'SIGKILL');
      }
      await new Promise((r) => setTimeout(r, 50));
    }
    return pid;
  }

  /** Where each server logs, for failure reports. */
  logFiles(): Record<string, string> {
    return {
      nats: path.join(this.dataDir, 'nats', 'nats.log'),
      kafka: path.join(this.dataDir, 'kafka', 'logs', 'server.log'),
      'infra.sh': path.join(this.dataDir, 'infra-sh.log'),
    };
  }
}

/** Runs infra.sh with extra environment; its output goes to `logFile` and is returned. */
function runInfra(args: string[], env: Record<string, string>, logFile: string): Promise<InfraRunResult> {
  return new Promise((resolve) => {
    const child = spawn('bash', [INFRA_SCRIPT, ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    const collect = (chunk: Buffer) => {
      const text = chunk.toString('utf8');
      output += text;
      try {
        appendFileSync(logFile, text);
      } catch {
        // the log file is a convenience
      }
    };
    child.stdout.on('data', collect);
    child.stderr.on('data', collect);
    child.on('error', (err) => resolve({ code: -1, output: `${output}\n${err.message}` }));
    child.on('close', (code) => resolve({ code, output }));
  });
}
