#!/usr/bin/env node
import { mkdirSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { Command, InvalidArgumentError } from 'commander';
import { plot, readResults } from './plot';
import { summaryOf } from './report';
import { runLoad, type LoadOptions } from './run';
import { SCENARIOS, scaled } from './scenarios';

const int = (name: string) => (value: string) => {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 0) throw new InvalidArgumentError(`${name} must be a whole number ≥ 0`);
  return n;
};
const fraction = (name: string) => (value: string) => {
  const n = Number(value);
  if (!Number.isFinite(n) || n < 0 || n > 1) throw new InvalidArgumentError(`${name} must be between 0 and 1`);
  return n;
};

interface Flags {
  out: string;
  scale?: number;
  target?: 'switchboard' | 'socketio';
  gateways?: number;
  connections?: number;
  ramp?: number;
  maxPending?: number;
  spikeFactor?: number;
  spikeAt?: number;
  spikeDuration?: number;
  pattern?: LoadOptions['pattern'];
  roomSize?: number;
  rate?: number;
  duration?: number;
  churn?: number;
  workers?: number;
  sourceAddresses?: number;
  messageBytes?: number;
  idle?: number;
  label?: string;
  profile?: string;
  serviceLog?: string;
  gatewayEnv?: string[];
  serviceEnv?: string[];
}

/** `KEY=VALUE` pairs into an environment; a pair without `=` is refused by name. */
function environment(flag: string, pairs: string[]): Record<string, string> {
  return Object.fromEntries(
    pairs.map((kv) => {
      const at = kv.indexOf('=');
      if (at <= 0) throw new InvalidArgumentError(`${flag} takes KEY=VALUE pairs, got "${kv}"`);
      return [kv.slice(0, at), kv.slice(at + 1)];
    }),
  );
}

function overrides(flags: Flags): Partial<LoadOptions> {
  const o: Partial<LoadOptions> = {};
  if (flags.target) o.target = flags.target;
  if (flags.gateways !== undefined) o.gateways = flags.gateways;
  if (flags.connections !== undefined) o.connections = flags.connections;
  if (flags.ramp !== undefined) o.rampPerSecond = flags.ramp;
  if (flags.maxPending !== undefined) o.maxPendingConnects = flags.maxPending;
  if (flags.pattern) o.pattern = flags.pattern;
  if (flags.roomSize !== undefined) o.roomSize = flags.roomSize;
  if (flags.rate !== undefined) o.perMinute = flags.rate;
  if (flags.duration !== undefined) o.durationS = flags.duration;
  if (flags.churn !== undefined) o.churnPerMinute = flags.churn;
  if (flags.spikeFactor !== undefined) o.spike = { factor: flags.spikeFactor, atS: flags.spikeAt ?? 60, durationS: flags.spikeDuration ?? 60 };
  if (flags.workers !== undefined) o.workers = flags.workers;
  if (flags.sourceAddresses !== undefined) o.sourceAddresses = flags.sourceAddresses;
  if (flags.messageBytes !== undefined) o.messageBytes = flags.messageBytes;
  if (flags.idle !== undefined) o.idleS = flags.idle;
  if (flags.label) o.label = flags.label;
  if (flags.profile) o.profileDir = flags.profile;
  if (flags.serviceLog) o.serviceLog = flags.serviceLog;
  if (flags.gatewayEnv) o.gatewayEnv = environment('--gateway-env', flags.gatewayEnv);
  if (flags.serviceEnv) o.serviceEnv = environment('--service-env', flags.serviceEnv);
  return o;
}

async function execute(runs: Partial<LoadOptions>[], flags: Flags): Promise<void> {
  mkdirSync(flags.out, { recursive: true });
  for (const run of runs) {
    const options = { ...scaled(run, flags.scale ?? 1), ...overrides(flags) };
    if (options.profileDir) mkdirSync(options.profileDir, { recursive: true });
    const result = await runLoad(options);
    const file = path.join(flags.out, `${result.label}.json`);
    writeFileSync(file, `${JSON.stringify(result, null, 1)}\n`);
    process.stdout.write(`${summaryOf(result)}\n   result: ${file}\n`);
  }
}

function withRunFlags(command: Command): Command {
  return command
    .option('--out <dir>', 'where JSON results go', 'bench-results')
    .option('--scale <factor>', 'shrink connections and rates (0.01 for a quick look)', Number)
    .option('--target <target>', 'switchboard | socketio')
    .option('--gateways <n>', 'gateways (Switchboard) or instances (Socket.IO)', int('gateways'))
    .option('--connections <n>', 'client connections', int('connections'))
    .option('--ramp <perSecond>', 'new connections per second', int('ramp'))
    .option('--max-pending <n>', 'most handshakes waiting at once (closed-loop ramp)', int('max pending'))
    .option('--pattern <pattern>', 'idle | direct | room')
    .option('--room-size <n>', 'members per room', int('room size'))
    .option('--rate <perMinute>', 'messages per minute (steady)', int('rate'))
    .option('--duration <seconds>', 'seconds of load', int('duration'))
    .option('--spike-factor <n>', 'a stretch at n times the rate', int('spike factor'))
    .option('--spike-at <seconds>', 'when the spike starts (default 60)', int('spike start'))
    .option('--spike-duration <seconds>', 'how long it lasts (default 60)', int('spike duration'))
    .option('--churn <share>', 'share of connections reconnecting per minute (0-1)', fraction('churn'))
    .option('--workers <n>', 'load-generator processes (0: one per 2,500 connections)', int('workers'))
    .option('--source-addresses <n>', 'loopback source addresses 127.0.0.1..n', int('source addresses'))
    .option('--message-bytes <n>', 'text bytes per message', int('message bytes'))
    .option('--idle <seconds>', 'quiet seconds after the ramp (idle CPU window)', int('idle'))
    .option('--label <label>', 'name of the run (and its JSON file)')
    .option('--service-log <file>', "append the Switchboard services' log lines to this file")
    .option('--profile <dir>', "CPU and heap profiles of the first gateway and CPU profiles of every other service over the load (over the inspector) into this directory")
    .option('--gateway-env <KEY=VALUE...>', 'extra environment for the gateways (e.g. WS_COMPRESSION=true)')
    .option('--service-env <KEY=VALUE...>', 'extra environment for every Switchboard service (e.g. OUTBOX_KAFKA_LINGER_MS=200)');
}

const program = new Command('sb-load').description('Switchboard load generator: scenarios, the Socket.IO baseline, plots');
withRunFlags(program.command('scenario <name>').description(`run a documented scenario: ${Object.keys(SCENARIOS).join(', ')}`)).action(async (name: string, flags: Flags) => {
  const scenario = SCENARIOS[name];
  if (!scenario) throw new InvalidArgumentError(`unknown scenario ${name}; known: ${Object.keys(SCENARIOS).join(', ')}`);
  process.stderr.write(`scenario ${name}: ${scenario.description}\n`);
  await execute(scenario.runs, flags);
});
withRunFlags(program.command('run').description('one run with the given flags')).action(async (flags: Flags) => execute([{}], flags));
program
  .command('plot <resultsDir>')
  .description('render the SVG plots for docs/benchmarks.md from JSON results')
  .option('--out <dir>', 'where the SVGs go', 'docs')
  .action(async (dir: string, flags: { out: string }) => {
    for (const file of await plot(readResults(dir), flags.out)) process.stdout.write(`wrote ${file}\n`);
  });

program.parseAsync().catch((err: unknown) => {
  process.stderr.write(`${(err as Error).stack ?? String(err)}\n`);
  process.exit(1);
});
