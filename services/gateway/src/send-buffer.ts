import type { framesV1 } from '@switchboard/proto';
import type { Counter } from '@switchboard/telemetry';
import type { Connection } from './connection';

/** Pushes worth nothing a moment later: shed first when a client falls behind. */
const EPHEMERAL_PUSHES = new Set<string>(['typing', 'presence']);
/** How often a lagging connection's buffer is looked at until it drained. */
const DRAIN_CHECK_MS = 100;

/**
 * Bounds what the gateway holds for a client that reads slower than it is
 * fed (docs/security.md, "Slow and abusive clients"). Above `shedBytes`
 * waiting in the socket, typing and presence pushes are dropped. Above
 * `maxBytes` every push is dropped, the client's own frames are left unread
 * (its requests cannot pile up replies), and once the buffer is back under
 * `shedBytes` the client gets one `resync` push telling it to catch up with
 * `sync` by sequence. Replies are never dropped.
 */
export class SendBuffer {
  constructor(
    private readonly shedBytes: number,
    private readonly maxBytes: number,
    /** gateway_pushes_dropped_total{reason: shed | behind}. */
    private readonly dropped: Counter,
  ) {}

  /** True when the push may be queued; false when it is dropped. */
  admit(connection: Connection, frame: framesV1.ServerFrame): boolean {
    if (connection.lagging) return this.drop(connection, 'behind');
    const buffered = connection.socket.bufferedAmount;
    if (buffered >= this.maxBytes) {
      this.lag(connection);
      return this.drop(connection, 'behind');
    }
    if (buffered >= this.shedBytes && EPHEMERAL_PUSHES.has(frame.kind?.$case ?? '')) return this.drop(connection, 'shed');
    return true;
  }

  private drop(connection: Connection, reason: 'shed' | 'behind'): false {
    connection.droppedPushes += 1;
    this.dropped.add(1, { reason });
    return false;
  }

  private lag(connection: Connection): void {
    connection.lagging = true;
    connection.socket.pause();
    const check = setInterval(() => {
      if (!connection.open) {
        clearInterval(check);
        return;
      }
      if (connection.socket.bufferedAmount >= this.shedBytes) return;
      clearInterval(check);
      const dropped = connection.droppedPushes;
      connection.lagging = false;
      connection.droppedPushes = 0;
      connection.send({ requestId: '', kind: { $case: 'resync', value: { reason: 'send buffer full: pushes were dropped; sync from your last seq', droppedPushes: dropped } } });
      connection.socket.resume();
    }, DRAIN_CHECK_MS);
    check.unref();
  }
}
