import { InvalidArgumentError, UnsupportedError } from '@switchboard/errors';
import { framesV1 } from '@switchboard/proto';

/** Text frames carrying the proto3 JSON mapping of ClientFrame/ServerFrame. */
export const SUBPROTOCOL_JSON = 'switchboard.v1.json';
/** Binary frames carrying the protobuf encoding of ClientFrame/ServerFrame. */
export const SUBPROTOCOL_PROTO = 'switchboard.v1.proto';
/** Prefix of the subprotocol entry that carries a JWT for clients that cannot set headers. */
export const BEARER_SUBPROTOCOL_PREFIX = 'bearer.';

export type Encoding = 'json' | 'proto';

/** What a WebSocket hands over for one message: ws gives Buffers (or a Buffer list), browsers strings or ArrayBuffers. */
export type FrameData = string | Uint8Array | ArrayBuffer | readonly Uint8Array[];

export function subprotocolFor(encoding: Encoding): string {
  return encoding === 'proto' ? SUBPROTOCOL_PROTO : SUBPROTOCOL_JSON;
}

/** The encoding a negotiated subprotocol stands for; no subprotocol at all means JSON. */
export function encodingForSubprotocol(protocol: string | undefined): Encoding | undefined {
  if (!protocol || protocol === SUBPROTOCOL_JSON) return 'json';
  if (protocol === SUBPROTOCOL_PROTO) return 'proto';
  return undefined;
}

/** A ClientFrame as it goes on the wire: a JSON string (text frame) or protobuf bytes (binary frame). */
export function encodeClientFrame(frame: framesV1.ClientFrame, encoding: Encoding): string | Uint8Array {
  return encoding === 'proto'
    ? framesV1.ClientFrame.encode(frame).finish()
    : JSON.stringify(framesV1.ClientFrame.toJSON(frame));
}

/**
 * Parses one WebSocket message into a ServerFrame. Throws UnsupportedError for
 * a frame of the wrong type for the connection's encoding (binary on JSON,
 * text on proto) and InvalidArgumentError for bytes that do not decode.
 *
 * A frame whose kind this version does not know decodes with `kind`
 * undefined rather than failing, so a newer server can add push kinds.
 */
export function decodeServerFrame(data: FrameData, isBinary: boolean, encoding: Encoding): framesV1.ServerFrame {
  return decodeFrame(framesV1.ServerFrame, data, isBinary, encoding);
}

/** The server side of {@link encodeClientFrame}; used by scripted peers in tests and by tools. */
export function encodeServerFrame(frame: framesV1.ServerFrame, encoding: Encoding): string | Uint8Array {
  return encoding === 'proto'
    ? framesV1.ServerFrame.encode(frame).finish()
    : JSON.stringify(framesV1.ServerFrame.toJSON(frame));
}

/** The server side of {@link decodeServerFrame}. */
export function decodeClientFrame(data: FrameData, isBinary: boolean, encoding: Encoding): framesV1.ClientFrame {
  return decodeFrame(framesV1.ClientFrame, data, isBinary, encoding);
}

interface FrameCodec<T> {
  decode(input: Uint8Array): T;
  fromJSON(object: unknown): T;
}

function decodeFrame<T>(codec: FrameCodec<T>, data: FrameData, isBinary: boolean, encoding: Encoding): T {
  if (encoding === 'proto') {
    if (!isBinary) throw new UnsupportedError('text frame on a switchboard.v1.proto connection', { field: 'frame' });
    try {
      return codec.decode(toBytes(data));
    } catch (err) {
      throw new InvalidArgumentError('undecodable protobuf frame', { field: 'frame', cause: err });
    }
  }
  if (isBinary) throw new UnsupportedError('binary frame on a switchboard.v1.json connection', { field: 'frame' });
  let text: string;
  try {
    text = typeof data === 'string' ? data : utf8.decode(toBytes(data));
  } catch (err) {
    throw new InvalidArgumentError('frame is not valid UTF-8', { field: 'frame', cause: err });
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (err) {
    throw new InvalidArgumentError('frame is not valid JSON', { field: 'frame', cause: err });
  }
  if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) {
    throw new InvalidArgumentError('frame must be a JSON object', { field: 'frame' });
  }
  try {
    return codec.fromJSON(parsed);
  } catch (err) {
    throw new InvalidArgumentError('frame does not match the protocol', { field: 'frame', cause: err });
  }
}

const utf8 = new TextDecoder('utf-8', { fatal: true });

function toBytes(data: FrameData): Uint8Array {
  if (typeof data === 'string') return new TextEncoder().encode(data);
  if (data instanceof Uint8Array) return data;
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  // A fragmented message as ws delivers it with binaryType 'fragments'.
  const total = data.reduce((n, part) => n + part.byteLength, 0);
  const out = new Uint8Array(total);
  let offset = 0;
  for (const part of data) {
    out.set(part, offset);
    offset += part.byteLength;
  }
  return out;
}
