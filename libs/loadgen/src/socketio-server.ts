#!/usr/bin/env node
/**
 * The baseline: the stack Switchboard replaces, kept small and fair. One
 * Socket.IO 4 server process; run two on the same Redis with
 * @socket.io/redis-adapter and any instance reaches any socket.
 *
 * Same semantics as the Switchboard scenarios: a JWT (HS256, same secret and
 * claims, checked with jose) on the handshake; a user's sockets join
 * `t:<tenant>:u:<user>`; `join` puts a socket in rooms; `send` stores the
 * message (one INSERT in PostgreSQL, committed, with the sender, the
 * conversation, the client message id and the text; a unique client id makes
 * retries idempotent) and only then acknowledges it and emits it to the
 * recipient's user room or the room (sender excluded). What it does not do:
 * per-conversation sequence numbers, membership checks, an outbox to Kafka,
 * receipts or gap recovery, which Switchboard does on every send.
 *
 *   PORT=… REDIS_URL=… DATABASE_URL=… JWT_SECRET=… node dist/socketio-server.js
 */
import { createServer } from 'node:http';
import { createAdapter } from '@socket.io/redis-adapter';
import { Redis } from 'ioredis';
import { jwtVerify } from 'jose';
import { Pool } from 'pg';
import { Server } from 'socket.io';

const port = Number(process.env.PORT ?? 3000);
const secret = new TextEncoder().encode(process.env.JWT_SECRET ?? 'switchboard-dev-secret-change-me');
const SAFE = /^[A-Za-z0-9_-]{1,64}$/;

async function main(): Promise<void> {
  const pool = new Pool({ connectionString: process.env.DATABASE_URL, max: Number(process.env.PG_POOL ?? 10) });
  await pool.query(`CREATE SCHEMA IF NOT EXISTS sio_baseline`);
  await pool.query(`CREATE TABLE IF NOT EXISTS sio_baseline.messages (
    id bigserial PRIMARY KEY, tenant_id text NOT NULL, conversation_id text NOT NULL, sender_id text NOT NULL,
    client_message_id text NOT NULL, body text NOT NULL, created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, sender_id, client_message_id))`);
  const pub = new Redis(process.env.REDIS_URL ?? 'redis://127.0.0.1:6379');
  const sub = pub.duplicate();
  const http = createServer();
  const io = new Server(http, { transports: ['websocket'], perMessageDeflate: false, adapter: createAdapter(pub, sub, { key: 'sio-baseline' }) });

  io.use(async (socket, next) => {
    try {
      const { payload } = await jwtVerify(String(socket.handshake.auth.token ?? ''), secret);
      if (typeof payload.sub !== 'string' || typeof payload.tid !== 'string' || !SAFE.test(payload.sub) || !SAFE.test(payload.tid)) throw new Error('bad claims');
      socket.data = { userId: payload.sub, tenantId: payload.tid };
      next();
    } catch {
      next(new Error('unauthenticated'));
    }
  });

  io.on('connection', (socket) => {
    const { userId, tenantId } = socket.data as { userId: string; tenantId: string };
    void socket.join(`t:${tenantId}:u:${userId}`);
    socket.on('join', (req: { rooms?: unknown }, ack: (err: null) => void) => {
      const rooms = Array.isArray(req?.rooms) ? req.rooms.filter((r): r is string => typeof r === 'string' && SAFE.test(r)) : [];
      void socket.join(rooms.map((r) => `t:${tenantId}:r:${r}`));
      if (typeof ack === 'function') ack(null);
    });
    socket.on('send', async (req: { recipientUserId?: string; conversationId?: string; clientMessageId?: string; text?: string }, ack: (reply: { error?: string; id?: string }) => void) => {
      if (typeof ack !== 'function') return;
      const to = req?.recipientUserId ? `t:${tenantId}:u:${req.recipientUserId}` : req?.conversationId ? `t:${tenantId}:r:${req.conversationId}` : undefined;
      const target = req?.recipientUserId ?? req?.conversationId ?? '';
      if (!to || !SAFE.test(target) || !SAFE.test(req.clientMessageId ?? '') || typeof req.text !== 'string' || req.text.length > 16_384) {
        ack({ error: 'invalid send' });
        return;
      }
      const conversationId = req.recipientUserId ? [userId, req.recipientUserId].sort().join(':') : req.conversationId!;
      try {
        const { rows } = await pool.query<{ id: string }>(
          `INSERT INTO sio_baseline.messages (tenant_id, conversation_id, sender_id, client_message_id, body) VALUES ($1, $2, $3, $4, $5)
           ON CONFLICT (tenant_id, sender_id, client_message_id) DO UPDATE SET body = sio_baseline.messages.body RETURNING id`,
          [tenantId, conversationId, userId, req.clientMessageId, req.text],
        );
        ack({ id: rows[0]!.id });
        socket.to(to).emit('message', { conversationId, senderId: userId, text: req.text });
      } catch (err) {
        ack({ error: (err as Error).message });
      }
    });
  });

  await new Promise<void>((resolve) => http.listen(port, '127.0.0.1', resolve));
  process.stdout.write(`socket.io baseline listening on ${port}\n`);
  const stop = () => {
    void io.close();
    pub.disconnect();
    sub.disconnect();
    void pool.end().finally(() => process.exit(0));
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

main().catch((err: unknown) => {
  process.stderr.write(`socket.io baseline failed: ${(err as Error).stack}\n`);
  process.exit(1);
});
