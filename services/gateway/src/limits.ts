import { FrameTooLargeError, RateLimitedError, SwitchboardError } from '@switchboard/errors';
import type { ConnectionSlots, LocalRate, RatesDecision, RateStep, SharedRateLimits, TenantLimits, TenantLimitStore, UsageCounters } from '@switchboard/limits';
import type { Logger } from '@switchboard/logging';
import type { framesV1 } from '@switchboard/proto';
import type { Counter, Meter } from '@switchboard/telemetry';
import type { GatewayConfig } from './config';
import { CLOSE, type Connection } from './connection';

/** Why a connection or a frame was refused: the `reason` of gateway_tenant_rejects_total and of the usage counters. */
export type RejectReason = 'connections' | 'frame_size' | 'flood' | 'bandwidth' | 'rate_user' | 'rate_tenant' | 'invalid_frame';

export type Refusal = { error: SwitchboardError; close?: { code: number; reason: string } };

/** Frame kinds that count as messages against the per-user and per-tenant message budgets. */
const MESSAGE_KINDS = new Set<string>(['sendMessage']);

/** Label for the tenant metrics whose cardinality must stay bounded. */
const OTHER_TENANTS = '(other)';

/**
 * Per-tenant metric labels with bounded cardinality: the tenants of the
 * allow-list (METRICS_TENANTS) always by name, then the first tenants this
 * process sees up to TENANT_METRIC_LIMIT, every later one as "(other)". A
 * counter's label never changes once given, so rates stay correct.
 */
export class TenantLabels {
  private readonly named = new Set<string>();

  constructor(
    private readonly allowList: string[],
    private readonly limit: number,
  ) {}

  of(tenantId: string): string {
    if (this.allowList.includes(tenantId) || this.named.has(tenantId)) return tenantId;
    if (this.named.size < this.limit) {
      this.named.add(tenantId);
      return tenantId;
    }
    return OTHER_TENANTS;
  }
}

/** What each connection counted since the last tick; folded into usage and metrics once a second. */
export interface ConnectionCounters {
  frames: number;
  messages: number;
  bytesIn: number;
  bytesOut: number;
}

/**
 * The tenant limits at the gateway (docs/security.md, "Tenant limits"):
 * connection slots and per-second budgets shared by every gateway through
 * Redis, a per-connection frame budget kept in process, per-tenant usage
 * counters and metrics. If Redis cannot be reached the gateway keeps serving:
 * the rate budgets fall back to per-process ones and connection slots are not
 * counted, and an error is logged.
 */
export class GatewayLimits {
  private readonly labels: TenantLabels;
  private readonly rejects: Counter;
  private readonly frames: Counter;
  private readonly messages: Counter;
  private readonly bytes: Counter;
  private ticks = 0;
  /** Connections whose counters moved since the last tick (each connection adds itself: Connection.counted). */
  readonly counted = new Set<Connection>();

  constructor(
    readonly store: TenantLimitStore,
    private readonly rates: SharedRateLimits,
    private readonly slots: ConnectionSlots,
    readonly usage: UsageCounters,
    /** Frames per second of one connection. */
    private readonly connectionRate: LocalRate,
    /** Refused frames per second of one connection before it is closed with 4008. */
    private readonly abuseRate: LocalRate,
    private readonly config: GatewayConfig,
    private readonly logger: Logger,
    meter: Meter,
  ) {
    this.labels = new TenantLabels(config.METRICS_TENANTS, config.TENANT_METRIC_LIMIT);
    const bounded = `by tenant (METRICS_TENANTS and the first ${config.TENANT_METRIC_LIMIT} seen by name, the rest as "(other)")`;
    this.rejects = meter.createCounter('gateway_tenant_rejects_total', { description: `Refused connections and frames ${bounded} and reason` });
    this.frames = meter.createCounter('gateway_tenant_frames_total', { description: `Client frames received ${bounded}` });
    this.messages = meter.createCounter('gateway_tenant_messages_total', { description: `Messages sent by clients ${bounded}` });
    this.bytes = meter.createCounter('gateway_tenant_bytes_total', { description: `WebSocket payload bytes ${bounded} and direction (in, out)` });
  }

