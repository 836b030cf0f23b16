// The notification service is killed with SIGKILL in the middle of a batch
// and started again: no notification is lost and none is doubled. Real Kafka
// (the same consumer group across the restart), PostgreSQL, NATS and a Web
// Push stand-in that decrypts every push.
import { newId } from '@switchboard/ids';
import webpush from 'web-push';
import { notificationV1 } from '@switchboard/proto';
import { as, eventually, Infra, launch, messageCreated, notificationClient, TOPICS } from './support/harness';
import { makeTls, WebPushService } from './support/stand-ins';

const N = 400;

describe('a notification service killed mid-batch', () => {
  const infra = new Infra();
  const tls = makeTls();
  const webPush = new WebPushService(tls);
  const vapid = webpush.generateVAPIDKeys();
  const env = {
    KAFKA_GROUP_ID: `notification-crash-${newId()}`,
    MAX_EVENT_AGE_MS: '600000',
    KAFKA_SESSION_TIMEOUT_MS: '6000',
    INFLIGHT_LEASE_MS: '2000',
    WORKER_POLL_MS: '100',
    // No presence here: everyone counts as offline, so every message is also pushed.
    PRESENCE_ADDR: '127.0.0.1:1',
    NODE_EXTRA_CA_CERTS: tls.certPath,
    WEB_PUSH_ALLOWED_HOSTS: '127.0.0.1',
    VAPID_PUBLIC_KEY: vapid.publicKey,
    VAPID_PRIVATE_KEY: vapid.privateKey,
  };

  beforeAll(async () => {
    await Promise.all([infra.start(), webPush.start()]);
  });

  afterAll(async () => {
    await Promise.all([infra.stop(), webPush.stop()]);
  });

  it('loses none and doubles none on any channel', async () => {
    const t = newId();
    const [sender, alice, bob] = [newId(), newId(), newId()];
    let service = await launch('notification', env);
    const started = [service.process];
    try {
    const client = notificationClient(service.address);
    const sub = webPush.subscribe();
    await client.registerPushDevice(
      { context: undefined, deviceId: 'phone', platform: notificationV1.PushPlatform.PUSH_PLATFORM_WEB_PUSH, target: { $case: 'webPush', value: { ...sub, expirationTime: undefined } }, appVersion: '' },
      as(t, alice),
    );
    client.close();
    const live = { alice: await infra.watchUser(t, alice), bob: await infra.watchUser(t, bob) };
    const messages = Array.from({ length: N }, (_, i) => messageCreated(t, sender, [sender, alice, bob], { text: `message ${i}` }));
    // The log arrives in two halves, the second only after the first kill: one pass of the pipeline stores
    // everything a fetch brought, so with the whole log produced up front the kill could come after all of it.
    await infra.produce(TOPICS.messages, ...messages.slice(0, N / 2));

    const count = async (sql: string) => Number((await infra.tenantQuery<{ n: string }>(t, sql))[0]!.n);
    // First kill mid-batch in the pipeline (part of the log stored, its offsets not committed, in-app not yet
    // confirmed); second kill while the delivery worker is sending pushes.
    // Killed as soon as the first batch is stored (stored, its offsets not yet committed: they are read again).
    await eventually(async () => (await count(`SELECT count(*) AS n FROM notifications`)) > 0, 60_000, 'the first stored');
    expect(await service.process.kill()).not.toBe(0);
    const storedAtKill = await count(`SELECT count(*) AS n FROM notifications`);
    expect(storedAtKill).toBeLessThan(2 * N);
    await infra.produce(TOPICS.messages, ...messages.slice(N / 2));
    service = await launch('notification', env);
    started.push(service.process);
    await eventually(() => webPush.for(sub).length >= N / 3, 60_000, 'a third pushed').catch((err: Error) => {
      throw new Error(`${err.message}; pushed ${webPush.for(sub).length}; service said:\n${service.process.output.slice(-15).join('\n').slice(0, 6000)}`);
    });
    expect(await service.process.kill()).not.toBe(0);
    const pushedAtKill = webPush.for(sub).length;
    expect(pushedAtKill).toBeLessThan(N);

    service = await launch('notification', env);
    started.push(service.process);
    const restarted = notificationClient(service.address);
    try {
      await eventually(
        async () =>
          (await count(`SELECT count(*) AS n FROM deliveries WHERE channel = 1 AND state = 'delivered'`)) === 2 * N &&
          (await count(`SELECT count(*) AS n FROM deliveries WHERE channel = 2 AND target <> '' AND state = 'sent'`)) === N,
        90_000,
        'everything delivered after the restart',
      ).catch(async (err: Error) => {
        const states = await infra.tenantQuery(t, `SELECT channel, target <> '' AS device, state, count(*) FROM deliveries GROUP BY 1, 2, 3 ORDER BY 1, 2, 3`);
        const queue = await infra.pool.query(`SELECT channel, count(*), min(due_at) - now() AS soonest FROM delivery_queue WHERE tenant_id = $1 GROUP BY 1`, [t]);
        throw new Error(`${err.message}: ${JSON.stringify(states)} queue ${JSON.stringify(queue.rows)}\n${service.process.output.slice(-10).join('\n').slice(0, 5000)}`);
      });

      // Stored: exactly one notification per message and user, and the badge says so.
      for (const user of [alice, bob]) {
        expect(await count(`SELECT count(DISTINCT data->>'messageId') AS n FROM notifications WHERE user_id = '${user}'`)).toBe(N);
        expect(await count(`SELECT count(*) AS n FROM notifications WHERE user_id = '${user}'`)).toBe(N);
        expect((await restarted.getBadgeCount({ context: undefined, userId: '' }, as(t, user))).unreadCount).toBe(N);
      }

      // Live and pushed: every one arrived, and every copy is explained by a recorded attempt: a send the kill cut
      // short (recorded as interrupted) is tried again with the same notification id (Nats-Msg-Id, Web Push Topic),
      // which is what receivers drop duplicates by. Nothing is ever sent from a delivery that was already done.
      const attempts = async (channel: number) =>
        new Map(
          (await infra.tenantQuery<{ notification_id: string; n: string }>(t, `SELECT notification_id, count(*) AS n FROM delivery_attempts WHERE channel = ${channel} GROUP BY 1`)).map((r) => [
            r.notification_id,
            Number(r.n),
          ]),
        );
      const interrupted = async (channel: number) =>
        count(`SELECT count(*) AS n FROM delivery_attempts WHERE channel = ${channel} AND provider_response LIKE 'interrupted:%'`);
      const copies = (ids: string[]) => ids.reduce((m, id) => m.set(id, (m.get(id) ?? 0) + 1), new Map<string, number>());
      const unexplained = (received: Map<string, number>, made: Map<string, number>) => [...received].filter(([id, n]) => n > (made.get(id) ?? 0));
      const ids = (events: typeof live.alice) => events.filter((e) => e.$case === 'notificationCreated').map((e) => (e.value as { notificationId: string }).notificationId);
      await eventually(() => new Set([...ids(live.alice), ...ids(live.bob)]).size === 2 * N, 30_000, 'every live notification');
      const allLive = [...ids(live.alice), ...ids(live.bob)];
      expect(new Set(allLive).size).toBe(2 * N);
      expect(unexplained(copies(allLive), await attempts(1))).toEqual([]);
      const pushedIds = webPush.for(sub).map((r) => r.payload.notificationId);
      expect(new Set(pushedIds).size).toBe(N);
      expect(unexplained(copies(pushedIds), await attempts(2))).toEqual([]);
      expect(webPush.for(sub).every((r) => r.topic === r.payload.notificationId)).toBe(true);
      expect(webPush.rejected).toEqual([]);
      // eslint-disable-next-line no-console
      console.log(
        `SIGKILL with ${storedAtKill}/${2 * N} stored, again with ${pushedAtKill}/${N} pushed; after restart: ${allLive.length} live events for ${2 * N} notifications, ` +
          `${pushedIds.length} pushes for ${N}; interrupted attempts in-app ${await interrupted(1)}, push ${await interrupted(2)}`,
      );
    } finally {
      restarted.close();
      expect(await service.process.stop()).toBe(0);
    }
    } finally {
      // Whatever happened, no process of this test outlives it.
      for (const p of started) await p.kill();
    }
  }, 240_000);
});
