import { InvalidArgumentError, NotFoundError, PermissionDeniedError } from '@switchboard/errors';
import { actingUser, type CallContext, targetUser, unary } from '@switchboard/grpc';
import { assertSafeId } from '@switchboard/ids';
import { envelopeRecord, TOPICS, type Producer } from '@switchboard/kafka';
import type { Logger } from '@switchboard/logging';
import { newEnvelope } from '@switchboard/nats';
import { notificationV1 } from '@switchboard/proto';
import type { NotificationConfig } from './config';
import type { DeliveryStore } from './deliveries';
import type { NotificationEvents } from './events';
import { requestIdFor } from './ids';
import type { Peers } from './peers';
import { CHANNELS } from './routing';
import { dndState, isValidTimeZone, type Window } from './schedule';
import { localeChain, resolveTemplate, templateToProto, type Preferences, type PushTarget, type SettingsStore, type TenantPolicy } from './settings';
import type { NotificationStore } from './store';
import { analyse, normaliseLocale, render, type TemplateContent } from './templates';
import { assertChannel, assertEmail, assertKind, assertKinds, assertPushTarget } from './validate';

const { Channel, Frequency, Priority } = notificationV1;



function internalOnly(ctx: CallContext, what: string): void {
  if (!ctx.tenant.internal) throw new PermissionDeniedError(`${what} is for internal callers only`, { field: 'context.internal' });
}

function pageSize(requested: number | undefined, config: NotificationConfig, fallback = 50): number {
  return Math.min(requested || fallback, config.MAX_PAGE_SIZE);
}

const VARIABLE = /^[A-Za-z_][A-Za-z0-9_]{0,63}$/;

function boundedMap(map: Record<string, string>, field: string, maxEntries: number, maxValue: number): Record<string, string> {
  const entries = Object.entries(map);
  if (entries.length > maxEntries) throw new InvalidArgumentError(`${field} has more than ${maxEntries} entries`, { field });
  for (const [key, value] of entries) {
    if (!VARIABLE.test(key)) throw new InvalidArgumentError(`${field} key "${key.slice(0, 64)}" must be a name of letters, digits and _`, { field });
    if (value.length > maxValue) throw new InvalidArgumentError(`${field}.${key} is longer than ${maxValue} characters`, { field: `${field}.${key}` });
  }
  return map;
}

function templateKey(key: notificationV1.TemplateKey | undefined, requireLocale: boolean): { kind: string; channel: notificationV1.Channel; locale: string } {
  if (!key) throw new InvalidArgumentError('key is required', { field: 'key' });
  return {
    kind: assertKind(key.kind, 'key.kind'),
    channel: assertChannel(key.channel, 'key.channel'),
    locale: requireLocale || key.locale ? normaliseLocale(key.locale, 'key.locale') : '',
  };
}

function templateContent(t: notificationV1.Template, channel: notificationV1.Channel): TemplateContent {
  if (!t.title && !t.body) throw new InvalidArgumentError('a template needs a title or a body', { field: 'template.title' });
  if (t.title.length > 500) throw new InvalidArgumentError('template.title is longer than 500 characters', { field: 'template.title' });
  if (t.htmlBody && channel !== Channel.CHANNEL_EMAIL) throw new InvalidArgumentError('html_body is for email templates only', { field: 'template.html_body' });
  const content = { title: t.title, body: t.body, htmlBody: t.htmlBody, data: boundedMap(t.data, 'template.data', 20, 2000) };
  analyse(content);
  return content;
}

function preferencesToProto(p: Preferences): notificationV1.Preferences {
  return {
    userId: p.userId,
    channelPreferences: p.channelPreferences,
    doNotDisturb: dndToProto(p),
    timeZone: p.timeZone,
    locale: p.locale,
    maxPerHour: p.maxPerHour,
    dailyDigestMinute: p.dailyDigestMinute,
    version: p.version,
    email: p.email,
  };
}

