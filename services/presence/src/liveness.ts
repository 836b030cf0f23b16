import { randomUUID } from 'node:crypto';
import { UnavailableError } from '@switchboard/errors';
import type { Logger } from '@switchboard/logging';
import { decodeEnvelope, SYSTEM_SUBJECTS, type NatsConnection, type Subscription } from '@switchboard/nats';
import { Cause, type ChangeAnnouncer } from './announcer';
import type { PresenceConfig } from './config';
import type { DroppedUser, DropWork, OutboxEntry, PresenceStore, UserConnections } from './store';

/** A gateway's open AttachGateway call, as liveness sees it. */
export interface GatewayLink {
  /** Called once when the gateway's side went away (not when `end` was called). */
  onClosed(listener: () => void): void;
  end(): void;
}

/** How many users' time-driven recomputations run at once. */
const PARALLEL_USERS = 500;
/**
 * Users of a dead gateway dropped per script call: large enough that a
 * gateway of 15,000 connections takes a few dozen calls, small enough that
 * one call holds Redis for milliseconds, not the whole drop.
 */
const DROP_BATCH = 500;
/**
 * Drop calls queued at Redis at once. (presence-s6 tried two through ioredis's
 * auto-pipelining, which sent them as one pipeline answered as a whole: the
 * first batch was heard later. Each call is now its own write and answer.)
 */
const DROP_CALLS_IN_FLIGHT = 2;
/** A drop that failed part-way is tried again after this, doubling per failure up to DROP_RETRY_MAX_MS. */
const DROP_RETRY_BASE_MS = 100;
const DROP_RETRY_MAX_MS = 2000;

export interface DropResult {
  connections: number;
  usersOffline: number;
  takeMs: number;
  firstAnnouncedMs: number;
}

/**
 * Keeps presence true over time without any client asking:
 *   - gateway heartbeats (NATS, `sb.sys.gateway.heartbeat`) set a short
 *     deadline per gateway; the reaper drops every connection of a gateway
 *     whose heartbeats stopped (or whose lease lapsed) in one sweep;
 *   - the due sweeper recomputes users whose presence changes with time
 *     (auto-away, a status or custom message expiring) and announces it.
 * Both claim their work atomically in Redis, so any number of replicas run
 * them without announcing anything twice.
 */
export class Liveness {
  private reaper: NodeJS.Timeout | undefined;
  private sweeper: NodeJS.Timeout | undefined;
  private heartbeats: Subscription | undefined;
  private reaping = false;
  /** A reap was asked for while one ran (a link's grace ended meanwhile): run again at once instead of at the next tick. */
  private reapAgain = false;
  private lastReap = performance.now();
  /** When this replica saw each gateway's link close (ms since the epoch), for the drop's log: detection's share. */
  private readonly linkClosedAt = new Map<string, number>();
  /**
   * A gateway's connections read while its link's grace runs (most such
   * gateways are dead): the drop that follows starts its first batch without
   * reading them (a take of thousands of connections took 30–70 ms).
   */
  private readonly readDuringGrace = new Map<string, Promise<Map<string, DropWork['connections']> | undefined>>();
  private sweeping = false;
  /** Gateways' open links (AttachGateway), ended by this replica when it stops. */
  private readonly links = new Set<GatewayLink>();
  private closingLinks = false;
  /** Gateways this replica is dropping, retries included: its reaper leaves them alone even when their claim lapsed. */
  private readonly dropping = new Set<string>();
  private readonly retryTimers = new Set<NodeJS.Timeout>();
  /**
   * Outbox entries (batch ids) this replica published whose removal from the
   * outbox is not confirmed yet, per gateway being dropped: a retry removes
   * them instead of publishing them again. Only a replica that dies between
   * a publish and its removal leaves one to be published twice.
   */
  private readonly publishedBatches = new Map<string, Set<string>>();
  private stopped = false;

  constructor(
    private readonly store: PresenceStore,
    private readonly announcer: ChangeAnnouncer,
    private readonly nats: NatsConnection,
    private readonly config: PresenceConfig,
    private readonly logger: Logger,
  ) {}

