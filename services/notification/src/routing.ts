import { notificationV1 } from '@switchboard/proto';
import { nextDailyDigest, nextHourlyDigest, type DndState } from './schedule';

/**
 * The routing decision, pure: who gets what on which channel, and why. The
 * pipeline gathers the facts (presence, receipts, preferences, devices,
 * templates, the hourly count), this decides, and the decision with its
 * reason is stored per channel before anything is sent.
 *
 *  - active in the conversation (reading it right now): nothing beyond the
 *    message itself;
 *  - online elsewhere in the app: in-app;
 *  - offline: in-app (stored for later) and push;
 *  - still unread and undelivered after the tenant's delay: email.
 *
 * Preferences (per kind and channel), do-not-disturb, digests and the hourly
 * cap apply to push and email; urgent notifications are never digested and
 * pass do-not-disturb and the cap only where the tenant allows it.
 */

export const Channel = notificationV1.Channel;
export type Channel = notificationV1.Channel;
export const SkipReason = notificationV1.SkipReason;
export type SkipReason = notificationV1.SkipReason;
export const Frequency = notificationV1.Frequency;
export type Frequency = notificationV1.Frequency;

export const CHANNELS = [Channel.CHANNEL_IN_APP, Channel.CHANNEL_PUSH, Channel.CHANNEL_EMAIL] as const;

export type DigestPeriod = 'hourly' | 'daily';

export type Decision =
  | { action: 'send'; reason: string; silent?: boolean }
  /** Held until `dueAt`: for do-not-disturb, or the email fallback's delay. */
  | { action: 'defer'; hold: 'dnd' | 'fallback'; dueAt: Date | undefined; reason: string }
  /** Folded into the next digest at `dueAt`. */
  | { action: 'digest'; period: DigestPeriod; dueAt: Date; skipReason: SkipReason; reason: string }
  | { action: 'skip'; skipReason: SkipReason; reason: string };

export interface ChannelPreference {
  enabled: boolean;
  frequency: Frequency;
}

export interface UserFacts {
  /** Presence answered; when it did not, the user counts as offline (push rather than nothing). */
  presenceKnown: boolean;
  online: boolean;
  /** Reading the message's conversation right now (see pipeline for the definition). */
  activeInConversation: boolean;
  preference(channel: Channel): ChannelPreference;
  dnd: DndState;
  timeZone: string;
  dailyDigestMinute: number;
  /** The user's cap, or the tenant default; 0 = none. */
  maxPerHour: number;
  /** Push and email notifications counted in the past hour, this batch's included. */
  sentLastHour: number;
  email: string;
  /** Push devices whose platform has a provider configured here, and all of them. */
  pushDevices: { usable: number; total: number };
  /** Channels with a template for this kind (tenant's, or built in). */
  templates: ReadonlySet<Channel>;
}

export interface Policy {
  urgentBypassesDnd: boolean;
  urgentBypassesRateCap: boolean;
  emailFallbackAfterMs: number;
}

export interface NotificationFacts {
  now: Date;
  kind: string;
  urgent: boolean;
  /** A message notification (from `sb.messages`), which may be suppressed while the user reads the conversation. */
  fromMessage: boolean;
  /** Empty = every channel. */
  requestedChannels: readonly Channel[];
  expiresAt: Date | undefined;
}

export interface Route {
  /** Nothing at all goes to the user; kept for support staff only. */
  suppressed: boolean;
  channels: Map<Channel, Decision>;
}

/** How long a held notification waits before do-not-disturb without an end is looked at again. */
export const OPEN_DND_RECHECK_MS = 15 * 60 * 1000;

const CHANNEL_NAME: Record<number, string> = { [Channel.CHANNEL_IN_APP]: 'in-app', [Channel.CHANNEL_PUSH]: 'push', [Channel.CHANNEL_EMAIL]: 'email' };

export function channelName(channel: Channel): string {
  return CHANNEL_NAME[channel] ?? `channel ${channel}`;
}

