#!/usr/bin/env node
// npm run faults -- [--clients N] [--rate msgs/s] [--phase-seconds S] [--only a,b,…]
// Runs the fault suite against its own infrastructure instance and the
// services as real processes; one line per fault; exit 1 on any loss or reorder.
import { parseArgs } from 'node:util';
import { DEFAULTS, LEGEND, runFaultSuite } from './suite';
import { FAULT_NAMES, FAULTS, type FaultName } from './faults';

const USAGE = `usage: npm run faults -- [options]

Kills and restarts parts of a private Switchboard mesh while simulated devices
send and receive, then checks every acknowledged message on every device of
every member (delivered, once, in order) and in Kafka sb.messages.

  --clients N          simulated devices, two per user (default ${DEFAULTS.clients})
  --rate R             messages per second over all devices (default ${DEFAULTS.rate})
  --phase-seconds S    traffic time per fault (default ${DEFAULTS.phaseSeconds})
  --only a,b,…         faults to run, in this order (default: ${FAULT_NAMES.join(',')});
                       also: baseline (traffic without a fault)
  --seed N             repeat a run's random choices
  --max-seconds N      hard bound on the whole run (default: from the phases)
  --keep-data          keep the instance's data and logs (.data/faults/…) after a passing run
  -q, --quiet          result lines only
  -h, --help

Faults:
${Object.values(FAULTS).map((f) => `  ${f.name.padEnd(15)} ${f.description}`).join('\n')}

Needs a built workspace (pnpm build). Its own PostgreSQL, Redis, NATS and Kafka
run on ports of their own (55432… or the next free block), never the shared ones;
everything listens on 127.0.0.1 and is stopped at the end.
Exit status: 0 all passed, 1 a loss, reorder or other violation, 2 the suite could not run.`;

function positive(name: string, value: string | undefined, fallback: number): number {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (!Number.isFinite(n) || n <= 0) {
    process.stderr.write(`--${name} must be a positive number, not ${JSON.stringify(value)}\n`);
    process.exit(2);
  }
  return n;
}

async function main(): Promise<number> {
  let values;
  try {
    ({ values } = parseArgs({
      options: {
        clients: { type: 'string' },
        rate: { type: 'string' },
        'phase-seconds': { type: 'string' },
        only: { type: 'string' },
        seed: { type: 'string' },
        'max-seconds': { type: 'string' },
        'keep-data': { type: 'boolean' },
        quiet: { type: 'boolean', short: 'q' },
        help: { type: 'boolean', short: 'h' },
      },
      strict: true,
    }));
  } catch (err) {
    process.stderr.write(`${(err as Error).message}\n\n${USAGE}\n`);
    return 2;
  }
  if (values.help) {
    process.stdout.write(`${USAGE}\n`);
    return 0;
  }
  const faults = values.only?.split(',').map((s) => s.trim()).filter(Boolean) as FaultName[] | undefined;
  for (const name of faults ?? []) {
    if (!(name in FAULTS)) {
      process.stderr.write(`unknown fault ${JSON.stringify(name)}; known: ${Object.keys(FAULTS).join(', ')}\n`);
      return 2;
    }
  }
  const controller = new AbortController();
  let interrupts = 0;
  const onSignal = (signal: string) => {
    interrupts += 1;
    if (interrupts > 1) {
      process.stderr.write(`${signal} again: exiting without cleaning up (the next run removes what is left)\n`);
      process.exit(130);
    }
    process.stderr.write(`${signal}: stopping after the current step and cleaning up…\n`);
    controller.abort();
  };
  process.on('SIGINT', () => onSignal('SIGINT'));
  process.on('SIGTERM', () => onSignal('SIGTERM'));

  const stamp = () => new Date().toISOString().slice(11, 19);
  const result = await runFaultSuite({
    clients: positive('clients', values.clients, DEFAULTS.clients),
    rate: positive('rate', values.rate, DEFAULTS.rate),
    phaseSeconds: positive('phase-seconds', values['phase-seconds'], DEFAULTS.phaseSeconds),
    ...(faults ? { faults } : {}),
    ...(values.seed !== undefined ? { seed: positive('seed', values.seed, 1) } : {}),
    ...(values['max-seconds'] !== undefined ? { maxSeconds: positive('max-seconds', values['max-seconds'], 600) } : {}),
    keepData: values['keep-data'] ?? false,
    label: 'cli',
    log: values.quiet ? () => undefined : (line) => process.stderr.write(`${stamp()} [faults] ${line}\n`),
    out: (line) => process.stdout.write(`${line}\n`),
    signal: controller.signal,
  });
  if (!values.quiet) process.stdout.write(`\n${LEGEND}\n`);
  if (result.error) return 2;
  return result.passed ? 0 : 1;
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    process.stderr.write(`fault suite: ${(err as Error).stack ?? String(err)}\n`);
    process.exit(2);
  },
);