  start(): void {
    // A queue group: one replica records each heartbeat.
    this.heartbeats = this.nats.subscribe(SYSTEM_SUBJECTS.gatewayHeartbeat, {
      queue: 'presence',
      callback: (err, msg) => {
        if (err) return;
        try {
          const event = decodeEnvelope(msg).envelope.event;
          if (event?.$case !== 'gatewayHeartbeat') return;
          // At least three missed beats, so one late beat never takes a gateway's users offline.
          const timeout = Math.max(this.config.GATEWAY_HEARTBEAT_TIMEOUT_MS, 3 * Number(event.value.intervalMs));
          this.store.heartbeat(event.value.gatewayId, Date.now() + timeout).catch((e: unknown) => this.logger.warn({ err: e }, 'could not record a gateway heartbeat'));
        } catch (e) {
          this.logger.warn({ err: e }, 'dropping an undecodable heartbeat');
        }
      },
    });
    this.reaper = setInterval(() => void this.reap(), this.config.REAPER_INTERVAL_MS);
    this.sweeper = setInterval(() => void this.sweep(), this.config.SWEEP_INTERVAL_MS);
  }

  stop(): void {
    // Drops still to retry stay claimable in Redis: another replica resumes them once their claim lapses.
    this.stopped = true;
    for (const timer of this.retryTimers) clearTimeout(timer);
    this.retryTimers.clear();
    clearInterval(this.reaper);
    clearInterval(this.sweeper);
    this.heartbeats?.unsubscribe();
  }

  /**
   * A gateway holds a link to this replica while it lives. The link ending
   * without this replica ending it means the gateway's connection closed —
   * its process died, or the network between us broke: it then has
   * GATEWAY_LINK_GRACE_MS to attach again (a live one does at once) before
   * the reaper drops its connections, instead of the whole heartbeat
   * timeout. Beats in flight from a dead gateway no longer count.
   */
  async attach(gatewayId: string, link: GatewayLink): Promise<void> {
    // A replica on its way down takes no new links: the gateway attaches again, elsewhere.
    if (this.closingLinks) throw new UnavailableError('this presence replica is stopping');
    const linkId = randomUUID();
    this.links.add(link);
    link.onClosed(() => {
      this.links.delete(link);
      if (this.closingLinks) return;
      const closedAt = Date.now();
      const graceEnds = closedAt + this.config.GATEWAY_LINK_GRACE_MS;
      this.store
        .linkLost(gatewayId, linkId, graceEnds)
        .then((applied) => {
          if (!applied) return;
          this.linkClosedAt.set(gatewayId, closedAt);
          this.readDuringGrace.set(gatewayId, this.store.readGateway(gatewayId).catch(() => undefined));
          // A gateway that attaches again is alive: what was read goes (so does one never reaped, after a while).
          setTimeout(() => this.readDuringGrace.delete(gatewayId), this.config.GATEWAY_HEARTBEAT_TIMEOUT_MS + 2 * this.config.GATEWAY_LINK_GRACE_MS).unref();
          this.logger.info({ gateway: gatewayId, graceMs: this.config.GATEWAY_LINK_GRACE_MS }, 'gateway link closed: waiting only the grace for it to attach again');
          // Reap as the grace ends (counted from the close, not from Redis's answer) rather than at the next tick.
          setTimeout(() => void this.reap(), Math.max(0, graceEnds - Date.now()) + 5).unref();
        })
        .catch((err: unknown) => this.logger.warn({ err, gateway: gatewayId }, 'could not record a closed gateway link; its heartbeat timeout still applies'));
    });
    try {
      await this.store.linkAttached(gatewayId, linkId, Date.now() + this.config.GATEWAY_HEARTBEAT_TIMEOUT_MS);
      this.linkClosedAt.delete(gatewayId);
      this.readDuringGrace.delete(gatewayId);
    } catch (err) {
      this.links.delete(link);
      throw err;
    }
  }

  /** This replica is stopping: the links it ends say nothing about the gateways, which attach elsewhere. */
  closeLinks(): void {
    this.closingLinks = true;
    for (const link of this.links) link.end();
    this.links.clear();
  }

