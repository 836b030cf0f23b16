import { messageContent } from '@switchboard/content';
import { asSwitchboardError, ErrorCode, InvalidArgumentError, PermissionDeniedError } from '@switchboard/errors';
import { actingUser, batchItemContext, GrpcStatus, grpcStatusFor, observeRpc, unary, unaryStream, viewer, type CallContext } from '@switchboard/grpc';
import { assertSafeId, audienceConversationId, audienceConversationsOf, MAX_AUDIENCE_ROLE_LENGTH } from '@switchboard/ids';
import type { Logger } from '@switchboard/logging';
import { extractTraceContext, SpanKind, withSpan } from '@switchboard/telemetry';
import { messagingV1, type roomV1 } from '@switchboard/proto';
import type { MessagingConfig } from './config';
import { Permission, type RoomAccess } from './room-access';
import type { MessageStore, NewMessage, Reader } from './store';

const { ConversationKind, MessageKind, Direction } = messagingV1;

/** Most items in one SendMessages call (a gateway sends far fewer: what arrived while its previous calls ran). */
export const MAX_BATCH_ITEMS = 1000;

/** The acting user as a reader: their conversations plus the audiences of their roles. */
function readerOf(ctx: CallContext): Reader {
  return { userId: actingUser(ctx), granted: audienceConversationsOf(ctx.roles) };
}

/** The checks every new message passes, whatever its target. */
function newMessage(
  req: Pick<messagingV1.SendMessageRequest, 'clientMessageId' | 'kind' | 'text' | 'attachments' | 'mentions' | 'metadata'>,
  senderId: string,
  config: MessagingConfig,
  defaultKind: messagingV1.MessageKind,
): NewMessage {
  const clientMessageId = assertSafeId(req.clientMessageId, 'client_message_id');
  if (req.text.length === 0 && req.attachments.length === 0) {
    throw new InvalidArgumentError('a message needs text or an attachment', { field: 'text' });
  }
  // The content policy: bounds, and text stored HTML-inert (docs/security.md).
  const content = messageContent(req, { maxTextLength: config.MAX_TEXT_LENGTH });
  req.mentions.forEach((mention) => assertSafeId(mention, 'mentions'));
  return {
    senderId,
    clientMessageId,
    kind: req.kind === MessageKind.MESSAGE_KIND_UNSPECIFIED ? defaultKind : req.kind,
    text: content.text,
    attachments: content.attachments,
    mentions: content.mentions,
    metadata: content.metadata,
  };
}

/** A resume token is the positions themselves, opaque to clients (base64url JSON). */
function encodeResumeToken(positions: Map<string, number>): string {
  return Buffer.from(JSON.stringify(Object.fromEntries(positions))).toString('base64url');
}

function decodeResumeToken(token: string): Map<string, number> {
  try {
    const parsed: unknown = JSON.parse(Buffer.from(token, 'base64url').toString('utf8'));
    if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) throw new Error('not an object');
    const positions = new Map<string, number>();
    for (const [conversationId, seq] of Object.entries(parsed)) {
      if (!Number.isSafeInteger(seq) || (seq as number) < 0) throw new Error('bad sequence');
      positions.set(assertSafeId(conversationId, 'resume_token'), seq as number);
    }
    return positions;
  } catch (err) {
    throw new InvalidArgumentError('resume_token is not one this service issued', { field: 'resume_token', cause: err });
  }
}

function pageSize(requested: number, config: MessagingConfig, fallback = 50): number {
  return Math.min(requested || fallback, config.MAX_PAGE_SIZE);
}

