import { ConflictError, InvalidArgumentError, NotFoundError } from '@switchboard/errors';
import { newId } from '@switchboard/ids';
import { prepared, withTenantTransaction, type Pool, type PoolClient } from '@switchboard/postgres';
import { notificationV1 } from '@switchboard/proto';
import type { NotificationConfig } from './config';
import { Channel, Frequency, type ChannelPreference, type Policy } from './routing';
import type { Window } from './schedule';
import { builtInTemplate, localeChain, type TemplateContent } from './templates';

/**
 * Templates, preferences, tenant policies and push devices: the settings
 * routing reads. Every method runs in a transaction scoped to one tenant.
 */

export interface StoredTemplate extends TemplateContent {
  kind: string;
  channel: Channel;
  locale: string;
  version: number;
  updatedBy: string;
  updatedAt: Date;
}

interface TemplateRow {
  kind: string;
  channel: number;
  locale: string;
  title: string;
  body: string;
  html_body: string;
  data: Record<string, string>;
  version: string;
  updated_by: string;
  updated_at: Date;
}

function toTemplate(row: TemplateRow): StoredTemplate {
  return {
    kind: row.kind,
    channel: row.channel,
    locale: row.locale,
    title: row.title,
    body: row.body,
    htmlBody: row.html_body,
    data: row.data,
    version: Number(row.version),
    updatedBy: row.updated_by,
    updatedAt: row.updated_at,
  };
}

export function templateToProto(tenantId: string, t: StoredTemplate): notificationV1.Template {
  return {
    tenantId,
    key: { kind: t.kind, channel: t.channel, locale: t.locale },
    title: t.title,
    body: t.body,
    htmlBody: t.htmlBody,
    data: t.data,
    version: t.version,
    updatedBy: t.updatedBy,
    updatedAt: t.updatedAt,
  };
}

export interface Preferences {
  userId: string;
  channelPreferences: notificationV1.ChannelPreference[];
  dnd: { enabled: boolean; until: Date | undefined; schedule: Window[] };
  timeZone: string;
  locale: string;
  maxPerHour: number;
  dailyDigestMinute: number;
  email: string;
  version: number;
}

interface PreferencesRow {
  user_id: string;
  channel_preferences: { kind: string; channel: number; enabled: boolean; frequency: number }[];
  dnd_enabled: boolean;
  dnd_until: Date | null;
  dnd_schedule: Window[];
  time_zone: string;
  locale: string;
  max_per_hour: number;
  daily_digest_minute: number;
  email: string;
  version: string;
}

function toPreferences(row: PreferencesRow): Preferences {
  return {
    userId: row.user_id,
    channelPreferences: row.channel_preferences,
    dnd: { enabled: row.dnd_enabled, until: row.dnd_until ?? undefined, schedule: row.dnd_schedule },
    timeZone: row.time_zone,
    locale: row.locale,
    maxPerHour: row.max_per_hour,
    dailyDigestMinute: row.daily_digest_minute,
    email: row.email,
    version: Number(row.version),
  };
}

export function defaultPreferences(userId: string): Preferences {
  return { userId, channelPreferences: [], dnd: { enabled: false, until: undefined, schedule: [] }, timeZone: '', locale: '', maxPerHour: 0, dailyDigestMinute: 0, email: '', version: 0 };
}

/** The entry for this kind and channel, else the channel's default entry (kind ''), else on and immediate. */
export function preferenceFor(prefs: Preferences, kind: string, channel: Channel): ChannelPreference {
  const exact = prefs.channelPreferences.find((p) => p.kind === kind && p.channel === channel);
  const fallback = exact ?? prefs.channelPreferences.find((p) => p.kind === '' && p.channel === channel);
  if (!fallback) return { enabled: true, frequency: Frequency.FREQUENCY_IMMEDIATE };
  return { enabled: fallback.enabled, frequency: fallback.frequency || Frequency.FREQUENCY_IMMEDIATE };
}

export interface TenantPolicy extends Policy {
  defaultMaxPerHour: number;
  defaultLocale: string;
  defaultTimeZone: string;
  version: number;
}

interface PolicyRow {
  urgent_bypasses_dnd: boolean;
  urgent_bypasses_rate_cap: boolean;
  default_max_per_hour: number;
  default_locale: string;
  default_time_zone: string;
  email_fallback_after_ms: string;
  version: string;
}

