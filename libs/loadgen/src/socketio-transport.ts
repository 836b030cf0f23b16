import { io } from 'socket.io-client';
import { mintDevToken } from '@switchboard/client';
import type { LoadConnection, LoadTransport, PushedMessage } from './transport';

/**
 * The baseline's client: socket.io-client over WebSocket only (no polling
 * upgrade dance), the same JWT in the handshake's auth, acknowledgements with
 * a timeout. No automatic reconnection: the load generator decides.
 */
export function socketioTransport(options: { secret: string; tenantId: string; ackTimeoutMs?: number; connectTimeoutMs?: number }): LoadTransport {
  return {
    name: 'socketio',
    hasRecovery: false,
    async connect(spec, handlers) {
      const token = await mintDevToken({ secret: options.secret, tenantId: options.tenantId, userId: spec.userId, deviceId: `d${spec.index}` });
      const socket = io(spec.url, {
        transports: ['websocket'],
        auth: { token },
        reconnection: false,
        forceNew: true,
        timeout: options.connectTimeoutMs ?? 30_000,
        // Passed through to ws by engine.io-client (not in its typings).
        localAddress: spec.localAddress,
      } as Parameters<typeof io>[1]);
      await new Promise<void>((resolve, reject) => {
        socket.once('connect', () => resolve());
        socket.once('connect_error', (err) => {
          socket.close();
          reject(err);
        });
      });
      socket.on('message', (message: PushedMessage) => handlers.message({ ...message, seq: undefined }));
      socket.on('disconnect', () => handlers.closed());
      if (spec.rooms.length > 0) {
        await new Promise<void>((resolve, reject) =>
          socket.timeout(options.ackTimeoutMs ?? 10_000).emit('join', { rooms: spec.rooms }, (err: Error | null) => (err ? reject(err) : resolve())),
        );
      }
      const connection: LoadConnection = {
        send(target, clientMessageId, text) {
          socket.timeout(options.ackTimeoutMs ?? 10_000).emit('send', { ...target, clientMessageId, text }, (err: Error | null, reply?: { error?: string }) => {
            handlers.ack(clientMessageId, err ? err.message : reply?.error);
          });
        },
        sync: async () => [],
        close: () => socket.close(),
      };
      return connection;
    },
  };
}