export function messagingService(store: MessageStore, rooms: RoomAccess, config: MessagingConfig, logger: Logger): Partial<messagingV1.MessagingServiceServer> {
  const ROOM = ConversationKind.CONVERSATION_KIND_ROOM;

  /**
   * A room conversation (or an id this replica does not know, which may be a
   * room whose membership is still on its way) is checked with the room
   * service; undefined means it is not a room and its member rows decide.
   */
  async function roomGrant(ctx: CallContext, conversationId: string, userId: string, permissions: roomV1.Permission[]) {
    const kind = await store.conversationKind(ctx.tenant.tenantId, conversationId);
    if (kind !== undefined && kind !== ROOM) return undefined;
    const grant = await rooms.require(ctx.tenant.tenantId, conversationId, userId, permissions, ctx.tenant.internal);
    if (kind === undefined) await store.ensureConversation(ctx.tenant.tenantId, conversationId, ROOM);
    return grant;
  }

  /** The reader of one conversation, with what the room service allows when it is a room. */
  async function readerFor(ctx: CallContext, conversationId: string): Promise<Reader> {
    const reader = readerOf(ctx);
    const grant = await roomGrant(ctx, conversationId, reader.userId, [Permission.PERMISSION_READ]);
    if (!grant) return reader;
    return {
      ...reader,
      granted: [...reader.granted, conversationId],
      ...(grant.visibleFrom ? { visibleFrom: new Map([[conversationId, grant.visibleFrom]]) } : {}),
    };
  }

  /** Like readerFor, but an internal caller without a user reads anything of its tenant. */
  async function optionalReaderFor(ctx: CallContext, conversationId: string): Promise<Reader | undefined> {
    return viewer(ctx) === undefined ? undefined : readerFor(ctx, conversationId);
  }

  /** Users write text; announcements need the room's announce permission, system messages come from internal callers only. */
  function kindPermissions(ctx: CallContext, kind: messagingV1.MessageKind): roomV1.Permission[] {
    if (kind === MessageKind.MESSAGE_KIND_SYSTEM && !ctx.tenant.internal) {
      throw new PermissionDeniedError('only internal callers send system messages', { field: 'kind' });
    }
    return kind === MessageKind.MESSAGE_KIND_ANNOUNCEMENT ? [Permission.PERMISSION_POST, Permission.PERMISSION_ANNOUNCE] : [Permission.PERMISSION_POST];
  }

  /**
   * One item of SendMessages as its own user's SendMessage: its own span
   * (continuing the send's trace), its own handler time, its own outcome.
   */
  async function sendItem(item: messagingV1.SendMessagesItem, ctx: CallContext): Promise<messagingV1.SendMessagesResult> {
    const started = performance.now();
    const parent = extractTraceContext(item.traceContext);
    return withSpan('SendMessage', { kind: SpanKind.SERVER, parent, attributes: { 'rpc.system': 'grpc', 'rpc.method': 'SendMessage', 'switchboard.batched': true } }, async () => {
      try {
        if (item.request?.context?.tenantId && item.request.context.tenantId !== ctx.tenant.tenantId) {
          throw new PermissionDeniedError('an item names another tenant than the call', { field: 'items.request.context.tenant_id' });
        }
        if (!item.request) throw new InvalidArgumentError('an item needs its request', { field: 'items.request' });
        const ack = await send(item.request, batchItemContext(ctx, item));
        observeRpc('SendMessage', GrpcStatus.OK, (performance.now() - started) / 1000, { via: 'SendMessages' });
        return { outcome: { $case: 'ack', value: ack } };
      } catch (thrown) {
        const err = asSwitchboardError(thrown);
        if (err.code === ErrorCode.ERROR_CODE_INTERNAL) logger.error({ err: thrown, method: 'SendMessages' }, 'batched send failed');
        observeRpc('SendMessage', grpcStatusFor(err.code), (performance.now() - started) / 1000, { via: 'SendMessages' });
        return { outcome: { $case: 'error', value: err.toProto() } };
      }
    });
  }

  /** One user's send, checked and committed: the SendMessage call, and each item of SendMessages. */
  async function send(req: messagingV1.SendMessageRequest, ctx: CallContext): Promise<messagingV1.MessageAck> {
    const senderId = actingUser(ctx);
    const message = newMessage(req, senderId, config, MessageKind.MESSAGE_KIND_TEXT);
    if (!req.target) throw new InvalidArgumentError('name a conversation_id or a recipient_user_id', { field: 'target' });
    let target: { conversationId: string } | { recipientUserId: string };
    if (req.target.$case === 'recipientUserId') {
      const recipientUserId = assertSafeId(req.target.value, 'recipient_user_id');
      if (recipientUserId === senderId) throw new InvalidArgumentError('a direct message needs another user', { field: 'recipient_user_id' });
      target = { recipientUserId };
    } else {
      target = { conversationId: assertSafeId(req.target.value, 'conversation_id') };
    }
    const permissions = kindPermissions(ctx, message.kind);
    const grant = 'conversationId' in target ? await roomGrant(ctx, target.conversationId, senderId, permissions) : undefined;
    if (!grant && message.kind === MessageKind.MESSAGE_KIND_ANNOUNCEMENT && !ctx.tenant.internal) {
      throw new PermissionDeniedError('announcements are posted in rooms (or broadcast with SendBroadcast)', { field: 'kind' });
    }
    return store.send(ctx.tenant.tenantId, target, message, grant ? { kind: ROOM } : undefined, Date.now() + ctx.deadlineMs());
  }

  async function sendMessages(req: messagingV1.SendMessagesRequest | undefined, ctx: CallContext): Promise<messagingV1.SendMessagesResponse> {
    if (!ctx.tenant.internal) throw new PermissionDeniedError('SendMessages is for internal callers; users send with SendMessage', { field: 'context.internal' });
    if (!req) throw new InvalidArgumentError('a streamed batch needs its request', { field: 'request' });
    if (req.items.length > MAX_BATCH_ITEMS) throw new InvalidArgumentError(`at most ${MAX_BATCH_ITEMS} items per call`, { field: 'items' });
    // Every item at once: they meet in the send batcher, which commits them together.
    const results = await Promise.all(req.items.map((item) => sendItem(item, ctx)));
    return { results };
  }

  return {
    sendMessage: unary('SendMessage', logger, async (req: messagingV1.SendMessageRequest, ctx) => ({ ack: await send(req, ctx) })),

    sendMessages: unary('SendMessages', logger, sendMessages),

    // The same handler, one batch per stream message (a gateway's long-lived stream per tenant).
    sendMessagesStream: unaryStream('SendMessagesStream', logger, sendMessages),

    sendBroadcast: unary('SendBroadcast', logger, async (req: messagingV1.SendBroadcastRequest, ctx) => {
      // Internal systems name themselves as the sender in context.user_id.
      const senderId = actingUser(ctx);
      if (req.audience?.$case === 'roomId') {
        // Every member of a room: the room's own conversation, by those who may announce there.
        const roomId = assertSafeId(req.audience.value, 'room_id');
        const message = newMessage({ ...req, attachments: [], mentions: [] }, senderId, config, MessageKind.MESSAGE_KIND_ANNOUNCEMENT);
        const grant = await roomGrant(ctx, roomId, senderId, [Permission.PERMISSION_ANNOUNCE]);
        if (!grant) throw new InvalidArgumentError(`${roomId} is not a room`, { field: 'room_id' });
        return { ack: await store.send(ctx.tenant.tenantId, { conversationId: roomId }, message, { kind: ROOM }, Date.now() + ctx.deadlineMs()) };
      }
      if (req.audience?.$case !== 'audienceId') {
        throw new InvalidArgumentError('name an audience_id ("all" or "role:<role>") or a room_id', { field: 'audience' });
      }
      const conversationId = audienceConversationId(req.audience.value);
      if (!conversationId) {
        throw new InvalidArgumentError(
          `audience_id must be "all" or "role:<role>" (a role of at most ${MAX_AUDIENCE_ROLE_LENGTH} characters of A-Z, a-z, 0-9, '_' or '-')`,
          { field: 'audience_id' },
        );
      }
      if (!ctx.tenant.internal && !ctx.roles.some((role) => config.BROADCAST_ROLES.includes(role))) {
        throw new PermissionDeniedError(`broadcasting to a tenant-wide audience needs one of the roles ${config.BROADCAST_ROLES.join(', ')}`, {
          field: 'audience_id',
        });
      }
      const message = newMessage({ ...req, attachments: [], mentions: [] }, senderId, config, MessageKind.MESSAGE_KIND_ANNOUNCEMENT);
      const ack = await store.send(ctx.tenant.tenantId, { conversationId }, message, { kind: ConversationKind.CONVERSATION_KIND_BROADCAST }, Date.now() + ctx.deadlineMs());
      return { ack };
    }),

    getHistory: unary('GetHistory', logger, async (req: messagingV1.GetHistoryRequest, ctx) => {
      const conversationId = assertSafeId(req.conversationId, 'conversation_id');
      const backward = req.direction === Direction.DIRECTION_BACKWARD;
      return store.history(ctx.tenant.tenantId, conversationId, await optionalReaderFor(ctx, conversationId), req.fromSeq, backward, pageSize(req.limit, config));
    }),

    sync: unary('Sync', logger, async (req: messagingV1.SyncRequest, ctx) => {
      const reader = readerOf(ctx);
      const positions = req.resumeToken ? decodeResumeToken(req.resumeToken) : new Map<string, number>();
      for (const position of req.positions) positions.set(assertSafeId(position.conversationId, 'positions.conversation_id'), position.lastSeq);
      const result = await store.sync(ctx.tenant.tenantId, reader, positions, pageSize(req.limit, config, 100));
      return {
        messages: result.messages,
        hasMore: result.hasMore,
        resumeToken: encodeResumeToken(result.positions),
        positions: [...result.positions].map(([conversationId, lastSeq]) => ({ conversationId, lastSeq })),
      };
    }),

    getConversation: unary('GetConversation', logger, async (req: messagingV1.GetConversationRequest, ctx) => {
      const conversationId = assertSafeId(req.conversationId, 'conversation_id');
      return { conversation: await store.getConversation(ctx.tenant.tenantId, conversationId, await optionalReaderFor(ctx, conversationId)) };
    }),

    listConversations: unary('ListConversations', logger, async (req: messagingV1.ListConversationsRequest, ctx) => {
      const { conversations, nextPageToken } = await store.listConversations(
        ctx.tenant.tenantId,
        readerOf(ctx),
        pageSize(req.page?.pageSize ?? 0, config, 100),
        req.page?.pageToken ?? '',
      );
      return { conversations, page: { nextPageToken } };
    }),

    getOrCreateDirectConversation: unary(
      'GetOrCreateDirectConversation',
      logger,
      async (req: messagingV1.GetOrCreateDirectConversationRequest, ctx) => {
        const userId = actingUser(ctx);
        const otherUserId = assertSafeId(req.otherUserId, 'other_user_id');
        if (otherUserId === userId) throw new InvalidArgumentError('a direct conversation needs another user', { field: 'other_user_id' });
        return store.getOrCreateDirect(ctx.tenant.tenantId, userId, otherUserId);
      },
    ),

    markDelivered: unary('MarkDelivered', logger, async (req: messagingV1.MarkDeliveredRequest, ctx) => {
      const conversationId = assertSafeId(req.conversationId, 'conversation_id');
      const receipt = await store.markReceipt(ctx.tenant.tenantId, conversationId, await readerFor(ctx, conversationId), ctx.tenant.deviceId, req.seq, 'delivered');
      return receipt;
    }),

    markRead: unary('MarkRead', logger, async (req: messagingV1.MarkReadRequest, ctx) => {
      const conversationId = assertSafeId(req.conversationId, 'conversation_id');
      const receipt = await store.markReceipt(ctx.tenant.tenantId, conversationId, await readerFor(ctx, conversationId), ctx.tenant.deviceId, req.seq, 'read');
      return receipt;
    }),

    getReceipts: unary('GetReceipts', logger, async (req: messagingV1.GetReceiptsRequest, ctx) => {
      const conversationId = assertSafeId(req.conversationId, 'conversation_id');
      return { receipts: await store.receipts(ctx.tenant.tenantId, conversationId, await optionalReaderFor(ctx, conversationId)) };
    }),

    getUnreadCounts: unary('GetUnreadCounts', logger, async (_req: messagingV1.GetUnreadCountsRequest, ctx) => {
      return { counts: await store.unreadCounts(ctx.tenant.tenantId, readerOf(ctx)) };
    }),
  };
}
