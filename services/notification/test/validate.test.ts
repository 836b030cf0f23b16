import { createECDH, randomBytes } from 'node:crypto';
import { notificationV1 } from '@switchboard/proto';
import { assertEmail, assertKind, assertPushTarget } from '../src/validate';

const { PushPlatform } = notificationV1;
const allowed = ['fcm.googleapis.com', 'web.push.apple.com'];

function subscription(fields: Partial<notificationV1.WebPushSubscription> = {}) {
  const ecdh = createECDH('prime256v1');
  ecdh.generateKeys();
  return { $case: 'webPush' as const, value: { endpoint: 'https://fcm.googleapis.com/fcm/send/abc', p256dh: ecdh.getPublicKey().toString('base64url'), auth: randomBytes(16).toString('base64url'), expirationTime: undefined, ...fields } };
}

describe('input validation', () => {
  it('accepts a browser’s subscription and refuses bad keys and foreign endpoints', () => {
    expect(assertPushTarget(PushPlatform.PUSH_PLATFORM_WEB_PUSH, subscription(), allowed).$case).toBe('webPush');
    const field = (target: ReturnType<typeof subscription>) => {
      try {
        assertPushTarget(PushPlatform.PUSH_PLATFORM_WEB_PUSH, target, allowed);
      } catch (err) {
        return (err as { field: string }).field;
      }
      return 'accepted';
    };
    expect(field(subscription({ endpoint: 'https://updates.web.push.apple.com/x' }))).toBe('accepted');
    expect(field(subscription({ endpoint: 'https://evil.example/x' }))).toBe('web_push.endpoint');
    expect(field(subscription({ endpoint: 'https://fcm.googleapis.com.evil.example/x' }))).toBe('web_push.endpoint');
    expect(field(subscription({ endpoint: 'http://fcm.googleapis.com/x' }))).toBe('web_push.endpoint');
    expect(field(subscription({ p256dh: Buffer.concat([Buffer.from([4]), Buffer.alloc(64, 7)]).toString('base64url') }))).toBe('web_push.p256dh');
    expect(field(subscription({ p256dh: randomBytes(33).toString('base64url') }))).toBe('web_push.p256dh');
    expect(field(subscription({ auth: randomBytes(8).toString('base64url') }))).toBe('web_push.auth');
  });

  it('checks FCM and APNs tokens and that the platform matches the target', () => {
    expect(() => assertPushTarget(PushPlatform.PUSH_PLATFORM_FCM, { $case: 'fcm', value: { token: 'short' } }, allowed)).toThrow(expect.objectContaining({ field: 'fcm.token' }));
    const apns = assertPushTarget(PushPlatform.PUSH_PLATFORM_APNS, { $case: 'apns', value: { deviceToken: 'ab'.repeat(32), topic: 'com.example.care', environment: 0 } }, allowed);
    expect(apns).toMatchObject({ value: { environment: notificationV1.ApnsEnvironment.APNS_ENVIRONMENT_PRODUCTION } });
    expect(() => assertPushTarget(PushPlatform.PUSH_PLATFORM_APNS, { $case: 'apns', value: { deviceToken: 'xyz', topic: 'com.example.care', environment: 1 } }, allowed)).toThrow(/hex/);
    expect(() => assertPushTarget(PushPlatform.PUSH_PLATFORM_APNS, subscription(), allowed)).toThrow(/needs its apns target/);
    expect(() => assertPushTarget(PushPlatform.PUSH_PLATFORM_UNSPECIFIED, subscription(), allowed)).toThrow(/platform/);
  });

  it('knows an email address and a kind when it sees one', () => {
    for (const ok of ['a@example.test', 'first.last+tag@sub.example.org', '']) expect(assertEmail(ok, 'email')).toBe(ok);
    for (const bad of ['a@b', 'a b@example.test', 'Name <a@example.test>', 'a@@example.test', '.a@example.test', 'a..b@example.test', 'a@-example.test']) {
      expect(() => assertEmail(bad, 'email')).toThrow(expect.objectContaining({ field: 'email' }));
    }
    expect(assertKind('lab.result_ready')).toBe('lab.result_ready');
    for (const bad of ['', 'Lab', 'lab..x', 'lab.', 'lab result']) expect(() => assertKind(bad)).toThrow(expect.objectContaining({ field: 'kind' }));
  });
});
