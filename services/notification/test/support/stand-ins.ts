// Local stand-ins for the providers, each checking what the real one checks:
// a Web Push service (VAPID JWT signature, audience and expiry; the
// aes128gcm payload decrypted with the subscription's private key), FCM
// (an OAuth2 token endpoint that verifies the service account's signed
// assertion; messages:send that wants that Bearer token and the v1 body), APNs
// over HTTP/2 with TLS (the ES256 provider token, apns-topic, the body), and
// an SMTP server that receives and parses the mail. Tokens the test marks
// gone are answered the way each provider says "gone".
import { createECDH, generateKeyPairSync, randomBytes, randomUUID, type ECDH, type KeyObject } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync } from 'node:fs';
import * as http2 from 'node:http2';
import * as https from 'node:https';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { decodeProtectedHeader, importJWK, importSPKI, jwtVerify } from 'jose';
import { simpleParser } from 'mailparser';
import { SMTPServer } from 'smtp-server';
// eslint-disable-next-line @typescript-eslint/no-require-imports
const ece = require('http_ece') as { decrypt(buffer: Buffer, params: { version: string; privateKey: ECDH; authSecret: string }): Buffer };

export interface Tls {
  key: string;
  cert: string;
  /** For the service's NODE_EXTRA_CA_CERTS: it trusts the stand-ins as it would the real providers. */
  certPath: string;
}

/** A self-signed certificate for 127.0.0.1, made now with openssl. */
export function makeTls(): Tls {
  const dir = mkdtempSync(path.join(tmpdir(), 'sb-notification-tls-'));
  const keyPath = path.join(dir, 'key.pem');
  const certPath = path.join(dir, 'cert.pem');
  execFileSync(
    'openssl',
    ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', keyPath, '-out', certPath, '-days', '1', '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1'],
    { stdio: 'ignore' },
  );
  return { key: readFileSync(keyPath, 'utf8'), cert: readFileSync(certPath, 'utf8'), certPath };
}

function readBody(req: NodeJS.ReadableStream): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', reject);
  });
}

// --- Web Push ---

export interface WebPushReceived {
  subscription: string;
  payload: { notificationId: string; kind: string; title: string; body: string; data: Record<string, string>; urgent: boolean; badge: number };
  topic: string;
  urgency: string;
  ttl: number;
}

export interface Subscription {
  endpoint: string;
  p256dh: string;
  auth: string;
}

/** What a subscription answers: 201, 410 (gone), or 503 for the first n pushes. */
export type WebPushBehaviour = 'ok' | 'gone' | { failFirst: number };

export class WebPushService {
  readonly received: WebPushReceived[] = [];
  readonly rejected: string[] = [];
  private readonly subscriptions = new Map<string, { ecdh: ECDH; auth: string; behaviour: WebPushBehaviour; calls: number }>();
  private server!: https.Server;
  origin = '';

  constructor(private readonly tls: Tls) {}

