import { framesV1, messagingV1 } from '@switchboard/proto';
import { Coalescer } from '../src/coalescer';
import { Connection } from '../src/connection';

/** Just enough of a ws socket to see what would go on the wire. */
function fakeSocket() {
  const sent: (string | Buffer)[] = [];
  return { sent, socket: { OPEN: 1, CLOSED: 3, CLOSING: 2, readyState: 1, send: (data: string | Buffer) => sent.push(data) } };
}

const identity = { tenantId: 'acme', userId: 'bob', deviceId: 'phone', roles: [], eventPatterns: [], expiresAt: new Date(Date.now() + 60_000) };
const message = (seq: number): framesV1.ServerFrame => ({
  requestId: '',
  kind: { $case: 'message', value: { message: messagingV1.Message.fromPartial({ conversationId: 'c1', seq, text: `m${seq}` }) } },
});

function connection(encoding: 'json' | 'proto', windowMs: number) {
  const { sent, socket } = fakeSocket();
  const c = new Connection('c', socket as never, identity, encoding);
  c.coalescer = new Coalescer(windowMs);
  return { c, sent };
}

const flushed = (ms: number) => new Promise((r) => setTimeout(r, ms + 5));

describe('frame coalescing', () => {
  it('sends pushes queued within the window as one batch message, in order', async () => {
    const { c, sent } = connection('json', 2);
    c.push(message(1));
    c.push(message(2));
    c.push(message(3));
    expect(sent).toHaveLength(0);
    await flushed(2);
    expect(sent).toHaveLength(1);
    const batch = framesV1.ServerFrame.fromJSON(JSON.parse(sent[0] as string));
    expect(batch.kind?.$case).toBe('batch');
    const frames = batch.kind?.$case === 'batch' ? batch.kind.value.frames : [];
    expect(frames.map((f) => (f.kind?.$case === 'message' ? f.kind.value.message?.seq : undefined))).toEqual([1, 2, 3]);
  });

  it('sends a lone push as itself, reusing an encoding shared with other connections', async () => {
    const { c, sent } = connection('proto', 0);
    const shared = Buffer.from(framesV1.ServerFrame.encode(message(7)).finish());
    c.push(message(7), shared);
    await flushed(0);
    expect(sent).toEqual([shared]);
  });

  it('never holds replies: send() goes out at once', () => {
    const { c, sent } = connection('json', 50);
    c.push(message(1));
    c.send({ requestId: 'r1', kind: { $case: 'pong', value: { clientTimeMs: 1, serverTimeMs: 2 } } });
    expect(sent).toHaveLength(1);
    expect(JSON.parse(sent[0] as string)).toMatchObject({ requestId: 'r1', pong: {} });
  });
});
