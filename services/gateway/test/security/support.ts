import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { generate } from 'selfsigned';
import WebSocket from 'ws';
import { DEV_JWT_SECRET, mintDevToken } from '@switchboard/client';
import { freePort, infraEnv, launchService, type Mesh, type ServiceProcess } from '@switchboard/devenv';
import { createClient, type PromiseClient } from '@switchboard/grpc';
import { gatewayV1, type framesV1 } from '@switchboard/proto';

export const ISSUER = 'switchboard-security-suite';
export const AUDIENCE = 'switchboard-gateway';

/** The gateway settings every security suite runs with: iss/aud checked, a short grace, a short handshake timeout. */
export const SECURITY_GATEWAY_ENV = {
  JWT_ISSUER: ISSUER,
  JWT_AUDIENCE: AUDIENCE,
  JWT_CLOCK_TOLERANCE_S: '1',
  TOKEN_EXPIRY_GRACE_MS: '1000',
  HANDSHAKE_TIMEOUT_MS: '1500',
  TENANT_LIMITS_CACHE_MS: '100',
};

export function token(tenantId: string, userId: string, options: { ttlSeconds?: number; deviceId?: string } = {}): Promise<string> {
  return mintDevToken({ secret: DEV_JWT_SECRET, tenantId, userId, issuer: ISSUER, audience: AUDIENCE, ...options });
}

/** What the suite tried and what held, printed at the end of each file. */
export class Report {
  private readonly lines: string[] = [];

  constructor(private readonly title: string) {}

  held(tried: string, outcome: string): void {
    this.lines.push(`  HELD  ${tried} -> ${outcome}`);
  }

  print(): void {
    console.log(`${this.title}\n${this.lines.join('\n')}\n  ${this.lines.length} attempts, all held`);
  }
}

export type Frame = framesV1.ServerFrame & Record<string, unknown>;

export interface RawConnection {
  ws: WebSocket;
  /** Every frame received, as JSON (batches unpacked). */
  frames: Record<string, any>[];
  closed: Promise<{ code: number; reason: string }>;
  /** Sends a frame and resolves with the answer carrying its request id. */
  request(frame: Record<string, unknown>, timeoutMs?: number): Promise<Record<string, any>>;
  welcome: Record<string, any> | undefined;
}

let requestCounter = 0;

/** A bare WebSocket client: sends exactly what a test tells it, keeps every frame. */
export async function rawConnect(url: string, bearer: string, options: WebSocket.ClientOptions = {}): Promise<RawConnection> {
  const ws = new WebSocket(url, ['switchboard.v1.json'], { headers: { authorization: `Bearer ${bearer}` }, ...options });
  const frames: Record<string, any>[] = [];
  ws.on('message', (data, isBinary) => {
    if (isBinary) return;
    const frame = JSON.parse(data.toString());
    if (frame.batch) frames.push(...frame.batch.frames);
    else frames.push(frame);
  });
  const closed = new Promise<{ code: number; reason: string }>((resolve) => ws.on('close', (code, reason) => resolve({ code, reason: reason.toString() })));
  await new Promise<void>((resolve, reject) => {
    ws.once('open', () => resolve());
    ws.once('error', reject);
    ws.once('unexpected-response', (_req, res) => reject(new Error(`handshake refused with ${res.statusCode}`)));
  });
  // A connection the gateway closes right after the upgrade (e.g. 4029) has no welcome.
  const welcome = await Promise.race([until(() => frames.find((f) => f.welcome)?.welcome, 10_000, 'welcome'), closed.then(() => undefined)]);
  const request = async (frame: Record<string, unknown>, timeoutMs = 10_000) => {
    const requestId = `r${(requestCounter += 1)}`;
    ws.send(JSON.stringify({ requestId, ...frame }));
    return until(() => frames.find((f) => f.requestId === requestId), timeoutMs, `answer to ${Object.keys(frame)[0]}`);
  };
  return { ws, frames, closed, request, welcome };
}

/** What the server answers to an upgrade: 101 and an open socket, or the refusal's status and body. */
export function handshake(url: string, headers: Record<string, string>, options: WebSocket.ClientOptions = {}) {
  return new Promise<{ status: number; body: string }>((resolve) => {
    const ws = new WebSocket(url, ['switchboard.v1.json'], { headers, ...options });
    ws.on('open', () => {
      ws.close();
      resolve({ status: 101, body: '' });
    });
    ws.on('unexpected-response', (_req, res) => {
      let body = '';
      res.on('data', (chunk: Buffer) => (body += chunk.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: body.trim() }));
    });
    ws.on('error', (err) => resolve({ status: 0, body: err.message }));
  });
}

export async function until<T>(read: () => T | undefined | false, timeoutMs: number, what: string): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = read();
    if (value !== undefined && value !== false) return value;
    if (Date.now() > deadline) throw new Error(`${what} not seen within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** One more gateway process against the mesh's backends, with its own settings. */
export async function launchGateway(mesh: Mesh, name: string, env: Record<string, string>): Promise<{ process: ServiceProcess; url: string; grpcAddress: string; port: number }> {
  const [port, grpcPort, opsPort] = [await freePort(), await freePort(), await freePort()];
  const processHandle = await launchService({
    service: 'gateway',
    name,
    env: {
      ...infraEnv(),
      LOG_LEVEL: 'warn',
      ...SECURITY_GATEWAY_ENV,
      PORT: String(port),
      GRPC_PORT: String(grpcPort),
      GATEWAY_ID: name,
      MESSAGING_ADDR: mesh.addresses.messaging,
      PRESENCE_ADDR: mesh.addresses.presence,
      ...env,
    },
    opsPort,
  });
  return { process: processHandle, url: `ws://127.0.0.1:${port}/ws`, grpcAddress: `127.0.0.1:${grpcPort}`, port };
}

export function adminClient(address: string): PromiseClient<gatewayV1.GatewayAdminServiceClient> {
  return createClient(gatewayV1.GatewayAdminServiceClient, address);
}

/** An operator's context for a tenant (internal, no user). */
export const operator = (tenantId: string) => ({ context: { tenantId, userId: '', deviceId: '', internal: true } });

export type TestPki = {
  GRPC_TLS_CA_FILE: string;
  GRPC_TLS_CERT_FILE: string;
  GRPC_TLS_KEY_FILE: string;
};

/** A test PKI on disk: one self-signed certificate is the CA and every service's certificate (for 127.0.0.1 and localhost). */
export async function testPki(): Promise<TestPki> {
  const pems = await generate([{ name: 'commonName', value: 'switchboard-mesh' }], {
    keySize: 2048,
    days: 1,
    extensions: [
      { name: 'basicConstraints', cA: true },
      { name: 'subjectAltName', altNames: [{ type: 2, value: 'localhost' }, { type: 7, ip: '127.0.0.1' }] },
    ],
  } as never);
  const dir = mkdtempSync(path.join(tmpdir(), 'sb-mtls-'));
  const files = { GRPC_TLS_CA_FILE: path.join(dir, 'ca.pem'), GRPC_TLS_CERT_FILE: path.join(dir, 'cert.pem'), GRPC_TLS_KEY_FILE: path.join(dir, 'key.pem') };
  writeFileSync(files.GRPC_TLS_CA_FILE, pems.cert);
  writeFileSync(files.GRPC_TLS_CERT_FILE, pems.cert);
  writeFileSync(files.GRPC_TLS_KEY_FILE, pems.private);
  return files;
}