export interface PushDeviceRecord {
  pushDeviceId: string;
  userId: string;
  deviceId: string;
  platform: notificationV1.PushPlatform;
  target: PushTarget;
  appVersion: string;
  createdAt: Date;
  lastSuccessAt: Date | undefined;
}

export type PushTarget =
  | { $case: 'webPush'; value: notificationV1.WebPushSubscription }
  | { $case: 'fcm'; value: notificationV1.FcmRegistration }
  | { $case: 'apns'; value: notificationV1.ApnsRegistration };

interface DeviceRow {
  push_device_id: string;
  user_id: string;
  device_id: string;
  platform: number;
  target: { $case: PushTarget['$case']; value: Record<string, unknown> };
  app_version: string;
  created_at: Date;
  last_success_at: Date | null;
}

function toDevice(row: DeviceRow): PushDeviceRecord {
  const target = row.target;
  const value = target.$case === 'webPush' ? { ...target.value, expirationTime: target.value['expirationTime'] ? new Date(target.value['expirationTime'] as string) : undefined } : target.value;
  return {
    pushDeviceId: row.push_device_id,
    userId: row.user_id,
    deviceId: row.device_id,
    platform: row.platform,
    target: { $case: target.$case, value } as unknown as PushTarget,
    appVersion: row.app_version,
    createdAt: row.created_at,
    lastSuccessAt: row.last_success_at ?? undefined,
  };
}

/** The token that identifies the destination with its provider (one user at a time may hold it). */
export function tokenOf(target: PushTarget): string {
  switch (target.$case) {
    case 'webPush':
      return target.value.endpoint;
    case 'fcm':
      return target.value.token;
    case 'apns':
      return target.value.deviceToken;
  }
}

export class SettingsStore {
  constructor(
    private readonly pool: Pool,
    private readonly config: NotificationConfig,
  ) {}

  // --- templates ---

  async upsertTemplate(tenantId: string, t: Omit<StoredTemplate, 'version' | 'updatedAt'>, expectedVersion: number) {
    return withTenantTransaction(this.pool, tenantId, async (db) => {
      const { rows: current } = await db.query<{ version: string }>(
        `SELECT version FROM templates WHERE tenant_id = $1 AND kind = $2 AND channel = $3 AND locale = $4 FOR UPDATE`,
        [tenantId, t.kind, t.channel, t.locale],
      );
      const version = current[0] ? Number(current[0].version) : 0;
      if (expectedVersion > 0 && expectedVersion !== version) throw new ConflictError(`template is at version ${version}, not ${expectedVersion}`, { field: 'expected_version' });
      const { rows } = await db.query<TemplateRow>(
        `INSERT INTO templates (tenant_id, kind, channel, locale, title, body, html_body, data, updated_by)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
         ON CONFLICT (tenant_id, kind, channel, locale) DO UPDATE SET
           title = EXCLUDED.title, body = EXCLUDED.body, html_body = EXCLUDED.html_body, data = EXCLUDED.data,
           updated_by = EXCLUDED.updated_by, updated_at = now(), version = templates.version + 1
         RETURNING *`,
        [tenantId, t.kind, t.channel, t.locale, t.title, t.body, t.htmlBody, JSON.stringify(t.data), t.updatedBy],
      );
      return { template: toTemplate(rows[0]!), created: version === 0 };
    });
  }

  async getTemplate(tenantId: string, kind: string, channel: Channel, locale: string): Promise<StoredTemplate | undefined> {
    return withTenantTransaction(this.pool, tenantId, async (db) => {
      const { rows } = await db.query<TemplateRow>(`SELECT * FROM templates WHERE tenant_id = $1 AND kind = $2 AND channel = $3 AND locale = $4`, [tenantId, kind, channel, locale]);
      return rows[0] ? toTemplate(rows[0]) : undefined;
    });
  }

  async deleteTemplate(tenantId: string, kind: string, channel: Channel, locale: string): Promise<void> {
    await withTenantTransaction(this.pool, tenantId, async (db) => {
      const { rowCount } = await db.query(`DELETE FROM templates WHERE tenant_id = $1 AND kind = $2 AND channel = $3 AND locale = $4`, [tenantId, kind, channel, locale]);
      if (!rowCount) throw new NotFoundError(`no template for ${kind}, channel ${channel}, locale ${locale}`, { field: 'key' });
    });
  }

