import type { Connection } from './connection';

/**
 * Frame coalescing: pushes queued for a connection within the window leave
 * as one WebSocket message (one syscall, one frame header, one client
 * wake-up). One timer for the whole gateway, armed only while some
 * connection has pushes waiting; a window of 0 flushes at the end of the
 * current event-loop turn.
 */
export class Coalescer {
  private readonly dirty = new Set<Connection>();
  private armed = false;

  constructor(private readonly windowMs: number) {}

  mark(connection: Connection): void {
    this.dirty.add(connection);
    if (this.armed) return;
    this.armed = true;
    if (this.windowMs === 0) setImmediate(() => this.flush());
    else setTimeout(() => this.flush(), this.windowMs);
  }

  flush(): void {
    this.armed = false;
    const connections = [...this.dirty];
    this.dirty.clear();
    for (const connection of connections) connection.flushPushes();
  }
}
