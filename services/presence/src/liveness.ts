import { randomUUID } from 'node:crypto';
import { UnavailableError } from '@switchboard/errors';
import type { Logger } from '@switchboard/logging';
import { decodeEnvelope, SYSTEM_SUBJECTS, type NatsConnection, type Subscription } from '@switchboard/nats';
import { Cause, type ChangeAnnouncer } from './announcer';
import type { PresenceConfig } from './config';
import type { PresenceStore, UserConnections } from './store';

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
  private sweeping = false;
  /** Gateways' open links (AttachGateway), ended by this replica when it stops. */
  private readonly links = new Set<GatewayLink>();
  private closingLinks = false;

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
          this.logger.info({ gateway: gatewayId, graceMs: this.config.GATEWAY_LINK_GRACE_MS }, 'gateway link closed: waiting only the grace for it to attach again');
          // Reap as the grace ends (counted from the close, not from Redis's answer) rather than at the next tick.
          setTimeout(() => void this.reap(), Math.max(0, graceEnds - Date.now()) + 5).unref();
        })
        .catch((err: unknown) => this.logger.warn({ err, gateway: gatewayId }, 'could not record a closed gateway link; its heartbeat timeout still applies'));
    });
    try {
      await this.store.linkAttached(gatewayId, linkId, Date.now() + this.config.GATEWAY_HEARTBEAT_TIMEOUT_MS);
      this.linkClosedAt.delete(gatewayId);
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
        const dead = await this.store.popDeadGateways(Date.now());
        const detectedAt = Date.now();
        for (const gatewayId of dead) {
          const started = performance.now();
          const linkClosedAt = this.linkClosedAt.get(gatewayId);
          this.linkClosedAt.delete(gatewayId);
          const result = await this.dropGateway(gatewayId, Cause.PRESENCE_CHANGE_CAUSE_GATEWAY_DOWN);
          this.logger.warn(
            { gateway: gatewayId, ...result, ms: Math.round(performance.now() - started), detectedAt, ...(linkClosedAt === undefined ? {} : { linkClosedAt }) },
            'gateway missed its heartbeats or lease: its connections went offline',
          );
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
   * Every connection the gateway held goes offline at once: per tenant, the
   * users are dropped in batches of DROP_BATCH, each batch one script call
   * that removes the connections and, for users left without any, decides
   * and claims the OFFLINE change; those are published as soon as the call
   * returns, one PresenceChangedBatch per call (watchers hear of the first
   * users while later batches run).
   * Users still connected elsewhere are merged and claimed as usual.
   * Occupancy it held is released.
   */
  async dropGateway(gatewayId: string, cause: Cause): Promise<{ connections: number; usersOffline: number; takeMs: number; firstAnnouncedMs: number }> {
    const started = performance.now();
    let connections = 0;
    let usersOffline = 0;
    let firstAnnouncedMs = -1;
    const taken = await this.store.takeGateway(gatewayId);
    const takeMs = Math.round(performance.now() - started);
    for (const { tenantId, connections: held, occupancy } of taken) {
      connections += held.length;
      const byUser = new Map<string, UserConnections>();
      const owner = new Map<string, string>();
      for (const c of held) {
        owner.set(c.connectionId, c.userId);
        let user = byUser.get(c.userId);
        if (!user) byUser.set(c.userId, (user = { userId: c.userId, connections: [] }));
        user.connections.push({ connectionId: c.connectionId, deviceId: c.deviceId });
      }
      const users = [...byUser.values()];
      // Redis drops the next batch while this process announces the previous one. (Two calls queued at Redis
      // were tried: the first batch's answer then came later and the crash's p99 was no better.)
      const drop = (from: number) => {
        const now = Date.now();
        return this.store.dropUsers(tenantId, gatewayId, users.slice(from, from + DROP_BATCH), now, cause).then((dropped) => ({ dropped, now }));
      };
      const announcing: Promise<void>[] = [];
      let next = drop(0);
      for (let i = 0; i < users.length; i += DROP_BATCH) {
        const { dropped, now } = await next;
        if (i + DROP_BATCH < users.length) next = drop(i + DROP_BATCH);
        const offline = dropped.filter((d) => !d.online);
        usersOffline += offline.length;
        this.announcer.announceOffline(tenantId, offline, now);
        if (firstAnnouncedMs < 0 && offline.length > 0) firstAnnouncedMs = Math.round(performance.now() - started);
        // Users still connected through another gateway: the ordinary merge and claim.
        const stillOnline = dropped.flatMap((d) => (d.online ? [d.snapshot] : []));
        if (stillOnline.length > 0) announcing.push(this.announcer.announceMany(tenantId, stillOnline, now, cause));
      }
      await Promise.all(announcing);
      const vacated = await this.store.vacate(
        tenantId,
        gatewayId,
        occupancy.filter((o) => owner.has(o.connectionId)).map((o) => ({ ...o, userId: owner.get(o.connectionId)! })),
      );
      for (const [conversationId, counts] of vacated) this.announcer.occupancyChanged(tenantId, conversationId, counts);
    }
    return { connections, usersOffline, takeMs, firstAnnouncedMs };
  }
}

async function inChunks<T>(items: T[], work: (item: T) => Promise<void>): Promise<void> {
  for (let i = 0; i < items.length; i += PARALLEL_USERS) await Promise.all(items.slice(i, i + PARALLEL_USERS).map(work));
}
