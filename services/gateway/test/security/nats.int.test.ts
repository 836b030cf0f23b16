import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { ConfigError } from '@switchboard/config';
import { infraEnv, natsSeedFile } from '@switchboard/devenv';
import { connectNats, NATS_PERMISSIONS, NATS_USERS, nkeys, type NatsConnection, type NatsUser } from '@switchboard/nats';
import { readConfig } from '../../src/config';
import { Report } from './support';

// Security suite, part 5: NATS credentials. Against the real nats-server of the
// infrastructure (infra.sh starts it with the users of libs/nats
// NATS_PERMISSIONS): each service's nkey may publish and subscribe exactly the
// subjects its code uses, and nothing else; a client without a known nkey is
// refused. The expectations are concrete subjects written out here, not derived
// from the table, so a widened permission fails this test.
const report = new Report('security suite: NATS credentials per service');
const SERVICES = ['gateway', 'messaging', 'presence', 'room', 'notification'] as const;
type Service = (typeof SERVICES)[number];

/** A concrete subject for every kind of traffic in the mesh (plus JetStream's API and request/reply inboxes). */
const SUBJECTS = {
  conversation: 'sb.acme.conv.c1',
  user: 'sb.acme.user.u1',
  presence: 'sb.acme.presence.u1',
  event: 'sb.acme.evt.labs.results',
  heartbeat: 'sb.sys.gateway.heartbeat',
  messagingOutbox: 'sb.sys.messaging.outbox',
  roomOutbox: 'sb.sys.room.outbox',
  presenceResync: 'sb.sys.presence.resync',
  jetStreamInfo: '$JS.API.INFO',
  jetStreamCreate: '$JS.API.STREAM.CREATE.sb-events',
  jetStreamPublish: '$JS.API.STREAM.MSG.GET.sb-events',
  // Not the event stream's deletion or purge: the observer's probe would reach JetStream too.
  jetStreamList: '$JS.API.STREAM.LIST',
  durableConsumer: '$JS.API.CONSUMER.DURABLE.CREATE.SB_EVENTS.d1',
  eventStreamCreate: '$JS.API.STREAM.CREATE.SB_EVENTS',
  eventStreamUpdate: '$JS.API.STREAM.UPDATE.SB_EVENTS',
  eventStreamInfo: '$JS.API.STREAM.INFO.SB_EVENTS',
  eventStreamGet: '$JS.API.STREAM.MSG.GET.SB_EVENTS',
  eventConsumerCreate: '$JS.API.CONSUMER.CREATE.SB_EVENTS',
  eventConsumerNext: '$JS.API.CONSUMER.MSG.NEXT.SB_EVENTS.c1',
  eventConsumerInfo: '$JS.API.CONSUMER.INFO.SB_EVENTS.c1',
  eventConsumerDelete: '$JS.API.CONSUMER.DELETE.SB_EVENTS.c1',
  otherConsumerCreate: '$JS.API.CONSUMER.CREATE.OTHER',
  inbox: '_INBOX.abc.1',
  gatewayInbox: '_INBOX.gateway.abc.1',
  other: 'other.subject',
} as const;
type Kind = keyof typeof SUBJECTS;

/** What each service's code does on NATS (grep publish/subscribe/publishEnvelope/outbox subjects); all else must be refused. */
// The gateway: broadcast events into the stream SB_EVENTS and that stream's API only, answers on its own inbox prefix.
const EVENT_STREAM_API: Kind[] = ['eventStreamCreate', 'eventStreamUpdate', 'eventStreamInfo', 'eventStreamGet', 'eventConsumerCreate', 'eventConsumerNext', 'eventConsumerInfo', 'eventConsumerDelete'];
const ALLOWED: Record<Service, { publish: Kind[]; subscribe: Kind[] }> = {
  gateway: { publish: ['heartbeat', 'event', ...EVENT_STREAM_API], subscribe: ['user', 'conversation', 'presence', 'presenceResync', 'gatewayInbox'] },
  messaging: { publish: ['conversation', 'user', 'messagingOutbox'], subscribe: ['messagingOutbox'] },
  presence: { publish: ['presence', 'conversation', 'user', 'presenceResync'], subscribe: ['heartbeat'] },
  room: { publish: ['conversation', 'user', 'roomOutbox'], subscribe: ['roomOutbox'] },
  notification: { publish: ['user'], subscribe: [] },
};
const KINDS = Object.keys(SUBJECTS) as Kind[];

const url = infraEnv().NATS_URL!;
const connections: NatsConnection[] = [];
let observer: NatsConnection;

async function connectAs(user: NatsUser): Promise<NatsConnection> {
  const nc = await connectNats({ servers: url, name: `nats-permissions-${user}`, nkeySeedFile: natsSeedFile(user) });
  connections.push(nc);
  return nc;
}

/** Publishes as `nc` and reports whether the observer (tools user, every subject) received it. */
async function published(nc: NatsConnection, subject: string): Promise<boolean> {
  const sub = observer.subscribe(subject, { max: 1 });
  await observer.flush();
  const payload = new TextEncoder().encode(`probe ${Math.random()}`);
  nc.publish(subject, payload);
  await nc.flush();
  // A round trip of the observer after the publisher's flush: the server routed the message by then if it allowed it.
  await observer.flush();
  const received = await Promise.race([
    (async () => {
      for await (const msg of sub) return Buffer.from(msg.data).equals(Buffer.from(payload));
      return false;
    })(),
    // Not a timing bound: the observer's flush above already returned after anything the server routed to it.
    new Promise<false>((resolve) => setTimeout(() => resolve(false), 100)),
  ]);
  sub.unsubscribe();
  return received;
}

