import { ErrorCode, SwitchboardError } from '@switchboard/errors';
import type { RequestOptions } from '@switchboard/client';
import { sleep, type Device } from './device';
import type { AckedMessage, Ledger } from './ledger';

/** Errors a retry cannot fix: the suite records them and moves on. Everything else is retried with the same client id. */
const FINAL_CODES = new Set<ErrorCode>([
  ErrorCode.ERROR_CODE_INVALID_ARGUMENT,
  ErrorCode.ERROR_CODE_UNAUTHENTICATED,
  ErrorCode.ERROR_CODE_PERMISSION_DENIED,
  ErrorCode.ERROR_CODE_NOT_FOUND,
  ErrorCode.ERROR_CODE_ALREADY_EXISTS,
  ErrorCode.ERROR_CODE_CONFLICT,
  ErrorCode.ERROR_CODE_FRAME_TOO_LARGE,
  ErrorCode.ERROR_CODE_UNSUPPORTED,
  ErrorCode.ERROR_CODE_FAILED_PRECONDITION,
]);

function codeOf(err: unknown): { name: string; final: boolean } {
  if (err instanceof SwitchboardError) return { name: (ErrorCode[err.code] ?? String(err.code)).replace(/^ERROR_CODE_/, ''), final: FINAL_CODES.has(err.code) };
  return { name: (err as Error)?.name ?? 'Error', final: false };
}

export type SendTarget = { conversationId: string } | { recipientUserId: string };

/**
 * Every device sends at its share of the total rate, one message at a time,
 * to a random conversation of its user. A send that gets no ack (a dropped
 * connection, a killed service, a timeout) is retried with the same
 * client_message_id until it is acknowledged, so nothing acknowledged is
 * lost and no retry stores a second copy; the server's original ack comes back.
 */
export class Traffic {
  private running = false;
  private paused = false;
  private loops: Promise<void>[] = [];
  private giveUpAt = Number.POSITIVE_INFINITY;
  private counter = 0;
  private inFlightCount = 0;

  constructor(
    private readonly devices: Device[],
    private readonly ledger: Ledger,
    private readonly conversationsOf: (userId: string) => string[],
    private readonly ratePerSecond: number,
    private readonly random: () => number,
  ) {}

  start(phase: string): void {
    this.running = true;
    this.paused = false;
    this.giveUpAt = Number.POSITIVE_INFINITY;
    this.loops = this.devices.map((device) => this.loop(device, phase));
  }

  /** Sends started and not yet acknowledged (or given up). */
  get inFlight(): number {
    return this.inFlightCount;
  }

  /** No new sends until resume() (what is in flight carries on). */
  pause(): void {
    this.paused = true;
  }

  resume(): void {
    this.paused = false;
  }

  /** Stops new sends; what is in flight keeps retrying until acked or until `drainMs` from now. */
  async stop(drainMs: number): Promise<void> {
    this.running = false;
    this.giveUpAt = Date.now() + drainMs;
    await Promise.all(this.loops);
    this.loops = [];
  }

  private async loop(device: Device, phase: string): Promise<void> {
    const intervalMs = (1000 * this.devices.length) / Math.max(0.1, this.ratePerSecond);
    await sleep(this.random() * intervalMs);
    while (this.running) {
      while (this.paused && this.running) await sleep(50);
      if (!this.running) return;
      const conversations = this.conversationsOf(device.spec.userId);
      if (conversations.length === 0) return;
      const conversationId = conversations[Math.floor(this.random() * conversations.length)]!;
      const started = Date.now();
      await this.sendUntilAcked(device, phase, { conversationId }, this.nextClientId(device, phase));
      const wait = intervalMs * (0.5 + this.random()) - (Date.now() - started);
      if (wait > 0 && this.running) await sleep(wait);
    }
  }

  nextClientId(device: Device, phase: string): string {
    this.counter += 1;
    return `${device.spec.userId}-${device.spec.deviceId}-${phase}-${this.counter}`.slice(-128);
  }

  /** One message, retried with the same client id until acked, refused for good, or past the give-up deadline. */
  async sendUntilAcked(device: Device, phase: string, target: SendTarget, clientMessageId: string, deadline = Number.POSITIVE_INFINITY): Promise<AckedMessage | undefined> {
    this.inFlightCount += 1;
    try {
      return await this.attemptUntilAcked(device, phase, target, clientMessageId, deadline);
    } finally {
      this.inFlightCount -= 1;
    }
  }

  private async attemptUntilAcked(device: Device, phase: string, target: SendTarget, clientMessageId: string, deadline: number): Promise<AckedMessage | undefined> {
    const stats = this.ledger.send;
    const text = `fault suite ${phase} ${clientMessageId}`;
    let attempts = 0;
    for (;;) {
      if (Date.now() > Math.min(this.giveUpAt, deadline)) {
        stats.gaveUp += 1;
        if (stats.notes.length < 5) stats.notes.push(`${device.name}: ${clientMessageId} still unacknowledged after ${attempts} attempts`);
        return undefined;
      }
      if (!device.connected) {
        await device.waitConnected(500);
        continue;
      }
      attempts += 1;
      stats.attempts += 1;
      try {
        // One bounded attempt per call (a client library with its own outbox is told the same): the suite does the retrying.
        const options = { timeoutMs: 5000, deadlineMs: 5000, maxAttempts: 1 } as RequestOptions;
        const ack = await device.client.sendMessage({ ...target, text, clientMessageId }, options);
        if (attempts > 1) stats.retried += 1;
        if (ack.duplicate) stats.duplicateAcks += 1;
        return this.ledger.acked(phase, device.name, clientMessageId, ack, attempts);
      } catch (err) {
        const { name, final } = codeOf(err);
        stats.errors.set(name, (stats.errors.get(name) ?? 0) + 1);
        if (final) {
          stats.refused += 1;
          if (stats.notes.length < 5) stats.notes.push(`${device.name}: ${clientMessageId} refused: ${name}: ${(err as Error).message}`);
          return undefined;
        }
        await sleep(Math.min(2000, 100 * 2 ** Math.min(attempts, 5)) * (0.5 + this.random()));
      }
    }
  }
}
