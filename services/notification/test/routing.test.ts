import { notificationV1 } from '@switchboard/proto';
import { channelDeliveries } from '../src/deliveries';
import { deliveryRows } from '../src/pipeline';
import { Channel, emailWhenDue, Frequency, gate, heldWhenDue, retryDelay, route, SkipReason, type NotificationFacts, type Policy, type UserFacts } from '../src/routing';

const now = new Date('2026-03-04T10:10:00Z');
const n = (fields: Partial<NotificationFacts> = {}): NotificationFacts => ({ now, kind: 'lab.result_ready', urgent: false, fromMessage: false, requestedChannels: [], expiresAt: undefined, ...fields });
const user = (fields: Partial<UserFacts> = {}): UserFacts => ({
  presenceKnown: true,
  online: false,
  activeInConversation: false,
  preference: () => ({ enabled: true, frequency: Frequency.FREQUENCY_IMMEDIATE }),
  dnd: { active: false, until: undefined, reason: '' },
  timeZone: 'UTC',
  dailyDigestMinute: 480,
  maxPerHour: 0,
  sentLastHour: 0,
  email: 'grey@example.test',
  pushDevices: { usable: 1, total: 1 },
  templates: new Set([Channel.CHANNEL_IN_APP, Channel.CHANNEL_PUSH, Channel.CHANNEL_EMAIL]),
  ...fields,
});
const policy = (fields: Partial<Policy> = {}): Policy => ({ urgentBypassesDnd: false, urgentBypassesRateCap: true, emailFallbackAfterMs: 60_000, ...fields });
const decide = (nf: Partial<NotificationFacts>, uf: Partial<UserFacts>, pf: Partial<Policy> = {}) => {
  const r = route(n(nf), user(uf), policy(pf));
  return { suppressed: r.suppressed, inApp: r.channels.get(Channel.CHANNEL_IN_APP)!, push: r.channels.get(Channel.CHANNEL_PUSH)!, email: r.channels.get(Channel.CHANNEL_EMAIL)! };
};
const dnd = { active: true, until: new Date('2026-03-04T13:00:00Z'), reason: 'do-not-disturb until 07:00 America/Chicago' };

