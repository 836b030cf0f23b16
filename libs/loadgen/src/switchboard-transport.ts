import WebSocket from 'ws';
import { mintDevToken, SUBPROTOCOL_PROTO } from '@switchboard/client';
import { commonV1, framesV1, type messagingV1 } from '@switchboard/proto';
import type { LoadConnection, LoadTransport, PushedMessage } from './transport';

/** Refusals the generator sends again with the same client message id: load shedding and rate limits (the client library retries these and more: isRetryableError); anything else counts as failed. */
const RETRIED_CODES = new Set<number>([commonV1.ErrorCode.ERROR_CODE_OVERLOADED, commonV1.ErrorCode.ERROR_CODE_RATE_LIMITED]);

/**
 * A lean raw-`ws` client of the real protocol: a real JWT on the upgrade,
 * binary protobuf frames (switchboard.v1.proto), sends, acks, pushes and
 * batches, sync after a reconnect. The full SwitchboardClient (outbox,
 * sequencer, reconnection) costs more per connection than a load generator
 * holding thousands of them on two shared cores can afford.
 */
export function switchboardTransport(options: { secret: string; tenantId: string; connectTimeoutMs?: number }): LoadTransport {
  return {
    name: 'switchboard',
    hasRecovery: true,
    async connect(spec, handlers) {
      const token = await mintDevToken({ secret: options.secret, tenantId: options.tenantId, userId: spec.userId, deviceId: `d${spec.index}` });
      const ws = new WebSocket(spec.url, [SUBPROTOCOL_PROTO], {
        headers: { authorization: `Bearer ${token}` },
        localAddress: spec.localAddress,
        perMessageDeflate: false,
        handshakeTimeout: options.connectTimeoutMs ?? 30_000,
      });
      const syncs = new Map<string, (page: framesV1.SyncPage | Error) => void>();
      let requests = 0;
      const toPushed = (m: messagingV1.Message): PushedMessage => ({ conversationId: m.conversationId, senderId: m.senderId, text: m.text, seq: m.seq });
      const onFrame = (frame: framesV1.ServerFrame) => {
        const kind = frame.kind;
        switch (kind?.$case) {
          case 'message':
            if (kind.value.message) handlers.message(toPushed(kind.value.message));
            return;
          case 'batch':
            for (const inner of kind.value.frames) onFrame(inner);
            return;
          case 'messageAck':
            handlers.ack(frame.requestId);
            return;
          case 'syncPage':
            syncs.get(frame.requestId)?.(kind.value);
            return;
          case 'error':
            if (syncs.has(frame.requestId)) syncs.get(frame.requestId)!(new Error(kind.value.message));
            else if (frame.requestId) handlers.ack(frame.requestId, `${kind.value.code}: ${kind.value.message}`, RETRIED_CODES.has(kind.value.code) ? kind.value.retryAfterMs || 100 : undefined);
            return;
          default:
            return;
        }
      };
      let welcomed = false;
      await new Promise<void>((resolve, reject) => {
        let settled = false;
        ws.on('message', (data, isBinary) => {
          if (!isBinary) return;
          const frame = framesV1.ServerFrame.decode(data as Buffer);
          if (!settled && frame.kind?.$case === 'welcome') {
            welcomed = true;
            settled = true;
            resolve();
            return;
          }
          onFrame(frame);
        });
        ws.on('unexpected-response', (_req, res) => {
          settled = true;
          reject(new Error(`handshake refused: HTTP ${res.statusCode}`));
          ws.terminate();
        });
        ws.on('error', (err) => {
          if (!settled) {
            settled = true;
            reject(err);
          }
        });
        ws.on('close', (code) => {
          if (!settled) {
            settled = true;
            reject(new Error(`closed before welcome: ${code}`));
            return;
          }
          if (!welcomed) return;
          for (const waiter of syncs.values()) waiter(new Error('closed'));
          syncs.clear();
          handlers.closed();
        });
      });
      const send = (frame: framesV1.ClientFrame) => {
        if (ws.readyState === ws.OPEN) ws.send(framesV1.ClientFrame.encode(frame).finish());
      };
      const connection: LoadConnection = {
        send(target, clientMessageId, text) {
          const value = framesV1.SendMessage.fromPartial({
            target: target.conversationId ? { $case: 'conversationId', value: target.conversationId } : { $case: 'recipientUserId', value: target.recipientUserId! },
            clientMessageId,
            text,
          });
          send({ requestId: clientMessageId, kind: { $case: 'sendMessage', value } });
        },
        async sync(positions) {
          const found: PushedMessage[] = [];
          let resumeToken = '';
          for (let page = 0; page < 100; page += 1) {
            const requestId = `sync${(requests += 1)}`;
            const result = await new Promise<framesV1.SyncPage>((resolve, reject) => {
              syncs.set(requestId, (value) => {
                syncs.delete(requestId);
                if (value instanceof Error) reject(value);
                else resolve(value);
              });
              send({ requestId, kind: { $case: 'sync', value: { positions: resumeToken ? [] : positions, resumeToken, limit: 500 } } });
            });
            found.push(...result.messages.map(toPushed));
            if (!result.hasMore) break;
            resumeToken = result.resumeToken;
          }
          return found;
        },
        close: () => ws.close(1000, 'load generator done'),
      };
      return connection;
    },
  };
}
