import type { messagingV1 } from '@switchboard/proto';

/**
 * The suite's ground truth: every acknowledged message, whom it must reach,
 * and what sending it took. Kept by the suite itself, independent of
 * anything the client library or the services report.
 */

export interface AckedMessage {
  phase: string;
  conversationId: string;
  seq: number;
  messageId: string;
  clientMessageId: string;
  sender: string;
  attempts: number;
  /** The final ack said `duplicate: true` (a retry of a message committed by an earlier attempt). */
  duplicateAck: boolean;
  ackedAt: number;
}

export interface SendStats {
  attempts: number;
  /** Sends that needed more than one attempt. */
  retried: number;
  /** Acks with `duplicate: true`: an earlier attempt had committed, its ack was lost. */
  duplicateAcks: number;
  /** Failed attempts by error code (retried with the same client_message_id). */
  errors: Map<string, number>;
  /** Sends still unacknowledged when the suite gave up (deadline). */
  gaveUp: number;
  /** Sends the server refused for good (a non-retryable error). */
  refused: number;
  notes: string[];
}

export function emptySendStats(): SendStats {
  return { attempts: 0, retried: 0, duplicateAcks: 0, errors: new Map(), gaveUp: 0, refused: 0, notes: [] };
}

export class Ledger {
  readonly byClientId = new Map<string, AckedMessage>();
  private readonly bySeq = new Map<string, Map<number, AckedMessage>>();
  private readonly members = new Map<string, string[]>();
  private readonly phases = new Map<string, AckedMessage[]>();
  /** Violations of idempotency or of the sequence: one message stored twice, one seq given to two messages. */
  readonly integrity: { phase: string; note: string }[] = [];
  send: SendStats = emptySendStats();

  setMembers(conversationId: string, userIds: string[]): void {
    this.members.set(conversationId, [...userIds].sort());
  }

  membersOf(conversationId: string): string[] {
    return this.members.get(conversationId) ?? [];
  }

  get conversations(): string[] {
    return [...this.members.keys()];
  }

  /** Records an ack; checks it against what the same client id and the same seq were acked with before. */
  acked(phase: string, sender: string, clientMessageId: string, ack: messagingV1.MessageAck, attempts: number): AckedMessage {
    const previous = this.byClientId.get(clientMessageId);
    if (previous) {
      if (previous.messageId !== ack.messageId || previous.seq !== ack.seq) {
        this.integrity.push({ phase, note: `client_message_id ${clientMessageId} acked as ${previous.messageId}#${previous.seq} and again as ${ack.messageId}#${ack.seq}: stored twice` });
      }
      return previous;
    }
    const entry: AckedMessage = {
      phase,
      conversationId: ack.conversationId,
      seq: ack.seq,
      messageId: ack.messageId,
      clientMessageId,
      sender,
      attempts,
      duplicateAck: ack.duplicate,
      ackedAt: Date.now(),
    };
    let seqs = this.bySeq.get(ack.conversationId);
    if (!seqs) {
      seqs = new Map();
      this.bySeq.set(ack.conversationId, seqs);
    }
    const other = seqs.get(ack.seq);
    if (other && other.messageId !== ack.messageId) {
      this.integrity.push({ phase, note: `${ack.conversationId}#${ack.seq} acked for two messages: ${other.messageId} (${other.clientMessageId}) and ${ack.messageId} (${clientMessageId})` });
    }
    seqs.set(ack.seq, entry);
    this.byClientId.set(clientMessageId, entry);
    const list = this.phases.get(phase) ?? [];
    list.push(entry);
    this.phases.set(phase, list);
    return entry;
  }

  ackedIn(phase: string): AckedMessage[] {
    return this.phases.get(phase) ?? [];
  }

  /** Highest acknowledged seq of a conversation (what every member device must hold up to). */
  maxSeq(conversationId: string): number {
    let max = 0;
    for (const seq of this.bySeq.get(conversationId)?.keys() ?? []) max = Math.max(max, seq);
    return max;
  }

  /** Starts counting a new phase's sends; returns the finished phase's numbers. */
  beginPhase(): SendStats {
    const previous = this.send;
    this.send = emptySendStats();
    return previous;
  }
}
