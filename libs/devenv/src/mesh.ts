#!/usr/bin/env node
// README's first command ends here: the infrastructure is up, this starts the
// five services (two gateways) as separate processes with prefixed logs, and
// stops them all on Ctrl-C.
import { startMesh } from './mesh-plan';

const COLORS = ['\x1b[36m', '\x1b[33m', '\x1b[35m', '\x1b[32m', '\x1b[34m', '\x1b[91m'];
const colorOf = new Map<string, string>();

function print(name: string, line: string): void {
  if (!colorOf.has(name)) colorOf.set(name, COLORS[colorOf.size % COLORS.length]!);
  const tty = process.stdout.isTTY;
  const prefix = `${name.padEnd(13)}|`;
  process.stdout.write(`${tty ? `${colorOf.get(name)}${prefix}\x1b[0m` : prefix} ${line}\n`);
}

async function main(): Promise<void> {
  const gateways = Number(process.env.SB_GATEWAYS ?? '2');
  // Signals during start-up are remembered and honoured once everything that
  // started can be stopped in order (the services run in their own process group).
  let stopRequested = false;
  let stop = async () => {
    stopRequested = true;
  };
  process.on('SIGINT', () => void stop());
  process.on('SIGTERM', () => void stop());
  const mesh = await startMesh({ gateways, ports: 'default', onLine: print });
  // Whatever ends the launcher, no service is left behind.
  process.on('exit', () => {
    for (const service of mesh.services) if (service.child.exitCode === null) service.child.kill('SIGTERM');
  });
  const lines = [
    '',
    'Switchboard is up.',
    ...mesh.gateways.map((g) => `  ${g.name}: ${g.url}   (admin gRPC ${g.grpcAddress})`),
    ...Object.entries(mesh.addresses).map(([service, address]) => `  ${service}: gRPC ${address}`),
    '',
    'Try it (HS256 dev secret, any tenant and user ids):',
    `  node libs/client/dist/cli.js --url ${mesh.gateways[0]?.url} --secret switchboard-dev-secret-change-me --tenant demo --user alice`,
    `  node libs/client/dist/cli.js --url ${mesh.gateways.at(-1)?.url} --secret switchboard-dev-secret-change-me --tenant demo --user bob`,
    '  then type: send bob hello',
    '',
    'Ctrl-C stops the services (the infrastructure keeps running: npm run infra -- down).',
    '',
  ];
  process.stdout.write(lines.join('\n'));
  let stopping = false;
  stop = async () => {
    if (stopping) return;
    stopping = true;
    process.stdout.write('\nstopping the mesh…\n');
    await mesh.stop();
    process.exit(0);
  };
  if (stopRequested) return stop();
  for (const service of mesh.services) {
    void service.exited.then((code) => {
      if (!stopping) {
        process.stderr.write(`${service.name} exited unexpectedly (${code}); stopping the mesh\n`);
        void stop();
      }
    });
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`the mesh did not start: ${(err as Error).message}\n`);
  process.exit(1);
});
