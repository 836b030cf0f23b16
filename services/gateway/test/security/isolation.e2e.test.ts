import { readFileSync } from 'node:fs';
import * as grpc from '@grpc/grpc-js';
import * as protobuf from 'protobufjs';
import { startMesh, infraEnv, type Mesh } from '@switchboard/devenv';
import { createClient, INTERNAL_TOKEN_METADATA } from '@switchboard/grpc';
import { newId } from '@switchboard/ids';
import { createPool, type Pool } from '@switchboard/postgres';
import { descriptorSetPath, notificationV1, presenceV1, roomV1 } from '@switchboard/proto';
import { rawConnect, Report, SECURITY_GATEWAY_ENV, token, until, type RawConnection } from './support';

// eslint-disable-next-line @typescript-eslint/no-require-imports
const descriptorExt = require('protobufjs/ext/descriptor') as { FileDescriptorSet: { decode(data: Uint8Array): unknown } };

// Security suite, part 3: tenant A addresses tenant B's resources through
// every gRPC method of every service and every WebSocket frame kind, both
// enumerated from the proto descriptors (a new method or frame kind is
// attacked without anyone adding it here); nothing of B may appear in A's
// view and B's state must not change. Then the database role and RLS.
const report = new Report('security suite: cross-tenant isolation');
const A = `ta${newId().slice(0, 10)}`;
const B = `tb${newId().slice(0, 10)}`;
const SECRET = `BSECRET${newId().slice(0, 12)}`;
let mesh: Mesh;
const sockets: RawConnection[] = [];
const root = (protobuf.Root as unknown as { fromDescriptor(set: unknown): protobuf.Root }).fromDescriptor(descriptorExt.FileDescriptorSet.decode(readFileSync(descriptorSetPath)));

/** Everything of B an attacker must never see: B's tenant id, resource ids, and the secret in every text B stored. */
const markers = new Set<string>([B, SECRET]);
/** RPCs a gateway makes for all its tenants at once (one call per interval), internal by design. */
const MESH_SYSTEM_RPCS = ['PresenceService.RefreshLeases', 'PresenceService.GatewayDown'];
/** Every request A sent: what A stored itself may come back to A. */
const sentByA: unknown[] = [];
const ids = { conversation: '', message: '', room: '', notification: '', user: 'bob-b', device: 'bdev' };

beforeAll(async () => {
  mesh = await startMesh({ gateways: 1, ports: 'free', env: { LOG_LEVEL: 'warn' }, gatewayEnv: SECURITY_GATEWAY_ENV });
  // Tenant B's data: a conversation with a message, a room, a notification, a presence status.
  const bob = await rawConnect(mesh.gateways[0]!.url, await token(B, 'bob-b', { deviceId: 'bdev' }));
  const carol = await rawConnect(mesh.gateways[0]!.url, await token(B, 'carol-b'));
  sockets.push(bob, carol);
  const sent = await bob.request({ sendMessage: { recipientUserId: 'carol-b', clientMessageId: newId(), text: `${SECRET} lab result` } });
  ids.conversation = sent.messageAck.conversationId;
  ids.message = sent.messageAck.messageId;
  markers.add(ids.conversation).add(ids.message);
  const asBob = { context: { tenantId: B, userId: 'bob-b', deviceId: 'bdev', internal: false } };
  const asB = { context: { tenantId: B, userId: '', deviceId: '', internal: true } };
  const rooms = createClient(roomV1.RoomServiceClient, mesh.addresses.room);
  const created = await rooms.createRoom(roomV1.CreateRoomRequest.fromPartial({ name: `${SECRET} ward`, topic: SECRET, memberIds: ['carol-b'] }), asBob).catch(() => undefined);
  if (created?.room?.roomId) markers.add((ids.room = created.room.roomId));
  rooms.close();
  const notifications = createClient(notificationV1.NotificationServiceClient, mesh.addresses.notification);
  await notifications.notify(notificationV1.NotifyRequest.fromPartial({ audience: { $case: 'userId', value: 'carol-b' }, kind: 'lab_result', variables: { title: SECRET, body: SECRET } }), asB).catch(() => undefined);
  const listed = await notifications.listNotifications(notificationV1.ListNotificationsRequest.fromPartial({}), { context: { tenantId: B, userId: 'carol-b', deviceId: '', internal: false } }).catch(() => undefined);
  for (const n of listed?.notifications ?? []) markers.add((ids.notification = n.notificationId));
  notifications.close();
  const presence = createClient(presenceV1.PresenceServiceClient, mesh.addresses.presence);
  await presence.setStatus(presenceV1.SetStatusRequest.fromPartial({ customMessage: SECRET }), asBob).catch(() => undefined);
  presence.close();
}, 180_000);

