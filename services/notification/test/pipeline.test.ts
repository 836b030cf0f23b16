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