  async listTemplates(tenantId: string, filter: { kind: string; channel: number; locale: string }, pageSize: number, pageToken: string) {
    let after: [string, number, string] | undefined;
    if (pageToken) {
      try {
        after = JSON.parse(Buffer.from(pageToken, 'base64url').toString()) as [string, number, string];
        if (!Array.isArray(after) || after.length !== 3) throw new Error('shape');
      } catch {
        throw new InvalidArgumentError('page_token is not one this service issued', { field: 'page.page_token' });
      }
    }
    return withTenantTransaction(this.pool, tenantId, async (db) => {
      const { rows } = await db.query<TemplateRow>(
        `SELECT * FROM templates WHERE tenant_id = $1
           AND ($2 = '' OR kind = $2) AND ($3 = 0 OR channel = $3) AND ($4 = '' OR locale = $4)
           AND ($5::text IS NULL OR (kind, channel, locale) > ($5::text, $6::smallint, $7::text))
         ORDER BY kind, channel, locale LIMIT $8`,
        [tenantId, filter.kind, filter.channel, filter.locale, after?.[0] ?? null, after?.[1] ?? 0, after?.[2] ?? '', pageSize + 1],
      );
      const page = rows.slice(0, pageSize).map(toTemplate);
      const last = page[page.length - 1];
      return { templates: page, nextPageToken: rows.length > pageSize && last ? Buffer.from(JSON.stringify([last.kind, last.channel, last.locale])).toString('base64url') : '' };
    });
  }

  /** The tenant's templates of one kind (every channel and locale). */
  async templatesOfKind(db: PoolClient, tenantId: string, kinds: string[]): Promise<StoredTemplate[]> {
    const { rows } = await db.query<TemplateRow>(`SELECT * FROM templates WHERE tenant_id = $1 AND kind = ANY($2::text[])`, [tenantId, kinds]);
    return rows.map(toTemplate);
  }

  async templatesFor(tenantId: string, kind: string): Promise<StoredTemplate[]> {
    return withTenantTransaction(this.pool, tenantId, (db) => this.templatesOfKind(db, tenantId, [kind]));
  }

  // --- preferences ---

  async preferences(db: PoolClient, tenantId: string, userIds: string[]): Promise<Map<string, Preferences>> {
    const { rows } = await db.query<PreferencesRow>(`SELECT * FROM preferences WHERE tenant_id = $1 AND user_id = ANY($2::text[])`, [tenantId, userIds]);
    const found = new Map(rows.map((row) => [row.user_id, toPreferences(row)]));
    return new Map(userIds.map((userId) => [userId, found.get(userId) ?? defaultPreferences(userId)]));
  }

  async getPreferences(tenantId: string, userId: string): Promise<Preferences> {
    return withTenantTransaction(this.pool, tenantId, async (db) => (await this.preferences(db, tenantId, [userId])).get(userId)!);
  }

  /** Replaces the preferences (the caller merged the mask); returns the stored version. */
  async savePreferences(tenantId: string, prefs: Preferences, expectedVersion: number): Promise<Preferences> {
    return withTenantTransaction(this.pool, tenantId, async (db) => {
      const { rows: current } = await db.query<{ version: string }>(`SELECT version FROM preferences WHERE tenant_id = $1 AND user_id = $2 FOR UPDATE`, [tenantId, prefs.userId]);
      const version = current[0] ? Number(current[0].version) : 0;
      if (expectedVersion > 0 && expectedVersion !== version) throw new ConflictError(`preferences are at version ${version}, not ${expectedVersion}`, { field: 'expected_version' });
      const { rows } = await db.query<PreferencesRow>(
        `INSERT INTO preferences (tenant_id, user_id, channel_preferences, dnd_enabled, dnd_until, dnd_schedule, time_zone, locale, max_per_hour, daily_digest_minute, email)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
         ON CONFLICT (tenant_id, user_id) DO UPDATE SET
           channel_preferences = EXCLUDED.channel_preferences, dnd_enabled = EXCLUDED.dnd_enabled, dnd_until = EXCLUDED.dnd_until,
           dnd_schedule = EXCLUDED.dnd_schedule, time_zone = EXCLUDED.time_zone, locale = EXCLUDED.locale, max_per_hour = EXCLUDED.max_per_hour,
           daily_digest_minute = EXCLUDED.daily_digest_minute, email = EXCLUDED.email, version = preferences.version + 1
         RETURNING *`,
        [
          tenantId,
          prefs.userId,
          JSON.stringify(prefs.channelPreferences.map((p) => ({ kind: p.kind, channel: p.channel, enabled: p.enabled, frequency: p.frequency }))),
          prefs.dnd.enabled,
          prefs.dnd.until ?? null,
          JSON.stringify(prefs.dnd.schedule),
          prefs.timeZone,
          prefs.locale,
          prefs.maxPerHour,
          prefs.dailyDigestMinute,
          prefs.email,
        ],
      );
      return toPreferences(rows[0]!);
    });
  }