afterAll(async () => {
  for (const s of sockets) s.ws.terminate();
  await mesh?.stop();
  report.print();
});

/** A value for a field, aimed at B's resource of the kind its name says. */
function aimedAt(field: string): string {
  const name = field.toLowerCase();
  if (!/(id|ids|token|code|invite|pattern|topic|subject|user|member|recipient|owner|target|sender|watch)$/.test(name)) return 'attack text';
  if (name.includes('conversation')) return ids.conversation;
  if (name.includes('room')) return ids.room || ids.conversation;
  if (name.includes('notification')) return ids.notification || ids.message;
  if (name.includes('message_id')) return ids.message;
  if (name.includes('tenant')) return B;
  if (name.includes('device')) return ids.device;
  if (/user|member|recipient|owner|target|sender|actor|watch|invitee/.test(name)) return ids.user;
  if (/topic|pattern|subject/.test(name)) return 'labs.results';
  if (name.includes('token') || name.includes('code') || name.includes('invite')) return ids.room || 'b-invite';
  return ids.conversation;
}

/** A request of `type` with every id aimed at B: strings by field name, one of each oneof, nested messages a few levels deep. */
function attackRequest(type: protobuf.Type, depth = 0, context?: Record<string, unknown>): Record<string, unknown> {
  const request: Record<string, unknown> = {};
  const chosenOneofs = new Set<string>();
  for (const field of type.fieldsArray) {
    field.resolve();
    if (field.partOf) {
      if (chosenOneofs.has(field.partOf.name)) continue;
      chosenOneofs.add(field.partOf.name);
    }
    if (field.resolvedType?.fullName === '.switchboard.common.v1.TenantContext') {
      if (context) request[field.name] = context;
      continue;
    }
    let value: unknown;
    if (field.map) value = { key: aimedAt(field.name) };
    else if (field.resolvedType instanceof protobuf.Enum) value = Object.values(field.resolvedType.values).find((v) => v !== 0) ?? 0;
    else if (field.resolvedType instanceof protobuf.Type) {
      if (depth >= 3 || field.resolvedType.fullName.startsWith('.google.protobuf')) continue;
      value = attackRequest(field.resolvedType, depth + 1);
    } else if (field.type === 'string') value = aimedAt(field.name);
    else if (field.type === 'bool') value = true;
    else if (field.type === 'bytes') value = Buffer.from(SECRET.replace(SECRET, 'attack'));
    else value = 1;
    request[field.name] = field.repeated && !field.map ? [value] : value;
  }
  return request;
}

function services(): protobuf.Service[] {
  const found: protobuf.Service[] = [];
  const walk = (ns: protobuf.NamespaceBase) => {
    for (const nested of ns.nestedArray) {
      if (nested instanceof protobuf.Service) found.push(nested);
      else if (nested instanceof protobuf.Namespace) walk(nested);
    }
  };
  walk(root);
  return found.filter((s) => s.fullName.startsWith('.switchboard.'));
}

function addressOf(service: protobuf.Service): string {
  const pkg = service.fullName.split('.')[2]!;
  if (pkg === 'gateway') return mesh.gateways[0]!.grpcAddress;
  return mesh.addresses[pkg as keyof Mesh['addresses']];
}

interface Outcome {
  error?: { code: number; details: string };
  response?: unknown;
}

function call(service: protobuf.Service, method: protobuf.Method, request: Record<string, unknown>, metadata: grpc.Metadata): Promise<Outcome> {
  const requestType = root.lookupType(method.requestType);
  const responseType = root.lookupType(method.responseType);
  const client = new grpc.Client(addressOf(service), grpc.credentials.createInsecure());
  return new Promise((resolve) => {
    client.makeUnaryRequest(
      `/${service.fullName.slice(1)}/${method.name}`,
      (value: Record<string, unknown>) => Buffer.from(requestType.encode(requestType.fromObject(value)).finish()),
      (bytes: Buffer) => responseType.toObject(responseType.decode(bytes), { longs: String, enums: String, bytes: String }),
      request,
      metadata,
      { deadline: Date.now() + 5000 },
      (err, response) => {
        client.close();
        resolve(err ? { error: { code: err.code, details: err.details } } : { response });
      },
    );
  });
}

function metadataFor(kind: 'user' | 'internal'): grpc.Metadata {
  const metadata = new grpc.Metadata();
  metadata.set('x-sb-tenant', A);
  if (kind === 'user') {
    metadata.set('x-sb-user', 'alice-a');
    metadata.set('x-sb-device', 'adev');
  } else {
    // A real internal caller of tenant A: with the mesh token (internal.int.test.ts shows the claim refused without it).
    metadata.set('x-sb-internal', 'true');
    metadata.set(INTERNAL_TOKEN_METADATA, infraEnv().GRPC_INTERNAL_TOKEN!);
  }
  return metadata;
}

