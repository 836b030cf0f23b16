import { appendFileSync, existsSync, mkdirSync } from 'node:fs';
import * as path from 'node:path';
import { freePort, launchService, repoRoot, type ServiceName, type ServiceProcess } from '@switchboard/devenv';

/**
 * The services under test as real processes, each on ports fixed for the
 * whole run so that a killed one can be started again where its peers and
 * clients expect it: messaging and presence, and two gateways.
 */

export interface ServiceSlot {
  name: string;
  service: ServiceName;
  env: Record<string, string>;
  opsPort: number;
  process: ServiceProcess | undefined;
  /** True between a kill the suite made and the restart: an exit then is expected. */
  downOnPurpose: boolean;
  /** Unexpected exits seen (a crash the suite did not cause). */
  crashes: string[];
  /** Graceful exits on a SIGTERM from outside the suite (restarted, reported, not counted as a defect). */
  interruptions: string[];
  starts: number;
}

export interface GatewaySlot extends ServiceSlot {
  url: string;
  wsPort: number;
}

export interface FaultMeshOptions {
  /** Infrastructure settings (DATABASE_URL, REDIS_URL, NATS_URL, KAFKA_BROKERS) of the suite's own instance. */
  infraEnv: Record<string, string>;
  /** One file per service under this folder. */
  logDir: string;
  /** Every process started is appended here (`<pid> <service>`), so that a later run can stop what a killed run left. */
  pidFile: string;
  gateways?: number;
  log: (line: string) => void;
}

const COMMON_ENV = {
  LOG_LEVEL: 'info',
  SHUTDOWN_DEADLINE_MS: '5000',
};

export class FaultMesh {
  readonly messaging: ServiceSlot;
  readonly presence: ServiceSlot;
  readonly gateways: GatewaySlot[] = [];

  private constructor(
    private readonly options: FaultMeshOptions,
    messaging: ServiceSlot,
    presence: ServiceSlot,
  ) {
    this.messaging = messaging;
    this.presence = presence;
  }

  /** Picks every port once (they stay for the run) and starts the services, gateways last. */
  static async start(options: FaultMeshOptions): Promise<FaultMesh> {
    for (const service of ['messaging', 'presence', 'gateway'] as const) {
      const entry = path.join(repoRoot, 'services', service, 'dist', 'main.js');
      if (!existsSync(entry)) throw new Error(`${entry} is missing: build the workspace first (pnpm build)`);
    }
    mkdirSync(options.logDir, { recursive: true });
    const base = { ...options.infraEnv, ...COMMON_ENV };
    const slot = async (service: ServiceName, name: string, extra: Record<string, string> = {}): Promise<ServiceSlot> => ({
      name,
      service,
      env: { ...base, GRPC_PORT: String(await freePort()), ...extra },
      opsPort: await freePort(),
      process: undefined,
      downOnPurpose: false,
      crashes: [],
      interruptions: [],
      starts: 0,
    });
    const messaging = await slot('messaging', 'messaging');
    const presence = await slot('presence', 'presence');
    const mesh = new FaultMesh(options, messaging, presence);
    try {
      await Promise.all([mesh.launch(messaging), mesh.launch(presence)]);
      for (let index = 0; index < (options.gateways ?? 2); index += 1) {
        const name = `gateway-${index + 1}`;
        const wsPort = await freePort();
        const gateway: GatewaySlot = {
          ...(await slot('gateway', name, {
            PORT: String(wsPort),
            GATEWAY_ID: name,
            MESSAGING_ADDR: `127.0.0.1:${messaging.env.GRPC_PORT}`,
            PRESENCE_ADDR: `127.0.0.1:${presence.env.GRPC_PORT}`,
            HEARTBEAT_INTERVAL_MS: '5000',
            RECONNECT_JITTER_MS: '1000',
          })),
          wsPort,
          url: `ws://127.0.0.1:${wsPort}/ws`,
        };
        mesh.gateways.push(gateway);
      }
      await Promise.all(mesh.gateways.map((gateway) => mesh.launch(gateway)));
    } catch (err) {
      mesh.killAllNow();
      throw err;
    }
    return mesh;
  }