  // --- tenant policy ---

  defaultPolicy(): TenantPolicy {
    return {
      urgentBypassesDnd: false,
      urgentBypassesRateCap: true,
      emailFallbackAfterMs: this.config.DEFAULT_EMAIL_FALLBACK_MS,
      defaultMaxPerHour: 0,
      defaultLocale: this.config.DEFAULT_LOCALE,
      defaultTimeZone: this.config.DEFAULT_TIME_ZONE,
      version: 0,
    };
  }

  async policy(db: PoolClient, tenantId: string): Promise<TenantPolicy> {
    const { rows } = await db.query<PolicyRow>(`SELECT * FROM tenant_policies WHERE tenant_id = $1`, [tenantId]);
    return this.toPolicy(rows[0]);
  }

  private toPolicy(row: PolicyRow | undefined | null): TenantPolicy {
    if (!row) return this.defaultPolicy();
    return {
      urgentBypassesDnd: row.urgent_bypasses_dnd,
      urgentBypassesRateCap: row.urgent_bypasses_rate_cap,
      emailFallbackAfterMs: Number(row.email_fallback_after_ms),
      defaultMaxPerHour: row.default_max_per_hour,
      defaultLocale: row.default_locale || this.config.DEFAULT_LOCALE,
      defaultTimeZone: row.default_time_zone || this.config.DEFAULT_TIME_ZONE,
      version: Number(row.version),
    };
  }

  async getPolicy(tenantId: string): Promise<TenantPolicy> {
    return withTenantTransaction(this.pool, tenantId, (db) => this.policy(db, tenantId));
  }

  async savePolicy(tenantId: string, policy: Omit<TenantPolicy, 'version'>, expectedVersion: number): Promise<TenantPolicy> {
    await withTenantTransaction(this.pool, tenantId, async (db) => {
      const { rows: current } = await db.query<{ version: string }>(`SELECT version FROM tenant_policies WHERE tenant_id = $1 FOR UPDATE`, [tenantId]);
      const version = current[0] ? Number(current[0].version) : 0;
      if (expectedVersion > 0 && expectedVersion !== version) throw new ConflictError(`the policy is at version ${version}, not ${expectedVersion}`, { field: 'expected_version' });
      await db.query(
        `INSERT INTO tenant_policies (tenant_id, urgent_bypasses_dnd, urgent_bypasses_rate_cap, default_max_per_hour, default_locale, default_time_zone, email_fallback_after_ms)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (tenant_id) DO UPDATE SET urgent_bypasses_dnd = EXCLUDED.urgent_bypasses_dnd, urgent_bypasses_rate_cap = EXCLUDED.urgent_bypasses_rate_cap,
           default_max_per_hour = EXCLUDED.default_max_per_hour, default_locale = EXCLUDED.default_locale, default_time_zone = EXCLUDED.default_time_zone,
           email_fallback_after_ms = EXCLUDED.email_fallback_after_ms, version = tenant_policies.version + 1`,
        [tenantId, policy.urgentBypassesDnd, policy.urgentBypassesRateCap, policy.defaultMaxPerHour, policy.defaultLocale, policy.defaultTimeZone, policy.emailFallbackAfterMs],
      );
    });
    return this.getPolicy(tenantId);
  }

  // --- push devices ---

  /** Registers or refreshes one device's registration; a token another user held moves to this user. */
  async registerDevice(tenantId: string, userId: string, deviceId: string, platform: notificationV1.PushPlatform, target: PushTarget, appVersion: string): Promise<PushDeviceRecord> {
    return withTenantTransaction(this.pool, tenantId, async (db) => {
      const token = tokenOf(target);
      await db.query(`DELETE FROM push_devices WHERE tenant_id = $1 AND platform = $2 AND token = $3 AND NOT (user_id = $4 AND device_id = $5)`, [tenantId, platform, token, userId, deviceId]);
      const { rows } = await db.query<DeviceRow>(
        `INSERT INTO push_devices (tenant_id, push_device_id, user_id, device_id, platform, token, target, app_version)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         ON CONFLICT (tenant_id, user_id, device_id, platform) DO UPDATE SET token = EXCLUDED.token, target = EXCLUDED.target, app_version = EXCLUDED.app_version
         RETURNING *`,
        [tenantId, newId(), userId, deviceId, platform, token, JSON.stringify(target), appVersion],
      );
      return toDevice(rows[0]!);
    });
  }

