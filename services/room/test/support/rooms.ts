// Helpers shared by room's tests: request builders and tenant contexts.
import { launchWithClient, type ServiceProcess } from '@switchboard/devenv';
import type { PromiseClient } from '@switchboard/grpc';
import { eventsV1, roomV1 } from '@switchboard/proto';

export type RoomClient = PromiseClient<roomV1.RoomServiceClient>;

export async function startRoom(env: Record<string, string> = {}): Promise<{ service: ServiceProcess; client: RoomClient; address: string }> {
  return launchWithClient('room', roomV1.RoomServiceClient, env);
}

export function createRequest(fields: Partial<roomV1.CreateRoomRequest>): roomV1.CreateRoomRequest {
  return {
    context: undefined,
    name: 'Ward 4 care team',
    topic: '',
    description: '',
    avatarRef: '',
    metadata: {},
    visibility: roomV1.RoomVisibility.ROOM_VISIBILITY_PRIVATE,
    settings: undefined,
    memberIds: [],
    ownerId: '',
    requestId: '',
    ...fields,
  };
}

export const page = (pageSize = 0, pageToken = '') => ({ pageSize, pageToken });

export function contexts(tenantId: string) {
  return {
    as: (userId: string, tenant = tenantId) => ({ context: { tenantId: tenant, userId, deviceId: '', internal: false } }),
    internal: (tenant = tenantId, userId = '') => ({ context: { tenantId: tenant, userId, deviceId: '', internal: true } }),
  };
}

/** Adds users with a role, as an internal system would (care-team assembly). */
export async function addWithRole(client: RoomClient, tenantId: string, roomId: string, role: eventsV1.RoomRole, ...userIds: string[]): Promise<void> {
  await client.addMembers({ context: undefined, roomId, userIds, role }, contexts(tenantId).internal());
}
