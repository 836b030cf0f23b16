import { InvalidArgumentError } from '@switchboard/errors';
import type { CallOptions, PromiseClient } from '@switchboard/grpc';
import { eventsV1, type framesV1, type roomV1 } from '@switchboard/proto';
import type { Connection } from './connection';

type Room = PromiseClient<roomV1.RoomServiceClient>;
type RoomRequestCase = NonNullable<framesV1.RoomRequest['request']>;
type RoomReplyCase = NonNullable<framesV1.RoomReply['reply']>;

const { MembershipChange } = eventsV1;

/** Changes after which the member is out of the room: their connections stop receiving it at once. */
const LEAVING = new Set([MembershipChange.MEMBERSHIP_CHANGE_LEFT, MembershipChange.MEMBERSHIP_CHANGE_REMOVED, MembershipChange.MEMBERSHIP_CHANGE_BANNED]);

/** What rooms need of the fan-out: a connection's subscription to a conversation subject. */
export interface ConversationSubscriptions {
  /** Subscribes the connection to the conversation and catches it up on what it missed. */
  joinConversation(connection: Connection, conversationId: string): Promise<void>;
  /** Drops the connection's subscription now; nothing more of the conversation reaches it. */
  leaveConversation(connection: Connection, conversationId: string): void;
  /** Another user joined (member) or left a conversation the connection is in: whose presence it receives follows. */
  memberChanged(connection: Connection, conversationId: string, userId: string, member: boolean): void;
}

/**
 * The gateway's part of rooms: users' room operations (the `room_request`
 * frame → room.v1 over gRPC, answered by `room_reply`) and live membership
 * (RoomMembershipChanged / RoomUpdated from NATS → subscriptions added or
 * dropped at once, `room_event` pushes to the members).
 */
export class Rooms {
  constructor(private readonly room: Room) {}

  /** Serves one room_request frame; room's errors (code, message, field) reach the client as they are. */
  async handle(request: framesV1.RoomRequest, options: CallOptions): Promise<framesV1.RoomReply> {
    const operation = request.request;
    if (!operation) throw new InvalidArgumentError('room_request names no operation', { field: 'room_request' });
    return { reply: await this.call(operation, options) };
  }

  private async call(operation: RoomRequestCase, options: CallOptions): Promise<RoomReplyCase> {
    // The tenant and user come from the token (call metadata); a context in the frame is ignored.
    const value = { ...operation.value, context: undefined };
    const room = this.room as unknown as Record<string, (request: unknown, options: CallOptions) => Promise<unknown>>;
    const method = room[operation.$case];
    if (typeof method !== 'function') throw new InvalidArgumentError(`unknown room operation ${operation.$case}`, { field: 'room_request' });
    const response = await method.call(this.room, value, options);
    // Request and reply cases share their names (rooms.proto).
    return { $case: operation.$case, value: response } as RoomReplyCase;
  }

  /**
   * A RoomMembershipChanged that arrived on `subject`. The member's own
   * devices learn it from their user subject: joining subscribes them to the
   * room, leaving (left, removed, banned) drops the subscription before
   * anything else is processed. Everyone else in the room learns it from the
   * room subject. Each connection gets it once.
   */
  onMembership(subjectIsUser: boolean, targets: Connection[], change: eventsV1.RoomMembershipChanged, subscriptions: ConversationSubscriptions): void {
    const frame: framesV1.ServerFrame = { requestId: '', kind: { $case: 'roomEvent', value: { event: { $case: 'membership', value: change } } } };
    for (const connection of targets) {
      const own = connection.userId === change.userId;
      if (own !== subjectIsUser) continue;
      if (own && LEAVING.has(change.change)) {
        subscriptions.leaveConversation(connection, change.roomId);
        connection.push(frame);
      } else if (own && change.change === MembershipChange.MEMBERSHIP_CHANGE_JOINED) {
        // The event first, then (through the same push queue) what the room already holds.
        connection.push(frame);
        void subscriptions.joinConversation(connection, change.roomId);
      } else {
        connection.push(frame);
        if (!own && change.change === MembershipChange.MEMBERSHIP_CHANGE_JOINED) subscriptions.memberChanged(connection, change.roomId, change.userId, true);
        if (!own && LEAVING.has(change.change)) subscriptions.memberChanged(connection, change.roomId, change.userId, false);
      }
    }
  }

  /** A RoomUpdated on the room subject: pushed to its members; a deleted room is dropped from every connection. */
  onRoomUpdated(targets: Connection[], update: eventsV1.RoomUpdated, subscriptions: ConversationSubscriptions): void {
    const frame: framesV1.ServerFrame = { requestId: '', kind: { $case: 'roomEvent', value: { event: { $case: 'room', value: update } } } };
    for (const connection of targets) {
      if (update.deleted) subscriptions.leaveConversation(connection, update.roomId);
      connection.push(frame);
    }
  }
}