  private async reap(): Promise<void> {
    // A tick far behind schedule means this process was stalled: timers run
    // before the socket reads of the same loop turn, so heartbeats received
    // meanwhile are not recorded yet. Reaping now would declare live
    // gateways dead; the next tick comes after those reads.
    const tick = performance.now();
    const stalled = tick - this.lastReap > 2 * this.config.REAPER_INTERVAL_MS;
    this.lastReap = tick;
    if (stalled) return;
    if (this.reaping) {
      this.reapAgain = true;
      return;
    }
    this.reaping = true;
    try {
      do {
        this.reapAgain = false;
        const dead = await this.store.popDeadGateways(Date.now(), Date.now() + this.config.GATEWAY_DROP_CLAIM_MS);
        const detectedAt = Date.now();
        for (const gatewayId of dead) {
          // Popped again because its claim lapsed while this replica retries it: the retry goes on.
          if (this.dropping.has(gatewayId)) continue;
          const linkClosedAt = this.linkClosedAt.get(gatewayId);
          this.linkClosedAt.delete(gatewayId);
          await this.drop(gatewayId, Cause.PRESENCE_CHANGE_CAUSE_GATEWAY_DOWN, { detectedAt, ...(linkClosedAt === undefined ? {} : { linkClosedAt }) }).catch(() => undefined);
        }
      } while (this.reapAgain);
    } catch (err) {
      this.logger.warn({ err }, 'gateway reaper failed; retrying next tick');
    } finally {
      this.reaping = false;
    }
  }

  private async sweep(): Promise<void> {
    if (this.sweeping) return;
    this.sweeping = true;
    try {
      for (const tenantId of await this.store.tenants()) {
        const now = Date.now();
        const userIds = await this.store.popDueUsers(tenantId, now, 500);
        await inChunks(userIds, async (userId) => {
          const snapshot = await this.store.touch(tenantId, userId);
          const expired = snapshot.manual && [snapshot.manual.statusExpiresAt, snapshot.manual.customMessageExpiresAt].some((at) => at > 0 && at <= now);
          await this.announcer.announce(tenantId, snapshot, Date.now(), expired ? Cause.PRESENCE_CHANGE_CAUSE_EXPIRED : Cause.PRESENCE_CHANGE_CAUSE_AUTO_AWAY);
        });
      }
    } catch (err) {
      this.logger.warn({ err }, 'presence sweep failed; retrying next tick');
    } finally {
      this.sweeping = false;
    }
  }

  /**
   * A gateway going down (GatewayDown): its drop is claimed by this replica
   * and run now; see dropOnce. If it fails part-way the caller hears so and
   * the drop goes on (retried here, or resumed by another replica).
   */
  async dropGateway(gatewayId: string, cause: Cause): Promise<DropResult> {
    await this.store.claimDrop(gatewayId, Date.now() + this.config.GATEWAY_DROP_CLAIM_MS);
    return this.drop(gatewayId, cause, {});
  }

  /**
   * Runs a claimed drop once and logs it; if it fails part-way, what is left
   * stays in Redis (work list, outbox, the claim) and this replica tries
   * again with backoff until it is done or this replica stops (then the
   * claim lapses and any replica's reaper resumes it). Rejects with the
   * first failure.
   */
  private async drop(gatewayId: string, cause: Cause, context: { detectedAt?: number; linkClosedAt?: number }): Promise<DropResult> {
    const started = performance.now();
    const retrying = this.dropping.has(gatewayId);
    this.dropping.add(gatewayId);
    try {
      const result = await this.dropOnce(gatewayId, cause);
      this.dropping.delete(gatewayId);
      this.publishedBatches.delete(gatewayId);
      const fields = { gateway: gatewayId, ...result, ms: Math.round(performance.now() - started), ...context };
      // GatewayDown's own log line says the rest.
      if (context.detectedAt === undefined) this.logger.info(fields, 'gateway down: its connections went offline');
      else this.logger.warn(fields, 'gateway missed its heartbeats or lease: its connections went offline');
      return result;
    } catch (err) {
      if (!retrying) this.retryLater(gatewayId, cause, 0, err);
      throw err;
    }
  }

