import type { Logger } from '@switchboard/logging';
import type { RoomStore } from './store';

const BATCH = 100;

/**
 * Removes deleted rooms' rows once their retention has passed. Every replica
 * runs one; the purge of a room is one idempotent transaction, so two
 * replicas purging at once only repeat a no-op.
 */
export class Purger {
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<void> | undefined;

  constructor(
    private readonly store: RoomStore,
    private readonly intervalMs: number,
    private readonly logger: Logger,
  ) {}

  start(): void {
    const tick = () => {
      this.running = this.purge().finally(() => {
        this.running = undefined;
        if (this.timer) this.timer = setTimeout(tick, this.intervalMs);
      });
    };
    this.timer = setTimeout(tick, this.intervalMs);
  }

  async stop(): Promise<void> {
    clearTimeout(this.timer);
    this.timer = undefined;
    await this.running;
  }

  private async purge(): Promise<void> {
    try {
      for (;;) {
        const purged = await this.store.purgeDeleted(BATCH);
        if (purged > 0) this.logger.info({ purged }, 'purged deleted rooms past their retention');
        if (purged < BATCH || !this.timer) return;
      }
    } catch (err) {
      this.logger.warn({ err }, 'purge of deleted rooms failed; retrying next interval');
    }
  }
}
