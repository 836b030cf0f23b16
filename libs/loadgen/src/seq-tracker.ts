/**
 * Which sequence numbers of one conversation a device has seen: a contiguous
 * watermark plus the few seen above it (live pushes can overtake a sync).
 * Memory stays small however long the run.
 */
export class SeqTracker {
  watermark = 0;
  private readonly above = new Set<number>();
  private started = false;

  /** True the first time `seq` is seen. */
  see(seq: number): boolean {
    // A device starts wherever it joined: the first sequence it sees sets the floor.
    if (!this.started) {
      this.started = true;
      this.watermark = seq - 1;
    }
    if (seq <= this.watermark || this.above.has(seq)) return false;
    this.above.add(seq);
    while (this.above.delete(this.watermark + 1)) this.watermark += 1;
    return true;
  }

  /** The highest sequence with nothing missing below it. */
  get contiguous(): number {
    return this.watermark;
  }
}