  private retryLater(gatewayId: string, cause: Cause, attempt: number, err: unknown): void {
    if (this.stopped) {
      this.dropping.delete(gatewayId);
      this.publishedBatches.delete(gatewayId);
      return;
    }
    const delay = Math.min(DROP_RETRY_BASE_MS * 2 ** attempt, DROP_RETRY_MAX_MS);
    this.logger.warn({ err, gateway: gatewayId, attempt, retryInMs: delay }, 'gateway drop failed part-way: what is left stays claimable in Redis; retrying');
    const timer = setTimeout(() => {
      this.retryTimers.delete(timer);
      const started = performance.now();
      this.dropOnce(gatewayId, cause).then(
        (result) => {
          this.dropping.delete(gatewayId);
          this.publishedBatches.delete(gatewayId);
          this.logger.warn({ gateway: gatewayId, ...result, ms: Math.round(performance.now() - started), attempt: attempt + 1 }, 'gateway drop finished on a retry: its connections went offline');
        },
        (e: unknown) => this.retryLater(gatewayId, cause, attempt + 1, e),
      );
    }, delay);
    timer.unref();
    this.retryTimers.add(timer);
  }

  /**
   * Every connection the gateway held goes offline: per tenant, the users
   * are dropped in batches of DROP_BATCH, each batch one script call that
   * removes the connections (from the drop's work list too) and, for users
   * left without any, decides and claims the OFFLINE change and keeps it in
   * the drop's outbox; those are published as soon as the call returns, one
   * PresenceChangedBatch per call (watchers hear of the first users while
   * later batches run), and leave the outbox once NATS has them.
   * Users still connected elsewhere are merged and claimed as usual.
   * Occupancy it held is released. Resumable at any point: a second run
   * first publishes what the outbox holds (unless something newer about
   * that user went out since), then drops what the work list holds.
   */
  private async dropOnce(gatewayId: string, cause: Cause): Promise<DropResult> {
    const started = performance.now();
    let connections = 0;
    let usersOffline = 0;
    let firstAnnouncedMs = -1;
    const renewClaim = () => void this.store.renewDrop(gatewayId, Date.now() + this.config.GATEWAY_DROP_CLAIM_MS).catch(() => undefined);
    renewClaim();
    // Connections read during the link's grace: registered since, they are still on the work list, read after.
    const read = this.readDuringGrace.get(gatewayId);
    this.readDuringGrace.delete(gatewayId);
    const readBefore = read && (await read);
    const work = await this.store.takeGateway(gatewayId, readBefore !== undefined);
    const takeMs = Math.round(performance.now() - started);
    let publishedHere = this.publishedBatches.get(gatewayId);
    if (!publishedHere) this.publishedBatches.set(gatewayId, (publishedHere = new Set()));
    const published = publishedHere;
    // Out of the outbox once NATS has them (a failed removal is retried: `published` remembers it).
    const removeFromOutbox = (tenantId: string, batchIds: string[]) =>
      this.announcer
        .flush()
        .then(() => this.store.published(tenantId, gatewayId, batchIds))
        .then(() => batchIds.forEach((id) => published.delete(id)));
    for (const { tenantId, connections: taken, occupancy, outbox } of work) {
      await this.republish(tenantId, gatewayId, outbox, published);
      const announcing: Promise<void>[] = [];
      const removing: Promise<void>[] = [];
      const dropAll = async (held: DropWork['connections']) => {
        connections += held.length;
        const byUser = new Map<string, UserConnections>();
        for (const c of held) {
          let user = byUser.get(c.userId);
          if (!user) byUser.set(c.userId, (user = { userId: c.userId, connections: [] }));
          user.connections.push({ connectionId: c.connectionId, deviceId: c.deviceId });
        }
        const users = [...byUser.values()];
        if (users.length === 0) return;
        // DROP_CALLS_IN_FLIGHT calls queued at Redis, each answered on its own: Redis runs the next batch while this
        // process reads and announces the previous one, instead of waiting for it to be scheduled on a busy core.
        const inFlight: Promise<{ dropped: DroppedUser[]; now: number; batchId: string }>[] = [];
        const send = (from: number) => {
          if (from >= users.length) return;
          const now = Date.now();
          const batchId = randomUUID();
          const call = this.store.dropUsers(tenantId, gatewayId, users.slice(from, from + DROP_BATCH), now, cause, batchId).then((dropped) => ({ dropped, now, batchId }));
          // Awaited in turn; one failing ends this run with the others still out (their results are dropped: idempotent).
          call.catch(() => undefined);
          inFlight.push(call);
        };
        for (let k = 0; k < DROP_CALLS_IN_FLIGHT; k += 1) send(k * DROP_BATCH);
        for (let i = 0; i < users.length; i += DROP_BATCH) {
          const { dropped, now, batchId } = await inFlight.shift()!;
          send(i + DROP_CALLS_IN_FLIGHT * DROP_BATCH);
          const offline = dropped.flatMap((d) => (d.gone || d.online ? [] : [d]));
          usersOffline += offline.length;
          // Left in the outbox when the publish failed: the end of this tenant's drop tries again.
          if (this.announcer.announceOffline(tenantId, offline, now) && offline.some((d) => d.news)) {
            published.add(batchId);
            removing.push(removeFromOutbox(tenantId, [batchId]).catch(() => undefined));
          }
          if (firstAnnouncedMs < 0 && offline.length > 0) firstAnnouncedMs = Math.round(performance.now() - started);
          // Users still connected through another gateway: the ordinary merge and claim.
          const stillOnline = dropped.flatMap((d) => (!d.gone && d.online ? [d.snapshot] : []));
          if (stillOnline.length > 0) announcing.push(this.announcer.announceMany(tenantId, stillOnline, now, cause));
          renewClaim();
        }
      };
      if (!readBefore) await dropAll(taken);
      else {
        await dropAll(readBefore.get(tenantId) ?? []);
        // Registered after the grace's read (or a tenant it did not see): still on the work list. Every batch takes its
        // connections off it, so this ends.
        for (let rest = await this.store.remainingWork(tenantId, gatewayId); rest.length > 0; rest = await this.store.remainingWork(tenantId, gatewayId)) await dropAll(rest);
      }
      await Promise.all([...announcing, ...removing]);
      const vacated = await this.store.vacate(tenantId, gatewayId, occupancy);
      for (const [conversationId, counts] of vacated) this.announcer.occupancyChanged(tenantId, conversationId, counts);
      // Whatever is still in the outbox (a batch applied twice after a lost answer, a failed publish) goes out before the drop is done.
      await this.republish(tenantId, gatewayId, await this.store.outbox(tenantId, gatewayId), published);
      await this.store.finishTenant(tenantId, gatewayId);
    }
    await this.store.finishDrop(gatewayId);
    return { connections, usersOffline, takeMs, firstAnnouncedMs };
  }

