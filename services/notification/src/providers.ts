import { createHash, createPrivateKey, type KeyObject } from 'node:crypto';
import { readFileSync } from 'node:fs';
import * as http2 from 'node:http2';
import { ConfigError } from '@switchboard/config';
import type { Logger } from '@switchboard/logging';
import { notificationV1 } from '@switchboard/proto';
import { SignJWT } from 'jose';
import nodemailer from 'nodemailer';
import webpush from 'web-push';
import type { NotificationConfig } from './config';
import type { PushTarget } from './settings';

/** What a provider said, sorted by what to do next. */
export type Outcome =
  | { kind: 'success'; response: string }
  /** The destination no longer exists: prune it, never retry. */
  | { kind: 'gone'; response: string }
  | { kind: 'transient'; response: string; retryAfterMs?: number; rateLimited?: boolean }
  | { kind: 'permanent'; response: string };

export interface PushMessage {
  notificationId: string;
  kind: string;
  title: string;
  body: string;
  data: Record<string, string>;
  urgent: boolean;
  badge: number;
  /** Seconds the provider may hold it for an offline device. */
  ttlSeconds: number;
}

export interface PushProvider {
  send(target: PushTarget, message: PushMessage): Promise<Outcome>;
  close(): Promise<void>;
}

function retryAfter(value: string | null | undefined): number | undefined {
  if (!value) return undefined;
  const seconds = Number(value);
  if (Number.isFinite(seconds)) return seconds * 1000;
  const at = Date.parse(value);
  return Number.isNaN(at) ? undefined : Math.max(0, at - Date.now());
}

function byStatus(status: number, response: string, headers?: { get(name: string): string | null }): Outcome {
  if (status >= 200 && status < 300) return { kind: 'success', response };
  if (status === 429) return { kind: 'transient', response, rateLimited: true, retryAfterMs: retryAfter(headers?.get('retry-after')) ?? 0 };
  if (status >= 500 || status === 408) return { kind: 'transient', response, retryAfterMs: retryAfter(headers?.get('retry-after')) ?? 0 };
  return { kind: 'permanent', response };
}

function networkFailure(err: unknown): Outcome {
  const e = err as { name?: string; code?: string; cause?: { code?: string }; message?: string };
  const what = e.name === 'TimeoutError' || e.name === 'AbortError' ? 'timeout' : (e.cause?.code ?? e.code ?? e.message ?? 'network error');
  return { kind: 'transient', response: `no answer: ${what}` };
}

function secret(value: string): string {
  return value.trimStart().startsWith('{') || value.includes('-----BEGIN') ? value : readFileSync(value, 'utf8');
}