function dndToProto(p: Preferences): notificationV1.DoNotDisturb {
  return { enabled: p.dnd.enabled, enabledUntil: p.dnd.until, schedule: p.dnd.schedule.map((w) => ({ days: w.days, startMinute: w.startMinute, endMinute: w.endMinute })) };
}

function dndActive(p: Preferences, policy: TenantPolicy): boolean {
  return dndState({ enabled: p.dnd.enabled, until: p.dnd.until, schedule: p.dnd.schedule, timeZone: p.timeZone || policy.defaultTimeZone }, new Date()).active;
}

function channelPreferences(list: notificationV1.ChannelPreference[]): notificationV1.ChannelPreference[] {
  if (list.length > 200) throw new InvalidArgumentError('at most 200 channel preferences', { field: 'preferences.channel_preferences' });
  const seen = new Set<string>();
  return list.map((p, i) => {
    const field = `preferences.channel_preferences[${i}]`;
    if (p.kind) assertKind(p.kind, `${field}.kind`);
    assertChannel(p.channel, `${field}.channel`);
    if (![Frequency.FREQUENCY_UNSPECIFIED, Frequency.FREQUENCY_IMMEDIATE, Frequency.FREQUENCY_HOURLY_DIGEST, Frequency.FREQUENCY_DAILY_DIGEST].includes(p.frequency)) {
      throw new InvalidArgumentError(`${field}.frequency is not a frequency`, { field: `${field}.frequency` });
    }
    const key = `${p.kind}/${p.channel}`;
    if (seen.has(key)) throw new InvalidArgumentError(`${field} repeats kind "${p.kind}" on channel ${Channel[p.channel]}`, { field });
    seen.add(key);
    return { kind: p.kind, channel: p.channel, enabled: p.enabled, frequency: p.frequency || Frequency.FREQUENCY_IMMEDIATE };
  });
}

function schedule(windows: notificationV1.DoNotDisturbWindow[]): Window[] {
  if (windows.length > 20) throw new InvalidArgumentError('at most 20 do-not-disturb windows', { field: 'preferences.do_not_disturb.schedule' });
  return windows.map((w, i) => {
    const field = `preferences.do_not_disturb.schedule[${i}]`;
    if (w.startMinute > 1439 || w.endMinute > 1439) throw new InvalidArgumentError(`${field}: minutes are 0–1439`, { field });
    if (w.startMinute === w.endMinute) throw new InvalidArgumentError(`${field}: start and end are the same minute`, { field });
    for (const day of w.days) if (day < 1 || day > 7) throw new InvalidArgumentError(`${field}.days: weekdays are MONDAY…SUNDAY`, { field: `${field}.days` });
    return { days: [...new Set(w.days)], startMinute: w.startMinute, endMinute: w.endMinute };
  });
}

function timeZone(zone: string, field: string): string {
  if (zone && !isValidTimeZone(zone)) throw new InvalidArgumentError(`${field} is not an IANA time zone`, { field });
  return zone;
}

/** ListPushDevices and friends: web push keys left out, tokens shortened. */
function redacted(device: { pushDeviceId: string; userId: string; deviceId: string; platform: notificationV1.PushPlatform; target: PushTarget; appVersion: string; createdAt: Date; lastSuccessAt: Date | undefined }): notificationV1.PushDevice {
  const short = (token: string) => (token.length > 12 ? `${token.slice(0, 6)}…${token.slice(-4)}` : '…');
  const t = device.target;
  const target: notificationV1.PushDevice['target'] =
    t.$case === 'webPush'
      ? { $case: 'webPush', value: { endpoint: `${new URL(t.value.endpoint).origin}/…`, p256dh: '', auth: '', expirationTime: t.value.expirationTime } }
      : t.$case === 'fcm'
        ? { $case: 'fcm', value: { token: short(t.value.token) } }
        : { $case: 'apns', value: { ...t.value, deviceToken: short(t.value.deviceToken) } };
  return { ...device, target };
}