describe('presence-aware routing', () => {
  it('reading the conversation: nothing beyond the message itself', () => {
    const r = decide({ fromMessage: true }, { online: true, activeInConversation: true });
    expect(r.suppressed).toBe(true);
    for (const d of [r.inApp, r.push, r.email]) expect(d).toMatchObject({ action: 'skip', skipReason: SkipReason.SKIP_REASON_ACTIVE_IN_CONVERSATION });
    // Only messages are suppressed that way.
    expect(decide({ fromMessage: false }, { online: true, activeInConversation: true }).suppressed).toBe(false);
  });

  it('online elsewhere in the app: in-app only', () => {
    const r = decide({ fromMessage: true }, { online: true });
    expect(r.inApp).toEqual({ action: 'send', reason: 'online: in-app', silent: false });
    expect(r.push).toMatchObject({ action: 'skip', skipReason: SkipReason.SKIP_REASON_ONLINE });
  });

  it('offline: in-app stored and push now; email waits for the fallback delay', () => {
    const r = decide({}, {});
    expect(r.inApp.action).toBe('send');
    expect(r.push).toEqual({ action: 'send', reason: 'offline: push now' });
    expect(r.email).toEqual({ action: 'defer', hold: 'fallback', dueAt: new Date(now.getTime() + 60_000), reason: 'email if still unread and undelivered at 2026-03-04T10:11:00.000Z' });
  });

  it('presence that does not answer counts as offline (push rather than nothing)', () => {
    expect(decide({}, { presenceKnown: false }).push).toEqual({ action: 'send', reason: 'presence unknown (counted as offline): push now' });
  });

  it('urgent pushes even to an online user', () => {
    expect(decide({ urgent: true }, { online: true }).push).toEqual({ action: 'send', reason: 'urgent, online: push now' });
  });

  it('skips with a reason: not requested, turned off, no template, no destination, no provider, no fallback', () => {
    expect(decide({ requestedChannels: [Channel.CHANNEL_IN_APP] }, {}).push).toMatchObject({ skipReason: SkipReason.SKIP_REASON_NOT_REQUESTED });
    expect(decide({}, { preference: (c) => ({ enabled: c !== Channel.CHANNEL_PUSH, frequency: 0 }) }).push).toMatchObject({ skipReason: SkipReason.SKIP_REASON_PREFERENCE, reason: 'the user turned push off for lab.result_ready' });
    expect(decide({}, { templates: new Set([Channel.CHANNEL_IN_APP]) }).email).toMatchObject({ skipReason: SkipReason.SKIP_REASON_NO_TEMPLATE });
    expect(decide({}, { pushDevices: { usable: 0, total: 0 } }).push).toMatchObject({ skipReason: SkipReason.SKIP_REASON_NO_DESTINATION });
    expect(decide({}, { pushDevices: { usable: 0, total: 2 } }).push).toMatchObject({ skipReason: SkipReason.SKIP_REASON_NO_PROVIDER });
    expect(decide({}, { email: '' }).email).toMatchObject({ skipReason: SkipReason.SKIP_REASON_NO_DESTINATION });
    expect(decide({}, {}, { emailFallbackAfterMs: 0 }).email).toMatchObject({ skipReason: SkipReason.SKIP_REASON_FALLBACK_DISABLED });
    // In-app off: an online user still gets the push, since nothing else reaches them.
    expect(decide({}, { online: true, preference: (c) => ({ enabled: c !== Channel.CHANNEL_IN_APP, frequency: 0 }) }).push.action).toBe('send');
  });

  it('do-not-disturb holds push until it ends and stores in-app silently; urgent passes only if the tenant allows', () => {
    const held = decide({}, { dnd });
    expect(held.push).toEqual({ action: 'defer', hold: 'dnd', dueAt: dnd.until, reason: dnd.reason });
    expect(held.inApp).toMatchObject({ action: 'send', silent: true });
    expect(decide({ urgent: true }, { dnd }).push).toMatchObject({ action: 'defer', reason: `${dnd.reason} (the tenant does not let urgent pass)` });
    expect(decide({ urgent: true }, { dnd }, { urgentBypassesDnd: true }).push).toEqual({ action: 'send', reason: 'offline: push now (urgent: passes do-not-disturb)' });
    expect(decide({ urgent: true }, { dnd }, { urgentBypassesDnd: true }).inApp).toMatchObject({ silent: false });
    // Manual do-not-disturb without an end is looked at again later.
    expect(decide({}, { dnd: { active: true, until: undefined, reason: 'do-not-disturb is on' } }).push).toMatchObject({ action: 'defer', dueAt: new Date(now.getTime() + 15 * 60_000) });
  });

  it('digests by preference, and folds what passes the hourly cap into the next hourly digest', () => {
    const hourly = decide({}, { preference: () => ({ enabled: true, frequency: Frequency.FREQUENCY_HOURLY_DIGEST }) });
    expect(hourly.push).toEqual({ action: 'digest', period: 'hourly', dueAt: new Date('2026-03-04T11:00:00Z'), skipReason: SkipReason.SKIP_REASON_DIGESTED, reason: 'hourly digest (preference)' });
    const daily = decide({}, { timeZone: 'America/Chicago', preference: () => ({ enabled: true, frequency: Frequency.FREQUENCY_DAILY_DIGEST }) });
    expect(daily.push).toMatchObject({ period: 'daily', dueAt: new Date('2026-03-04T14:00:00Z') });
    expect(decide({ urgent: true }, { preference: () => ({ enabled: true, frequency: Frequency.FREQUENCY_DAILY_DIGEST }) }).push.action).toBe('send');
    const capped = decide({}, { maxPerHour: 5, sentLastHour: 5 });
    expect(capped.push).toMatchObject({ action: 'digest', period: 'hourly', skipReason: SkipReason.SKIP_REASON_RATE_CAP });
    expect(decide({}, { maxPerHour: 5, sentLastHour: 4 }).push.action).toBe('send');
    expect(decide({ urgent: true }, { maxPerHour: 5, sentLastHour: 5 }).push.action).toBe('send');
    expect(decide({ urgent: true }, { maxPerHour: 5, sentLastHour: 5 }, { urgentBypassesRateCap: false }).push.action).toBe('digest');
  });

  it('does not send what expired', () => {
    expect(gate(Channel.CHANNEL_PUSH, n({ expiresAt: now }), user(), policy())).toMatchObject({ action: 'skip', skipReason: SkipReason.SKIP_REASON_EXPIRED });
  });
});

describe('when held work comes due', () => {
  it('email goes only if the notification is still unread and undelivered', () => {
    expect(emailWhenDue(n(), user(), policy(), { read: true, deliveredOnDevice: false })).toMatchObject({ skipReason: SkipReason.SKIP_REASON_ALREADY_READ });
    expect(emailWhenDue(n(), user(), policy(), { read: false, deliveredOnDevice: true })).toMatchObject({ skipReason: SkipReason.SKIP_REASON_DELIVERED_ON_DEVICE });
    expect(emailWhenDue(n(), user(), policy(), { read: false, deliveredOnDevice: false })).toEqual({ action: 'send', reason: 'unread and undelivered after the fallback delay: email' });
    expect(emailWhenDue(n(), user({ dnd }), policy(), { read: false, deliveredOnDevice: false }).action).toBe('defer');
  });

  it('a held push is dropped once read, held again while do-not-disturb lasts, and never re-digested', () => {
    const digestPrefs = { preference: () => ({ enabled: true, frequency: Frequency.FREQUENCY_HOURLY_DIGEST }) };
    expect(heldWhenDue(Channel.CHANNEL_PUSH, n(), user(), policy(), { read: true, deliveredOnDevice: false })).toMatchObject({ skipReason: SkipReason.SKIP_REASON_ALREADY_READ });
    expect(heldWhenDue(Channel.CHANNEL_PUSH, n(), user({ dnd }), policy(), { read: false, deliveredOnDevice: false }).action).toBe('defer');
    expect(heldWhenDue(Channel.CHANNEL_PUSH, n(), user(digestPrefs), policy(), { read: false, deliveredOnDevice: false }).action).toBe('send');
  });

  it('retries back off exponentially with jitter, honour Retry-After, and stop after the last attempt', () => {
    const options = { baseMs: 1000, maxMs: 60_000, maxAttempts: 4 };
    expect([1, 2, 3].map((a) => retryDelay(a, options, 0))).toEqual([500, 1000, 2000]);
    expect([1, 2, 3].map((a) => retryDelay(a, options, 0.999))).toEqual([1000, 1999, 3998]);
    expect(retryDelay(1, options, 0, 30_000)).toBe(30_000);
    expect(retryDelay(1, options, 0, 10 * 60_000)).toBe(60_000);
    expect(retryDelay(4, options, 0.5)).toBeUndefined();
    expect(retryDelay(20, { ...options, maxAttempts: 30 }, 1)).toBe(60_000);
  });
});