  async start(): Promise<this> {
    this.server = https.createServer({ key: this.tls.key, cert: this.tls.cert }, (req, res) => {
      void this.handle(req, res).catch((err: Error) => {
        this.rejected.push(err.message);
        res.writeHead(400).end(err.message);
      });
    });
    await new Promise<void>((resolve) => this.server.listen(0, '127.0.0.1', resolve));
    this.origin = `https://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
    return this;
  }

  /** A browser's subscription: a fresh P-256 key pair and auth secret. */
  subscribe(behaviour: WebPushBehaviour = 'ok'): Subscription {
    const id = randomUUID();
    const ecdh = createECDH('prime256v1');
    ecdh.generateKeys();
    const auth = randomBytes(16).toString('base64url');
    this.subscriptions.set(id, { ecdh, auth, behaviour, calls: 0 });
    return { endpoint: `${this.origin}/push/${id}`, p256dh: ecdh.getPublicKey().toString('base64url'), auth };
  }

  private async handle(req: import('node:http').IncomingMessage, res: import('node:http').ServerResponse): Promise<void> {
    const id = /^\/push\/([0-9a-f-]+)$/.exec(req.url ?? '')?.[1];
    const sub = id ? this.subscriptions.get(id) : undefined;
    const body = await readBody(req);
    if (req.method !== 'POST' || !sub || !id) throw new Error(`no subscription at ${req.url}`);
    // RFC 8292: Authorization: vapid t=<JWT>, k=<public key>; the JWT is ES256 over that key, aud = this origin.
    const match = /^vapid t=([^,\s]+),\s*k=([A-Za-z0-9_-]+)$/.exec(req.headers.authorization ?? '');
    if (!match) throw new Error(`no VAPID authorization: ${req.headers.authorization}`);
    const k = Buffer.from(match[2]!, 'base64url');
    const jwk = { kty: 'EC', crv: 'P-256', x: k.subarray(1, 33).toString('base64url'), y: k.subarray(33, 65).toString('base64url') };
    const { payload } = await jwtVerify(match[1]!, await importJWK(jwk, 'ES256'), { audience: this.origin, algorithms: ['ES256'] });
    if (!payload.exp || payload.exp > Date.now() / 1000 + 24 * 3600) throw new Error('VAPID exp missing or more than 24 h ahead');
    if (typeof payload.sub !== 'string' || !/^(mailto:|https:)/.test(payload.sub)) throw new Error('VAPID sub must be mailto: or https:');
    if (req.headers['content-encoding'] !== 'aes128gcm') throw new Error('payload must be aes128gcm');
    if (!req.headers.ttl) throw new Error('TTL header missing');
    sub.calls += 1;
    if (sub.behaviour === 'gone') return void res.writeHead(410).end('subscription expired');
    if (typeof sub.behaviour === 'object' && sub.calls <= sub.behaviour.failFirst) return void res.writeHead(503, { 'retry-after': '0' }).end('busy');
    const plain = ece.decrypt(body, { version: 'aes128gcm', privateKey: sub.ecdh, authSecret: sub.auth });
    this.received.push({
      subscription: id,
      payload: JSON.parse(plain.toString('utf8')) as WebPushReceived['payload'],
      topic: String(req.headers.topic ?? ''),
      urgency: String(req.headers.urgency ?? ''),
      ttl: Number(req.headers.ttl),
    });
    res.writeHead(201).end();
  }

  for(sub: Subscription): WebPushReceived[] {
    const id = sub.endpoint.split('/').pop();
    return this.received.filter((r) => r.subscription === id);
  }

  async stop(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise((resolve) => this.server.close(resolve));
  }
}

// --- FCM ---

export interface FcmReceived {
  token: string;
  notification: { title: string; body: string };
  data: Record<string, string>;
  android: { priority: string; collapse_key: string };
}

export class FcmService {
  readonly received: FcmReceived[] = [];
  readonly rejected: string[] = [];
  readonly gone = new Set<string>();
  private readonly issued = new Set<string>();
  private readonly keys = generateKeyPairSync('rsa', { modulusLength: 2048 });
  private server!: https.Server;
  origin = '';
  readonly projectId = 'care-app-test';
  readonly clientEmail = 'notifier@care-app-test.iam.gserviceaccount.com';

  constructor(private readonly tls: Tls) {}

  async start(): Promise<this> {
    this.server = https.createServer({ key: this.tls.key, cert: this.tls.cert }, (req, res) => {
      void this.handle(req, res).catch((err: Error) => {
        this.rejected.push(err.message);
        res.writeHead(400, { 'content-type': 'application/json' }).end(JSON.stringify({ error: { status: 'INVALID_ARGUMENT', message: err.message } }));
      });
    });
    await new Promise<void>((resolve) => this.server.listen(0, '127.0.0.1', resolve));
    this.origin = `https://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
    return this;
  }

  /** The service-account JSON as the Firebase console hands it out, pointing at this token endpoint. */
  serviceAccount(): string {
    return JSON.stringify({
      type: 'service_account',
      project_id: this.projectId,
      client_email: this.clientEmail,
      private_key: this.keys.privateKey.export({ type: 'pkcs8', format: 'pem' }),
      token_uri: `${this.origin}/token`,
    });
  }