/** Subscribes as `nc`; the server refuses or allows the subscription, and an allowed one receives what the observer sends. */
async function subscribed(nc: NatsConnection, subject: string): Promise<'received' | 'refused'> {
  const sub = nc.subscribe(subject, { max: 1 });
  const outcome = (async () => {
    try {
      for await (const _msg of sub) return 'received' as const;
    } catch (err) {
      if (/permissions violation/i.test((err as Error).message)) return 'refused' as const;
      throw err;
    }
    return 'refused' as const;
  })();
  await nc.flush();
  observer.publish(subject, new TextEncoder().encode('probe'));
  await observer.flush();
  return Promise.race([outcome, new Promise<never>((_, reject) => setTimeout(() => reject(new Error(`subscription to ${subject} neither received nor refused`)), 5000))]);
}

beforeAll(async () => {
  observer = await connectAs('tools');
});

afterAll(async () => {
  await Promise.all(connections.map((nc) => nc.close()));
  report.print();
});

describe('each service has its own NATS user, limited to its subjects', () => {
  it('the table the infrastructure serves matches what each service does', () => {
    expect(NATS_USERS).toEqual([...SERVICES, 'tools']);
    // Only the gateway reaches JetStream (its event stream's API, by name) and an inbox (its own prefix); the others neither.
    for (const service of SERVICES) {
      for (const pattern of [...NATS_PERMISSIONS[service].publish, ...NATS_PERMISSIONS[service].subscribe]) {
        if (service === 'gateway' && pattern.startsWith('$JS.API.')) expect(pattern).toMatch(/^\$JS\.API\.(STREAM|CONSUMER)\.[A-Z.]*SB_EVENTS(\.\*)?$/);
        else if (service === 'gateway' && pattern.startsWith('_INBOX')) expect(pattern).toBe('_INBOX.gateway.>');
        else expect(pattern).toMatch(/^sb\./);
      }
    }
  });

  it.each(SERVICES)('%s may publish and subscribe exactly its own subjects', async (service) => {
    const nc = await connectAs(service);
    for (const kind of KINDS) {
      const subject = SUBJECTS[kind];
      const allowedToPublish = ALLOWED[service].publish.includes(kind);
      const delivered = await published(nc, subject);
      expect({ service, publish: subject, delivered }).toEqual({ service, publish: subject, delivered: allowedToPublish });
      if (!allowedToPublish) report.held(`${service} publishes to ${subject}`, 'not delivered (permissions violation)');
    }
    for (const kind of KINDS) {
      const subject = SUBJECTS[kind];
      const allowedToSubscribe = ALLOWED[service].subscribe.includes(kind);
      const outcome = await subscribed(nc, subject);
      expect({ service, subscribe: subject, outcome }).toEqual({ service, subscribe: subject, outcome: allowedToSubscribe ? 'received' : 'refused' });
      if (!allowedToSubscribe) report.held(`${service} subscribes to ${subject}`, 'refused');
    }
    // The violations did not cost the service its connection.
    expect(nc.isClosed()).toBe(false);
    await nc.flush();
  });

  it('refuses a client without credentials and one with an nkey the server does not know', async () => {
    const anonymous = await connectNats({ servers: url, name: 'anonymous' }).then(
      () => 'connected',
      (err: Error) => err.message,
    );
    expect(anonymous).toMatch(/NATS requires credentials .*NATS_NKEY_SEED_FILE/);
    report.held('a client without credentials connects', anonymous);

    const dir = mkdtempSync(path.join(tmpdir(), 'sb-nats-'));
    const stranger = path.join(dir, 'stranger.nk');
    writeFileSync(stranger, `${new TextDecoder().decode(nkeys.createUser().getSeed())}\n`);
    const unknown = await connectNats({ servers: url, name: 'stranger', nkeySeedFile: stranger }).then(
      () => 'connected',
      (err: Error) => err.message,
    );
    expect(unknown).toContain(`NATS refused the nkey in ${stranger}`);
    report.held('a client with a valid but unknown nkey connects', unknown);
  });

  it('a service refuses to start with a seed file that is missing or holds no user seed, naming the variable', () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'sb-nats-'));
    const garbage = path.join(dir, 'garbage.nk');
    writeFileSync(garbage, 'not a seed\n');
    const account = path.join(dir, 'account.nk');
    writeFileSync(account, `${new TextDecoder().decode(nkeys.createAccount().getSeed())}\n`);
    const problems = (file: string) => {
      try {
        readConfig({ NATS_NKEY_SEED_FILE: file });
        return 'accepted';
      } catch (err) {
        expect(err).toBeInstanceOf(ConfigError);
        return (err as ConfigError).problems.join('; ');
      }
    };
    expect(problems(path.join(dir, 'missing.nk'))).toMatch(/^NATS_NKEY_SEED_FILE: cannot read the nkey seed file \(ENOENT\)/);
    expect(problems(garbage)).toMatch(/^NATS_NKEY_SEED_FILE: the file holds no NATS user nkey seed/);
    expect(problems(account)).toMatch(/^NATS_NKEY_SEED_FILE: the file holds no NATS user nkey seed/);
    expect(problems(natsSeedFile('gateway'))).toBe('accepted');
    report.held('NATS_NKEY_SEED_FILE pointing at a missing file, garbage, an account seed', 'the service does not start; the variable is named');
  });
});
