// Which notifications a committed message plans: pure logic of the pipeline.
import { messagingV1 } from '@switchboard/proto';
import { NOTIFIED_BY_METADATA, plannedForMessage } from '../src/pipeline';

const { MessageKind } = messagingV1;

function created(fields: Partial<messagingV1.Message>) {
  return {
    message: messagingV1.Message.fromPartial({ tenantId: 't1', conversationId: 'room1', messageId: 'm1', seq: 3, senderId: 'author', text: 'Fire drill at 3 pm', ...fields }),
    memberIds: ['author', 'nurse', 'doctor'],
  };
}

describe('plannedForMessage', () => {
  it('plans an announcement for every member but the sender', () => {
    const planned = plannedForMessage('t1', 'e1', new Date(), created({ kind: MessageKind.MESSAGE_KIND_ANNOUNCEMENT }));
    expect(planned.map((p) => [p.userId, p.kind])).toEqual([
      ['nurse', 'message.announcement'],
      ['doctor', 'message.announcement'],
    ]);
  });

  it('leaves a message alone when the service that posted it notifies the audience itself (room announcements)', () => {
    const message = created({ kind: MessageKind.MESSAGE_KIND_ANNOUNCEMENT, metadata: { [NOTIFIED_BY_METADATA]: 'room' } });
    expect(plannedForMessage('t1', 'e1', new Date(), message)).toEqual([]);
  });
});

describe('the in-app preview of a message', () => {
  const previewOf = (text: string) => plannedForMessage('t1', 'e1', new Date(), created({ text }))[0]!.variables.preview!;
  /** Text survives UTF-8 unchanged only if it holds no half of a character. */
  const wellFormed = (text: string) => Buffer.from(text).toString() === text;

  it('keeps a short message whole and cuts a long one to 200 characters with an ellipsis', () => {
    expect(previewOf('Fire drill at 3 pm')).toBe('Fire drill at 3 pm');
    const long = previewOf('x'.repeat(500));
    expect(long).toHaveLength(200);
    expect(long.endsWith('x…')).toBe(true);
  });

  it('never cuts an emoji in half where the cut falls inside it', () => {
    // The emoji's two UTF-16 halves sit at positions 198 and 199; a plain cut after 199 characters keeps only the first.
    const straddling = previewOf(`${'x'.repeat(198)}🩺 and the rest of a long message`);
    expect(wellFormed(straddling)).toBe(true);
    expect(straddling).toBe(`${'x'.repeat(198)}…`);
    // One earlier, the whole emoji fits and stays.
    expect(previewOf(`${'x'.repeat(197)}🩺 and the rest of a long message`)).toBe(`${'x'.repeat(197)}🩺…`);
  });
});
