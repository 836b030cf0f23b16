import { InvalidArgumentError, UnsupportedError } from '@switchboard/errors';
import { commonV1, framesV1, messagingV1 } from '@switchboard/proto';
import {
  decodeClientFrame,
  decodeServerFrame,
  encodeClientFrame,
  encodeServerFrame,
  encodingForSubprotocol,
  subprotocolFor,
  type Encoding,
} from '../src';

const created = new Date('2025-01-02T03:04:05.678Z');

const clientFrames: framesV1.ClientFrame[] = [
  {
    requestId: '1',
    kind: {
      $case: 'sendMessage',
      value: {
        target: { $case: 'recipientUserId', value: 'bob' },
        clientMessageId: 'c-1',
        text: 'hi ✓ ünïcode',
        attachments: [{ attachmentId: 'a1', contentType: 'image/png', sizeBytes: 1234, fileName: 'x.png', storageRef: 's3://b/k' }],
        mentions: ['carol'],
        metadata: { k: 'v' },
      },
    },
  },
  { requestId: '2', kind: { $case: 'getHistory', value: { conversationId: 'conv-1', fromSeq: 9_007_199_254_740_000, direction: messagingV1.Direction.DIRECTION_BACKWARD, limit: 50 } } },
  { requestId: '3', kind: { $case: 'sync', value: { positions: [{ conversationId: 'c', lastSeq: 7 }], resumeToken: 'r', limit: 10 } } },
  { requestId: '4', kind: { $case: 'markRead', value: { conversationId: 'c', seq: 3 } } },
  { requestId: '5', kind: { $case: 'ping', value: { clientTimeMs: 1_700_000_000_000 } } },
  { requestId: '6', kind: { $case: 'listConversations', value: { page: { pageSize: 20, pageToken: 't' } } } },
];

const serverFrames: framesV1.ServerFrame[] = [
  {
    requestId: '',
    kind: {
      $case: 'welcome',
      value: { connectionId: 'c1', gatewayId: 'g1', userId: 'alice', tenantId: 't1', deviceId: 'd1', heartbeatIntervalMs: 25_000, maxFrameBytes: 65_536, tokenExpiresAt: created },
    },
  },
  { requestId: '1', kind: { $case: 'messageAck', value: { conversationId: 'dm', messageId: 'm1', seq: 42, createdAt: created, clientMessageId: 'c-1', duplicate: true } } },
  { requestId: '2', kind: { $case: 'error', value: { code: commonV1.ErrorCode.ERROR_CODE_RATE_LIMITED, message: 'slow down', field: '', retryAfterMs: 1500 } } },
  {
    requestId: '',
    kind: {
      $case: 'message',
      value: {
        message: {
          tenantId: 't1', conversationId: 'dm', messageId: 'm1', seq: 42, senderId: 'alice', clientMessageId: 'c-1',
          kind: messagingV1.MessageKind.MESSAGE_KIND_TEXT, text: 'hi', attachments: [], mentions: [], createdAt: created,
          editedAt: undefined, deleted: false, metadata: {},
        },
      },
    },
  },
  { requestId: '', kind: { $case: 'reconnect', value: { reason: 'draining', reconnectWithinMs: 5000 } } },
  { requestId: '7', kind: { $case: 'ok', value: {} } },
];

describe.each<Encoding>(['json', 'proto'])('%s codec', (encoding) => {
  it.each(clientFrames.map((f) => [f.kind!.$case, f] as const))('round-trips ClientFrame %s', (_name, frame) => {
    const wire = encodeClientFrame(frame, encoding);
    expect(typeof wire === 'string').toBe(encoding === 'json');
    expect(decodeClientFrame(typeof wire === 'string' ? wire : Buffer.from(wire), encoding === 'proto', encoding)).toEqual(frame);
  });

  it.each(serverFrames.map((f) => [f.kind!.$case, f] as const))('round-trips ServerFrame %s', (_name, frame) => {
    const wire = encodeServerFrame(frame, encoding);
    // ws hands over Buffers for both frame types.
    const data = typeof wire === 'string' ? Buffer.from(wire, 'utf8') : Buffer.from(wire);
    expect(decodeServerFrame(data, encoding === 'proto', encoding)).toEqual(frame);
  });

  it('rejects the wrong frame type for the encoding with UNSUPPORTED', () => {
    const frame = serverFrames[1]!;
    const other: Encoding = encoding === 'json' ? 'proto' : 'json';
    const wire = encodeServerFrame(frame, other);
    expect(() => decodeServerFrame(typeof wire === 'string' ? wire : Buffer.from(wire), other === 'proto', encoding)).toThrow(UnsupportedError);
  });
});