/** A stable UUID from an id (APNs wants apns-id as a UUID). */
function uuidOf(id: string): string {
  const h = createHash('sha256').update(id).digest('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-4${h.slice(13, 16)}-a${h.slice(17, 20)}-${h.slice(20, 32)}`;
}

function payloadOf(message: PushMessage): Record<string, unknown> {
  return { notificationId: message.notificationId, kind: message.kind, title: message.title, body: message.body, data: message.data, urgent: message.urgent, badge: message.badge };
}

/**
 * Web Push (RFC 8030) with VAPID (RFC 8292) and aes128gcm payload encryption
 * (RFC 8291), by the `web-push` library; the request it prepares is sent
 * here so the timeout and the answer are ours. `Topic` is the notification id:
 * a push service replaces an undelivered earlier copy instead of showing two.
 */
export class WebPushProvider implements PushProvider {
  constructor(
    private readonly vapid: { subject: string; publicKey: string; privateKey: string },
    private readonly timeoutMs: number,
  ) {
    // Fails at start on malformed keys, naming the variable.
    try {
      webpush.setVapidDetails(vapid.subject, vapid.publicKey, vapid.privateKey);
    } catch (err) {
      throw new ConfigError([`VAPID_PUBLIC_KEY / VAPID_PRIVATE_KEY / VAPID_SUBJECT: ${(err as Error).message}`]);
    }
  }

  async send(target: PushTarget, message: PushMessage): Promise<Outcome> {
    if (target.$case !== 'webPush') return { kind: 'permanent', response: 'not a web push subscription' };
    const sub = target.value;
    const details = webpush.generateRequestDetails({ endpoint: sub.endpoint, keys: { p256dh: sub.p256dh, auth: sub.auth } }, JSON.stringify(payloadOf(message)), {
      vapidDetails: this.vapid,
      TTL: message.ttlSeconds,
      urgency: message.urgent ? 'high' : 'normal',
      topic: message.notificationId.slice(0, 32),
      contentEncoding: 'aes128gcm',
    });
    try {
      const res = await fetch(details.endpoint, {
        method: details.method,
        headers: details.headers as Record<string, string>,
        body: details.body as Buffer,
        signal: AbortSignal.timeout(this.timeoutMs),
      });
      const text = (await res.text()).slice(0, 200);
      const response = `${res.status}${text ? ` ${text}` : ''}`;
      if (res.status === 404 || res.status === 410) return { kind: 'gone', response };
      return byStatus(res.status, response, res.headers);
    } catch (err) {
      return networkFailure(err);
    }
  }

  async close(): Promise<void> {}
}

interface ServiceAccount {
  client_email: string;
  private_key: string;
  project_id: string;
  token_uri: string;
}

/**
 * FCM HTTP v1: an OAuth2 access token from the service account (a signed
 * JWT exchanged at its token_uri, cached until shortly before it expires),
 * then `POST /v1/projects/<project>/messages:send`.
 */
export class FcmProvider implements PushProvider {
  private readonly account: ServiceAccount;
  private readonly key: KeyObject;
  private token: { value: string; expiresAt: number } | undefined;
  private pending: Promise<string> | undefined;

  constructor(
    accountSource: string,
    private readonly endpoint: string,
    private readonly timeoutMs: number,
  ) {
    try {
      const account = JSON.parse(secret(accountSource)) as Partial<ServiceAccount>;
      for (const field of ['client_email', 'private_key', 'project_id', 'token_uri'] as const) {
        if (typeof account[field] !== 'string' || !account[field]) throw new Error(`${field} is missing`);
      }
      this.account = account as ServiceAccount;
      this.key = createPrivateKey(this.account.private_key);
    } catch (err) {
      throw new ConfigError([`FCM_SERVICE_ACCOUNT: not a usable service-account JSON (${(err as Error).message})`]);
    }
  }

  private async accessToken(): Promise<string> {
    if (this.token && this.token.expiresAt > Date.now() + 60_000) return this.token.value;
    this.pending ??= (async () => {
      try {
        const now = Math.floor(Date.now() / 1000);
        const assertion = await new SignJWT({ scope: 'https://www.googleapis.com/auth/firebase.messaging' })
          .setProtectedHeader({ alg: 'RS256', typ: 'JWT' })
          .setIssuer(this.account.client_email)
          .setSubject(this.account.client_email)
          .setAudience(this.account.token_uri)
          .setIssuedAt(now)
          .setExpirationTime(now + 3600)
          .sign(this.key);
        const res = await fetch(this.account.token_uri, {
          method: 'POST',
          headers: { 'content-type': 'application/x-www-form-urlencoded' },
          body: new URLSearchParams({ grant_type: 'urn:ietf:params:oauth:grant-type:jwt-bearer', assertion }).toString(),
          signal: AbortSignal.timeout(this.timeoutMs),
        });
        if (!res.ok) throw new Error(`token endpoint answered ${res.status} ${(await res.text()).slice(0, 200)}`);
        const body = (await res.json()) as { access_token?: string; expires_in?: number };
        if (!body.access_token) throw new Error('token endpoint gave no access_token');
        this.token = { value: body.access_token, expiresAt: Date.now() + (body.expires_in ?? 3600) * 1000 };
        return body.access_token;
      } finally {
        this.pending = undefined;
      }
    })();
    return this.pending;
  }

  async send(target: PushTarget, message: PushMessage): Promise<Outcome> {
    if (target.$case !== 'fcm') return { kind: 'permanent', response: 'not an FCM registration' };
    let token: string;
    try {
      token = await this.accessToken();
    } catch (err) {
      return { kind: 'transient', response: `no access token: ${(err as Error).message}` };
    }
    const body = {
      message: {
        token: target.value.token,
        notification: { title: message.title, body: message.body },
        data: { ...message.data, notificationId: message.notificationId, kind: message.kind },
        android: { priority: message.urgent ? 'HIGH' : 'NORMAL', collapse_key: message.notificationId, ttl: `${message.ttlSeconds}s` },
      },
    };
    try {
      const res = await fetch(`${this.endpoint.replace(/\/$/, '')}/v1/projects/${encodeURIComponent(this.account.project_id)}/messages:send`, {
        method: 'POST',
        headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
        body: JSON.stringify(body),
        signal: AbortSignal.timeout(this.timeoutMs),
      });
      const text = await res.text();
      let status = '';
      try {
        status = ((JSON.parse(text) as { error?: { status?: string; details?: { errorCode?: string }[] } }).error?.details?.find((d) => d.errorCode)?.errorCode ?? '') || '';
      } catch {
        // Not JSON: the status code decides.
      }
      const response = `${res.status}${status ? ` ${status}` : ''}`;
      if (res.status === 404 || status === 'UNREGISTERED') return { kind: 'gone', response };
      if (res.status === 401) {
        this.token = undefined;
        return { kind: 'transient', response };
      }
      return byStatus(res.status, response, res.headers);
    } catch (err) {
      return networkFailure(err);
    }
  }

  async close(): Promise<void> {}
}

/**
 * APNs over HTTP/2 with token auth: an ES256 provider token (kid = key id,
 * iss = team id), reused for 50 minutes; one HTTP/2 session per APNs host.
 */
export class ApnsProvider implements PushProvider {
  private readonly key: KeyObject;
  private jwt: { value: string; issuedAt: number } | undefined;
  private readonly sessions = new Map<string, http2.ClientHttp2Session>();

  constructor(
    keySource: string,
    private readonly keyId: string,
    private readonly teamId: string,
    private readonly urls: { production: string; sandbox: string },
    private readonly timeoutMs: number,
  ) {
    try {
      this.key = createPrivateKey(secret(keySource));
      if (this.key.asymmetricKeyType !== 'ec') throw new Error('not an EC (P-256) key');
    } catch (err) {
      throw new ConfigError([`APNS_KEY: not a usable .p8 key (${(err as Error).message})`]);
    }
  }

  private async providerToken(): Promise<string> {
    const now = Math.floor(Date.now() / 1000);
    if (this.jwt && now - this.jwt.issuedAt < 50 * 60) return this.jwt.value;
    const value = await new SignJWT({}).setProtectedHeader({ alg: 'ES256', kid: this.keyId }).setIssuer(this.teamId).setIssuedAt(now).sign(this.key);
    this.jwt = { value, issuedAt: now };
    return value;
  }

  private session(origin: string): http2.ClientHttp2Session {
    let session = this.sessions.get(origin);
    if (session && !session.closed && !session.destroyed) return session;
    session = http2.connect(origin);
    const created = session;
    const forget = () => {
      if (this.sessions.get(origin) === created) this.sessions.delete(origin);
    };
    session.on('error', forget);
    session.on('close', forget);
    session.on('goaway', forget);
    session.unref();
    this.sessions.set(origin, session);
    return session;
  }

  async send(target: PushTarget, message: PushMessage): Promise<Outcome> {
    if (target.$case !== 'apns') return { kind: 'permanent', response: 'not an APNs registration' };
    const reg = target.value;
    const origin = reg.environment === notificationV1.ApnsEnvironment.APNS_ENVIRONMENT_SANDBOX ? this.urls.sandbox : this.urls.production;
    const token = await this.providerToken();
    const body = JSON.stringify({
      aps: { alert: { title: message.title, body: message.body }, badge: message.badge, sound: message.urgent ? 'default' : undefined, 'thread-id': message.kind },
      ...payloadOf(message),
    });
    return new Promise<Outcome>((resolve) => {
      let settled = false;
      const done = (outcome: Outcome) => {
        if (!settled) {
          settled = true;
          resolve(outcome);
        }
      };
      let req: http2.ClientHttp2Stream;
      try {
        req = this.session(origin).request({
          ':method': 'POST',
          ':path': `/3/device/${reg.deviceToken}`,
          authorization: `bearer ${token}`,
          'apns-topic': reg.topic,
          'apns-push-type': 'alert',
          'apns-priority': message.urgent ? '10' : '5',
          'apns-expiration': String(Math.floor(Date.now() / 1000) + message.ttlSeconds),
          'apns-collapse-id': message.notificationId,
          'apns-id': uuidOf(message.notificationId),
          'content-type': 'application/json',
        });
      } catch (err) {
        done(networkFailure(err));
        return;
      }
      req.setTimeout(this.timeoutMs, () => {
        req.close(http2.constants.NGHTTP2_CANCEL);
        done({ kind: 'transient', response: 'no answer: timeout' });
      });
      let status = 0;
      let retry: string | undefined;
      const chunks: Buffer[] = [];
      req.on('response', (headers) => {
        status = Number(headers[':status']);
        retry = headers['retry-after'] as string | undefined;
      });
      req.on('data', (chunk: Buffer) => chunks.push(chunk));
      req.on('error', (err) => done(networkFailure(err)));
      req.on('end', () => {
        let reason = '';
        try {
          reason = chunks.length ? ((JSON.parse(Buffer.concat(chunks).toString()) as { reason?: string }).reason ?? '') : '';
        } catch {
          // No JSON body: the status decides.
        }
        const response = `${status}${reason ? ` ${reason}` : ''}`;
        if (status === 410 || reason === 'BadDeviceToken' || reason === 'Unregistered' || reason === 'DeviceTokenNotForTopic') return done({ kind: 'gone', response });
        if (status === 403 && reason === 'ExpiredProviderToken') {
          this.jwt = undefined;
          return done({ kind: 'transient', response });
        }
        done(byStatus(status, response, { get: (name) => (name === 'retry-after' ? (retry ?? null) : null) }));
      });
      req.end(body);
    });
  }

  async close(): Promise<void> {
    for (const session of this.sessions.values()) session.close();
    this.sessions.clear();
  }
}

export interface EmailMessage {
  notificationId: string;
  to: string;
  subject: string;
  text: string;
  html: string;
}

/**
 * Email over SMTP with nodemailer (pooled connections). The Message-ID is
 * derived from the notification id, so a retry after an interrupted send is
 * recognisable as the same mail by the receiving side.
 */
export class EmailProvider {
  private readonly transport: ReturnType<typeof nodemailer.createTransport>;

  constructor(
    url: string,
    private readonly from: string,
    timeoutMs: number,
  ) {
    try {
      const parsed = new URL(url);
      if (parsed.protocol !== 'smtp:' && parsed.protocol !== 'smtps:') throw new Error('expected smtp:// or smtps://');
    } catch (err) {
      throw new ConfigError([`SMTP_URL: ${(err as Error).message}`]);
    }
    this.transport = nodemailer.createTransport(url, { pool: true, maxConnections: 4, connectionTimeout: timeoutMs, greetingTimeout: timeoutMs, socketTimeout: timeoutMs } as never);
  }

  async send(message: EmailMessage): Promise<Outcome> {
    try {
      const info = (await this.transport.sendMail({
        from: this.from,
        to: message.to,
        subject: message.subject,
        text: message.text,
        ...(message.html ? { html: message.html } : {}),
        messageId: `<${message.notificationId}.email@switchboard>`,
        headers: { 'X-Switchboard-Notification': message.notificationId },
      })) as { response?: string };
      return { kind: 'success', response: info.response ?? '250' };
    } catch (err) {
      const e = err as { responseCode?: number; response?: string; code?: string; message?: string };
      if (e.responseCode && e.responseCode >= 500) return { kind: 'permanent', response: e.response ?? String(e.responseCode) };
      if (e.responseCode) return { kind: 'transient', response: e.response ?? String(e.responseCode) };
      return { kind: 'transient', response: `no answer: ${e.code ?? e.message ?? 'connection failed'}` };
    }
  }

  async close(): Promise<void> {
    this.transport.close();
  }
}

export interface Providers {
  push: Map<notificationV1.PushPlatform, PushProvider>;
  email: EmailProvider | undefined;
}

/** The providers this deployment has credentials for; a platform without one is skipped (recorded), not failed. */
export function providersFrom(config: NotificationConfig, logger: Logger): Providers {
  const push = new Map<notificationV1.PushPlatform, PushProvider>();
  const problems: string[] = [];
  if (config.VAPID_PUBLIC_KEY || config.VAPID_PRIVATE_KEY) {
    if (!config.VAPID_PUBLIC_KEY || !config.VAPID_PRIVATE_KEY) problems.push('VAPID_PUBLIC_KEY and VAPID_PRIVATE_KEY: set both or neither');
    else push.set(notificationV1.PushPlatform.PUSH_PLATFORM_WEB_PUSH, new WebPushProvider({ subject: config.VAPID_SUBJECT, publicKey: config.VAPID_PUBLIC_KEY, privateKey: config.VAPID_PRIVATE_KEY }, config.PROVIDER_TIMEOUT_MS));
  }
  if (config.FCM_SERVICE_ACCOUNT) push.set(notificationV1.PushPlatform.PUSH_PLATFORM_FCM, new FcmProvider(config.FCM_SERVICE_ACCOUNT, config.FCM_ENDPOINT, config.PROVIDER_TIMEOUT_MS));
  if (config.APNS_KEY || config.APNS_KEY_ID || config.APNS_TEAM_ID) {
    if (!config.APNS_KEY || !config.APNS_KEY_ID || !config.APNS_TEAM_ID) problems.push('APNS_KEY, APNS_KEY_ID and APNS_TEAM_ID: set all three or none');
    else
      push.set(
        notificationV1.PushPlatform.PUSH_PLATFORM_APNS,
        new ApnsProvider(config.APNS_KEY, config.APNS_KEY_ID, config.APNS_TEAM_ID, { production: config.APNS_PRODUCTION_URL, sandbox: config.APNS_SANDBOX_URL }, config.PROVIDER_TIMEOUT_MS),
      );
  }
  if (problems.length) throw new ConfigError(problems);
  const email = config.SMTP_URL ? new EmailProvider(config.SMTP_URL, config.EMAIL_FROM, config.PROVIDER_TIMEOUT_MS) : undefined;
  logger.info({ push: [...push.keys()].map((p) => notificationV1.PushPlatform[p]), email: Boolean(email) }, 'delivery providers');
  return { push, email };
}
