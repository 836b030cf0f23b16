/**
 * What the load generator needs from a client connection, so that the same
 * worker drives Switchboard (its real protocol) and the Socket.IO baseline.
 */
export interface ClientSpec {
  /** Index of the client in the whole run. */
  index: number;
  userId: string;
  url: string;
  /** Loopback source address (127.0.0.x): more addresses, more ephemeral ports. */
  localAddress: string;
  /** Rooms to join (Socket.IO joins them itself; Switchboard's rooms come from the room service). */
  rooms: string[];
}

export interface SendTarget {
  recipientUserId?: string;
  conversationId?: string;
}

export interface PushedMessage {
  conversationId: string;
  senderId: string;
  text: string;
  /** The conversation's sequence number where the protocol has one (Switchboard); undefined for Socket.IO. */
  seq: number | undefined;
}

export interface ConnectionHandlers {
  message(message: PushedMessage): void;
  /**
   * The send with this client message id was acknowledged (stored), or
   * refused/failed with `error`; `retryAfterMs` when the refusal asks to be
   * sent again after that long (load shedding, rate limits), as real clients do.
   */
  ack(clientMessageId: string, error?: string, retryAfterMs?: number): void;
  closed(): void;
}

export interface LoadConnection {
  send(target: SendTarget, clientMessageId: string, text: string): void;
  /** Messages after these positions (Switchboard's resume after a reconnect); [] where the protocol has no recovery. */
  sync(positions: { conversationId: string; lastSeq: number }[]): Promise<PushedMessage[]>;
  close(): void;
}

export interface LoadTransport {
  readonly name: 'switchboard' | 'socketio';
  readonly hasRecovery: boolean;
  /** Resolves once the connection is authenticated and ready for sends (Switchboard: the welcome frame). */
  connect(spec: ClientSpec, handlers: ConnectionHandlers): Promise<LoadConnection>;
}
