import type { SwitchboardError } from '@switchboard/errors';
import { configureInternalCallers, createClient, type PromiseClient } from '@switchboard/grpc';
import type { Client } from '@grpc/grpc-js';
import { createServer, Socket } from 'node:net';
import { infraEnv } from './infra';
import { freePort, launchService, type ServiceName, type ServiceProcess } from './process';

/**
 * Starts one built service as its own process on free ports, against the
 * local infrastructure, and returns it with a typed gRPC client.
 */
export async function launchWithClient<C extends Client>(
  service: Exclude<ServiceName, 'gateway'>,
  Ctor: Parameters<typeof createClient<C>>[0],
  env: Record<string, string> = {},
): Promise<{ service: ServiceProcess; client: PromiseClient<C>; address: string }> {
  const grpcPort = await freePort();
  const settings: Record<string, string> = { ...infraEnv(), LOG_LEVEL: 'warn', GRPC_PORT: String(grpcPort), ...env };
  // The caller gets a client of the service: its internal calls carry the service's token.
  configureInternalCallers({ GRPC_INTERNAL_TOKEN: settings.GRPC_INTERNAL_TOKEN });
  const processHandle = await launchService({
    service,
    env: settings,
    opsPort: await freePort(),
  });
  const address = `127.0.0.1:${grpcPort}`;
  return { service: processHandle, client: createClient(Ctor, address), address };
}

/** The typed error a call failed with; fails the test when the call succeeds. */
export async function errorOf(call: Promise<unknown>): Promise<SwitchboardError> {
  try {
    await call;
  } catch (err) {
    return err as SwitchboardError;
  }
  throw new Error('expected the call to fail');
}

/**
 * Polls until `read` gives a value (anything but undefined or false), or
 * fails naming `what` after the timeout: a bound on waiting for what must
 * happen, not a timing assertion.
 */
export async function eventually<T>(read: () => T | undefined | false | Promise<T | undefined | false>, timeoutMs = 5000, what = 'condition'): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await read();
    if (value !== undefined && value !== false) return value;
    if (Date.now() > deadline) throw new Error(`${what} not met within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** A TCP proxy in front of a service that a test can freeze (bytes dropped both ways) and cut. */
export interface FreezableProxy {
  /** The proxy's address, to give the client instead of the service's. */
  address: string;
  freeze(): void;
  /** Drops only what the service sends back: requests still arrive (and take effect), their answers never do. */
  freezeReplies(): void;
  thaw(): void;
  /** Stops listening and cuts every connection: the client's reconnects are refused until `accept`. */
  refuse(): Promise<void>;
  /** Listens again on the same address. */
  accept(): Promise<void>;
  /** Destroys every connection through the proxy (the client sees the connection break). */
  cut(): void;
  close(): void;
}

/** Starts a FreezableProxy to `target` (host:port) on a free loopback port. */
export async function startFreezableProxy(target: string): Promise<FreezableProxy> {
  const [host, port] = target.split(':') as [string, string];
  let frozen = false;
  let repliesFrozen = false;
  const links: Socket[] = [];
  const server = createServer((inbound) => {
    const outbound = new Socket().connect(Number(port), host);
    links.push(inbound, outbound);
    inbound.on('data', (chunk) => (frozen ? undefined : outbound.write(chunk)));
    outbound.on('data', (chunk) => (frozen || repliesFrozen ? undefined : inbound.write(chunk)));
    inbound.on('error', () => outbound.destroy());
    outbound.on('error', () => inbound.destroy());
    inbound.on('close', () => outbound.destroy());
    outbound.on('close', () => inbound.destroy());
  });
  const proxyPort = await freePort();
  await new Promise<void>((resolve) => server.listen(proxyPort, '127.0.0.1', resolve));
  const cut = () => {
    for (const link of links.splice(0)) link.destroy();
  };
  return {
    address: `127.0.0.1:${proxyPort}`,
    freeze: () => (frozen = true),
    freezeReplies: () => (repliesFrozen = true),
    thaw: () => {
      frozen = false;
      repliesFrozen = false;
    },
    cut,
    refuse: async () => {
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      cut();
      await closed;
    },
    accept: () => new Promise<void>((resolve) => server.listen(proxyPort, '127.0.0.1', resolve)),
    close: () => {
      server.close();
      cut();
    },
  };
}