/**
 * B's markers in what A got back. An id A itself sent may be echoed (e.g. in
 * "conversation X not found"); B's secret text never is, and any marker A did
 * not send is a leak.
 */
const leaks = (value: unknown, sent: unknown = null) => {
  const got = JSON.stringify(value ?? null);
  const echoable = JSON.stringify(sent) + JSON.stringify(sentByA);
  const isError = typeof value === 'object' && value !== null && ('error' in value || 'details' in value);
  return [...markers].filter((m) => {
    if (!m || !got.includes(m)) return false;
    // B's secret text never comes back; B's tenant id only as an echo in a refusal of this very request.
    if (m === SECRET) return true;
    if (m === B) return !(isError && JSON.stringify(sent).includes(m));
    // Resource ids: A may get back ids it sent itself (now or stored by an earlier request of A).
    return !echoable.includes(m);
  });
};

/** B's state as B sees it, to compare before and after the attacks. */
async function stateOfB(bob: RawConnection) {
  const history = await bob.request({ getHistory: { conversationId: ids.conversation, limit: 100 } });
  const conversations = await bob.request({ listConversations: {} });
  const rooms = createClient(roomV1.RoomServiceClient, mesh.addresses.room);
  const asBob = { context: { tenantId: B, userId: 'bob-b', deviceId: 'bdev', internal: false } };
  const room = ids.room ? await rooms.getRoom(roomV1.GetRoomRequest.fromPartial({ roomId: ids.room }), asBob).catch((e) => String(e)) : undefined;
  const members = ids.room ? await rooms.listMembers(roomV1.ListMembersRequest.fromPartial({ roomId: ids.room }), asBob).catch((e) => String(e)) : undefined;
  rooms.close();
  return JSON.stringify({ history, conversations: conversations.conversationList?.conversations?.map((c: { lastSeq: number; memberIds: string[] }) => [c.lastSeq, c.memberIds]), room, members }).replace(/"requestId":"r\d+"/g, '');
}

describe('cross-tenant matrix', () => {
  it('every gRPC method of every service refuses tenant A addressing tenant B, and nothing of B reaches A', async () => {
    const bob = sockets[0]!;
    const before = await stateOfB(bob);
    const alice = await rawConnect(mesh.gateways[0]!.url, await token(A, 'alice-a', { deviceId: 'adev' }));
    sockets.push(alice);
    let methods = 0;
    const refusedCodes = new Map<string, number>();
    for (const service of services()) {
      for (const method of service.methodsArray) {
        if (method.requestStream || method.responseStream) continue;
        methods += 1;
        const requestType = root.lookupType(method.requestType);
        const name = `${service.name}.${method.name}`;
        const outcomes: string[] = [];
        for (const caller of ['user', 'internal'] as const) {
          const request = attackRequest(requestType);
          sentByA.push(request);
          const outcome = await call(service, method, request, metadataFor(caller));
          // Gateway-level RPCs serve every tenant of a gateway by design (presence.proto): an internal caller
          // gets back the tenant ids it named; B's content and resources still never appear.
          const leaked = leaks(outcome, request).filter((m) => !(caller === 'internal' && MESH_SYSTEM_RPCS.includes(name) && m === B));
          expect({ method: name, caller, leaked }).toEqual({ method: name, caller, leaked: [] });
          outcomes.push(outcome.error ? grpc.status[outcome.error.code]! : 'OK (own tenant only)');
          if (outcome.error) refusedCodes.set(grpc.status[outcome.error.code]!, (refusedCodes.get(grpc.status[outcome.error.code]!) ?? 0) + 1);
        }
        // A body naming tenant B while the call's metadata says A.
        if (requestType.fieldsArray.some((f) => f.name === 'context')) {
          const outcome = await call(service, method, attackRequest(requestType, 0, { tenant_id: B, user_id: ids.user, internal: true }), metadataFor('internal'));
          expect({ method: name, code: outcome.error ? grpc.status[outcome.error.code] : 'OK' }).toEqual({ method: name, code: expect.stringMatching(/^(PERMISSION_DENIED|UNIMPLEMENTED)$/) });
          outcomes.push(`body context B: ${grpc.status[outcome.error!.code]}`);
        }
        report.held(`gRPC ${name} as A (user, internal) on B's ids`, outcomes.join(' / '));
      }
    }
    // A's own view and A's pushes carry nothing of B.
    expect(alice.frames.filter((f) => !f.requestId && leaks(f, sentByA).length > 0)).toEqual([]);
    expect(await stateOfB(bob)).toBe(before);
    expect(methods).toBeGreaterThan(80);
    console.log(`cross-tenant matrix: ${methods} gRPC methods, outcomes ${JSON.stringify(Object.fromEntries(refusedCodes))}`);
  }, 240_000);

  it('every WebSocket frame kind refuses tenant A addressing tenant B, and A receives nothing of B', async () => {
    const clientFrame = root.lookupType('switchboard.gateway.v1.ClientFrame');
    const kinds = clientFrame.oneofs['kind']!.fieldsArray;
    const alice = await rawConnect(mesh.gateways[0]!.url, await token(A, 'alice-a2'));
    sockets.push(alice);
    for (const kind of kinds) {
      kind.resolve();
      const value = kind.resolvedType instanceof protobuf.Type ? attackRequest(kind.resolvedType) : {};
      sentByA.push(value);
      const answer = await alice.request({ [kind.name]: value });
      expect({ kind: kind.name, leaked: leaks(answer, value) }).toEqual({ kind: kind.name, leaked: [] });
      report.held(`WebSocket ${kind.name} as A on B's ids`, answer.error ? answer.error.code : `${Object.keys(answer).find((k) => k !== 'requestId')} (own tenant only)`);
    }
    // Pushes that might have been misrouted have time to arrive.
    await new Promise((r) => setTimeout(r, 500));
    // Pushes may carry what A itself stored (ids it sent as text or metadata), never anything else of B.
    expect(alice.frames.filter((f) => !f.requestId && leaks(f, sentByA).length > 0)).toEqual([]);
    expect(kinds.length).toBeGreaterThanOrEqual(12);
  });
});

