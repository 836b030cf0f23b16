// SearchRooms: PostgreSQL full text (name > topic > description) and trigram
// similarity of the name, ranked, paginated, and only what the caller may see.
import { type ServiceProcess } from '@switchboard/devenv';
import { newId } from '@switchboard/ids';
import { roomV1 } from '@switchboard/proto';
import { contexts, createRequest, page, startRoom, type RoomClient } from './support/rooms';

const { RoomVisibility: V } = roomV1;

describe('room search', () => {
  const tenantId = newId();
  const { as, internal } = contexts(tenantId);
  let service: ServiceProcess;
  let client: RoomClient;
  const [alice, bob] = [newId(), newId()];
  const ids: Record<string, string> = {};

  beforeAll(async () => {
    ({ service, client } = await startRoom());
    const make = async (key: string, owner: string, fields: Partial<roomV1.CreateRoomRequest>) => {
      ids[key] = (await client.createRoom(createRequest(fields), as(owner))).room!.roomId;
    };
    await make('nameMatch', alice, { name: 'Cardiology rounds', visibility: V.ROOM_VISIBILITY_PUBLIC });
    await make('topicMatch', alice, { name: 'Morning huddle', topic: 'cardiology follow-ups', visibility: V.ROOM_VISIBILITY_PUBLIC });
    await make('descriptionMatch', alice, { name: 'Ward 3', description: 'Patients after cardiology procedures', visibility: V.ROOM_VISIBILITY_PUBLIC });
    await make('unrelated', alice, { name: 'Pharmacy', topic: 'stock', visibility: V.ROOM_VISIBILITY_PUBLIC });
    await make('bobsPrivate', bob, { name: 'Cardiology board (private)', visibility: V.ROOM_VISIBILITY_PRIVATE });
    await make('alicesPrivate', alice, { name: 'Cardiology staffing', visibility: V.ROOM_VISIBILITY_PRIVATE });
    await make('archived', alice, { name: 'Cardiology archive', visibility: V.ROOM_VISIBILITY_PUBLIC });
    await client.archiveRoom({ context: undefined, roomId: ids.archived!, reason: '' }, as(alice));
    await make('deleted', alice, { name: 'Cardiology deleted', visibility: V.ROOM_VISIBILITY_PUBLIC });
    await client.deleteRoom({ context: undefined, roomId: ids.deleted!, expectedVersion: 0 }, as(alice));
    // The same words in another tenant are never found here.
    await client.createRoom(createRequest({ name: 'Cardiology elsewhere', visibility: V.ROOM_VISIBILITY_PUBLIC }), contexts(newId()).as(alice));
  });

  afterAll(async () => {
    client?.close();
    expect(await service?.stop()).toBe(0);
  });

  const search = async (query: string, caller = as(bob), fields: Partial<roomV1.SearchRoomsRequest> = {}) =>
    (await client.searchRooms({ context: undefined, query, visibility: 0, includeArchived: false, page: page(), ...fields }, caller)).results;
  const keys = (results: roomV1.RoomSearchResult[]) => results.map((r) => Object.entries(ids).find(([, id]) => id === r.room!.roomId)?.[0] ?? r.room!.name);

  it('ranks a match in the name above the topic above the description', async () => {
    const found = keys(await search('cardiology', as(newId())));
    expect(found).toEqual(['nameMatch', 'topicMatch', 'descriptionMatch']);
  });

  it('finds partial words and typos in names by trigram similarity', async () => {
    expect(keys(await search('cardiolgy rounds', as(newId())))[0]).toBe('nameMatch');
    expect(keys(await search('pharmac', as(newId())))).toEqual(['unrelated']);
    expect(await search('zzzz qqqq', as(newId()))).toEqual([]);
  });

  it('shows public rooms and the caller’s own private rooms, marking membership; archived only when asked; deleted never', async () => {
    const bobs = await search('cardiology', as(bob));
    expect(keys(bobs).sort()).toEqual(['bobsPrivate', 'descriptionMatch', 'nameMatch', 'topicMatch'].sort());
    expect(bobs.find((r) => r.room!.roomId === ids.bobsPrivate)!.member).toBe(true);
    expect(bobs.find((r) => r.room!.roomId === ids.nameMatch)!.member).toBe(false);
    const alices = keys(await search('cardiology', as(alice), { includeArchived: true }));
    expect(alices.sort()).toEqual(['alicesPrivate', 'archived', 'descriptionMatch', 'nameMatch', 'topicMatch'].sort());
    expect(keys(await search('cardiology', as(alice), { visibility: V.ROOM_VISIBILITY_PRIVATE }))).toEqual(['alicesPrivate']);
    // Internal callers see the tenant's rooms whatever their visibility.
    expect(keys(await search('cardiology', internal())).sort()).toEqual(['alicesPrivate', 'bobsPrivate', 'descriptionMatch', 'nameMatch', 'topicMatch'].sort());
  });

  it('pages through results without repeating or skipping, and lists everything visible for an empty query', async () => {
    const seen: string[] = [];
    let pageToken = '';
    let pages = 0;
    do {
      const response = await client.searchRooms({ context: undefined, query: '', visibility: 0, includeArchived: false, page: page(2, pageToken) }, as(bob));
      seen.push(...keys(response.results));
      pageToken = response.page!.nextPageToken;
      pages += 1;
    } while (pageToken);
    expect(pages).toBe(3);
    expect(seen.sort()).toEqual(['bobsPrivate', 'descriptionMatch', 'nameMatch', 'topicMatch', 'unrelated'].sort());
  });
});