  /** A registration token as the FCM SDK hands it out. */
  token(): string {
    return `${randomBytes(11).toString('base64url')}:APA91b${randomBytes(100).toString('base64url')}`;
  }

  private async handle(req: import('node:http').IncomingMessage, res: import('node:http').ServerResponse): Promise<void> {
    const body = (await readBody(req)).toString('utf8');
    if (req.method === 'POST' && req.url === '/token') {
      const form = new URLSearchParams(body);
      if (form.get('grant_type') !== 'urn:ietf:params:oauth:grant-type:jwt-bearer') throw new Error('wrong grant_type');
      const { payload } = await jwtVerify(form.get('assertion') ?? '', this.keys.publicKey as KeyObject, { issuer: this.clientEmail, audience: `${this.origin}/token`, algorithms: ['RS256'] });
      if (payload['scope'] !== 'https://www.googleapis.com/auth/firebase.messaging') throw new Error('wrong scope');
      const token = `ya29.${randomBytes(24).toString('base64url')}`;
      this.issued.add(token);
      return void res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ access_token: token, expires_in: 3599, token_type: 'Bearer' }));
    }
    if (req.method !== 'POST' || req.url !== `/v1/projects/${this.projectId}/messages:send`) throw new Error(`no such endpoint ${req.url}`);
    const bearer = /^Bearer (.+)$/.exec(req.headers.authorization ?? '')?.[1];
    if (!bearer || !this.issued.has(bearer)) {
      return void res.writeHead(401, { 'content-type': 'application/json' }).end(JSON.stringify({ error: { status: 'UNAUTHENTICATED' } }));
    }
    const message = (JSON.parse(body) as { message?: FcmReceived }).message;
    if (!message || typeof message.token !== 'string') throw new Error('message.token missing');
    if (typeof message.notification?.title !== 'string' || typeof message.notification?.body !== 'string') throw new Error('message.notification needs title and body');
    if (Object.values(message.data ?? {}).some((v) => typeof v !== 'string')) throw new Error('message.data values must be strings');
    if (this.gone.has(message.token)) {
      return void res
        .writeHead(404, { 'content-type': 'application/json' })
        .end(JSON.stringify({ error: { code: 404, status: 'NOT_FOUND', details: [{ '@type': 'type.googleapis.com/google.firebase.fcm.v1.FcmError', errorCode: 'UNREGISTERED' }] } }));
    }
    this.received.push(message);
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ name: `projects/${this.projectId}/messages/${randomUUID()}` }));
  }

  async stop(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise((resolve) => this.server.close(resolve));
  }
}

// --- APNs ---

export interface ApnsReceived {
  deviceToken: string;
  topic: string;
  collapseId: string;
  priority: string;
  body: { aps: { alert: { title: string; body: string }; badge?: number }; notificationId: string; data: Record<string, string> };
}

export class ApnsService {
  readonly received: ApnsReceived[] = [];
  readonly rejected: string[] = [];
  readonly gone = new Set<string>();
  readonly keyId = 'ABC123DEFG';
  readonly teamId = 'TEAM123456';
  readonly topic = 'com.example.care';
  private readonly keys = generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
  private server!: http2.Http2SecureServer;
  origin = '';

  constructor(private readonly tls: Tls) {}

  /** The .p8 key as Apple hands it out (PKCS#8 PEM). */
  key(): string {
    return this.keys.privateKey.export({ type: 'pkcs8', format: 'pem' }) as string;
  }

  deviceToken(): string {
    return randomBytes(32).toString('hex');
  }