  /** The tenant's limits; the defaults when Redis cannot be read. */
  async limitsOf(tenantId: string): Promise<TenantLimits> {
    try {
      return await this.store.get(tenantId);
    } catch (err) {
      this.logger.error({ err, tenant: tenantId }, 'tenant limits unreadable: using the defaults');
      return this.store.defaults;
    }
  }

  /** Largest frame the connection may send: the tenant's limit, never above the gateway's own. */
  async maxFrameBytes(tenantId: string): Promise<number> {
    return Math.min(this.config.MAX_FRAME_BYTES, (await this.limitsOf(tenantId)).maxFrameBytes);
  }

  /** Takes a connection slot of the tenant, or says why not (the connection is then closed with 4029). */
  async admitConnection(connection: Connection): Promise<{ admitted: true } | { admitted: false; reason: string }> {
    const { maxConnections } = await this.limitsOf(connection.tenantId);
    try {
      const decision = await this.slots.acquire(connection.tenantId, connection.id, maxConnections);
      if (!decision.admitted) {
        this.reject(connection.tenantId, 'connections');
        return { admitted: false, reason: `tenant connection limit reached (${maxConnections})` };
      }
    } catch (err) {
      this.logger.error({ err, tenant: connection.tenantId }, 'connection slots unavailable: admitting without counting');
    }
    this.usage.add(connection.tenantId, 'connectionsOpened');
    return { admitted: true };
  }

  release(connection: Connection): void {
    this.slots.release(connection.tenantId, connection.id).catch((err) => this.logger.warn({ err }, 'could not release a connection slot'));
  }

  /**
   * A frame against its size limit and the connection's own frame budget
   * (both in process), before anything else is done with it; decoding is
   * bounded by the gateway's MAX_FRAME_BYTES.
   */
  async admitFrame(connection: Connection, bytes: number): Promise<Refusal | undefined> {
    connection.counters.frames += 1;
    connection.counters.bytesIn += bytes;
    this.counted.add(connection);
    const limits = await this.limitsOf(connection.tenantId);
    const maxFrameBytes = Math.min(this.config.MAX_FRAME_BYTES, limits.maxFrameBytes);
    if (bytes > maxFrameBytes) {
      return this.refuse(connection, 'frame_size', new FrameTooLargeError(`frame of ${bytes} bytes is larger than max_frame_bytes (${maxFrameBytes})`));
    }
    const own = await this.connectionRate.consume(connection.id);
    if (!own.allowed) {
      const refusal = this.refuse(connection, 'flood', new RateLimitedError(`more than ${this.config.CONNECTION_FRAMES_PER_SECOND} frames per second on this connection`, { retryAfterMs: own.retryAfterMs }));
      // A client that keeps sending into refusals is not listening: end it rather than keep answering.
      if (!(await this.abuseRate.consume(connection.id)).allowed) refusal.close = { code: CLOSE.rateLimited, reason: 'rate limited: too many frames' };
      return refusal;
    }
    return undefined;
  }

