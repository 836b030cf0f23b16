import type { SwitchboardError } from '@switchboard/errors';
import { configureInternalCallers, createClient, type PromiseClient } from '@switchboard/grpc';
import type { Client } from '@grpc/grpc-js';
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
