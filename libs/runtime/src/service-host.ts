import { configureGrpcTls, configureInternalCallers } from '@switchboard/grpc';
import { createLogger, type Logger } from '@switchboard/logging';
import { startTelemetry, type Telemetry } from '@switchboard/telemetry';
import { Lifecycle } from './lifecycle';
import { OpsServer, type ReadinessCheck } from './ops-server';
import { startupStep } from './startup';

export interface HostSettings {
  HOST: string;
  OPS_PORT: number;
  LOG_LEVEL: string;
  OTEL_EXPORTER_OTLP_ENDPOINT?: string | undefined;
  SHUTDOWN_DEADLINE_MS: number;
  GRPC_TLS_CA_FILE?: string | undefined;
  GRPC_TLS_CERT_FILE?: string | undefined;
  GRPC_TLS_KEY_FILE?: string | undefined;
  GRPC_INTERNAL_TOKEN?: string | undefined;
  GRPC_INTERNAL_IDENTITIES?: readonly string[] | undefined;
}

export interface Dependency<T> {
  /** Runs at shutdown, after the servers stopped. */
  close(client: T): Promise<unknown> | unknown;
  /** Throws while the dependency does not answer; /readyz reports it by name. Absent: not a readiness condition. */
  ready?(client: T): Promise<unknown> | unknown;
}

/** A server the host starts last and stops first. */
export interface Servable {
  name: string;
  /** Starts serving; returns what to log (ports, URLs). */
  start(): Promise<Record<string, unknown>>;
  stop(): Promise<unknown> | unknown;
  /** Called once everything is up (e.g. gRPC health SERVING). */
  ready?(): void;
}

/**
 * The parts of a service's start that are the same everywhere, so each
 * main.ts reads as its own sequence: config → `ServiceHost.start` (logs,
 * signals, telemetry) → `dependency(...)` per client (named in the error when
 * unreachable at start, closed at shutdown, checked by /readyz) → background
 * runners → `serve(...)` (servers and the ops endpoint).
 */
export class ServiceHost {
  readonly checks: ReadinessCheck[] = [];
  private ops: OpsServer | undefined;

  private constructor(
    readonly name: string,
    readonly settings: HostSettings,
    readonly logger: Logger,
    readonly lifecycle: Lifecycle,
    readonly telemetry: Telemetry,
  ) {}

  static start(name: string, settings: HostSettings, options: { logFields?: Record<string, unknown>; telemetryAttributes?: Record<string, string> } = {}): ServiceHost {
    const logger = createLogger({ service: name, level: settings.LOG_LEVEL, ...(options.logFields ? { base: options.logFields } : {}) });
    const lifecycle = new Lifecycle({ logger, shutdownDeadlineMs: settings.SHUTDOWN_DEADLINE_MS });
    lifecycle.handleSignals();
    // Mutual TLS for every gRPC server and client of the process, when configured.
    configureGrpcTls(settings);
    // Who may call this process as internal, and the proof its own internal calls carry.
    configureInternalCallers(settings);
    const telemetry = startTelemetry({
      serviceName: name,
      otlpEndpoint: settings.OTEL_EXPORTER_OTLP_ENDPOINT,
      ...(options.telemetryAttributes ? { attributes: options.telemetryAttributes } : {}),
    });
    lifecycle.onShutdown('telemetry', () => telemetry.shutdown());
    return new ServiceHost(name, settings, logger, lifecycle, telemetry);
  }

  /** Opens a client of a dependency; an unreachable one stops the start with "cannot reach <name>". */
  async dependency<T>(name: string, open: () => Promise<T>, handling: Dependency<T>): Promise<T> {
    const client = await startupStep(this.logger, name, open);
    this.lifecycle.onShutdown(name, () => handling.close(client));
    const ready = handling.ready;
    if (ready) this.checks.push({ name: name.toLowerCase(), check: () => ready(client) });
    return client;
  }

  /** Registers a background runner: started now, stopped before the dependencies close. */
  runner(name: string, start: () => void, stop: () => Promise<unknown> | unknown): void {
    start();
    this.lifecycle.onShutdown(name, stop);
  }

  /**
   * Starts the ops endpoint and then the servers, in order; on SIGTERM the
   * servers stop first (the last one given stops first) while /readyz already
   * answers 503.
   */
  async serve(...servers: Servable[]): Promise<void> {
    const ops = new OpsServer({ host: this.settings.HOST, port: this.settings.OPS_PORT, logger: this.logger, metricsHandler: this.telemetry.metricsHandler, checks: this.checks });
    this.ops = ops;
    const opsPort = await ops.start();
    this.lifecycle.onShutdown('ops', () => ops.stop());
    const listening: Record<string, unknown> = { opsPort };
    for (const server of servers) {
      Object.assign(listening, await server.start());
      this.lifecycle.onShutdown(server.name, () => server.stop());
    }
    // Runs first on SIGTERM: stop looking ready before anything stops.
    this.lifecycle.onShutdown('readiness', () => ops.setDraining());
    for (const server of servers) server.ready?.();
    ops.setServing();
    this.logger.info(listening, `${this.name} is serving`);
  }

  /** Marks the service not-ready (draining) ahead of the shutdown sequence. */
  setDraining(): void {
    this.ops?.setDraining();
  }
}
