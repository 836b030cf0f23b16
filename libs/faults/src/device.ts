import { SwitchboardClient, mintDevToken, wsTransport, type Transport } from '@switchboard/client';
import { messagingV1, type framesV1 } from '@switchboard/proto';
import type { Balancer } from './balancer';

/**
 * One simulated device: a real SwitchboardClient (automatic reconnect) and
 * the suite's own record of what it saw. Two views are kept apart:
 *
 * - the wire: every `message` push the gateway wrote to the socket (the
 *   client's `frame` events), per connection;
 * - the app: what the client library handed to the application (its
 *   `message` events), plus what the suite recovered with get_history after
 *   a fault (the documented recovery path), de-duplicated by sequence.
 */

export type Source = 'live' | 'recovered';

export interface Held {
  messageId: string;
  source: Source;
  /** The phase during which the device got it. */
  phase: string;
}

export interface ConversationView {
  /** What the app holds, by seq (de-duplicated). */
  held: Map<number, Held>;
  /** Highest seq the app holds. */
  maxHeld: number;
  /** Every seq pushed on the wire, over all connections. */
  wire: Set<number>;
  /** Highest seq pushed on the current connection (undefined: none yet on this connection). */
  connLast: number | undefined;
}

export interface DeviceCounters {
  /** Message pushes of a seq the device had already been pushed (any connection). Information. */
  rawDuplicates: number;
  /** Within one connection: a push at or below a seq already pushed on it (the gateway promises to drop these). */
  connOutOfOrder: number;
  /** Within one connection: a push that skipped sequences (the gateway promises to fill gaps first). */
  connGaps: number;
  /** The library handed the app a seq it had already handed. */
  duplicated: number;
  /** The library handed the app a seq lower than one it had already handed (not a duplicate). */
  reordered: number;
  /** The library handed the app a seq with a hole before it (the hole is recovered later). Information. */
  appGaps: number;
  /** The library handed a seq after the suite had already recovered it. Information. */
  lateAfterRecovery: number;
  /** The same seq arrived with two different message ids. */
  conflicting: number;
  disconnects: number;
  welcomes: number;
  samples: string[];
}

export function emptyCounters(): DeviceCounters {
  return {
    rawDuplicates: 0,
    connOutOfOrder: 0,
    connGaps: 0,
    duplicated: 0,
    reordered: 0,
    appGaps: 0,
    lateAfterRecovery: 0,
    conflicting: 0,
    disconnects: 0,
    welcomes: 0,
    samples: [],
  };
}

export interface DeviceSpec {
  index: number;
  tenantId: string;
  userId: string;
  deviceId: string;
  /** The gateway the balancer prefers for this device. */
  home: string;
  secret: string;
  /** Subprotocol: JSON text frames or binary protobuf. */
  encoding: 'json' | 'proto';
}

const MAX_SAMPLES = 6;

export class Device {
  readonly client: SwitchboardClient;
  readonly views = new Map<string, ConversationView>();
  counters: DeviceCounters = emptyCounters();
  phase = 'setup';
  /** Gateway id of the current connection (from the Welcome). */
  gateway: string | undefined;
  private transport: Transport | undefined;
  private stopped = false;

  constructor(
    readonly spec: DeviceSpec,
    balancer: Balancer,
  ) {
    const base = wsTransport();
    this.client = new SwitchboardClient({
      // The transport below decides the real address on every (re)connect: the balancer's pick.
      url: 'ws://127.0.0.1/ws',
      encoding: spec.encoding,
      token: () => mintDevToken({ secret: spec.secret, tenantId: spec.tenantId, userId: spec.userId, deviceId: spec.deviceId, ttlSeconds: 3600 }),
      transport: (options, handlers) => {
        const target = balancer.pick(spec.home);
        const transport = base({ ...options, url: target.url }, handlers);
        this.transport = transport;
        return transport;
      },
      reconnect: { baseDelayMs: 250, maxDelayMs: 3000, stableAfterMs: 5000 },
      requestTimeoutMs: 5000,
      connectTimeoutMs: 5000,
    });
    this.client.on('welcome', (welcome) => {
      this.gateway = welcome.gatewayId;
      this.counters.welcomes += 1;
      for (const view of this.views.values()) view.connLast = undefined;
    });
    this.client.on('disconnected', () => {
      this.counters.disconnects += 1;
    });
    this.client.on('frame', (frame) => this.onWire(frame));
    this.client.on('message', (message) => this.onApp(message));
    // Errors about no request (undecodable frames) would otherwise be logged by nobody.
    this.client.on('error', (err) => this.sample(`client error: ${err.message}`));
    this.client.on('closed', (event) => {
      if (this.stopped) return;
      this.sample(`client stopped: ${event.error?.message ?? 'closed'}; connecting again`);
      void this.connect(60_000).catch(() => undefined);
    });
  }

  get name(): string {
    return `${this.spec.userId}/${this.spec.deviceId}`;
  }

  get connected(): boolean {
    return this.client.connected;
  }

  view(conversationId: string): ConversationView {
    let view = this.views.get(conversationId);
    if (!view) {
      view = { held: new Map(), maxHeld: 0, wire: new Set(), connLast: undefined };
      this.views.set(conversationId, view);
    }
    return view;
  }

