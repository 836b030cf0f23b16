import { EVENT_STREAM, EVENT_STREAM_SUBJECT } from './event-stream';

/**
 * Who may publish and subscribe to what on NATS: one user per service, each
 * allowed exactly the subjects its code uses (libs/nats `subjects` and
 * `SYSTEM_SUBJECTS`), everything else denied by the server. The dev
 * infrastructure (infra.sh), the example server configuration for clusters
 * (k8s/nats-authorization.conf) and the permission tests are all generated from
 * this one table, so a service that starts using a subject changes it here.
 *
 * Wildcards: `*` in the tenant position because every service serves every
 * tenant; the tenant still scopes each message (ids are validated before they
 * enter a subject).
 *
 * JetStream: only the gateway uses it, for the broadcast-event stream
 * (event-stream.ts). It may call exactly the JetStream API subjects of that
 * stream it uses (no `$JS.API.>`, no other stream), and receives the API's
 * replies and its consumers' deliveries on its own inbox prefix
 * (`_INBOX.gateway.`, set on its connection), never on `_INBOX.>` where other
 * clients' replies travel. No other service uses request/reply or JetStream.
 */
export const NATS_USERS = ['gateway', 'messaging', 'presence', 'room', 'notification', 'tools'] as const;
export type NatsUser = (typeof NATS_USERS)[number];

/** Where a user's request/reply and JetStream answers arrive (the connection's `inboxPrefix`). */
export function inboxPrefixOf(user: NatsUser): string {
  return `_INBOX.${user}`;
}

/** The JetStream API calls the gateway makes on the event stream: create/update it at start, tail and replay it with ordered consumers, read a stored event back. */
const EVENT_STREAM_API = [
  `$JS.API.STREAM.INFO.${EVENT_STREAM}`,
  `$JS.API.STREAM.CREATE.${EVENT_STREAM}`,
  `$JS.API.STREAM.UPDATE.${EVENT_STREAM}`,
  `$JS.API.STREAM.MSG.GET.${EVENT_STREAM}`,
  // Ordered consumers: CREATE.<stream> (the name and filters in the request), then pulls, info and delete by name.
  `$JS.API.CONSUMER.CREATE.${EVENT_STREAM}`,
  `$JS.API.CONSUMER.MSG.NEXT.${EVENT_STREAM}.*`,
  `$JS.API.CONSUMER.INFO.${EVENT_STREAM}.*`,
  `$JS.API.CONSUMER.DELETE.${EVENT_STREAM}.*`,
];

export interface NatsPermissions {
  publish: readonly string[];
  subscribe: readonly string[];
}

export const NATS_PERMISSIONS: Record<NatsUser, NatsPermissions> = {
  // Fans events out to sockets: reads users', conversations' and watched users' presence subjects; tells presence it is alive.
  // Broadcast events: publishes them into the event stream (PublishEvent) and reads them back through the stream's API.
  gateway: {
    publish: ['sb.sys.gateway.heartbeat', EVENT_STREAM_SUBJECT, ...EVENT_STREAM_API],
    subscribe: ['sb.*.user.*', 'sb.*.conv.*', 'sb.*.presence.*', 'sb.sys.presence.resync', `${inboxPrefixOf('gateway')}.>`],
  },
  // The outbox relay publishes committed messages and receipts; replicas wake each other's relay.
  messaging: {
    publish: ['sb.*.conv.*', 'sb.*.user.*', 'sb.sys.messaging.outbox'],
    subscribe: ['sb.sys.messaging.outbox'],
  },
  // Presence changes, typing and occupancy; watch-list sync to the user's devices; resync requests to gateways.
  presence: {
    publish: ['sb.*.presence.*', 'sb.*.conv.*', 'sb.*.user.*', 'sb.sys.presence.resync'],
    subscribe: ['sb.sys.gateway.heartbeat'],
  },
  // The room outbox relay: membership and room changes to the room's conversation and the member.
  room: {
    publish: ['sb.*.conv.*', 'sb.*.user.*', 'sb.sys.room.outbox'],
    subscribe: ['sb.sys.room.outbox'],
  },
  // In-app notifications and badge counts to the user.
  notification: {
    publish: ['sb.*.user.*'],
    subscribe: [],
  },
  // Tests, the fault suite and an operator's debugging session: everything (never given to a service).
  tools: {
    publish: ['>'],
    subscribe: ['>'],
  },
};

/**
 * How each user's public nkey appears in the configuration: the key itself
 * (the dev infrastructure), or a nats-server variable such as
 * `$SB_NATS_GATEWAY_NKEY` resolved from the server's environment (clusters).
 */
export type NkeyReferences = Record<NatsUser, string>;

/** The environment variable a cluster's nats-server reads a user's public nkey from. */
export function nkeyVariable(user: NatsUser): string {
  return `SB_NATS_${user.toUpperCase()}_NKEY`;
}

function list(subjects: readonly string[]): string {
  return `[${subjects.map((s) => JSON.stringify(s)).join(', ')}]`;
}

/**
 * The nats-server `authorization` block for these users. An empty subscribe
 * list is written as a deny of everything: a user without a subscribe rule
 * could otherwise subscribe to anything.
 */
export function natsAuthorizationConfig(nkeys: NkeyReferences, users: readonly NatsUser[] = NATS_USERS): string {
  const lines = ['authorization {', '  users = ['];
  for (const user of users) {
    const { publish, subscribe } = NATS_PERMISSIONS[user];
    const key = nkeys[user];
    const nkey = key.startsWith('$') ? key : JSON.stringify(key);
    lines.push(`    # ${user}`);
    lines.push(`    { nkey: ${nkey}, permissions: {`);
    lines.push(`        publish: ${publish.length ? `{ allow: ${list(publish)} }` : '{ deny: [">"] }'}`);
    lines.push(`        subscribe: ${subscribe.length ? `{ allow: ${list(subscribe)} }` : '{ deny: [">"] }'}`);
    lines.push('    } }');
  }
  lines.push('  ]', '}');
  return `${lines.join('\n')}\n`;
}
