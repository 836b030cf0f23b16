import type { Logger } from '@switchboard/logging';

export interface LifecycleOptions {
  logger: Logger;
  /** Hard deadline for the whole shutdown; past it the process exits non-zero. */
  shutdownDeadlineMs: number;
  /** Exits the process when shutdown finishes (off in tests). */
  exitProcess?: boolean;
}

type Hook = { name: string; run: () => Promise<unknown> | unknown };

/**
 * Start and stop in one place. Each part registers how to stop itself as it
 * starts; SIGTERM/SIGINT runs the hooks in reverse order (servers stop taking
 * work before the clients they use are closed) under a hard deadline.
 */
export class Lifecycle {
  private readonly hooks: Hook[] = [];
  private stopping: Promise<void> | undefined;

  constructor(private readonly options: LifecycleOptions) {}

  /** Registers how to stop a part that just started. */
  onShutdown(name: string, run: Hook['run']): void {
    this.hooks.push({ name, run });
  }

  /** Stops on SIGTERM and SIGINT; a second signal exits at once. */
  handleSignals(): void {
    const onSignal = (signal: NodeJS.Signals) => {
      if (this.stopping) {
        this.options.logger.warn({ signal }, 'second signal: exiting now');
        process.exit(1);
      }
      void this.shutdown(signal);
    };
    process.on('SIGTERM', onSignal);
    process.on('SIGINT', onSignal);
  }

  get isStopping(): boolean {
    return this.stopping !== undefined;
  }

  shutdown(reason: string): Promise<void> {
    this.stopping ??= this.runHooks(reason);
    return this.stopping;
  }

  private async runHooks(reason: string): Promise<void> {
    const { logger, shutdownDeadlineMs } = this.options;
    const started = Date.now();
    logger.info({ reason, deadlineMs: shutdownDeadlineMs }, 'shutting down');
    // Named in the deadline's error: the part that did not stop is what the operator needs to know.
    let current = '';
    let currentSince = started;
    const deadline = setTimeout(() => {
      logger.error({ deadlineMs: shutdownDeadlineMs, stuck: current, stuckForMs: Date.now() - currentSince }, `shutdown deadline passed while stopping ${current}: exiting`);
      logger.flush?.();
      if (this.options.exitProcess !== false) process.exit(1);
    }, shutdownDeadlineMs);
    deadline.unref();
    let failed = false;
    for (const hook of [...this.hooks].reverse()) {
      current = hook.name;
      currentSince = Date.now();
      try {
        await hook.run();
        logger.debug({ part: hook.name, elapsedMs: Date.now() - currentSince }, 'stopped');
      } catch (err) {
        failed = true;
        logger.error({ err, part: hook.name }, 'failed to stop cleanly');
      }
    }
    clearTimeout(deadline);
    logger.info({ elapsedMs: Date.now() - started }, 'shut down');
    if (this.options.exitProcess !== false) {
      // Let the async logger flush before exiting; the exit code holds even if the loop empties first.
      logger.flush?.();
      process.exitCode = failed ? 1 : 0;
      setTimeout(() => process.exit(failed ? 1 : 0), 50).unref();
    }
  }
}