function skip(skipReason: SkipReason, reason: string): Decision {
  return { action: 'skip', skipReason, reason };
}

function digestAt(period: DigestPeriod, now: Date, user: UserFacts): Date {
  return period === 'hourly' ? nextHourlyDigest(now, user.timeZone) : nextDailyDigest(now, user.timeZone, user.dailyDigestMinute);
}

/**
 * What happens to a push or email that is ready to go now: it expired, it
 * waits for do-not-disturb to end, it joins a digest (the user's frequency, or
 * the hourly cap reached), or it goes.
 */
export function gate(channel: Channel, n: NotificationFacts, user: UserFacts, policy: Policy, options: { digest: boolean } = { digest: true }): Decision {
  if (n.expiresAt && n.expiresAt.getTime() <= n.now.getTime()) return skip(SkipReason.SKIP_REASON_EXPIRED, 'expired before it could go');
  if (options.digest && !n.urgent) {
    const frequency = user.preference(channel).frequency;
    if (frequency === Frequency.FREQUENCY_HOURLY_DIGEST || frequency === Frequency.FREQUENCY_DAILY_DIGEST) {
      const period: DigestPeriod = frequency === Frequency.FREQUENCY_HOURLY_DIGEST ? 'hourly' : 'daily';
      return { action: 'digest', period, dueAt: digestAt(period, n.now, user), skipReason: SkipReason.SKIP_REASON_DIGESTED, reason: `${period} digest (preference)` };
    }
  }
  if (user.dnd.active && !(n.urgent && policy.urgentBypassesDnd)) {
    const dueAt = user.dnd.until ?? new Date(n.now.getTime() + OPEN_DND_RECHECK_MS);
    return { action: 'defer', hold: 'dnd', dueAt, reason: n.urgent ? `${user.dnd.reason} (the tenant does not let urgent pass)` : user.dnd.reason };
  }
  if (options.digest && user.maxPerHour > 0 && user.sentLastHour >= user.maxPerHour && !(n.urgent && policy.urgentBypassesRateCap)) {
    return {
      action: 'digest',
      period: 'hourly',
      dueAt: digestAt('hourly', n.now, user),
      skipReason: SkipReason.SKIP_REASON_RATE_CAP,
      reason: `rate cap of ${user.maxPerHour} push and email per hour reached: next hourly digest`,
    };
  }
  const bypass = user.dnd.active ? ' (urgent: passes do-not-disturb)' : '';
  return { action: 'send', reason: `${channelName(channel)} now${bypass}` };
}