  async start(): Promise<this> {
    this.server = http2.createSecureServer({ key: this.tls.key, cert: this.tls.cert });
    this.server.on('stream', (stream, headers) => {
      void this.handle(stream, headers).catch((err: Error) => {
        this.rejected.push(err.message);
        stream.respond({ ':status': 400, 'content-type': 'application/json' });
        stream.end(JSON.stringify({ reason: 'BadRequest', detail: err.message }));
      });
    });
    await new Promise<void>((resolve) => this.server.listen(0, '127.0.0.1', resolve));
    this.origin = `https://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
    return this;
  }

  private async handle(stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders): Promise<void> {
    const body = await readBody(stream);
    const token = /^\/3\/device\/([0-9a-f]+)$/.exec(String(headers[':path']))?.[1];
    if (headers[':method'] !== 'POST' || !token) throw new Error(`bad request line ${headers[':method']} ${headers[':path']}`);
    const jwt = /^bearer (.+)$/.exec(String(headers.authorization ?? ''))?.[1];
    if (!jwt) {
      stream.respond({ ':status': 403 });
      return void stream.end(JSON.stringify({ reason: 'MissingProviderToken' }));
    }
    const header = decodeProtectedHeader(jwt);
    const spki = this.keys.publicKey.export({ type: 'spki', format: 'pem' }) as string;
    try {
      if (header.kid !== this.keyId || header.alg !== 'ES256') throw new Error('kid/alg');
      const { payload } = await jwtVerify(jwt, await importSPKI(spki, 'ES256'), { issuer: this.teamId, algorithms: ['ES256'] });
      if (!payload.iat || payload.iat < Date.now() / 1000 - 3600) throw new Error('stale');
    } catch {
      stream.respond({ ':status': 403 });
      return void stream.end(JSON.stringify({ reason: 'InvalidProviderToken' }));
    }
    if (headers['apns-topic'] !== this.topic) {
      stream.respond({ ':status': 400 });
      return void stream.end(JSON.stringify({ reason: 'DeviceTokenNotForTopic' }));
    }
    if (headers['apns-push-type'] !== 'alert') throw new Error('apns-push-type must be alert');
    const parsed = JSON.parse(body.toString('utf8')) as ApnsReceived['body'];
    if (typeof parsed.aps?.alert?.title !== 'string') throw new Error('aps.alert.title missing');
    if (this.gone.has(token)) {
      stream.respond({ ':status': 410, 'content-type': 'application/json' });
      return void stream.end(JSON.stringify({ reason: 'Unregistered', timestamp: Date.now() }));
    }
    this.received.push({ deviceToken: token, topic: String(headers['apns-topic']), collapseId: String(headers['apns-collapse-id'] ?? ''), priority: String(headers['apns-priority'] ?? ''), body: parsed });
    stream.respond({ ':status': 200, 'apns-id': String(headers['apns-id'] ?? randomUUID()) });
    stream.end();
  }

  async stop(): Promise<void> {
    await new Promise((resolve) => this.server.close(resolve));
  }
}

// --- SMTP ---

export interface Mail {
  to: string;
  from: string;
  subject: string;
  text: string;
  html: string;
  messageId: string;
}

/** A real SMTP server (smtp-server): `bounce…@` is refused for good (550), `busy…@` for now (451). */
export class SmtpService {
  readonly mails: Mail[] = [];
  private server!: SMTPServer;
  url = '';

  async start(): Promise<this> {
    this.server = new SMTPServer({
      authOptional: true,
      disabledCommands: ['STARTTLS'],
      logger: false,
      onRcptTo: (address, _session, callback) => {
        if (address.address.startsWith('bounce')) return callback(Object.assign(new Error('5.1.1 no such mailbox'), { responseCode: 550 }));
        if (address.address.startsWith('busy')) return callback(Object.assign(new Error('4.2.1 mailbox busy, try later'), { responseCode: 451 }));
        callback();
      },
      onData: (stream, session, callback) => {
        simpleParser(stream)
          .then((mail) => {
            this.mails.push({
              to: session.envelope.rcptTo.map((r) => r.address).join(','),
              from: mail.from?.text ?? '',
              subject: mail.subject ?? '',
              text: mail.text ?? '',
              html: typeof mail.html === 'string' ? mail.html : '',
              messageId: mail.messageId ?? '',
            });
            callback();
          })
          .catch((err: Error) => callback(err));
      },
    });
    await new Promise<void>((resolve) => this.server.listen(0, '127.0.0.1', () => resolve()));
    this.url = `smtp://127.0.0.1:${(this.server.server.address() as AddressInfo).port}`;
    return this;
  }

  to(address: string): Mail[] {
    return this.mails.filter((m) => m.to === address);
  }

  async stop(): Promise<void> {
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}
