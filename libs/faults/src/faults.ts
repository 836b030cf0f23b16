import type { Balancer } from './balancer';
import { sleep, type Device } from './device';
import type { FaultInfra } from './infra';
import type { FaultMesh, GatewaySlot } from './mesh';

export const FAULT_NAMES = ['gateway-kill', 'messaging-kill', 'nats-restart', 'kafka-restart', 'churn'] as const;
/** `baseline` (traffic, no fault) is there for comparison; it runs only when asked for. */
export type FaultName = (typeof FAULT_NAMES)[number] | 'baseline';

export interface FaultContext {
  mesh: FaultMesh;
  infra: FaultInfra;
  balancer: Balancer;
  devices: Device[];
  random: () => number;
  phaseSeconds: number;
  /** When the phase's traffic is planned to end (the fault may extend it until it has restored what it broke). */
  trafficEndsAt: number;
  /** A line in the phase's timeline (printed with the result). */
  note: (line: string) => void;
  /** Pauses new sends (what is in flight carries on): faults call it right before they repair what they broke. */
  pause: () => void;
  /**
   * Pauses new sends (unless paused already) and watches whether everything acked so far reaches
   * every connected device without new traffic to trigger a gap fill (up to
   * 10 s); then resumes. Faults call it once what they broke is back.
   */
  probe: () => Promise<void>;
}

export interface Fault {
  name: FaultName;
  description: string;
  /** Fraction of the phase at which the fault starts. */
  startAt: number;
  /** Breaks something, and restores it before returning. */
  run(ctx: FaultContext): Promise<void>;
}

/** How long a killed thing stays down before it is started again. */
function downtime(ctx: FaultContext, minMs: number, maxMs: number): number {
  return Math.round(Math.min(maxMs, Math.max(minMs, ctx.phaseSeconds * 1000 * 0.25)));
}

function connectedTo(ctx: FaultContext, gateway: GatewaySlot): number {
  return ctx.devices.filter((d) => d.connected && d.gateway === gateway.name).length;
}

const gatewayKill: Fault = {
  name: 'gateway-kill',
  description: 'SIGKILL the gateway with the most clients while they send and receive; they reconnect through the balancer to the other; it is started again later',
  startAt: 0.3,
  async run(ctx) {
    const victim = [...ctx.mesh.gateways].sort((a, b) => connectedTo(ctx, b) - connectedTo(ctx, a))[0]!;
    const clients = connectedTo(ctx, victim);
    const pid = await ctx.mesh.kill(victim);
    ctx.balancer.setUp(victim.name, false);
    ctx.note(`SIGKILL ${victim.name} (pid ${pid}) with ${clients} clients on it`);
    await sleep(downtime(ctx, 2000, 8000));
    const moved = ctx.devices.filter((d) => d.connected && d.gateway !== victim.name).length;
    ctx.pause();
    await ctx.mesh.launch(victim);
    ctx.balancer.setUp(victim.name, true);
    ctx.note(`${victim.name} started again (pid ${victim.process?.child.pid}); ${moved}/${ctx.devices.length} clients were connected elsewhere`);
    await ctx.probe();
  },
};

const messagingKill: Fault = {
  name: 'messaging-kill',
  description: 'SIGKILL the messaging service mid-stream (commits, acks and outbox publishing in flight) and start it again',
  startAt: 0.3,
  async run(ctx) {
    const pid = await ctx.mesh.kill(ctx.mesh.messaging);
    ctx.note(`SIGKILL messaging (pid ${pid})`);
    await sleep(downtime(ctx, 1500, 5000));
    ctx.pause();
    await ctx.mesh.launch(ctx.mesh.messaging);
    ctx.note(`messaging started again (pid ${ctx.mesh.messaging.process?.child.pid})`);
    await ctx.probe();
  },
};

const natsRestart: Fault = {
  name: 'nats-restart',
  description: 'SIGKILL nats-server of the suite\'s instance and start it again (infra.sh up)',
  startAt: 0.3,
  async run(ctx) {
    const pid = await ctx.infra.kill('nats', 'SIGKILL');
    ctx.note(`SIGKILL nats-server (pid ${pid})`);
    await sleep(downtime(ctx, 1500, 5000));
    ctx.pause();
    const started = Date.now();
    await ctx.infra.up();
    ctx.note(`nats-server started again (pid ${ctx.infra.pidOf('nats')}) in ${((Date.now() - started) / 1000).toFixed(1)}s`);
    await ctx.probe();
  },
};

const kafkaRestart: Fault = {
  name: 'kafka-restart',
  description: 'SIGKILL the Kafka broker of the suite\'s instance and start it again (infra.sh up)',
  startAt: 0.3,
  async run(ctx) {
    const pid = await ctx.infra.kill('kafka', 'SIGKILL');
    ctx.note(`SIGKILL Kafka broker (pid ${pid})`);
    await sleep(downtime(ctx, 2000, 5000));
    ctx.pause();
    const started = Date.now();
    await ctx.infra.up();
    ctx.note(`Kafka started again (pid ${ctx.infra.pidOf('kafka')}) and healthy in ${((Date.now() - started) / 1000).toFixed(1)}s`);
    await ctx.probe();
  },
};

const churn: Fault = {
  name: 'churn',
  description: 'drop random clients\' connections (no closing handshake) every few hundred ms; they reconnect by themselves',
  startAt: 0.1,
  async run(ctx) {
    const until = ctx.trafficEndsAt - ctx.phaseSeconds * 1000 * 0.1;
    const maxDrops = ctx.devices.length * 4;
    let drops = 0;
    while (Date.now() < until && drops < maxDrops) {
      const candidates = ctx.devices.filter((d) => d.connected);
      const device = candidates[Math.floor(ctx.random() * candidates.length)];
      if (device?.dropConnection()) drops += 1;
      await sleep(150 + ctx.random() * 450);
    }
    ctx.note(`dropped ${drops} connections`);
    await ctx.probe();
  },
};

const baseline: Fault = {
  name: 'baseline',
  description: 'traffic only, nothing broken',
  startAt: 0.5,
  async run(ctx) {
    await ctx.probe();
  },
};

export const FAULTS: Record<FaultName, Fault> = {
  'gateway-kill': gatewayKill,
  'messaging-kill': messagingKill,
  'nats-restart': natsRestart,
  'kafka-restart': kafkaRestart,
  churn,
  baseline,
};