  /**
   * Claimed OFFLINE changes still in the outbox: those this replica
   * published already only leave it; the others (a run that died or lost
   * Redis between claim and publish) are published now, unless something
   * newer about the user went out since.
   */
  private async republish(tenantId: string, gatewayId: string, outbox: OutboxEntry[], published: Set<string>): Promise<void> {
    if (outbox.length === 0) return;
    for (const entry of outbox) {
      if (published.has(entry.batchId)) continue;
      const users = await this.store.stillCurrent(tenantId, entry.users);
      const offline = users.map((u) => ({ userId: u.userId, online: false as const, news: true, customMessage: u.customMessage, lastSeen: u.lastSeen, occupancy: new Map() }));
      if (!this.announcer.announceOffline(tenantId, offline, entry.at)) throw new UnavailableError('could not publish a dropped gateway’s OFFLINE changes');
      published.add(entry.batchId);
    }
    await this.announcer.flush();
    const batchIds = outbox.map((e) => e.batchId);
    await this.store.published(tenantId, gatewayId, batchIds);
    for (const id of batchIds) published.delete(id);
  }
}

async function inChunks<T>(items: T[], work: (item: T) => Promise<void>): Promise<void> {
  for (let i = 0; i < items.length; i += PARALLEL_USERS) await Promise.all(items.slice(i, i + PARALLEL_USERS).map(work));
}
