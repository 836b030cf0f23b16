import { connect, type NatsConnection } from '@nats-io/transport-node';

export interface NatsOptions {
  servers: string;
  /** Shown in the server's connection list (service and instance). */
  name: string;
  user?: string | undefined;
  pass?: string | undefined;
  /** Log sink for connection state changes. */
  onStatus?: (event: string, data?: unknown) => void;
}

/**
 * Connects and keeps reconnecting forever: a NATS restart must not take a
 * service down, only make it not-ready until the connection is back.
 */
export async function connectNats(options: NatsOptions): Promise<NatsConnection> {
  const nc = await connect({
    servers: options.servers.split(','),
    name: options.name,
    ...(options.user ? { user: options.user, pass: options.pass ?? '' } : {}),
    maxReconnectAttempts: -1,
    reconnectTimeWait: 250,
    pingInterval: 10_000,
  });
  if (options.onStatus) {
    const onStatus = options.onStatus;
    void (async () => {
      for await (const status of nc.status()) {
        // Pings are routine; only state changes (disconnect, reconnect, errors) are worth a log line.
        if (status.type === 'ping') continue;
        onStatus(status.type, 'data' in status ? status.data : undefined);
      }
    })();
  }
  return nc;
}

/** Readiness of a connection: closed, or no round trip to the server, is not ready. */
export async function natsReady(nc: NatsConnection): Promise<void> {
  if (nc.isClosed()) throw new Error('connection closed');
  await nc.flush();
}
