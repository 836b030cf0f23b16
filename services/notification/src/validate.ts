import { createECDH } from 'node:crypto';
import { InvalidArgumentError } from '@switchboard/errors';
import { notificationV1 } from '@switchboard/proto';
import type { PushTarget } from './settings';

/** Kinds are dotted lowercase words, e.g. `message.mention`, `lab.result_ready`. */
const KIND_PATTERN = /^[a-z0-9_]+(\.[a-z0-9_]+)*$/;

export function assertKind(kind: string, field = 'kind'): string {
  if (!kind || kind.length > 100 || !KIND_PATTERN.test(kind)) throw new InvalidArgumentError(`${field} must be dotted lowercase words, e.g. lab.result_ready`, { field });
  return kind;
}

export function assertKinds(kinds: string[]): string[] {
  for (const kind of kinds) assertKind(kind, 'kinds');
  return kinds;
}

const CHANNELS = new Set<number>([notificationV1.Channel.CHANNEL_IN_APP, notificationV1.Channel.CHANNEL_PUSH, notificationV1.Channel.CHANNEL_EMAIL]);

export function assertChannel(channel: number, field: string): notificationV1.Channel {
  if (!CHANNELS.has(channel)) throw new InvalidArgumentError(`${field} must be CHANNEL_IN_APP, CHANNEL_PUSH or CHANNEL_EMAIL`, { field });
  return channel;
}

/** A deliverable address: local@domain with a dotted domain, no spaces, display names or comments. */
const EMAIL = /^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$/;

export function assertEmail(value: string, field: string): string {
  if (value && (!EMAIL.test(value) || value.startsWith('.') || value.includes('..'))) throw new InvalidArgumentError(`${field} is not an email address`, { field });
  return value;
}

function base64url(value: string, field: string): Buffer {
  if (!/^[A-Za-z0-9_-]+={0,2}$/.test(value)) throw new InvalidArgumentError(`${field} is not base64url`, { field });
  return Buffer.from(value, 'base64url');
}

function hostAllowed(host: string, allowed: string[]): boolean {
  return allowed.some((entry) => host === entry || host.endsWith(`.${entry}`));
}

/**
 * A push target must be one a provider can take: a Web Push subscription
 * whose endpoint is an https URL of an allowed push service (the service
 * POSTs there: no arbitrary URLs) and whose keys are a P-256 point and a
 * 16-byte secret; FCM and APNs tokens of the right shape.
 */
export function assertPushTarget(platform: notificationV1.PushPlatform, target: PushTarget | undefined, allowedHosts: string[]): PushTarget {
  const P = notificationV1.PushPlatform;
  const expected = { [P.PUSH_PLATFORM_WEB_PUSH]: 'webPush', [P.PUSH_PLATFORM_FCM]: 'fcm', [P.PUSH_PLATFORM_APNS]: 'apns' }[platform as number];
  if (!expected) throw new InvalidArgumentError('platform must be WEB_PUSH, FCM or APNS', { field: 'platform' });
  if (!target || target.$case !== expected) throw new InvalidArgumentError(`platform ${P[platform]} needs its ${expected} target`, { field: expected === 'webPush' ? 'web_push' : expected });
  switch (target.$case) {
    case 'webPush': {
      const sub = target.value;
      let url: URL;
      try {
        url = new URL(sub.endpoint);
      } catch {
        throw new InvalidArgumentError('web_push.endpoint is not a URL', { field: 'web_push.endpoint' });
      }
      if (url.protocol !== 'https:' || sub.endpoint.length > 2048) throw new InvalidArgumentError('web_push.endpoint must be an https URL', { field: 'web_push.endpoint' });
      if (!hostAllowed(url.hostname, allowedHosts)) throw new InvalidArgumentError(`web_push.endpoint host ${url.hostname} is not a known push service`, { field: 'web_push.endpoint' });
      const p256dh = base64url(sub.p256dh, 'web_push.p256dh');
      if (p256dh.length !== 65 || p256dh[0] !== 4) throw new InvalidArgumentError('web_push.p256dh must be an uncompressed P-256 public key (65 bytes)', { field: 'web_push.p256dh' });
      try {
        const probe = createECDH('prime256v1');
        probe.generateKeys();
        probe.computeSecret(p256dh);
      } catch {
        throw new InvalidArgumentError('web_push.p256dh is not a point on the P-256 curve', { field: 'web_push.p256dh' });
      }
      if (base64url(sub.auth, 'web_push.auth').length !== 16) throw new InvalidArgumentError('web_push.auth must be 16 bytes', { field: 'web_push.auth' });
      return target;
    }
    case 'fcm':
      if (!/^[A-Za-z0-9_:.-]{20,4096}$/.test(target.value.token)) throw new InvalidArgumentError('fcm.token is not an FCM registration token', { field: 'fcm.token' });
      return target;
    case 'apns':
      if (!/^[0-9a-fA-F]{64,200}$/.test(target.value.deviceToken)) throw new InvalidArgumentError('apns.device_token must be the hex device token', { field: 'apns.device_token' });
      if (!/^[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$/.test(target.value.topic)) throw new InvalidArgumentError('apns.topic must be the app’s bundle id', { field: 'apns.topic' });
      if (target.value.environment === notificationV1.ApnsEnvironment.APNS_ENVIRONMENT_UNSPECIFIED) {
        return { $case: 'apns', value: { ...target.value, environment: notificationV1.ApnsEnvironment.APNS_ENVIRONMENT_PRODUCTION } };
      }
      return target;
  }
}
