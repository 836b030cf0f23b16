import { configureInternalCallers } from '@switchboard/grpc';
import { infraEnv } from './infra';
import { freePort, launchService, type ServiceProcess } from './process';

export interface MeshOptions {
  gateways?: number;
  /** Fixed, well-known ports (the local launcher) or free ones (tests). */
  ports?: 'default' | 'free';
  /** Extra environment for every service (e.g. a short heartbeat in tests). */
  env?: Record<string, string>;
  gatewayEnv?: Record<string, string>;
  onLine?: (name: string, line: string) => void;
}

export interface Mesh {
  services: ServiceProcess[];
  gateways: { name: string; url: string; grpcAddress: string; process: ServiceProcess }[];
  addresses: Record<'messaging' | 'presence' | 'room' | 'notification', string>;
  stop(): Promise<void>;
}

const DEFAULT_PORTS = {
  messaging: { grpc: 50052, ops: 9102 },
  presence: { grpc: 50053, ops: 9103 },
  room: { grpc: 50054, ops: 9104 },
  notification: { grpc: 50055, ops: 9105 },
};

/**
 * Starts the whole mesh as separate processes: the four backend services,
 * then the gateways (two by default) once the services they call are ready.
 */
export async function startMesh(options: MeshOptions = {}): Promise<Mesh> {
  const free = options.ports === 'free';
  const base = { ...infraEnv(), ...options.env };
  // The process that starts the mesh operates it: its own internal calls carry the mesh's token.
  configureInternalCallers({ GRPC_INTERNAL_TOKEN: base.GRPC_INTERNAL_TOKEN });
  const started: ServiceProcess[] = [];
  const port = async (fixed: number) => (free ? freePort() : fixed);
  try {
    const addresses = {} as Mesh['addresses'];
    const backends = await Promise.all(
      (Object.keys(DEFAULT_PORTS) as (keyof typeof DEFAULT_PORTS)[]).map(async (service) => {
        const grpc = await port(DEFAULT_PORTS[service].grpc);
        const ops = await port(DEFAULT_PORTS[service].ops);
        addresses[service] = `127.0.0.1:${grpc}`;
        return { service, grpc, ops };
      }),
    );
    // Services that call each other learn the addresses (fixed or free ports alike).
    const peers = { MESSAGING_ADDR: addresses.messaging, PRESENCE_ADDR: addresses.presence, ROOM_ADDR: addresses.room, NOTIFICATION_ADDR: addresses.notification };
    for (const { service, grpc, ops } of backends) {
      started.push(await launchService({ service, env: { ...base, ...peers, GRPC_PORT: String(grpc) }, opsPort: ops, ...(options.onLine ? { onLine: options.onLine } : {}) }));
    }
    const gateways: Mesh['gateways'] = [];
    for (let index = 0; index < (options.gateways ?? 2); index += 1) {
      const name = `gateway-${index + 1}`;
      const wsPort = await port(8080 + index);
      const grpcPort = await port(50051 + index * 10);
      const opsPort = await port(9101 + index * 10);
      const processHandle = await launchService({
        service: 'gateway',
        name,
        env: {
          ...base,
          ...options.gatewayEnv,
          PORT: String(wsPort),
          GRPC_PORT: String(grpcPort),
          GATEWAY_ID: name,
          MESSAGING_ADDR: addresses.messaging,
          PRESENCE_ADDR: addresses.presence,
          ROOM_ADDR: addresses.room,
        },
        opsPort,
        ...(options.onLine ? { onLine: options.onLine } : {}),
      });
      started.push(processHandle);
      gateways.push({ name, url: `ws://127.0.0.1:${wsPort}/ws`, grpcAddress: `127.0.0.1:${grpcPort}`, process: processHandle });
    }
    return {
      services: started,
      gateways,
      addresses,
      // Gateways first (they drain), then the services behind them.
      stop: async () => {
        await Promise.all(gateways.map((g) => g.process.stop()));
        await Promise.all(started.filter((s) => !gateways.some((g) => g.process === s)).map((s) => s.stop()));
      },
    };
  } catch (err) {
    await Promise.all(started.map((s) => s.kill()));
    throw err;
  }
}