export interface ServiceDeps {
  store: NotificationStore;
  settings: SettingsStore;
  deliveries: DeliveryStore;
  events: NotificationEvents;
  peers: Peers;
  producer: Producer;
  config: NotificationConfig;
  logger: Logger;
  /** Wakes the delivery worker (held notifications to look at again). */
  wake: () => void;
}

export function notificationService(deps: ServiceDeps): notificationV1.NotificationServiceServer {
  const { store, settings, deliveries, events, peers, producer, config, logger } = deps;

  /** Templates a Notify of this kind would use, and the variables they need: unknown kinds and missing variables fail here, before anything is accepted. */
  async function checkTemplates(tenantId: string, kind: string, channels: notificationV1.Channel[], variables: Record<string, string>): Promise<void> {
    const [stored, policy] = await Promise.all([settings.templatesFor(tenantId, kind), settings.getPolicy(tenantId)]);
    const wanted = channels.length ? channels : [...CHANNELS];
    const resolved = wanted.map((channel) => resolveTemplate(stored, kind, channel, localeChain('', policy.defaultLocale))).filter((t) => t !== undefined);
    if (resolved.length === 0) throw new NotFoundError(`no template for kind ${kind}${channels.length ? ' on the requested channels' : ''}`, { field: 'kind' });
    // Every locale's template must be satisfiable: users of any locale get one.
    const candidates = [...resolved.map((r) => ({ content: r.content, key: r.key })), ...stored.filter((t) => wanted.includes(t.channel)).map((t) => ({ content: t as TemplateContent, key: { kind, channel: t.channel, locale: t.locale } }))];
    for (const { content, key } of candidates) {
      // Throws MissingVariablesError naming every missing variable and the template.
      render(content, variables, `${kind} ${Channel[key.channel]}${key.locale ? ` ${key.locale}` : ''} template`);
    }
  }

  const service: notificationV1.NotificationServiceServer = {
    notify: unary('Notify', logger, async (req: notificationV1.NotifyRequest, ctx) => {
      internalOnly(ctx, 'Notify');
      const tenantId = ctx.tenant.tenantId;
      if (!req.idempotencyKey || req.idempotencyKey.length > 200) throw new InvalidArgumentError('idempotency_key is required (at most 200 characters)', { field: 'idempotency_key' });
      const kind = assertKind(req.kind);
      let userIds: string[] = [];
      let roomId = '';
      switch (req.audience?.$case) {
        case 'userId':
          userIds = [assertSafeId(req.audience.value, 'user_id')];
          break;
        case 'users':
          if (req.audience.value.userIds.length === 0) throw new InvalidArgumentError('users is empty', { field: 'users' });
          if (req.audience.value.userIds.length > config.MAX_NOTIFY_USERS) throw new InvalidArgumentError(`at most ${config.MAX_NOTIFY_USERS} users per request; use a room`, { field: 'users' });
          userIds = req.audience.value.userIds.map((id) => assertSafeId(id, 'users'));
          break;
        case 'roomId':
          roomId = assertSafeId(req.audience.value, 'room_id');
          break;
        default:
          throw new InvalidArgumentError('an audience is required: user_id, users or room_id', { field: 'audience' });
      }
      const exclude = req.excludeUserIds.map((id) => assertSafeId(id, 'exclude_user_ids'));
      const channels = [...new Set(req.channels.map((c) => assertChannel(c, 'channels')))];
      if (![Priority.PRIORITY_UNSPECIFIED, Priority.PRIORITY_NORMAL, Priority.PRIORITY_URGENT].includes(req.priority)) throw new InvalidArgumentError('priority is not a priority', { field: 'priority' });
      if (req.expiresAt && req.expiresAt.getTime() <= Date.now()) throw new InvalidArgumentError('expires_at is in the past', { field: 'expires_at' });
      const variables = boundedMap(req.variables, 'variables', 100, 5000);
      const data = boundedMap(req.data, 'data', 50, 2000);
      await checkTemplates(tenantId, kind, channels, variables);
      // A room of another tenant does not exist for this one: NOT_FOUND, nothing accepted.
      if (roomId) await peers.checkRoom(tenantId, roomId);

      const caller = ctx.tenant.userId || 'internal';
      const requestId = requestIdFor(tenantId, caller, req.idempotencyKey);
      const envelope = newEnvelope(tenantId, {
        $case: 'notificationRequested',
        value: { requestId, userIds, roomId, kind, variables, urgent: req.priority === Priority.PRIORITY_URGENT, data, excludeUserIds: exclude, channels, expiresAt: req.expiresAt },
      });
      // Accepted once Kafka has it: nothing is lost if this service restarts before it is processed.
      return deliveries.acceptRequest(tenantId, caller, req.idempotencyKey, requestId, async () => {
        await producer.send({ topic: TOPICS.notifications, acks: -1, messages: [envelopeRecord(userIds.length === 1 ? userIds[0]! : roomId || requestId, envelope)] });
      });
    }),

    getDeliveryStatus: unary('GetDeliveryStatus', logger, async (req: notificationV1.GetDeliveryStatusRequest, ctx) => {
      const tenantId = ctx.tenant.tenantId;
      const notificationId = assertSafeId(req.notificationId, 'notification_id');
      const notification = await store.get(tenantId, ctx.tenant.internal ? undefined : actingUser(ctx), notificationId);
      const status = await deliveries.status(tenantId, notificationId);
      return { notificationId, userId: notification.userId, kind: notification.kind, channels: status.channels, suppressed: status.suppressed };
    }),

    listNotifications: unary('ListNotifications', logger, async (req: notificationV1.ListNotificationsRequest, ctx) => {
      if (req.includeSuppressed) internalOnly(ctx, 'include_suppressed');
      const { notifications, nextPageToken, unreadCount } = await store.list(
        ctx.tenant.tenantId,
        targetUser(ctx, req.userId),
        req.unreadOnly,
        assertKinds(req.kinds),
        pageSize(req.page?.pageSize, config),
        req.page?.pageToken ?? '',
        req.includeSuppressed,
      );
      return { notifications, page: { nextPageToken }, unreadCount };
    }),

    getNotification: unary('GetNotification', logger, async (req: notificationV1.GetNotificationRequest, ctx) => {
      const { hidden: _hidden, ...notification } = await store.get(ctx.tenant.tenantId, ctx.tenant.internal ? undefined : actingUser(ctx), assertSafeId(req.notificationId, 'notification_id'));
      return { notification };
    }),

    markNotificationRead: unary('MarkNotificationRead', logger, async (req: notificationV1.MarkNotificationReadRequest, ctx) => {
      const tenantId = ctx.tenant.tenantId;
      const userId = actingUser(ctx);
      const { notification, changed, unreadCount } = await store.markRead(tenantId, userId, assertSafeId(req.notificationId, 'notification_id'));
      if (changed) events.badge(tenantId, userId, unreadCount);
      return { notification, unreadCount };
    }),

    markAllRead: unary('MarkAllRead', logger, async (req: notificationV1.MarkAllReadRequest, ctx) => {
      const tenantId = ctx.tenant.tenantId;
      const userId = actingUser(ctx);
      const { marked, unreadCount } = await store.markAllRead(tenantId, userId, req.upTo, assertKinds(req.kinds));
      if (marked > 0) events.badge(tenantId, userId, unreadCount);
      return { marked, unreadCount };
    }),

    getBadgeCount: unary('GetBadgeCount', logger, async (req: notificationV1.GetBadgeCountRequest, ctx) => {
      return { unreadCount: await store.badgeCount(ctx.tenant.tenantId, targetUser(ctx, req.userId)) };
    }),

    // --- templates ---

    upsertTemplate: unary('UpsertTemplate', logger, async (req: notificationV1.UpsertTemplateRequest, ctx) => {
      internalOnly(ctx, 'UpsertTemplate');
      if (!req.template) throw new InvalidArgumentError('template is required', { field: 'template' });
      const key = templateKey(req.template.key, true);
      const content = templateContent(req.template, key.channel);
      const { template, created } = await settings.upsertTemplate(ctx.tenant.tenantId, { ...key, ...content, updatedBy: ctx.tenant.userId || 'internal' }, Number(req.expectedVersion));
      return { template: templateToProto(ctx.tenant.tenantId, template), created };
    }),

    getTemplate: unary('GetTemplate', logger, async (req: notificationV1.GetTemplateRequest, ctx) => {
      internalOnly(ctx, 'GetTemplate');
      const tenantId = ctx.tenant.tenantId;
      const key = templateKey(req.key, !req.resolve);
      if (!req.resolve) {
        const found = await settings.getTemplate(tenantId, key.kind, key.channel, key.locale);
        if (!found) throw new NotFoundError(`no template for ${key.kind}, ${Channel[key.channel]}, ${key.locale}`, { field: 'key' });
        return { template: templateToProto(tenantId, found) };
      }
      const [stored, policy] = await Promise.all([settings.templatesFor(tenantId, key.kind), settings.getPolicy(tenantId)]);
      const resolved = resolveTemplate(stored, key.kind, key.channel, localeChain(key.locale, policy.defaultLocale));
      if (!resolved) throw new NotFoundError(`no template for ${key.kind} on ${Channel[key.channel]} in any fallback locale`, { field: 'key' });
      const exact = stored.find((t) => t.channel === key.channel && t.locale === resolved.key.locale);
      return {
        template: exact
          ? templateToProto(tenantId, exact)
          : { tenantId, key: resolved.key, ...resolved.content, version: 0, updatedBy: 'built-in', updatedAt: undefined },
      };
    }),

    listTemplates: unary('ListTemplates', logger, async (req: notificationV1.ListTemplatesRequest, ctx) => {
      internalOnly(ctx, 'ListTemplates');
      const filter = {
        kind: req.kind ? assertKind(req.kind) : '',
        channel: req.channel ? assertChannel(req.channel, 'channel') : 0,
        locale: req.locale ? normaliseLocale(req.locale, 'locale') : '',
      };
      const { templates, nextPageToken } = await settings.listTemplates(ctx.tenant.tenantId, filter, pageSize(req.page?.pageSize, config), req.page?.pageToken ?? '');
      return { templates: templates.map((t) => templateToProto(ctx.tenant.tenantId, t)), page: { nextPageToken } };
    }),

    deleteTemplate: unary('DeleteTemplate', logger, async (req: notificationV1.DeleteTemplateRequest, ctx) => {
      internalOnly(ctx, 'DeleteTemplate');
      const key = templateKey(req.key, true);
      await settings.deleteTemplate(ctx.tenant.tenantId, key.kind, key.channel, key.locale);
      return {};
    }),

    renderTemplate: unary('RenderTemplate', logger, async (req: notificationV1.RenderTemplateRequest, ctx) => {
      internalOnly(ctx, 'RenderTemplate');
      const tenantId = ctx.tenant.tenantId;
      let content: TemplateContent;
      let resolvedKey: notificationV1.TemplateKey;
      if (req.source?.$case === 'draft') {
        const key = templateKey(req.source.value.key, false);
        content = templateContent(req.source.value, key.channel);
        resolvedKey = key;
      } else if (req.source?.$case === 'key') {
        const key = templateKey(req.source.value, false);
        const [stored, policy] = await Promise.all([settings.templatesFor(tenantId, key.kind), settings.getPolicy(tenantId)]);
        const resolved = resolveTemplate(stored, key.kind, key.channel, localeChain(key.locale, policy.defaultLocale));
        if (!resolved) throw new NotFoundError(`no template for ${key.kind} on ${Channel[key.channel]} in any fallback locale`, { field: 'key' });
        content = resolved.content;
        resolvedKey = resolved.key;
      } else throw new InvalidArgumentError('a key or a draft is required', { field: 'source' });
      const rendered = render(content, boundedMap(req.variables, 'variables', 100, 5000), 'draft', true);
      return { title: rendered.title, body: rendered.body, htmlBody: rendered.htmlBody, data: rendered.data, missingVariables: rendered.missing, resolvedKey };
    }),

    // --- preferences ---

    getPreferences: unary('GetPreferences', logger, async (req: notificationV1.GetPreferencesRequest, ctx) => {
      const tenantId = ctx.tenant.tenantId;
      const [prefs, policy] = await Promise.all([settings.getPreferences(tenantId, targetUser(ctx, req.userId)), settings.getPolicy(tenantId)]);
      return { preferences: preferencesToProto(prefs), doNotDisturbActive: dndActive(prefs, policy) };
    }),

    updatePreferences: unary('UpdatePreferences', logger, async (req: notificationV1.UpdatePreferencesRequest, ctx) => {
      const tenantId = ctx.tenant.tenantId;
      if (!req.preferences) throw new InvalidArgumentError('preferences is required', { field: 'preferences' });
      const userId = targetUser(ctx, req.preferences.userId);
      const given = req.preferences;
      // FieldMask paths are snake_case on the wire; the JSON mapping makes them camelCase.
      const paths = req.updateMask?.length ? req.updateMask.map((p) => p.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`)) : ['channel_preferences', 'do_not_disturb', 'time_zone', 'locale', 'max_per_hour', 'daily_digest_minute', 'email'];
      const current = await settings.getPreferences(tenantId, userId);
      const next: Preferences = { ...current, userId };
      for (const path of paths) {
        switch (path) {
          case 'channel_preferences':
            next.channelPreferences = channelPreferences(given.channelPreferences);
            break;
          case 'do_not_disturb':
            next.dnd = { enabled: given.doNotDisturb?.enabled ?? false, until: given.doNotDisturb?.enabledUntil, schedule: schedule(given.doNotDisturb?.schedule ?? []) };
            break;
          case 'time_zone':
            next.timeZone = timeZone(given.timeZone, 'preferences.time_zone');
            break;
          case 'locale':
            next.locale = given.locale ? normaliseLocale(given.locale, 'preferences.locale') : '';
            break;
          case 'max_per_hour':
            if (given.maxPerHour > 10_000) throw new InvalidArgumentError('preferences.max_per_hour is at most 10000', { field: 'preferences.max_per_hour' });
            next.maxPerHour = given.maxPerHour;
            break;
          case 'daily_digest_minute':
            if (given.dailyDigestMinute > 1439) throw new InvalidArgumentError('preferences.daily_digest_minute is 0–1439', { field: 'preferences.daily_digest_minute' });
            next.dailyDigestMinute = given.dailyDigestMinute;
            break;
          case 'email':
            next.email = assertEmail(given.email.trim(), 'preferences.email');
            break;
          default:
            throw new InvalidArgumentError(`update_mask path "${path}" is not a preferences field`, { field: 'update_mask' });
        }
      }
      const saved = await settings.savePreferences(tenantId, next, Number(req.expectedVersion));
      if (paths.includes('do_not_disturb') || paths.includes('time_zone')) {
        if ((await deliveries.recheckHeld(tenantId, userId)) > 0) deps.wake();
      }
      return { preferences: preferencesToProto(saved) };
    }),

    setDoNotDisturb: unary('SetDoNotDisturb', logger, async (req: notificationV1.SetDoNotDisturbRequest, ctx) => {
      const tenantId = ctx.tenant.tenantId;
      const userId = actingUser(ctx);
      if (req.until && req.until.getTime() <= Date.now()) throw new InvalidArgumentError('until is in the past', { field: 'until' });
      const current = await settings.getPreferences(tenantId, userId);
      const saved = await settings.savePreferences(tenantId, { ...current, dnd: { ...current.dnd, enabled: req.enabled, until: req.enabled ? req.until : undefined } }, 0);
      if (!req.enabled && (await deliveries.recheckHeld(tenantId, userId)) > 0) deps.wake();
      return { doNotDisturb: dndToProto(saved), doNotDisturbActive: dndActive(saved, await settings.getPolicy(tenantId)) };
    }),

    getTenantPolicy: unary('GetTenantPolicy', logger, async (_req: notificationV1.GetTenantPolicyRequest, ctx) => {
      const policy = await settings.getPolicy(ctx.tenant.tenantId);
      return { policy: { tenantId: ctx.tenant.tenantId, ...policy } };
    }),

    updateTenantPolicy: unary('UpdateTenantPolicy', logger, async (req: notificationV1.UpdateTenantPolicyRequest, ctx) => {
      internalOnly(ctx, 'UpdateTenantPolicy');
      const p = req.policy;
      if (!p) throw new InvalidArgumentError('policy is required', { field: 'policy' });
      if (p.defaultMaxPerHour > 10_000) throw new InvalidArgumentError('policy.default_max_per_hour is at most 10000', { field: 'policy.default_max_per_hour' });
      if (p.emailFallbackAfterMs > 7 * 24 * 3600 * 1000) throw new InvalidArgumentError('policy.email_fallback_after_ms is at most a week', { field: 'policy.email_fallback_after_ms' });
      const saved = await settings.savePolicy(
        ctx.tenant.tenantId,
        {
          urgentBypassesDnd: p.urgentBypassesDnd,
          urgentBypassesRateCap: p.urgentBypassesRateCap,
          defaultMaxPerHour: p.defaultMaxPerHour,
          defaultLocale: p.defaultLocale ? normaliseLocale(p.defaultLocale, 'policy.default_locale') : '',
          defaultTimeZone: timeZone(p.defaultTimeZone, 'policy.default_time_zone'),
          emailFallbackAfterMs: p.emailFallbackAfterMs,
        },
        Number(req.expectedVersion),
      );
      return { policy: { tenantId: ctx.tenant.tenantId, ...saved } };
    }),

    // --- push devices ---

    registerPushDevice: unary('RegisterPushDevice', logger, async (req: notificationV1.RegisterPushDeviceRequest, ctx) => {
      const userId = actingUser(ctx);
      const deviceId = assertSafeId(req.deviceId || ctx.tenant.deviceId, 'device_id');
      const target = assertPushTarget(req.platform, req.target as PushTarget | undefined, config.WEB_PUSH_ALLOWED_HOSTS);
      if (req.appVersion.length > 64) throw new InvalidArgumentError('app_version is longer than 64 characters', { field: 'app_version' });
      const device = await settings.registerDevice(ctx.tenant.tenantId, userId, deviceId, req.platform, target, req.appVersion);
      return { device: redacted(device) };
    }),

    unregisterPushDevice: unary('UnregisterPushDevice', logger, async (req: notificationV1.UnregisterPushDeviceRequest, ctx) => {
      await settings.unregisterDevice(ctx.tenant.tenantId, ctx.tenant.internal ? undefined : actingUser(ctx), assertSafeId(req.pushDeviceId, 'push_device_id'));
      return {};
    }),

    listPushDevices: unary('ListPushDevices', logger, async (req: notificationV1.ListPushDevicesRequest, ctx) => {
      const devices = await settings.listDevices(ctx.tenant.tenantId, targetUser(ctx, req.userId));
      return { devices: devices.map(redacted) };
    }),
  };
  return service;
}
