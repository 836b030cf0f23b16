// A scripted stand-in for the gateway, speaking the protocol from
// docs/protocol.md closely enough to drive the client through its paths.
import type { IncomingMessage } from 'node:http';
import type { AddressInfo } from 'node:net';
import { jwtVerify } from 'jose';
import { WebSocketServer, type WebSocket } from 'ws';
import { commonV1, framesV1 } from '@switchboard/proto';
import {
  BEARER_SUBPROTOCOL_PREFIX,
  decodeClientFrame,
  encodeServerFrame,
  encodingForSubprotocol,
  type Encoding,
} from '../../src';

export const SECRET = 'test-secret';

export interface FakeGatewayOptions {
  /** Port to listen on (default: any free one). */
  port?: number;
  /** HS256 secret tokens must verify with (default SECRET). */
  secret?: string;
  /** Subprotocols it speaks (default: both v1 encodings). */
  protocols?: string[];
  heartbeatIntervalMs?: number;
  maxFrameBytes?: number;
  /** Send ping control frames every heartbeatIntervalMs (default false). */
  autoPing?: boolean;
  /** Answers a frame; return undefined to stay silent. Default: {@link defaultReply}. */
  reply?: (frame: framesV1.ClientFrame, peer: Peer) => framesV1.ServerFrame['kind'] | undefined;
}

export interface Peer {
  ws: WebSocket;
  encoding: Encoding;
  claims: Record<string, unknown>;
  /** How the token arrived. */
  via: 'header' | 'query' | 'subprotocol';
  received: framesV1.ClientFrame[];
  closed: Promise<{ code: number; reason: string }>;
  send(kind: framesV1.ServerFrame['kind'], requestId?: string): void;
  sendRaw(data: string | Buffer, binary: boolean): void;
}

let seq = 0;

export function defaultReply(frame: framesV1.ClientFrame): framesV1.ServerFrame['kind'] | undefined {
  const kind = frame.kind;
  switch (kind?.$case) {
    case 'ping':
      return { $case: 'pong', value: { clientTimeMs: kind.value.clientTimeMs, serverTimeMs: Date.now() } };
    case 'sendMessage':
      return {
        $case: 'messageAck',
        value: {
          conversationId: kind.value.target?.$case === 'conversationId' ? kind.value.target.value : 'dm-1',
          messageId: `m-${++seq}`,
          seq,
          createdAt: new Date(),
          clientMessageId: kind.value.clientMessageId,
          duplicate: false,
        },
      };
    case 'markRead':
    case 'markDelivered':
      return { $case: 'receiptState', value: { conversationId: kind.value.conversationId, deliveredSeq: kind.value.seq, readSeq: kind.value.seq } };
    case 'listConversations':
      return { $case: 'conversationList', value: { conversations: [], page: { nextPageToken: '' } } };
    case 'getHistory':
      return { $case: 'historyPage', value: { messages: [], hasMore: false } };
    case 'sync':
      return { $case: 'syncPage', value: { messages: [], resumeToken: '', hasMore: false } };
    default:
      return { $case: 'error', value: { code: commonV1.ErrorCode.ERROR_CODE_UNSUPPORTED, message: 'not implemented', field: '', retryAfterMs: 0 } };
  }
}

export class FakeGateway {
  readonly peers: Peer[] = [];
  private readonly waiters: ((peer: Peer) => void)[] = [];
  private pinger: NodeJS.Timeout | undefined;

  private constructor(
    readonly wss: WebSocketServer,
    readonly options: FakeGatewayOptions,
  ) {}