  /**
   * The shared budgets of an admitted frame, in one Redis round trip: the
   * tenant's bandwidth (every frame, invalid ones too: a garbage flood is
   * still a flood), then for a valid message frame the tenant's and the
   * user's message budgets. In that order, and a refused budget leaves the
   * later ones uncharged: the tenant's budget before the user's, so once a
   * flooding tenant is over it, refusals come from memory.
   */
  async admitShared(connection: Connection, bytes: number, frame: framesV1.ClientFrame | undefined): Promise<Refusal | undefined> {
    const limits = await this.limitsOf(connection.tenantId);
    const { tenantId, userId } = connection;
    const message = frame !== undefined && MESSAGE_KINDS.has(frame.kind!.$case);
    const steps: RateStep[] = [{ kind: 'tenant-bytes', tenantId, subject: '', points: bytes, perSecond: limits.bytesPerSecondPerTenant }];
    if (message) {
      steps.push({ kind: 'tenant-messages', tenantId, subject: '', points: 1, perSecond: limits.messagesPerSecondPerTenant });
      steps.push({ kind: 'user-messages', tenantId, subject: userId, points: 1, perSecond: limits.messagesPerSecondPerUser });
    }
    let decision: RatesDecision;
    try {
      decision = await this.rates.consumeInOrder(steps);
    } catch (err) {
      this.logger.error({ err }, 'shared rate budgets failed: allowing');
      decision = { allowed: true };
    }
    if (!decision.allowed) {
      const retry = { retryAfterMs: decision.retryAfterMs };
      switch (steps[decision.step]!.kind) {
        case 'tenant-bytes':
          return this.refuse(connection, 'bandwidth', new RateLimitedError(`tenant bandwidth limit exceeded (${limits.bytesPerSecondPerTenant} bytes/s)`, retry));
        case 'tenant-messages':
          return this.refuse(connection, 'rate_tenant', new RateLimitedError(`tenant message rate limit exceeded (${limits.messagesPerSecondPerTenant} per second)`, retry));
        case 'user-messages':
          return this.refuse(connection, 'rate_user', new RateLimitedError(`message rate limit exceeded (${limits.messagesPerSecondPerUser} per second per user)`, retry));
      }
    }
    if (message) connection.counters.messages += 1;
    return undefined;
  }

  /** An undecodable or invalid frame, for the counters. */
  invalidFrame(connection: Connection): void {
    this.reject(connection.tenantId, 'invalid_frame');
  }

  forget(connection: Connection): void {
    void this.connectionRate.forget(connection.id);
    void this.abuseRate.forget(connection.id);
  }

  /**
   * Once a second: folds the counters of the connections that counted
   * something (closed ones too: their last second still counts) into the
   * tenant usage (flushed to Redis) and metrics; every tenth tick renews the
   * connection slots of the open ones.
   */
  async tick(connections: Iterable<Connection>): Promise<void> {
    this.ticks += 1;
    const renew = this.ticks % Math.max(1, Math.floor(this.slots.ttlMs / 3000)) === 0;
    for (const connection of this.counted) {
      const { tenantId, counters } = connection;
      if (counters.frames + counters.bytesOut > 0) {
        const tenant = this.labels.of(tenantId);
        this.usage.add(tenantId, 'frames', counters.frames);
        this.usage.add(tenantId, 'messages', counters.messages);
        this.usage.add(tenantId, 'bytesIn', counters.bytesIn);
        this.usage.add(tenantId, 'bytesOut', counters.bytesOut);
        this.frames.add(counters.frames, { tenant });
        this.messages.add(counters.messages, { tenant });
        this.bytes.add(counters.bytesIn, { tenant, direction: 'in' });
        this.bytes.add(counters.bytesOut, { tenant, direction: 'out' });
      }
      counters.frames = counters.messages = counters.bytesIn = counters.bytesOut = 0;
    }
    this.counted.clear();
    const open = new Map<string, string[]>();
    if (renew) {
      for (const connection of connections) {
        let ids = open.get(connection.tenantId);
        if (!ids) open.set(connection.tenantId, (ids = []));
        ids.push(connection.id);
      }
    }
    try {
      await this.usage.flush();
      if (renew) await this.slots.renew(open);
    } catch (err) {
      this.logger.warn({ err }, 'could not write tenant usage or renew connection slots');
    }
  }

  private refuse(connection: Connection, reason: RejectReason, error: SwitchboardError): Refusal {
    this.reject(connection.tenantId, reason);
    return { error };
  }

  private reject(tenantId: string, reason: RejectReason): void {
    this.usage.add(tenantId, `rejected:${reason}`);
    this.rejects.add(1, { tenant: this.labels.of(tenantId), reason });
  }
}