  get all(): ServiceSlot[] {
    return [this.messaging, this.presence, ...this.gateways];
  }

  /** Starts (or starts again) a slot's process on its fixed ports and waits until /readyz says ready. */
  async launch(slot: ServiceSlot): Promise<void> {
    const logFile = path.join(this.options.logDir, `${slot.name}.log`);
    slot.starts += 1;
    appendFileSync(logFile, `---- ${new Date().toISOString()} start #${slot.starts} of ${slot.name}\n`);
    const processHandle = await launchService({
      service: slot.service,
      name: slot.name,
      env: slot.env,
      opsPort: slot.opsPort,
      readyTimeoutMs: 60_000,
      onLine: (_name, line) => appendFileSync(logFile, `${line}\n`),
    });
    slot.process = processHandle;
    slot.downOnPurpose = false;
    appendFileSync(this.options.pidFile, `${processHandle.child.pid} ${slot.service}\n`);
    void processHandle.exited.then((code) => {
      if (slot.process !== processHandle || slot.downOnPurpose) return;
      // A graceful stop on SIGTERM that the suite did not send came from outside (another
      // program on a shared machine): not a defect of the service, so it is started again
      // and noted. Any other exit is a crash and fails the phase.
      const outside = code === 0 && processHandle.output.slice(-30).some((line) => line.includes('"reason":"SIGTERM"'));
      const note = `${slot.name} (pid ${processHandle.child.pid}) exited on its own with ${code}${outside ? ' after a SIGTERM the suite did not send' : ''}`;
      this.options.log(note);
      if (!outside) {
        slot.crashes.push(note);
        return;
      }
      slot.interruptions.push(note);
      void this.launch(slot).then(
        () => this.options.log(`${slot.name} started again after the outside SIGTERM`),
        (err: unknown) => slot.crashes.push(`${note}; could not start it again: ${(err as Error).message}`),
      );
    });
  }

  /** SIGKILL, no drain: resolves once the process is gone. Returns its pid. */
  async kill(slot: ServiceSlot): Promise<number | undefined> {
    const processHandle = slot.process;
    if (!processHandle) return undefined;
    slot.downOnPurpose = true;
    const logFile = path.join(this.options.logDir, `${slot.name}.log`);
    appendFileSync(logFile, `---- ${new Date().toISOString()} SIGKILL by the fault suite\n`);
    await processHandle.kill();
    return processHandle.child.pid;
  }

  /** Graceful stop of everything: gateways first (they drain), then the services behind them. */
  async stop(): Promise<void> {
    for (const slot of this.all) slot.downOnPurpose = true;
    await Promise.all(this.gateways.map((g) => g.process?.stop(8000)));
    await Promise.all([this.messaging, this.presence].map((s) => s.process?.stop(8000)));
  }

  /** Last resort (exit handlers, failed starts): SIGKILL whatever of ours still runs. */
  killAllNow(): void {
    for (const slot of this.all) {
      slot.downOnPurpose = true;
      const child = slot.process?.child;
      if (child && child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    }
  }

  /** The last lines a service logged at warn level or above (pino levels 40+), for failure reports. */
  warnings(slot: ServiceSlot, limit = 8): string[] {
    const lines = slot.process?.output ?? [];
    const picked: string[] = [];
    for (const line of lines) {
      try {
        const entry = JSON.parse(line) as { level?: number; msg?: string; err?: { message?: string } };
        if ((entry.level ?? 0) >= 40) picked.push(`${entry.msg ?? ''}${entry.err?.message ? `: ${entry.err.message}` : ''}`);
      } catch {
        if (/error|warn/i.test(line)) picked.push(line);
      }
    }
    return picked.slice(-limit);
  }
}