  /** Starts a new phase's counters (the views carry over). */
  beginPhase(phase: string): DeviceCounters {
    const previous = this.counters;
    this.phase = phase;
    this.counters = emptyCounters();
    return previous;
  }

  /** First connection, retried until the deadline (connect() itself makes one attempt). */
  async connect(timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    let lastError: unknown;
    while (Date.now() < deadline && !this.stopped) {
      try {
        await this.client.connect();
        return;
      } catch (err) {
        lastError = err;
        await sleep(200 + Math.random() * 300);
      }
    }
    if (!this.stopped) throw new Error(`${this.name} could not connect: ${(lastError as Error | undefined)?.message ?? 'timed out'}`);
  }

  async waitConnected(timeoutMs: number): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    while (!this.client.connected) {
      if (Date.now() > deadline || this.stopped) return false;
      await sleep(25);
    }
    return true;
  }

  /** Network churn: the socket is dropped at once, without a closing handshake; the client reconnects by itself. */
  dropConnection(): boolean {
    if (!this.client.connected || !this.transport) return false;
    this.transport.terminate();
    return true;
  }

  private onWire(frame: framesV1.ServerFrame): void {
    // A coalesced batch (the current library emits its pushes one by one instead; an older one emits the batch itself).
    if (frame.kind?.$case === 'batch') {
      for (const inner of frame.kind.value.frames) this.onWire(inner);
      return;
    }
    if (frame.kind?.$case !== 'message' || !frame.kind.value.message) return;
    const { conversationId, seq } = frame.kind.value.message;
    const view = this.view(conversationId);
    if (view.wire.has(seq)) this.counters.rawDuplicates += 1;
    view.wire.add(seq);
    if (view.connLast !== undefined) {
      if (seq <= view.connLast) {
        this.counters.connOutOfOrder += 1;
        this.sample(`one connection was pushed ${conversationId}#${seq} after #${view.connLast} (via ${this.gateway})`);
      } else if (seq > view.connLast + 1) {
        this.counters.connGaps += 1;
        this.sample(`one connection was pushed ${conversationId}#${seq} right after #${view.connLast}: a gap the gateway did not fill (via ${this.gateway})`);
      }
    }
    view.connLast = view.connLast === undefined ? seq : Math.max(view.connLast, seq);
  }

  private onApp(message: messagingV1.Message): void {
    const { conversationId, seq, messageId } = message;
    const view = this.view(conversationId);
    const existing = view.held.get(seq);
    if (existing) {
      if (existing.messageId !== messageId) {
        this.counters.conflicting += 1;
        this.sample(`${conversationId}#${seq} arrived as ${messageId}, held as ${existing.messageId}`);
      }
      if (existing.source === 'recovered') this.counters.lateAfterRecovery += 1;
      else {
        this.counters.duplicated += 1;
        this.sample(`the library handed ${conversationId}#${seq} twice`);
      }
      return;
    }
    if (seq < view.maxHeld) {
      this.counters.reordered += 1;
      this.sample(`the library handed ${conversationId}#${seq} after #${view.maxHeld}`);
    } else if (seq > view.maxHeld + 1) {
      this.counters.appGaps += 1;
    }
    view.held.set(seq, { messageId, source: 'live', phase: this.phase });
    view.maxHeld = Math.max(view.maxHeld, seq);
  }

  /**
   * The documented recovery path: what the device misses in 1..upToSeq is
   * fetched from history (PostgreSQL, through a gateway) by sequence and
   * de-duplicated. Returns how many it recovered; throws when it cannot ask.
   */
  async recover(conversationId: string, upToSeq: number, timeoutMs = 30_000): Promise<number> {
    const view = this.view(conversationId);
    const deadline = Date.now() + timeoutMs;
    let recovered = 0;
    for (;;) {
      let first = 0;
      for (let seq = 1; seq <= upToSeq; seq += 1) {
        if (!view.held.has(seq)) {
          first = seq;
          break;
        }
      }
      if (first === 0) return recovered;
      if (Date.now() > deadline) throw new Error(`${this.name}: recovery of ${conversationId} did not finish in time`);
      if (!(await this.waitConnected(Math.max(0, deadline - Date.now())))) continue;
      let page: framesV1.HistoryPage;
      try {
        page = await this.client.getHistory({ conversationId, fromSeq: first - 1, direction: messagingV1.Direction.DIRECTION_FORWARD, limit: 200 });
      } catch {
        await sleep(250);
        continue;
      }
      let progressed = false;
      for (const message of page.messages) {
        const existing = view.held.get(message.seq);
        if (existing) {
          if (existing.messageId !== message.messageId) {
            this.counters.conflicting += 1;
            this.sample(`history has ${conversationId}#${message.seq} as ${message.messageId}, the device held ${existing.messageId}`);
          }
          continue;
        }
        view.held.set(message.seq, { messageId: message.messageId, source: 'recovered', phase: this.phase });
        view.maxHeld = Math.max(view.maxHeld, message.seq);
        recovered += 1;
        progressed = true;
      }
      // History has nothing (more) at or after the hole: what is still missing does not exist on the server.
      if (!progressed) return recovered;
    }
  }

  sample(note: string): void {
    if (this.counters.samples.length < MAX_SAMPLES) this.counters.samples.push(`${this.name}: ${note}`);
  }

  async close(): Promise<void> {
    this.stopped = true;
    await this.client.close().catch(() => undefined);
  }
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
