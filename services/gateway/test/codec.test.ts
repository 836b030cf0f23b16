import { ErrorCode, SwitchboardError } from '@switchboard/errors';
import { framesV1 } from '@switchboard/proto';
import { decodeClientFrame, encodeServerFrame } from '../src/codec';

const send: framesV1.ClientFrame = {
  requestId: 'r1',
  kind: { $case: 'sendMessage', value: { target: { $case: 'recipientUserId', value: 'bob' }, clientMessageId: 'c1', text: 'hi', attachments: [], mentions: [], metadata: {} } },
};

function codeOf(fn: () => unknown): ErrorCode | undefined {
  try {
    fn();
  } catch (err) {
    return (err as SwitchboardError).code;
  }
  return undefined;
}

describe('frame codec', () => {
  it('decodes the proto3 JSON mapping of a client frame', () => {
    const json = Buffer.from(JSON.stringify({ requestId: 'r1', sendMessage: { recipientUserId: 'bob', clientMessageId: 'c1', text: 'hi' } }));
    expect(decodeClientFrame(json, false, 'json')).toEqual(send);
  });

  it('decodes the protobuf encoding of a client frame', () => {
    const binary = Buffer.from(framesV1.ClientFrame.encode(send).finish());
    expect(decodeClientFrame(binary, true, 'proto')).toEqual(send);
  });

  it('encodes server frames in the connection encoding', () => {
    const frame: framesV1.ServerFrame = { requestId: 'r1', kind: { $case: 'pong', value: { clientTimeMs: 1, serverTimeMs: 2 } } };
    expect(JSON.parse(encodeServerFrame(frame, 'json') as string)).toEqual({ requestId: 'r1', pong: { clientTimeMs: 1, serverTimeMs: 2 } });
    expect(framesV1.ServerFrame.decode(encodeServerFrame(frame, 'proto') as Buffer)).toEqual(frame);
  });

  it.each([
    ['malformed JSON', Buffer.from('{nope'), false, 'json', ErrorCode.ERROR_CODE_INVALID_ARGUMENT],
    ['a JSON array', Buffer.from('[1,2]'), false, 'json', ErrorCode.ERROR_CODE_INVALID_ARGUMENT],
    ['an unknown frame kind', Buffer.from('{"requestId":"1","launchMissiles":{}}'), false, 'json', ErrorCode.ERROR_CODE_UNSUPPORTED],
    ['a binary frame on a JSON connection', Buffer.from([1, 2]), true, 'json', ErrorCode.ERROR_CODE_UNSUPPORTED],
    ['a text frame on a proto connection', Buffer.from('{}'), false, 'proto', ErrorCode.ERROR_CODE_UNSUPPORTED],
    ['undecodable protobuf', Buffer.from([0x0a, 0xff, 0xff, 0xff]), true, 'proto', ErrorCode.ERROR_CODE_INVALID_ARGUMENT],
    ['an oversized request id', Buffer.from(JSON.stringify({ requestId: 'x'.repeat(65), ping: {} })), false, 'json', ErrorCode.ERROR_CODE_INVALID_ARGUMENT],
  ] as const)('refuses %s with a specific error', (_name, data, isBinary, encoding, code) => {
    expect(codeOf(() => decodeClientFrame(data, isBinary, encoding))).toBe(code);
  });
});
