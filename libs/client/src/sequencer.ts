import type { messagingV1 } from '@switchboard/proto';

/** What {@link Sequencer.accept} did with a message. */
export type AcceptOutcome = 'delivered' | 'duplicate' | 'held';

/** A missing range of one conversation: the messages with `afterSeq < seq < beforeSeq`. */
export interface Gap {
  conversationId: string;
  afterSeq: number;
  beforeSeq: number;
}

export interface SequencerCounters {
  /** Messages handed to the app. */
  delivered: number;
  /** Messages dropped because the app already had them (or one like them was already held). */
  duplicates: number;
}

/**
 * Per-conversation in-order hand-off, with no I/O of its own.
 *
 * For each conversation it keeps the highest sequence handed to the app with
 * nothing missing below it (the *position*). A message right after the
 * position is handed over at once, followed by any held messages it makes
 * contiguous; one at or below the position is a duplicate and dropped; one
 * further ahead is held until the range between is filled (the caller asks
 * {@link gap} what to fetch and feeds the fetched messages back in).
 *
 * `deliver` is called synchronously, in sequence order, exactly once per
 * (conversation, seq); the position is advanced before it is called.
 */
export class Sequencer {
  readonly counters: SequencerCounters = { delivered: 0, duplicates: 0 };
  private readonly positionsByConversation = new Map<string, number>();
  private readonly heldByConversation = new Map<string, Map<number, messagingV1.Message>>();
  private heldTotal = 0;

  constructor(
    private readonly deliver: (message: messagingV1.Message) => void,
    initial?: Iterable<readonly [string, number]>,
  ) {
    if (initial) for (const [conversationId, seq] of initial) this.positionsByConversation.set(conversationId, seq);
  }

  /**
   * Takes one message. A conversation without a position starts at
   * `assumePosition` when given (0 = from its first message), otherwise at
   * this very message.
   */
  accept(message: messagingV1.Message, assumePosition?: number): AcceptOutcome {
    const { conversationId, seq } = message;
    let last = this.positionsByConversation.get(conversationId);
    if (last === undefined) {
      last = assumePosition ?? seq - 1;
      this.positionsByConversation.set(conversationId, last);
    }
    if (seq <= last) {
      this.counters.duplicates++;
      return 'duplicate';
    }
    if (seq > last + 1) {
      let held = this.heldByConversation.get(conversationId);
      if (!held) {
        held = new Map();
        this.heldByConversation.set(conversationId, held);
      }
      if (held.has(seq)) {
        this.counters.duplicates++;
        return 'duplicate';
      }
      held.set(seq, message);
      this.heldTotal++;
      return 'held';
    }
    this.handOver(conversationId, message);
    const held = this.heldByConversation.get(conversationId);
    if (held) {
      for (let next = held.get(seq + 1); next; next = held.get(next.seq + 1)) {
        held.delete(next.seq);
        this.heldTotal--;
        this.handOver(conversationId, next);
      }
      if (held.size === 0) this.heldByConversation.delete(conversationId);
    }
    return 'delivered';
  }

  /** Gives a conversation a position if it has none yet (a join: its messages follow from `seq + 1`). */
  startIfUnknown(conversationId: string, seq: number): void {
    if (!this.positionsByConversation.has(conversationId)) this.positionsByConversation.set(conversationId, seq);
  }

  position(conversationId: string): number | undefined {
    return this.positionsByConversation.get(conversationId);
  }

  /** A copy of every position. */
  positions(): Map<string, number> {
    return new Map(this.positionsByConversation);
  }

  /** The first missing range of a conversation, when messages are held beyond one. */
  gap(conversationId: string): Gap | undefined {
    const held = this.heldByConversation.get(conversationId);
    const afterSeq = this.positionsByConversation.get(conversationId);
    if (!held || held.size === 0 || afterSeq === undefined) return undefined;
    let beforeSeq = Infinity;
    for (const seq of held.keys()) if (seq < beforeSeq) beforeSeq = seq;
    return { conversationId, afterSeq, beforeSeq };
  }

  /** Conversations with held messages, i.e. with a gap to fill. */
  gappedConversations(): string[] {
    return [...this.heldByConversation.keys()];
  }

  /** Forgets the held messages of a conversation (it was left); returns how many. */
  dropHeld(conversationId: string): number {
    const held = this.heldByConversation.get(conversationId);
    if (!held) return 0;
    this.heldByConversation.delete(conversationId);
    this.heldTotal -= held.size;
    return held.size;
  }

  /** Messages currently held behind a gap, over all conversations. */
  get heldCount(): number {
    return this.heldTotal;
  }

  private handOver(conversationId: string, message: messagingV1.Message): void {
    this.positionsByConversation.set(conversationId, message.seq);
    this.counters.delivered++;
    this.deliver(message);
  }
}
