/**
 * Many deadlines, one timer: entries fall into slots of `tickMs` and a single
 * interval (armed only while something is due, unref'd) runs each slot's
 * callbacks once its time has come. Fifteen thousand connections each with a
 * token expiry or a receipt window cost fifteen thousand map entries here
 * instead of fifteen thousand timer objects in libuv's heap. A deadline fires
 * up to one tick late, never early.
 */
export class TimerWheel<K> {
  private readonly slots = new Map<number, Map<K, () => void>>();
  private readonly slotOf = new Map<K, number>();
  private timer: NodeJS.Timeout | undefined;

  constructor(private readonly tickMs: number) {}

  get size(): number {
    return this.slotOf.size;
  }

  /** Runs `fn` at `atMs` (epoch ms, rounded up to the next tick); replaces what `key` had. */
  schedule(key: K, atMs: number, fn: () => void): void {
    this.cancel(key);
    const slot = Math.ceil(atMs / this.tickMs);
    let entries = this.slots.get(slot);
    if (!entries) this.slots.set(slot, (entries = new Map()));
    entries.set(key, fn);
    this.slotOf.set(key, slot);
    if (!this.timer) {
      this.timer = setInterval(() => this.tick(), this.tickMs);
      this.timer.unref();
    }
  }

  cancel(key: K): void {
    const slot = this.slotOf.get(key);
    if (slot === undefined) return;
    this.slotOf.delete(key);
    const entries = this.slots.get(slot);
    entries?.delete(key);
    if (entries?.size === 0) this.slots.delete(slot);
  }

  has(key: K): boolean {
    return this.slotOf.has(key);
  }

  private tick(): void {
    const now = Math.floor(Date.now() / this.tickMs);
    for (const [slot, entries] of this.slots) {
      if (slot > now) continue;
      this.slots.delete(slot);
      for (const [key, fn] of entries) {
        this.slotOf.delete(key);
        fn();
      }
    }
    if (this.slotOf.size === 0) this.stop();
  }

  stop(): void {
    clearInterval(this.timer);
    this.timer = undefined;
  }
}
