import { z } from '@switchboard/config';
import { InvalidArgumentError } from '@switchboard/errors';
import { SAFE_ID_PATTERN } from '@switchboard/ids';
import { parseEventPattern } from '@switchboard/nats';
import type { framesV1 } from '@switchboard/proto';

type ClientKind = NonNullable<framesV1.ClientFrame['kind']>;

const id = z.string().regex(SAFE_ID_PATTERN, 'must be 1-128 characters of A-Z, a-z, 0-9, _ or -');
const text = (max: number) => z.string().max(max, `must be at most ${max} characters`);
const list = <T extends z.ZodTypeAny>(item: T, max: number) => z.array(item).max(max, `must have at most ${max} entries`);
const pageSize = z.number().int().min(0).max(1000, 'must be at most 1000');
const page = z.object({ pageSize, pageToken: text(1024) }).optional();
// Event patterns: dot-separated safe tokens, `*` for one token, `>` as the last; the message says what is wrong (libs/nats topics.ts).
const pattern = z.string().superRefine((value, issues) => {
  try {
    parseEventPattern(value, 'pattern');
  } catch (err) {
    issues.addIssue({ code: 'custom', message: (err as Error).message.replace(/^pattern /, '') });
  }
});

/** Generic bounds for requests whose fields the owning service checks: texts, list lengths, depth. */
function withinGenericBounds(root: unknown): boolean {
  const stack: [unknown, number][] = [[root, 0]];
  while (stack.length > 0) {
    const [value, depth] = stack.pop()!;
    if (typeof value === 'string' && value.length > 16_384) return false;
    if (typeof value !== 'object' || value === null || value instanceof Date) continue;
    if (depth > 8) return false;
    if (Array.isArray(value) && value.length > 1000) return false;
    for (const child of Object.values(value)) stack.push([child, depth + 1]);
  }
  return true;
}

/**
 * The bounds of every client frame kind, checked before any backend is
 * called (lengths, counts; nesting is bounded by the decoder and the frame
 * size). Services check their own requests again; this keeps oversized or
 * malformed input from reaching them at all. Typed over every kind, so a new
 * frame kind does not compile until its bounds are written here.
 */
const FRAME_SCHEMAS: { [K in ClientKind['$case']]: z.ZodTypeAny } = {
  ping: z.object({}),
  sendMessage: z.object({
    target: z.object({ $case: z.enum(['conversationId', 'recipientUserId']), value: id }).optional(),
    clientMessageId: id,
    text: text(16_384),
    attachments: list(
      z.object({ attachmentId: text(128), contentType: text(127), fileName: text(255), storageRef: text(1024) }),
      10,
    ),
    mentions: list(id, 50),
    metadata: z.record(text(64), text(1024)).refine((value) => Object.keys(value).length <= 32, 'must have at most 32 entries'),
  }),
  getHistory: z.object({ conversationId: id, limit: z.number().int().min(0).max(1000) }),
  sync: z.object({ positions: list(z.object({ conversationId: id }), 1000), resumeToken: text(65_536), limit: z.number().int().min(0).max(1000) }),
  markDelivered: z.object({ conversationId: id }),
  markRead: z.object({ conversationId: id }),
  listConversations: z.object({ page }),
  typing: z.object({ conversationId: id }),
  setPresence: z.object({ customMessage: text(256) }),
  subscribeEvents: z.object({ pattern, replayAfterSeq: z.number().int().min(0, 'must not be negative').max(Number.MAX_SAFE_INTEGER) }),
  unsubscribeEvents: z.object({ pattern }),
  refreshToken: z.object({ token: z.string().min(1, 'is required').max(8192, 'must be at most 8192 characters') }),
  // The room service checks each room operation field by field; the gateway bounds the shape.
  // Presence checks ids and its own caps; the gateway bounds sizes.
  watchPresence: z.object({ userIds: list(text(128), 1000) }),
  unwatchPresence: z.object({ userIds: list(text(128), 1000) }),
  getPresence: z.object({ userIds: list(text(128), 1000) }),
  enterConversation: z.object({ conversationId: text(128) }),
  leaveConversation: z.object({ conversationId: text(128) }),
  // A missing operation is the frame handler's own INVALID_ARGUMENT (field room_request).
  roomRequest: z.object({ request: z.object({ $case: z.string(), value: z.unknown().refine(withinGenericBounds, 'has a text over 16,384 characters, a list over 1,000 entries or nests deeper than 8 levels') }).optional() }),
};

const snake = (name: string) => name.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);

/** The proto field an issue is about, as services name fields: `recipient_user_id`, `attachments[0].file_name`. */
function fieldName(kind: ClientKind, path: PropertyKey[]): string {
  let name = '';
  path.forEach((part, index) => {
    if (typeof part === 'number') name += `[${part}]`;
    else if (part === 'target' || part === '$case' || part === 'value') {
      // A oneof is named by the member that is set.
      if (part === 'target' && index === path.length - 1) name += name ? '.target' : 'target';
      else if (part === 'value') {
        const target = (kind.value as { target?: { $case: string } }).target;
        name += (name ? '.' : '') + snake(target?.$case ?? 'target');
      }
    } else name += (name ? '.' : '') + snake(String(part));
  });
  return name || snake(kind.$case);
}

/** Throws INVALID_ARGUMENT naming the first field out of bounds. */
export function validateClientFrame(kind: ClientKind): void {
  const schema = FRAME_SCHEMAS[kind.$case];
  const result = schema.safeParse(kind.value);
  if (result.success) return;
  const issue = result.error.issues[0]!;
  throw new InvalidArgumentError(`${fieldName(kind, issue.path)} ${issue.message}`, { field: fieldName(kind, issue.path) });
}

// Used by tests to check every kind of the descriptor has bounds.
export const VALIDATED_KINDS = Object.keys(FRAME_SCHEMAS);