describe('JSON mapping', () => {
  it('uses lowerCamelCase names, the oneof field as key, enum names and RFC 3339 timestamps', () => {
    expect(JSON.parse(encodeClientFrame(clientFrames[0]!, 'json') as string)).toEqual({
      requestId: '1',
      sendMessage: {
        recipientUserId: 'bob',
        clientMessageId: 'c-1',
        text: 'hi ✓ ünïcode',
        attachments: [{ attachmentId: 'a1', contentType: 'image/png', sizeBytes: 1234, fileName: 'x.png', storageRef: 's3://b/k' }],
        mentions: ['carol'],
        metadata: { k: 'v' },
      },
    });
    expect(JSON.parse(encodeServerFrame(serverFrames[2]!, 'json') as string)).toEqual({
      requestId: '2',
      error: { code: 'ERROR_CODE_RATE_LIMITED', message: 'slow down', retryAfterMs: 1500 },
    });
    expect(JSON.parse(encodeServerFrame(serverFrames[1]!, 'json') as string).messageAck.createdAt).toBe('2025-01-02T03:04:05.678Z');
  });

  it('accepts 64-bit integers as strings, snake_case names and enum numbers', () => {
    const frame = decodeServerFrame(
      '{"request_id":"9","history_page":{"messages":[{"conversationId":"c","seq":"12","kind":1}],"hasMore":true}}',
      false,
      'json',
    );
    expect(frame.requestId).toBe('9');
    expect(frame.kind?.$case).toBe('historyPage');
    const page = (frame.kind as { value: framesV1.HistoryPage }).value;
    expect(page.messages[0]!.seq).toBe(12);
    expect(page.messages[0]!.kind).toBe(messagingV1.MessageKind.MESSAGE_KIND_TEXT);
    expect(page.hasMore).toBe(true);
  });

  it('decodes an unknown kind as kind undefined (forward compatible), not as an error', () => {
    expect(decodeServerFrame('{"requestId":"","somethingNew":{"x":1}}', false, 'json')).toEqual({ requestId: '', kind: undefined });
  });
});

describe('malformed input', () => {
  it.each([
    ['not JSON', '{"requestId":'],
    ['a JSON array', '[1,2]'],
    ['JSON null', 'null'],
    ['a JSON string', '"welcome"'],
  ])('rejects %s with INVALID_ARGUMENT', (_name, text) => {
    expect(() => decodeServerFrame(text, false, 'json')).toThrow(InvalidArgumentError);
  });

  it('rejects invalid UTF-8 in a text frame with INVALID_ARGUMENT', () => {
    expect(() => decodeServerFrame(Buffer.from([0x7b, 0xff, 0xfe, 0x7d]), false, 'json')).toThrow(InvalidArgumentError);
  });

  it('rejects truncated or garbage protobuf with INVALID_ARGUMENT', () => {
    const wire = encodeServerFrame(serverFrames[0]!, 'proto') as Uint8Array;
    expect(() => decodeServerFrame(Buffer.from(wire.subarray(0, wire.length - 3)), true, 'proto')).toThrow(InvalidArgumentError);
    expect(() => decodeServerFrame(Buffer.from([0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f]), true, 'proto')).toThrow(InvalidArgumentError);
  });

  it('reports the error with field "frame" and keeps the cause', () => {
    try {
      decodeServerFrame('{', false, 'json');
      throw new Error('unreachable');
    } catch (err) {
      expect(err).toBeInstanceOf(InvalidArgumentError);
      expect((err as InvalidArgumentError).field).toBe('frame');
      expect((err as InvalidArgumentError).code).toBe(commonV1.ErrorCode.ERROR_CODE_INVALID_ARGUMENT);
      expect((err as Error).cause).toBeInstanceOf(SyntaxError);
    }
  });

  it('accepts fragmented and ArrayBuffer binary data', () => {
    const wire = encodeServerFrame(serverFrames[1]!, 'proto') as Uint8Array;
    const parts = [Buffer.from(wire.subarray(0, 5)), Buffer.from(wire.subarray(5))];
    expect(decodeServerFrame(parts, true, 'proto')).toEqual(serverFrames[1]);
    const ab = wire.buffer.slice(wire.byteOffset, wire.byteOffset + wire.byteLength) as ArrayBuffer;
    expect(decodeServerFrame(ab, true, 'proto')).toEqual(serverFrames[1]);
  });
});

describe('subprotocols', () => {
  it('names one per encoding and treats none as JSON', () => {
    expect(subprotocolFor('json')).toBe('switchboard.v1.json');
    expect(subprotocolFor('proto')).toBe('switchboard.v1.proto');
    expect(encodingForSubprotocol('')).toBe('json');
    expect(encodingForSubprotocol(undefined)).toBe('json');
    expect(encodingForSubprotocol('switchboard.v1.proto')).toBe('proto');
    expect(encodingForSubprotocol('switchboard.v2.json')).toBeUndefined();
  });
});
