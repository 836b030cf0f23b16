import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Logger } from '@switchboard/logging';

/** A dependency the service needs to serve: it throws (or rejects) when that dependency does not answer. */
export interface ReadinessCheck {
  name: string;
  check(): Promise<unknown> | unknown;
}

export interface OpsServerOptions {
  host: string;
  port: number;
  logger: Logger;
  checks: ReadinessCheck[];
  metricsHandler?: (req: IncomingMessage, res: ServerResponse) => void;
  /** How long one readiness check may take before it counts as failed. */
  checkTimeoutMs?: number;
}

/**
 * The operations endpoint every service has, for Kubernetes probes and
 * Prometheus: `/healthz` (the process is alive), `/readyz` (every dependency
 * answers and the service is not draining), `/metrics`.
 */
export class OpsServer {
  private server: Server | undefined;
  private draining = false;
  /** False until every server of the process listens: a probe must not send work to a port nobody serves yet. */
  private serving = false;

  constructor(private readonly options: OpsServerOptions) {}

  async start(): Promise<number> {
    const server = createServer((req, res) => void this.handle(req, res));
    this.server = server;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.options.port, this.options.host, () => {
        server.off('error', reject);
        resolve();
      });
    });
    return (server.address() as AddressInfo).port;
  }

  /** From now on /readyz answers 503 so load balancers stop sending new work. */
  setDraining(): void {
    this.draining = true;
  }

  /** Called once every server listens; until then /readyz answers 503. */
  setServing(): void {
    this.serving = true;
  }

  async readiness(): Promise<{ ready: boolean; checks: Record<string, string> }> {
    const timeoutMs = this.options.checkTimeoutMs ?? 2000;
    const results = await Promise.all(
      this.options.checks.map(async ({ name, check }) => {
        let timer: NodeJS.Timeout | undefined;
        try {
          await Promise.race([
            Promise.resolve().then(check),
            new Promise((_, reject) => {
              timer = setTimeout(() => reject(new Error(`no answer within ${timeoutMs} ms`)), timeoutMs);
            }),
          ]);
          return [name, 'ok'] as const;
        } catch (err) {
          return [name, (err as Error).message || String(err)] as const;
        } finally {
          clearTimeout(timer);
        }
      }),
    );
    const checks = Object.fromEntries(results);
    if (!this.serving) checks.serving = 'servers are still starting';
    if (this.draining) checks.draining = 'service is shutting down';
    return { ready: Object.values(checks).every((status) => status === 'ok'), checks };
  }

  async stop(): Promise<void> {
    const server = this.server;
    if (!server) return;
    await new Promise<void>((resolve) => server.close(() => resolve()));
    server.closeAllConnections();
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = (req.url ?? '/').split('?')[0];
    try {
      if (url === '/healthz') return json(res, 200, { status: 'ok' });
      if (url === '/readyz') {
        const { ready, checks } = await this.readiness();
        if (!ready) this.options.logger.warn({ checks }, 'not ready');
        return json(res, ready ? 200 : 503, { status: ready ? 'ready' : 'not ready', checks });
      }
      if (url === '/metrics' && this.options.metricsHandler) return this.options.metricsHandler(req, res);
      json(res, 404, { error: `no such endpoint: ${url}` });
    } catch (err) {
      this.options.logger.error({ err }, 'ops endpoint failed');
      json(res, 500, { error: 'internal error' });
    }
  }
}

function json(res: ServerResponse, status: number, body: unknown): void {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify(body));
}
