import WebSocket from 'ws';
import type { FrameData } from './codec';

/**
 * The little the client needs from a WebSocket, so that the Node
 * implementation (`ws`) and a browser WebSocket can both sit under it.
 *
 * Contract: after `connect` returns, the transport calls `open` at most once,
 * `refused` at most once (before any `open`), `message`/`ping` any number of
 * times after `open`, and `close` exactly once at the very end, including
 * for a handshake that failed (code 1006 then).
 */
export interface Transport {
  /**
   * Whether `ping` is reported. A browser WebSocket answers ping control
   * frames without telling the page; the client then keeps the connection
   * observably alive with protocol-level Ping frames instead.
   */
  readonly observesPings: boolean;
  send(data: string | Uint8Array): void;
  /** Starts the closing handshake. */
  close(code: number, reason: string): void;
  /** Drops the connection at once, without a closing handshake. */
  terminate(): void;
}

export interface TransportHandlers {
  /** The upgrade succeeded; `protocol` is the negotiated subprotocol ('' for none). */
  open(protocol: string): void;
  message(data: FrameData, isBinary: boolean): void;
  /** A WebSocket ping control frame arrived (the transport answers it). */
  ping(): void;
  /** The server refused the upgrade with this HTTP status (and body, when it could be read). */
  refused(status: number, body: string): void;
  error(err: Error): void;
  close(code: number, reason: string): void;
}

export interface TransportConnectOptions {
  url: string;
  protocols: string[];
  /** Extra upgrade request headers; transports that cannot send headers ignore them. */
  headers: Record<string, string>;
}

export type TransportFactory = (options: TransportConnectOptions, handlers: TransportHandlers) => Transport;

const MAX_REFUSAL_BODY = 4096;

/** Options for the `ws` transport beyond what the client passes. */
export interface WsTransportOptions {
  /** Offer permessage-deflate (ws default: true). */
  perMessageDeflate?: boolean;
  /** Largest incoming message accepted, in bytes (ws default: 100 MiB). */
  maxPayload?: number;
}

/** The Node transport, on the `ws` library (which answers pings by itself). */
export function wsTransport(wsOptions: WsTransportOptions = {}): TransportFactory {
  return (options, handlers) => {
    let closed = false;
    let refused = false;
    const ws = new WebSocket(options.url, options.protocols, {
      headers: options.headers,
      ...(wsOptions.perMessageDeflate === undefined ? {} : { perMessageDeflate: wsOptions.perMessageDeflate }),
      ...(wsOptions.maxPayload === undefined ? {} : { maxPayload: wsOptions.maxPayload }),
    });
    ws.on('open', () => handlers.open(ws.protocol));
    ws.on('message', (data, isBinary) => handlers.message(data as FrameData, isBinary));
    ws.on('ping', () => handlers.ping());
    ws.on('unexpected-response', (_req, res) => {
      // With this listener installed ws leaves the aborting to us: read a
      // bounded body (the gateway may explain itself), then drop the socket.
      refused = true;
      const chunks: Buffer[] = [];
      let size = 0;
      let done = false;
      const finish = () => {
        if (done) return;
        done = true;
        handlers.refused(res.statusCode ?? 0, Buffer.concat(chunks).toString('utf8'));
        ws.terminate();
      };
      res.on('data', (chunk: Buffer) => {
        if (size < MAX_REFUSAL_BODY) chunks.push(chunk.subarray(0, MAX_REFUSAL_BODY - size));
        size += chunk.length;
        if (size >= MAX_REFUSAL_BODY) finish();
      });
      res.on('end', finish);
      res.on('error', finish);
      res.on('close', finish);
    });
    ws.on('error', (err) => {
      // The abort that follows a refusal surfaces as an error; the refusal said it all.
      if (!refused) handlers.error(err);
    });
    ws.on('close', (code, reason) => {
      if (closed) return;
      closed = true;
      handlers.close(code, reason.toString('utf8'));
    });
    return {
      observesPings: true,
      send: (data) => ws.send(data),
      close: (code, reason) => ws.close(code, reason),
      terminate: () => ws.terminate(),
    };
  };
}

/** The parts of the WHATWG WebSocket the standard transport uses. */
export interface StandardWebSocket {
  readonly protocol: string;
  binaryType: string;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  send(data: string | Uint8Array): void;
  close(code?: number, reason?: string): void;
}

export type StandardWebSocketConstructor = new (url: string, protocols?: string | string[]) => StandardWebSocket;

/**
 * A transport over a WHATWG WebSocket (browsers, Deno, Node 22+'s global).
 * It cannot set headers, so pair it with `tokenPlacement: 'subprotocol'` or
 * `'query'`; it cannot see pings or the HTTP status of a refused upgrade (a
 * refusal looks like a close with 1006).
 */
export function standardTransport(Ctor: StandardWebSocketConstructor): TransportFactory {
  return (options, handlers) => {
    let closed = false;
    const ws = new Ctor(options.url, options.protocols);
    ws.binaryType = 'arraybuffer';
    ws.onopen = () => handlers.open(ws.protocol);
    ws.onmessage = (ev) => {
      const data = ev.data;
      if (typeof data === 'string') handlers.message(data, false);
      else if (data instanceof ArrayBuffer || data instanceof Uint8Array) handlers.message(data, true);
      else handlers.error(new Error('unsupported WebSocket message data type'));
    };
    ws.onerror = () => handlers.error(new Error('WebSocket error'));
    ws.onclose = (ev) => {
      if (closed) return;
      closed = true;
      handlers.close(ev.code, ev.reason);
    };
    return {
      observesPings: false,
      send: (data) => ws.send(data),
      close: (code, reason) => ws.close(code, reason),
      // The standard API has no abort; a close without waiting is the closest.
      terminate: () => {
        ws.close(4000, 'terminated');
        if (!closed) {
          closed = true;
          handlers.close(1006, 'terminated');
        }
      },
    };
  };
}
