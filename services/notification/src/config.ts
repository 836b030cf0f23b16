import { env, infraSettings, loadConfig, serviceSettings, z } from '@switchboard/config';

export function readConfig(source: NodeJS.ProcessEnv = process.env) {
  return loadConfig(
    {
      ...serviceSettings({ grpcPort: 50055, opsPort: 9105 }),
      ...infraSettings.postgres(),
      ...infraSettings.nats(),
      ...infraSettings.kafka(),
      /** Every replica joins this consumer group, so each record is handled by one of them; it also names the deployment's delivery work. */
      KAFKA_GROUP_ID: env.string('notification'),
      /** How soon the group notices a replica that died (a SIGKILL) and gives its partitions to the others. */
      KAFKA_SESSION_TIMEOUT_MS: env.positiveInt(30_000),
      /** Consumed offsets go to Kafka at most this often (a redelivered record changes nothing, so this only bounds what is read again after a crash). */
      KAFKA_COMMIT_INTERVAL_MS: env.positiveInt(1000),
      /** Failed deliveries and unprocessable records end here, with the reason; created at start when missing. */
      DLQ_TOPIC: env.string('sb.notifications.dlq'),
      DLQ_PARTITIONS: env.positiveInt(3),
      KAFKA_REPLICATION_FACTOR: env.positiveInt(1),
      /** Presence (who is online) and room (a room's members) over gRPC. */
      PRESENCE_ADDR: env.string('127.0.0.1:50053'),
      ROOM_ADDR: env.string('127.0.0.1:50054'),
      PEER_DEADLINE_MS: env.positiveInt(2000),
      /** Largest page a list call returns. */
      MAX_PAGE_SIZE: env.positiveInt(200),
      /** Messages and requests older than this when consumed notify nobody (a new consumer group reads the log from its start). */
      MAX_EVENT_AGE_MS: env.positiveInt(24 * 3600 * 1000),
      /** Largest `users` audience of one Notify; larger audiences use a room. */
      MAX_NOTIFY_USERS: env.positiveInt(1000),
      /** A user who read a conversation this recently (and is online) is reading it: a new message there notifies nothing. */
      ACTIVE_IN_CONVERSATION_MS: env.positiveInt(120_000),
      /** Tenants without a policy: defaults. */
      DEFAULT_LOCALE: env.string('en'),
      DEFAULT_TIME_ZONE: env.string('UTC'),
      DEFAULT_EMAIL_FALLBACK_MS: z0(15 * 60 * 1000),
      /** When a daily digest goes out for users who did not choose, in minutes after local midnight. */
      DEFAULT_DAILY_DIGEST_MINUTE: z0(8 * 60),
      /** Delivery worker: how often it looks for due work (it is also woken at once by new work), how much it claims, how many sends at once. */
      WORKER_POLL_MS: env.positiveInt(500),
      WORKER_BATCH: env.positiveInt(32),
      WORKER_CONCURRENCY: env.positiveInt(16),
      /** A send not finished by then counts as interrupted and is tried again. */
      INFLIGHT_LEASE_MS: env.positiveInt(30_000),
      RETRY_BASE_MS: env.positiveInt(1000),
      RETRY_MAX_MS: env.positiveInt(5 * 60 * 1000),
      MAX_ATTEMPTS: env.positiveInt(6),
      PROVIDER_TIMEOUT_MS: env.positiveInt(10_000),
      /** Web Push (VAPID, RFC 8292): keys as `web-push generate-vapid-keys` prints them; push is off without them. */
      VAPID_PUBLIC_KEY: env.optionalString(),
      VAPID_PRIVATE_KEY: env.optionalString(),
      VAPID_SUBJECT: env.string('mailto:push@switchboard.invalid'),
      /** Hosts (and their subdomains) a Web Push subscription may point at: the browsers' push services. */
      WEB_PUSH_ALLOWED_HOSTS: env.list(['fcm.googleapis.com', 'updates.push.services.mozilla.com', 'push.services.mozilla.com', 'web.push.apple.com', 'notify.windows.com']),
      /** FCM HTTP v1: the service-account JSON (a file path, or the JSON itself). */
      FCM_SERVICE_ACCOUNT: env.optionalString(),
      FCM_ENDPOINT: env.url('https://fcm.googleapis.com', ['https', 'http']),
      /** APNs token auth: the .p8 key (a file path, or the PEM itself), its key id and the team id. */
      APNS_KEY: env.optionalString(),
      APNS_KEY_ID: env.optionalString(),
      APNS_TEAM_ID: env.optionalString(),
      APNS_PRODUCTION_URL: env.url('https://api.push.apple.com', ['https']),
      APNS_SANDBOX_URL: env.url('https://api.sandbox.push.apple.com', ['https']),
      /** Email: `smtp://user:pass@host:port` or `smtps://…`; email is off without it. */
      SMTP_URL: env.optionalString(),
      EMAIL_FROM: env.string('Switchboard <no-reply@switchboard.invalid>'),
    },
    source,
  );
}

/** A non-negative integer with a default (0 is meaningful: "off"). */
function z0(fallback: number) {
  return z.coerce.number({ error: 'expected a whole number, 0 or more' }).int('expected a whole number, 0 or more').min(0, 'expected a whole number, 0 or more').default(fallback);
}

export type NotificationConfig = ReturnType<typeof readConfig>;