/** The decision for each channel when a notification is created. */
export function route(n: NotificationFacts, user: UserFacts, policy: Policy): Route {
  const channels = new Map<Channel, Decision>();
  if (n.fromMessage && user.activeInConversation) {
    for (const channel of CHANNELS) channels.set(channel, skip(SkipReason.SKIP_REASON_ACTIVE_IN_CONVERSATION, 'reading the conversation: the message itself is enough'));
    return { suppressed: true, channels };
  }
  const eligible = (channel: Channel): Decision | undefined => {
    if (n.requestedChannels.length > 0 && !n.requestedChannels.includes(channel)) return skip(SkipReason.SKIP_REASON_NOT_REQUESTED, 'the request left this channel out');
    if (!user.preference(channel).enabled) return skip(SkipReason.SKIP_REASON_PREFERENCE, `the user turned ${channelName(channel)} off for ${n.kind}`);
    if (!user.templates.has(channel)) return skip(SkipReason.SKIP_REASON_NO_TEMPLATE, `no ${channelName(channel)} template for ${n.kind}`);
    return undefined;
  };
  const dndSilences = user.dnd.active && !(n.urgent && policy.urgentBypassesDnd);
  const presence = user.presenceKnown ? (user.online ? 'online' : 'offline') : 'presence unknown (counted as offline)';

  const inApp = eligible(Channel.CHANNEL_IN_APP) ?? {
    action: 'send' as const,
    reason: `${presence}: in-app${dndSilences ? ', silently (do-not-disturb)' : ''}`,
    silent: dndSilences,
  };
  channels.set(Channel.CHANNEL_IN_APP, inApp);

  let push = eligible(Channel.CHANNEL_PUSH);
  if (!push) {
    if (user.online && inApp.action === 'send' && !n.urgent) push = skip(SkipReason.SKIP_REASON_ONLINE, 'online in the app: in-app only');
    else if (user.pushDevices.usable === 0) {
      push = user.pushDevices.total > 0 ? skip(SkipReason.SKIP_REASON_NO_PROVIDER, 'no push provider configured for the user’s devices') : skip(SkipReason.SKIP_REASON_NO_DESTINATION, 'no push device registered');
    } else {
      push = gate(Channel.CHANNEL_PUSH, n, user, policy);
      if (push.action === 'send') push = { ...push, reason: `${n.urgent && user.online ? 'urgent, online' : presence}: ${push.reason}` };
    }
  }
  channels.set(Channel.CHANNEL_PUSH, push);

  let email = eligible(Channel.CHANNEL_EMAIL);
  if (!email) {
    if (!user.email) email = skip(SkipReason.SKIP_REASON_NO_DESTINATION, 'no email address');
    else if (policy.emailFallbackAfterMs <= 0) email = skip(SkipReason.SKIP_REASON_FALLBACK_DISABLED, 'the tenant has no email fallback');
    else {
      const dueAt = new Date(n.now.getTime() + policy.emailFallbackAfterMs);
      email = { action: 'defer', hold: 'fallback', dueAt, reason: `email if still unread and undelivered at ${dueAt.toISOString()}` };
    }
  }
  channels.set(Channel.CHANNEL_EMAIL, email);
  return { suppressed: false, channels };
}

export interface DueFacts {
  read: boolean;
  /** A device of the user received it (message notifications: messaging's delivered watermark). */
  deliveredOnDevice: boolean;
}

/** The email fallback when its delay has passed. */
export function emailWhenDue(n: NotificationFacts, user: UserFacts, policy: Policy, due: DueFacts): Decision {
  if (due.read) return skip(SkipReason.SKIP_REASON_ALREADY_READ, 'read in the app before the fallback delay');
  if (due.deliveredOnDevice) return skip(SkipReason.SKIP_REASON_DELIVERED_ON_DEVICE, 'a device of the user received the message');
  if (!user.email) return skip(SkipReason.SKIP_REASON_NO_DESTINATION, 'no email address');
  const decision = gate(Channel.CHANNEL_EMAIL, n, user, policy);
  return decision.action === 'send' ? { action: 'send', reason: 'unread and undelivered after the fallback delay: email' } : decision;
}

/** A push held for do-not-disturb when it comes due: read meanwhile, still quiet, or go. */
export function heldWhenDue(channel: Channel, n: NotificationFacts, user: UserFacts, policy: Policy, due: DueFacts): Decision {
  if (due.read) return skip(SkipReason.SKIP_REASON_ALREADY_READ, 'read in the app while it was held');
  return gate(channel, n, user, policy, { digest: false });
}

/**
 * When to try again after a transient failure: exponential with jitter (half fixed, half random)
 * (`random` in [0, 1)), capped; undefined when the attempts are used up.
 */
export function retryDelay(attempt: number, options: { baseMs: number; maxMs: number; maxAttempts: number }, random: number, retryAfterMs?: number): number | undefined {
  if (attempt >= options.maxAttempts) return undefined;
  const ceiling = Math.min(options.maxMs, options.baseMs * 2 ** (attempt - 1));
  const jittered = Math.round(ceiling / 2 + (ceiling / 2) * random);
  return Math.max(jittered, Math.min(retryAfterMs ?? 0, options.maxMs));
}
