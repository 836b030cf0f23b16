import { spawn } from 'node:child_process';
import { appendFileSync, existsSync, readFileSync } from 'node:fs';
import * as path from 'node:path';
import { freePort, infraEnv, repoRoot, startMesh, type Mesh } from '@switchboard/devenv';
import { createClient } from '@switchboard/grpc';
import { roomV1 } from '@switchboard/proto';
import { Client as PgClient } from 'pg';

export interface ServerProcess {
  name: string;
  pid: number;
  /** Connection-holding processes (gateways, Socket.IO instances) are where memory per connection is read. */
  edge: boolean;
  /** The gateway's ops port (its /metrics has the V8 heap). */
  opsPort?: number;
  /** What the process printed (the inspector URL when profiling). */
  output?: string[];
}

export interface InfraProcess {
  name: string;
  pid: number;
  tree: boolean;
}

/** The system under test, started for the run and stopped after it. */
export interface Target {
  kind: 'switchboard' | 'socketio';
  /** Where clients connect: one per gateway / instance. */
  urls: string[];
  processes: ServerProcess[];
  infra: InfraProcess[];
  /** Creates rooms with these members; returns their ids (the conversation ids messages go to). */
  createRooms(tenantId: string, rooms: string[][]): Promise<string[]>;
  stop(): Promise<void>;
}

const MAX_INITIAL_MEMBERS = 500;

/** The local infrastructure's server processes (from their pid files), for CPU accounting. */
function infraProcesses(kinds: string[]): InfraProcess[] {
  const base = path.join(repoRoot, '.data', 'infra');
  const files: Record<string, string> = { postgres: 'postgres/postmaster.pid', redis: 'redis/redis.pid', nats: 'nats/nats.pid', kafka: 'kafka/kafka.pid' };
  const out: InfraProcess[] = [];
  for (const kind of kinds) {
    const file = path.join(base, files[kind]!);
    if (!existsSync(file)) continue;
    const pid = Number(readFileSync(file, 'utf8').split('\n')[0]!.trim());
    if (pid > 0) out.push({ name: kind, pid, tree: kind === 'postgres' });
  }
  return out;
}

export async function startSwitchboard(options: {
  gateways: number;
  gatewayEnv?: Record<string, string>;
  /** Extra environment for every service (the gateways' own settings win). */
  serviceEnv?: Record<string, string>;
  serviceLog?: string;
}): Promise<Target> {
  const mesh: Mesh = await startMesh({
    gateways: options.gateways,
    ports: 'free',
    env: { LOG_LEVEL: 'warn', ...options.serviceEnv },
    ...(options.gatewayEnv ? { gatewayEnv: options.gatewayEnv } : {}),
    ...(options.serviceLog ? { onLine: (name: string, line: string) => appendFileSync(options.serviceLog!, `${name} | ${line}\n`) } : {}),
  });
  const rooms = createClient(roomV1.RoomServiceClient, mesh.addresses.room);
  return {
    kind: 'switchboard',
    urls: mesh.gateways.map((g) => g.url),
    processes: mesh.services.map((s) => ({ name: s.name, pid: s.child.pid!, edge: s.name.startsWith('gateway'), opsPort: s.opsPort, output: s.output })),
    infra: infraProcesses(['postgres', 'redis', 'nats', 'kafka']),
    async createRooms(tenantId, memberLists) {
      const ids: string[] = [];
      for (const [index, members] of memberLists.entries()) {
        const owner = members[0]!;
        const context = { tenantId, userId: owner, deviceId: '', internal: false };
        const { room } = await rooms.createRoom(
          roomV1.CreateRoomRequest.fromPartial({ name: `load room ${index}`, memberIds: members.slice(1, MAX_INITIAL_MEMBERS), requestId: `load-${tenantId}-${index}` }),
          { context },
        );
        for (let from = MAX_INITIAL_MEMBERS; from < members.length; from += MAX_INITIAL_MEMBERS) {
          await rooms.addMembers(roomV1.AddMembersRequest.fromPartial({ roomId: room!.roomId, userIds: members.slice(from, from + MAX_INITIAL_MEMBERS) }), { context });
        }
        ids.push(room!.roomId);
      }
      return ids;
    },
    async stop() {
      rooms.close();
      await mesh.stop();
    },
  };
}

/** Two (or more) Socket.IO 4 instances on the same Redis (redis-adapter) and PostgreSQL. */
export async function startSocketio(options: { instances: number }): Promise<Target> {
  const env = infraEnv();
  const children: { child: ReturnType<typeof spawn>; port: number }[] = [];
  try {
    for (let i = 0; i < options.instances; i += 1) {
      const port = await freePort();
      const child = spawn(process.execPath, [path.join(__dirname, '..', 'dist', 'socketio-server.js')], {
        env: { ...process.env, PORT: String(port), REDIS_URL: env.REDIS_URL, DATABASE_URL: env.DATABASE_URL },
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      children.push({ child, port });
      await new Promise<void>((resolve, reject) => {
        let output = '';
        const timer = setTimeout(() => reject(new Error(`socket.io instance ${i} not listening within 30 s: ${output}`)), 30_000);
        child.stdout!.on('data', (chunk: Buffer) => {
          output += chunk.toString();
          if (output.includes('listening')) {
            clearTimeout(timer);
            resolve();
          }
        });
        child.stderr!.on('data', (chunk: Buffer) => (output += chunk.toString()));
        child.once('exit', (code) => {
          clearTimeout(timer);
          reject(new Error(`socket.io instance ${i} exited with ${code}: ${output}`));
        });
      });
    }
  } catch (err) {
    for (const { child } of children) child.kill('SIGKILL');
    throw err;
  }
  return {
    kind: 'socketio',
    urls: children.map(({ port }) => `http://127.0.0.1:${port}`),
    processes: children.map(({ child }, i) => ({ name: `socketio-${i + 1}`, pid: child.pid!, edge: true })),
    infra: infraProcesses(['postgres', 'redis']),
    // Socket.IO has no room service: a room is a name the members join.
    createRooms: async (_tenant, memberLists) => memberLists.map((_, i) => `room${i}`),
    async stop() {
      await Promise.all(
        children.map(
          ({ child }) =>
            new Promise<void>((resolve) => {
              if (child.exitCode !== null) return resolve();
              const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
              child.once('exit', () => {
                clearTimeout(timer);
                resolve();
              });
              child.kill('SIGTERM');
            }),
        ),
      );
    },
  };
}

/**
 * Refreshes PostgreSQL's statistics (`ANALYZE`, the whole database). A run
 * uses a tenant the planner has never seen, so without this its estimate for
 * the tenant is one row, and lookups by id turn into scans of the whole
 * tenant that grow with every message of the run (notification's confirm
 * queries did). Called after the warm-up, when the tenant has rows: the
 * plans are then those of an established tenant, as in production, for
 * Switchboard and the baseline alike.
 */
export async function analyzeDatabase(): Promise<void> {
  const client = new PgClient({ connectionString: infraEnv().DATABASE_ADMIN_URL });
  await client.connect();
  try {
    await client.query('ANALYZE');
  } finally {
    await client.end();
  }
}

/** The gateway's V8 heap in use, from its /metrics. */
export async function gatewayHeap(opsPort: number): Promise<number | undefined> {
  try {
    const text = await (await fetch(`http://127.0.0.1:${opsPort}/metrics`)).text();
    const match = /^process_memory_bytes\{kind="heap_used"\} (\d+)/m.exec(text);
    return match ? Number(match[1]) : undefined;
  } catch {
    return undefined;
  }
}
