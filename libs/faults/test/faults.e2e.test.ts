// The fault suite, short: its own PostgreSQL, Redis, NATS and Kafka on a
// port block of their own (never the shared instance), messaging, presence
// and two gateways as real processes, ten simulated devices sending and
// receiving through them while messaging is SIGKILLed, a gateway is
// SIGKILLed, nats-server is restarted and connections are dropped at random.
// After each fault every acknowledged message must be on every device of
// every member (after the documented get_history recovery), handed over in
// order, and present in Kafka sb.messages. The full run: `npm run faults`.
import { CI_PORTS, detailLines, resultLine, runFaultSuite, type FaultName, type SuiteResult } from '../src';

const FAULTS: FaultName[] = ['messaging-kill', 'gateway-kill', 'churn', 'nats-restart'];

const output: string[] = [];
/** SB_FAULTS_VERBOSE=1 streams the suite's lines while it runs; otherwise they are shown when something fails. */
const keep = (line: string) => {
  output.push(line);
  if (process.env.SB_FAULTS_VERBOSE === '1') process.stderr.write(`[faults] ${line}\n`);
};
const controller = new AbortController();
let running: Promise<SuiteResult> | undefined;
let result: SuiteResult | undefined;

beforeAll(async () => {
  running = runFaultSuite({
    clients: 10,
    rate: 30,
    phaseSeconds: 8,
    faults: FAULTS,
    label: 'ci',
    basePorts: CI_PORTS,
    // Below the hook's timeout: the suite stops itself, cleans up and reports.
    maxSeconds: 200,
    log: (line) => keep(`${new Date().toISOString().slice(11, 19)} ${line}`),
    out: keep,
    signal: controller.signal,
  });
  result = await running;
}, 240_000);

afterAll(async () => {
  // Whatever happened above, the instance and the processes are gone when this returns
  // (runFaultSuite tears down in its own finally; this waits for it).
  controller.abort();
  await running?.catch(() => undefined);
}, 120_000);

function report(): string {
  return output.join('\n');
}

it('runs every fault against its own infrastructure and cleans up', () => {
  if (!result || result.error) throw new Error(`the fault suite did not run through: ${result?.error ?? 'no result'}\n${report()}`);
  expect(result.phases.map((p) => p.name)).toEqual(['setup', ...FAULTS]);
  expect(result.dataDir).toContain(`${'.data'}/faults/ci-`);
});

describe.each(['setup', ...FAULTS])('%s', (name) => {
  it('loses nothing acknowledged, reorders nothing, and every acked message is in Kafka', () => {
    const phase = result?.phases.find((p) => p.name === name);
    if (!phase) throw new Error(`no result for ${name}\n${report()}`);
    // Everything at once, so that a failure shows the whole picture (counts, samples, timeline).
    const problems = phase.passed ? [] : [resultLine(phase), ...detailLines(phase)];
    expect(problems).toEqual([]);
    expect(phase.acked).toBeGreaterThan(0);
    expect(phase.delivered).toBe(phase.expected);
    expect(phase.lost).toBe(0);
    expect(phase.reordered).toBe(0);
    expect(phase.kafka.found).toBe(phase.kafka.expected);
    expect(phase.integrity).toEqual([]);
  });
});
