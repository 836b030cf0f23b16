import { readFileSync } from 'node:fs';
import { connect, nkeyAuthenticator, nkeys, type NatsConnection } from '@nats-io/transport-node';

export interface NatsOptions {
  servers: string;
  /** Shown in the server's connection list (service and instance). */
  name: string;
  /**
   * File holding this service's NATS user nkey seed (`SU…`): the server knows
   * the public key and allows that user only its own subjects
   * (docs/security.md). Unset: connect without credentials (a server without
   * authorization, or to see the refusal).
   */
  nkeySeedFile?: string | undefined;
  /**
   * Prefix of this connection's reply inboxes (request/reply, JetStream);
   * a service whose NATS user may subscribe only its own inboxes sets
   * `inboxPrefixOf(user)`. Default `_INBOX`.
   */
  inboxPrefix?: string | undefined;
  /** Log sink for connection state changes. */
  onStatus?: (event: string, data?: unknown) => void;
}

/** Thrown when the seed file cannot be read or holds no user nkey seed. */
export class NatsCredentialsError extends Error {
  override name = 'NatsCredentialsError';
}

/**
 * Reads and checks a user nkey seed file: the first non-empty line must be a
 * seed whose key pair is a NATS user (`SU…`), so a swapped or truncated file
 * fails at start with the path named rather than as a refused connection.
 */
export function readNkeySeed(file: string): Uint8Array {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new NatsCredentialsError(`cannot read the NATS nkey seed file ${file}: ${(err as Error).message}`);
  }
  const seed = text.split('\n').map((line) => line.trim()).find((line) => line && !line.startsWith('#')) ?? '';
  try {
    const pair = nkeys.fromSeed(new TextEncoder().encode(seed));
    if (!pair.getPublicKey().startsWith('U')) throw new Error('not a user key');
  } catch {
    throw new NatsCredentialsError(`${file} holds no NATS user nkey seed (a line starting with "SU", as \`nk -gen user\` writes it)`);
  }
  return new TextEncoder().encode(seed);
}

/**
 * Connects and keeps reconnecting forever: a NATS restart must not take a
 * service down, only make it not-ready until the connection is back.
 */
export async function connectNats(options: NatsOptions): Promise<NatsConnection> {
  const seed = options.nkeySeedFile ? readNkeySeed(options.nkeySeedFile) : undefined;
  let nc: NatsConnection;
  try {
    nc = await connect({
      servers: options.servers.split(','),
      name: options.name,
      ...(seed ? { authenticator: nkeyAuthenticator(seed) } : {}),
      ...(options.inboxPrefix ? { inboxPrefix: options.inboxPrefix } : {}),
      maxReconnectAttempts: -1,
      reconnectTimeWait: 250,
      pingInterval: 10_000,
    });
  } catch (err) {
    // The server's words ("Authorization Violation") do not say what to fix.
    if (/authorization/i.test((err as Error).message)) {
      throw new NatsCredentialsError(
        options.nkeySeedFile
          ? `NATS refused the nkey in ${options.nkeySeedFile} (${(err as Error).message}): the server's authorization does not list its public key`
          : `NATS requires credentials (${(err as Error).message}): set NATS_NKEY_SEED_FILE to this service's nkey seed file`,
      );
    }
    throw err;
  }
  if (options.onStatus) {
    const onStatus = options.onStatus;
    void (async () => {
      for await (const status of nc.status()) {
        // Pings are routine; only state changes (disconnect, reconnect, errors) are worth a log line.
        if (status.type === 'ping') continue;
        onStatus(status.type, 'data' in status ? status.data : 'error' in status ? String(status.error) : undefined);
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