describe('PostgreSQL: row-level security binds the services role', () => {
  let pool: Pool;
  beforeAll(() => {
    pool = createPool({ connectionString: infraEnv()['DATABASE_URL']!, applicationName: 'security-suite', max: 2 });
  });
  afterAll(() => pool?.end());

  it('the services role is neither superuser nor BYPASSRLS', async () => {
    const { rows } = await pool.query('SELECT current_user AS role, rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user');
    expect(rows[0]).toMatchObject({ rolsuper: false, rolbypassrls: false });
    report.held(`database role ${rows[0].role}`, 'not superuser, not BYPASSRLS');
  });

  it('every table with tenant data has row-level security forced, except the documented cross-tenant queues', async () => {
    const { rows } = await pool.query(
      `SELECT n.nspname AS schema, c.relname AS table, c.relrowsecurity AS enabled, c.relforcerowsecurity AS forced
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind = 'r' AND n.nspname IN ('messaging', 'room', 'notification') AND c.relname <> 'schema_migrations'`,
    );
    // Read across tenants by their relay/worker only, never by a request handler (docs/security.md).
    const crossTenantQueues = ['messaging.outbox', 'messaging.room_purges', 'notification.delivery_queue', 'room.outbox', 'room.purge_queue'];
    const unguarded = rows.filter((r) => !(r.enabled && r.forced)).map((r) => `${r.schema}.${r.table}`);
    expect(unguarded.sort()).toEqual(crossTenantQueues.filter((t) => unguarded.includes(t)).sort());
    report.held(`${rows.length} tables in messaging, room, notification`, `RLS enabled and forced on all but ${unguarded.join(', ')}`);
  });

  it('a query that forgets the tenant sees nothing; another tenant sees none of B; a write into B is refused', async () => {
    const client = await pool.connect();
    try {
      expect((await client.query('SELECT count(*)::int AS n FROM messaging.messages')).rows[0].n).toBe(0);
      await client.query('BEGIN');
      await client.query(`SELECT set_config('app.tenant_id', $1, true)`, [A]);
      expect((await client.query('SELECT count(*)::int AS n FROM messaging.messages WHERE tenant_id = $1', [B])).rows[0].n).toBe(0);
      await expect(client.query(`UPDATE messaging.messages SET body = 'x' WHERE tenant_id = $1 RETURNING 1`, [B])).resolves.toMatchObject({ rowCount: 0 });
      await expect(
        client.query(`INSERT INTO messaging.conversations (tenant_id, conversation_id, kind, created_at, last_message_at) VALUES ($1, 'x', 1, now(), now())`, [B]),
      ).rejects.toThrow(/row-level security/);
      await client.query('ROLLBACK');
      await client.query('BEGIN');
      await client.query(`SELECT set_config('app.tenant_id', $1, true)`, [B]);
      expect((await client.query('SELECT count(*)::int AS n FROM messaging.messages')).rows[0].n).toBeGreaterThan(0);
      await client.query('ROLLBACK');
    } finally {
      client.release();
    }
    report.held('queries without a tenant, as A for B, and an insert of a B row as A', '0 rows, 0 rows, row-level security violation');
  });
});

void until;
