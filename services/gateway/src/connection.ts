import type WebSocket from 'ws';
import type { eventsV1, framesV1 } from '@switchboard/proto';
import type { Identity } from './auth';
import { encodeServerFrame, type Encoding } from './codec';
import { TimerWheel } from './timer-wheel';

/** Token expiries of every connection of this process, on one timer (checked each second). */
const tokenExpiries = new TimerWheel<Connection>(1000);
import type { ConnectionCounters } from './limits';
import type { SendBuffer } from './send-buffer';

/** Close codes of the protocol (docs/protocol.md). */
export const CLOSE = {
  normal: 1000,
  goingAway: 1001,
  invalidPayload: 1007,
  policy: 1008,
  tooLarge: 1009,
  internal: 1011,
  serviceRestart: 1012,
  tokenExpired: 4001,
  revoked: 4003,
  rateLimited: 4008,
  tenantConnections: 4029,
} as const;

/** One authenticated WebSocket and what the gateway knows about it. */
export class Connection {
  /** Answered the last ping (or sent anything) since the previous heartbeat tick. */
  alive = true;
  /** Highest sequence delivered per conversation, to drop duplicates and detect gaps (made at the first delivery: most idle connections never get one). */
  delivered: Map<string, number> | undefined;
  /** Deliveries per conversation run one after another, so gap fills keep order (made when first needed). */
  deliveryChains: Map<string, Promise<void>> | undefined;
  readonly conversations = new Set<string>();
  /** Receipt updates waiting for the coalescing window, latest per (conversation, user). */
  pendingReceipts: Map<string, eventsV1.ReceiptUpdated> | undefined;
  /** Bounds the pushes queued for a slow reader (send-buffer.ts). */
  sendBuffer: SendBuffer | undefined;
  /** Over the send buffer's high-water mark: pushes are dropped until it drains, then `resync` is sent. */
  lagging = false;
  droppedPushes = 0;
  /** Counted since the last limits tick (limits.ts), which folds and zeroes them in place. */
  readonly counters: ConnectionCounters = { frames: 0, messages: 0, bytesIn: 0, bytesOut: 0 };
  /**
   * The connections that counted something since the last limits tick (set at
   * accept): the tick folds only those, not every idle connection each second.
   */
  counted: Set<Connection> | undefined;

  constructor(
    readonly id: string,
    readonly socket: WebSocket,
    readonly identity: Identity,
    readonly encoding: Encoding,
  ) {}

  get tenantId(): string {
    return this.identity.tenantId;
  }

  get userId(): string {
    return this.identity.userId;
  }

  /** What a backend call on this connection's behalf carries: its tenant, user, device and roles. */
  callOptions(deadlineMs: number) {
    const { tenantId, userId, deviceId, roles } = this.identity;
    return { context: { tenantId, userId, deviceId, internal: false }, roles, deadlineMs };
  }

  get open(): boolean {
    return this.socket.readyState === this.socket.OPEN;
  }

  send(frame: framesV1.ServerFrame): void {
    this.sendEncoded(encodeServerFrame(frame, this.encoding));
  }

  /** Pushes waiting for the coalescing flush: the frame, and its encoding when shared with other connections. */
  pendingPushes: { frame: framesV1.ServerFrame; encoded?: string | Buffer }[] = [];

  /** Queues a push; the Coalescer sends what queued up within its window as one message. */
  push(frame: framesV1.ServerFrame, encoded?: string | Buffer): void {
    if (this.sendBuffer && !this.sendBuffer.admit(this, frame)) return;
    this.pendingPushes.push(encoded === undefined ? { frame } : { frame, encoded });
    this.coalescer?.mark(this);
  }

  /** Sends the queued pushes: one alone as it is, several as one `batch` push. */
  flushPushes(): void {
    const pending = this.pendingPushes;
    if (pending.length === 0) return;
    this.pendingPushes = [];
    if (pending.length === 1) {
      const [only] = pending;
      this.sendEncoded(only!.encoded ?? encodeServerFrame(only!.frame, this.encoding));
      return;
    }
    this.send({ requestId: '', kind: { $case: 'batch', value: { frames: pending.map((p) => p.frame) } } });
  }

  coalescer: { mark(connection: Connection): void } | undefined;

  /** Recently pushed notification ids (bounded), so a re-published notification is not shown twice. */
  private recentNotifications: Set<string> | undefined;

  /** True the first time an id is seen on this connection (among the last 256). */
  firstSight(notificationId: string): boolean {
    // Made on the first notification: most connections never get one.
    this.recentNotifications ??= new Set();
    if (this.recentNotifications.has(notificationId)) return false;
    this.recentNotifications.add(notificationId);
    if (this.recentNotifications.size > 256) this.recentNotifications.delete(this.recentNotifications.values().next().value!);
    return true;
  }

  /** Sends a frame already encoded for this connection's encoding (fan-out encodes once per encoding). */
  sendEncoded(data: string | Buffer): void {
    if (!this.open) return;
    this.counters.bytesOut += typeof data === 'string' ? Buffer.byteLength(data) : data.length;
    this.counted?.add(this);
    this.socket.send(data);
  }

  close(code: number, reason: string): void {
    this.clearExpiry();
    if (this.socket.readyState === this.socket.CLOSED || this.socket.readyState === this.socket.CLOSING) return;
    this.socket.close(code, reason);
  }

  /**
   * When the token expires the client is told (`token_expiring`) and has
   * `graceMs` to send `refresh_token`; then `onExpired` closes it. A refresh
   * calls this again with the new expiry. One timer wheel for all connections.
   */
  scheduleExpiry(graceMs: number, onExpired: () => void): void {
    const expiresAt = this.identity.expiresAt;
    tokenExpiries.schedule(this, expiresAt.getTime(), () => {
      this.send({ requestId: '', kind: { $case: 'tokenExpiring', value: { expiredAt: expiresAt, closesInMs: graceMs } } });
      tokenExpiries.schedule(this, Date.now() + graceMs, onExpired);
    });
  }

  clearExpiry(): void {
    tokenExpiries.cancel(this);
  }
}