  /** Removes one of the user's registrations (internal callers: anyone's). */
  async unregisterDevice(tenantId: string, userId: string | undefined, pushDeviceId: string): Promise<void> {
    await withTenantTransaction(this.pool, tenantId, async (db) => {
      const { rowCount } = await db.query(`DELETE FROM push_devices WHERE tenant_id = $1 AND push_device_id = $2 AND ($3::text IS NULL OR user_id = $3)`, [tenantId, pushDeviceId, userId ?? null]);
      if (!rowCount) throw new NotFoundError(`push device ${pushDeviceId} not found`, { field: 'push_device_id' });
    });
  }

  /**
   * Everything routing reads about a batch's users and kinds, in one round
   * trip: preferences, the tenant's policy, push devices and templates (rows
   * as JSON, dates revived here). A Kafka batch asked for these in four
   * statements; each round trip costs both processes more than the lookup.
   */
  async routingSettings(db: PoolClient, tenantId: string, userIds: string[], kinds: string[]): Promise<RoutingSettings> {
    const { rows } = await db.query<{ preferences: PreferencesRow[]; policy: PolicyRow | null; devices: DeviceRow[]; templates: TemplateRow[] }>(
      prepared(
        'notification-routing-settings',
        `SELECT
           (SELECT coalesce(json_agg(p), '[]') FROM preferences p WHERE p.tenant_id = $1 AND p.user_id = ANY($2::text[])) AS preferences,
           (SELECT row_to_json(t) FROM tenant_policies t WHERE t.tenant_id = $1) AS policy,
           (SELECT coalesce(json_agg(d ORDER BY d.created_at), '[]') FROM push_devices d WHERE d.tenant_id = $1 AND d.user_id = ANY($2::text[])) AS devices,
           (SELECT coalesce(json_agg(t), '[]') FROM templates t WHERE t.tenant_id = $1 AND t.kind = ANY($3::text[])) AS templates`,
        [tenantId, userIds, kinds],
      ),
    );
    const row = rows[0]!;
    const found = new Map(row.preferences.map((p) => [p.user_id, toPreferences(revive(p, ['dnd_until']))]));
    return {
      preferences: new Map(userIds.map((userId) => [userId, found.get(userId) ?? defaultPreferences(userId)])),
      policy: this.toPolicy(row.policy),
      devices: row.devices.map((d) => toDevice(revive(d, ['created_at', 'last_success_at']))),
      templates: row.templates.map((t) => toTemplate(revive(t, ['updated_at']))),
    };
  }

  async devicesOf(db: PoolClient, tenantId: string, userIds: string[]): Promise<PushDeviceRecord[]> {
    const { rows } = await db.query<DeviceRow>(`SELECT * FROM push_devices WHERE tenant_id = $1 AND user_id = ANY($2::text[]) ORDER BY created_at`, [tenantId, userIds]);
    return rows.map(toDevice);
  }

  async listDevices(tenantId: string, userId: string): Promise<PushDeviceRecord[]> {
    return withTenantTransaction(this.pool, tenantId, (db) => this.devicesOf(db, tenantId, [userId]));
  }
}

export interface RoutingSettings {
  preferences: Map<string, Preferences>;
  policy: TenantPolicy;
  devices: PushDeviceRecord[];
  templates: StoredTemplate[];
}

/** A row that came as JSON: its timestamps are strings, made Dates again (null stays null). */
function revive<T>(row: T, dateColumns: (keyof T & string)[]): T {
  const copy = { ...row } as Record<string, unknown>;
  for (const column of dateColumns) if (typeof copy[column] === 'string') copy[column] = new Date(copy[column] as string);
  return copy as T;
}

/**
 * The template a delivery uses after locale fallback: the tenant's for the
 * first locale in the chain that has one, else the platform's built-in one.
 */
export function resolveTemplate(templates: StoredTemplate[], kind: string, channel: Channel, chain: string[]): { content: TemplateContent; key: notificationV1.TemplateKey } | undefined {
  for (const locale of chain) {
    const found = templates.find((t) => t.kind === kind && t.channel === channel && t.locale === locale);
    if (found) return { content: found, key: { kind, channel, locale } };
  }
  const builtIn = builtInTemplate(kind, channel);
  return builtIn ? { content: builtIn, key: { kind, channel, locale: '' } } : undefined;
}

export { localeChain };