  static async start(options: FakeGatewayOptions = {}): Promise<FakeGateway> {
    const speaks = options.protocols ?? ['switchboard.v1.json', 'switchboard.v1.proto'];
    const wss = new WebSocketServer({
      host: '127.0.0.1',
      port: options.port ?? 0,
      path: '/ws',
      verifyClient: (info, done) => {
        const offered = offeredProtocols(info.req).filter((p) => !p.startsWith(BEARER_SUBPROTOCOL_PREFIX));
        if (offered.length > 0 && !offered.some((p) => speaks.includes(p))) return done(false, 400, 'unsupported protocol version');
        const found = tokenOf(info.req);
        if (!found) return done(false, 401, 'missing token');
        jwtVerify(found.token, new TextEncoder().encode(options.secret ?? SECRET), { algorithms: ['HS256'] }).then(
          ({ payload }) => {
            (info.req as IncomingMessage & { auth?: unknown }).auth = { claims: payload, via: found.via };
            done(true);
          },
          () => done(false, 401, 'invalid token'),
        );
      },
      handleProtocols: (protocols) => [...protocols].find((p) => speaks.includes(p)) ?? false,
    });
    await new Promise<void>((resolve) => wss.once('listening', resolve));
    const gateway = new FakeGateway(wss, options);
    wss.on('connection', (ws, req) => gateway.accept(ws, req));
    if (options.autoPing) {
      gateway.pinger = setInterval(() => {
        for (const peer of gateway.peers) if (peer.ws.readyState === peer.ws.OPEN) peer.ws.ping();
      }, options.heartbeatIntervalMs ?? 1000);
    }
    return gateway;
  }

  get url(): string {
    return `ws://127.0.0.1:${(this.wss.address() as AddressInfo).port}/ws`;
  }

  /** The n-th connection (0-based), waiting for it if needed. */
  peer(n: number): Promise<Peer> {
    if (this.peers[n]) return Promise.resolve(this.peers[n]!);
    return new Promise((resolve) => {
      const check = () => {
        if (this.peers[n]) resolve(this.peers[n]!);
        else this.waiters.push(check);
      };
      this.waiters.push(check);
    });
  }

  stopPinging(): void {
    if (this.pinger) clearInterval(this.pinger);
    this.pinger = undefined;
  }

  async stop(): Promise<void> {
    this.stopPinging();
    for (const client of this.wss.clients) client.terminate();
    await new Promise<void>((resolve) => this.wss.close(() => resolve()));
  }

  private accept(ws: WebSocket, req: IncomingMessage): void {
    const auth = (req as IncomingMessage & { auth: { claims: Record<string, unknown>; via: Peer['via'] } }).auth;
    const encoding = encodingForSubprotocol(ws.protocol) ?? 'json';
    const peer: Peer = {
      ws,
      encoding,
      claims: auth.claims,
      via: auth.via,
      received: [],
      closed: new Promise((resolve) => ws.once('close', (code, reason) => resolve({ code, reason: reason.toString() }))),
      send: (kind, requestId = '') => ws.send(encodeServerFrame({ requestId, kind }, encoding)),
      sendRaw: (data, binary) => ws.send(data, { binary }),
    };
    ws.on('message', (data, isBinary) => {
      const frame = decodeClientFrame(data as Buffer, isBinary, encoding);
      peer.received.push(frame);
      const kind = (this.options.reply ?? defaultReply)(frame, peer);
      if (kind) peer.send(kind, frame.requestId);
    });
    peer.send({
      $case: 'welcome',
      value: {
        connectionId: `c-${this.peers.length}`,
        gatewayId: 'gw-test',
        userId: String(auth.claims.sub),
        tenantId: String(auth.claims.tid),
        deviceId: String(auth.claims.did ?? ''),
        heartbeatIntervalMs: this.options.heartbeatIntervalMs ?? 25_000,
        maxFrameBytes: this.options.maxFrameBytes ?? 65_536,
        tokenExpiresAt: new Date(Number(auth.claims.exp) * 1000),
      },
    });
    this.peers.push(peer);
    for (const w of this.waiters.splice(0)) w(peer);
  }
}

function offeredProtocols(req: IncomingMessage): string[] {
  const header = req.headers['sec-websocket-protocol'];
  return header ? header.split(',').map((p) => p.trim()).filter(Boolean) : [];
}

function tokenOf(req: IncomingMessage): { token: string; via: Peer['via'] } | undefined {
  const auth = req.headers.authorization;
  if (auth?.startsWith('Bearer ')) return { token: auth.slice(7), via: 'header' };
  const query = new URL(req.url ?? '/', 'http://x').searchParams.get('access_token');
  if (query) return { token: query, via: 'query' };
  const entry = offeredProtocols(req).find((p) => p.startsWith(BEARER_SUBPROTOCOL_PREFIX));
  if (entry) return { token: entry.slice(BEARER_SUBPROTOCOL_PREFIX.length), via: 'subprotocol' };
  return undefined;
}
