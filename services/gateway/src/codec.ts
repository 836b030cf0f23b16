import { InvalidArgumentError, UnsupportedError } from '@switchboard/errors';
import { framesV1 } from '@switchboard/proto';

export type Encoding = 'json' | 'proto';

/** The protocol versions this gateway speaks, by subprotocol name. */
export const SUBPROTOCOLS: Record<string, Encoding> = {
  'switchboard.v1.json': 'json',
  'switchboard.v1.proto': 'proto',
};

export function encodeServerFrame(frame: framesV1.ServerFrame, encoding: Encoding): string | Buffer {
  return encoding === 'json'
    ? JSON.stringify(framesV1.ServerFrame.toJSON(frame))
    : Buffer.from(framesV1.ServerFrame.encode(frame).finish());
}

/** No client frame nests deeper than a handful of levels; deeper input is an attack, refused before it is walked. */
const MAX_JSON_DEPTH = 16;

/** Depth of a parsed JSON value, walked without recursion (a hostile frame cannot exhaust the stack). */
function nestingDepth(root: unknown): number {
  let deepest = 0;
  const stack: [unknown, number][] = [[root, 1]];
  while (stack.length > 0) {
    const [value, depth] = stack.pop()!;
    if (typeof value !== 'object' || value === null) continue;
    if (depth > deepest) deepest = depth;
    if (deepest > MAX_JSON_DEPTH) return deepest;
    for (const child of Object.values(value)) stack.push([child, depth + 1]);
  }
  return deepest;
}

/**
 * Decodes one client frame. Text frames are JSON on a JSON connection and
 * binary frames protobuf on a proto connection; anything else is refused with
 * a specific error and the connection carries on.
 */
export function decodeClientFrame(data: Buffer, isBinary: boolean, encoding: Encoding): framesV1.ClientFrame {
  if (encoding === 'json' && isBinary) {
    throw new UnsupportedError('this connection speaks JSON text frames (switchboard.v1.json); binary frames need switchboard.v1.proto');
  }
  if (encoding === 'proto' && !isBinary) {
    throw new UnsupportedError('this connection speaks binary protobuf frames (switchboard.v1.proto); text frames need switchboard.v1.json');
  }
  let frame: framesV1.ClientFrame;
  if (encoding === 'json') {
    let json: unknown;
    try {
      json = JSON.parse(data.toString('utf8'));
    } catch (err) {
      throw new InvalidArgumentError(`malformed JSON: ${(err as Error).message}`, { cause: err });
    }
    if (typeof json !== 'object' || json === null || Array.isArray(json)) {
      throw new InvalidArgumentError('a frame is a JSON object');
    }
    if (nestingDepth(json) > MAX_JSON_DEPTH) throw new InvalidArgumentError(`a frame nests deeper than ${MAX_JSON_DEPTH} levels`);
    frame = framesV1.ClientFrame.fromJSON(json);
  } else {
    try {
      frame = framesV1.ClientFrame.decode(data);
    } catch (err) {
      throw new InvalidArgumentError(`undecodable protobuf frame: ${(err as Error).message}`, { cause: err });
    }
  }
  if (!frame.kind) throw new UnsupportedError('unknown or missing frame kind', { field: 'kind' });
  if (frame.requestId.length > 64) throw new InvalidArgumentError('request_id is longer than 64 characters', { field: 'request_id' });
  return frame;
}
