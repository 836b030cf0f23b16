import type { Logger } from '@switchboard/logging';

/** A dependency that could not be reached while the service started. */
export class StartupError extends Error {
  constructor(
    readonly dependency: string,
    cause: unknown,
  ) {
    super(`cannot reach ${dependency}: ${(cause as Error)?.message ?? String(cause)}`, { cause });
    this.name = 'StartupError';
  }
}

/**
 * One step of a service's start sequence: logs it, and turns a failure into a
 * StartupError that names the dependency, so the operator reads "cannot reach
 * PostgreSQL: connect ECONNREFUSED 127.0.0.1:54329" and the process exits
 * non-zero instead of serving half-started.
 */
export async function startupStep<T>(logger: Logger, dependency: string, step: () => Promise<T>): Promise<T> {
  const started = Date.now();
  try {
    const result = await step();
    logger.info({ dependency, elapsedMs: Date.now() - started }, `connected to ${dependency}`);
    return result;
  } catch (err) {
    throw new StartupError(dependency, err);
  }
}

/** Runs a service's main function; a failed start is logged on stderr and exits with status 1. */
export function runMain(main: () => Promise<unknown>, logger?: Logger): void {
  main().catch((err: unknown) => {
    const message = err instanceof Error ? err.message : String(err);
    if (logger) logger.fatal({ err }, `failed to start: ${message}`);
    process.stderr.write(`failed to start: ${message}\n`);
    logger?.flush?.();
    process.exitCode = 1;
    // Clients opened before the failure must not keep a half-started process alive.
    setTimeout(() => process.exit(1), 100).unref();
  });
}
