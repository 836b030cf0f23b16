// A scripted messaging backend behind the fake gateway: per-conversation
// logs with gap-free sequences, get_history, sync and idempotent
// send_message with the semantics of services/messaging (store.ts).
import { commonV1, framesV1, messagingV1 } from '@switchboard/proto';

type ServerKind = NonNullable<framesV1.ServerFrame['kind']>;

export function message(conversationId: string, seq: number, extra: Partial<messagingV1.Message> = {}): messagingV1.Message {
  return messagingV1.Message.fromPartial({
    tenantId: 't1',
    conversationId,
    messageId: `${conversationId}-${seq}`,
    seq,
    senderId: 'bob',
    clientMessageId: `cm-${conversationId}-${seq}`,
    kind: messagingV1.MessageKind.MESSAGE_KIND_TEXT,
    text: `${conversationId} #${seq}`,
    createdAt: new Date(1_700_000_000_000 + seq),
    ...extra,
  });
}

export class FakeMessaging {
  /** Conversation id → its messages, index i holding seq i + 1. */
  readonly logs = new Map<string, messagingV1.Message[]>();
  private readonly acks = new Map<string, messagingV1.MessageAck>();

  /** Commits `count` messages to a conversation and returns them. */
  append(conversationId: string, count = 1): messagingV1.Message[] {
    const log = this.log(conversationId);
    const added: messagingV1.Message[] = [];
    for (let i = 0; i < count; i++) {
      const m = message(conversationId, log.length + 1);
      log.push(m);
      added.push(m);
    }
    return added;
  }

  /** The stored message (throws if it does not exist). */
  get(conversationId: string, seq: number): messagingV1.Message {
    const m = this.log(conversationId)[seq - 1];
    if (!m) throw new Error(`no ${conversationId} #${seq}`);
    return m;
  }

  /** Messages stored with this client message id (idempotency: never more than one). */
  countByClientId(clientMessageId: string): number {
    let n = 0;
    for (const log of this.logs.values()) n += log.filter((m) => m.clientMessageId === clientMessageId).length;
    return n;
  }

  /** Answers a frame the way the gateway + messaging do; other kinds get UNSUPPORTED. */
  answer(frame: framesV1.ClientFrame): ServerKind {
    const kind = frame.kind;
    switch (kind?.$case) {
      case 'ping':
        return { $case: 'pong', value: { clientTimeMs: kind.value.clientTimeMs, serverTimeMs: Date.now() } };
      case 'sendMessage':
        return { $case: 'messageAck', value: this.send(kind.value) };
      case 'getHistory':
        return { $case: 'historyPage', value: this.history(kind.value) };
      case 'sync':
        return { $case: 'syncPage', value: this.sync(kind.value) };
      default:
        return { $case: 'error', value: { code: commonV1.ErrorCode.ERROR_CODE_UNSUPPORTED, message: 'not scripted', field: '', retryAfterMs: 0 } };
    }
  }

  send(req: framesV1.SendMessage): messagingV1.MessageAck {
    const existing = this.acks.get(req.clientMessageId);
    if (existing) return { ...existing, duplicate: true };
    const conversationId = req.target?.$case === 'conversationId' ? req.target.value : `dm-${req.target?.value ?? 'x'}`;
    const log = this.log(conversationId);
    const stored = message(conversationId, log.length + 1, { senderId: 'alice', clientMessageId: req.clientMessageId, text: req.text });
    log.push(stored);
    const ack: messagingV1.MessageAck = {
      conversationId,
      messageId: stored.messageId,
      seq: stored.seq,
      createdAt: stored.createdAt,
      clientMessageId: req.clientMessageId,
      duplicate: false,
    };
    this.acks.set(req.clientMessageId, ack);
    return ack;
  }

  history(req: framesV1.GetHistory): framesV1.HistoryPage {
    const limit = Math.min(req.limit || 50, 200);
    const log = this.log(req.conversationId);
    if (req.direction === messagingV1.Direction.DIRECTION_BACKWARD) {
      const before = log.filter((m) => req.fromSeq === 0 || m.seq < req.fromSeq);
      return { messages: before.slice(-limit), hasMore: before.length > limit };
    }
    const after = log.filter((m) => m.seq > req.fromSeq);
    return { messages: after.slice(0, limit), hasMore: after.length > limit };
  }

  /** Like MessageStore.sync: (conversation, seq) order, unlisted conversations from the start, the token = positions. */
  sync(req: framesV1.Sync): framesV1.SyncPage {
    const limit = Math.min(req.limit || 100, 200);
    const positions = new Map<string, number>(req.resumeToken ? Object.entries(JSON.parse(Buffer.from(req.resumeToken, 'base64url').toString())) : []);
    for (const p of req.positions) positions.set(p.conversationId, p.lastSeq);
    const missed: messagingV1.Message[] = [];
    for (const conversationId of [...this.logs.keys()].sort()) {
      for (const m of this.log(conversationId)) if (m.seq > (positions.get(conversationId) ?? 0)) missed.push(m);
    }
    const page = missed.slice(0, limit);
    for (const m of page) positions.set(m.conversationId, Math.max(positions.get(m.conversationId) ?? 0, m.seq));
    return {
      messages: page,
      hasMore: missed.length > limit,
      resumeToken: Buffer.from(JSON.stringify(Object.fromEntries(positions))).toString('base64url'),
    };
  }

  private log(conversationId: string): messagingV1.Message[] {
    let log = this.logs.get(conversationId);
    if (!log) {
      log = [];
      this.logs.set(conversationId, log);
    }
    return log;
  }
}