describe('what is stored', () => {
  it('one row per channel decision, and one per device when push goes now', () => {
    const devices = [{ pushDeviceId: 'd1' }, { pushDeviceId: 'd2' }] as Parameters<typeof deliveryRows>[3];
    const rows = deliveryRows({ notificationId: 'n1', userId: 'u1' }, Channel.CHANNEL_PUSH, { action: 'send', reason: 'offline: push now' }, devices, now, 30_000);
    expect(rows.map((r) => [r.target, r.state, r.dueAt])).toEqual([
      ['', 'routed', null],
      ['d1', 'pending', now],
      ['d2', 'pending', now],
    ]);
    const inApp = deliveryRows({ notificationId: 'n1', userId: 'u1' }, Channel.CHANNEL_IN_APP, { action: 'send', reason: 'x' }, [], now, 30_000);
    expect(inApp).toEqual([expect.objectContaining({ state: 'inflight', attempts: 1, dueAt: new Date(now.getTime() + 30_000) })]);
  });

  it('reports a channel by its best device, with every attempt and the reasons', () => {
    const { DeliveryState, AttemptOutcome } = notificationV1;
    const at = (s: number) => new Date(now.getTime() + s * 1000);
    const channels = channelDeliveries(
      [
        { channel: 1, target: '', state: 'delivered', skip_reason: 0, reason: 'offline: in-app', next_attempt_at: null },
        { channel: 2, target: '', state: 'routed', skip_reason: 0, reason: 'offline: push now', next_attempt_at: null },
        { channel: 2, target: 'd1', state: 'failed', skip_reason: SkipReason.SKIP_REASON_NO_DESTINATION, reason: 'gone: unregistered', next_attempt_at: null },
        { channel: 2, target: 'd2', state: 'sent', skip_reason: 0, reason: 'offline: push now', next_attempt_at: null },
        { channel: 3, target: '', state: 'pending', skip_reason: 0, reason: 'email if still unread', next_attempt_at: at(60) },
      ],
      [
        { channel: 2, target: 'd1', attempt: 1, push_device_id: 'd1', started_at: at(1), finished_at: at(2), outcome: AttemptOutcome.ATTEMPT_OUTCOME_PERMANENT_FAILURE, provider_response: '410 Unregistered' },
        { channel: 2, target: 'd2', attempt: 1, push_device_id: 'd2', started_at: at(1.5), finished_at: at(2), outcome: AttemptOutcome.ATTEMPT_OUTCOME_SUCCESS, provider_response: '200' },
      ],
    );
    expect(channels.map((c) => [c.channel, c.state, c.reason])).toEqual([
      [1, DeliveryState.DELIVERY_STATE_DELIVERED, 'offline: in-app'],
      [2, DeliveryState.DELIVERY_STATE_SENT, 'offline: push now; gone: unregistered'],
      [3, DeliveryState.DELIVERY_STATE_PENDING, 'email if still unread'],
    ]);
    expect(channels[1]!.attempts.map((a) => a.pushDeviceId)).toEqual(['d1', 'd2']);
    expect(channels[2]!.nextAttemptAt).toEqual(at(60));
  });

  it('reports a notification suppressed while the user read the conversation as skipped, with the reason, on every channel', () => {
    const { DeliveryState } = notificationV1;
    const reason = 'reading the conversation: the message itself is enough';
    // What the pipeline stores for it: one decision row, on in-app.
    const channels = channelDeliveries([{ channel: 1, target: '', state: 'skipped', skip_reason: SkipReason.SKIP_REASON_ACTIVE_IN_CONVERSATION, reason, next_attempt_at: null }], []);
    expect(channels.map((c) => [c.channel, c.state, c.skipReason, c.reason, c.attempts])).toEqual([
      [1, DeliveryState.DELIVERY_STATE_SKIPPED, SkipReason.SKIP_REASON_ACTIVE_IN_CONVERSATION, reason, []],
      [2, DeliveryState.DELIVERY_STATE_SKIPPED, SkipReason.SKIP_REASON_ACTIVE_IN_CONVERSATION, reason, []],
      [3, DeliveryState.DELIVERY_STATE_SKIPPED, SkipReason.SKIP_REASON_ACTIVE_IN_CONVERSATION, reason, []],
    ]);
  });
});
