import { execFileSync } from 'node:child_process';
import * as path from 'node:path';

export const repoRoot = path.resolve(__dirname, '..', '..', '..');
const infraScript = path.join(repoRoot, 'libs', 'devenv', 'infra', 'infra.sh');

/**
 * The connection settings of the local infrastructure, as `infra.sh env`
 * prints them; variables already set in the environment win, so tests and the
 * launcher can point at other servers.
 */
export function infraEnv(): Record<string, string> {
  const printed = execFileSync('bash', [infraScript, 'env'], { encoding: 'utf8' });
  const settings: Record<string, string> = {};
  for (const line of printed.split('\n')) {
    const match = /^export ([A-Z_]+)=(.*)$/.exec(line.trim());
    if (match) settings[match[1]!] = process.env[match[1]!] ?? match[2]!.replace(/^['"]|['"]$/g, '');
  }
  return settings;
}

/**
 * Where the infrastructure's NATS user seeds are (`<user>.nk`, written by
 * infra.sh): from the given settings, else from the local infrastructure.
 */
export function natsCredentialsDir(settings: Record<string, string | undefined> = {}): string | undefined {
  return settings.SB_NATS_CREDENTIALS_DIR ?? infraEnv().SB_NATS_CREDENTIALS_DIR;
}

/**
 * The seed file of a NATS user of the local infrastructure: `tools` (tests
 * and debugging, every subject) by default, or a service's own user.
 */
export function natsSeedFile(user: 'tools' | 'gateway' | 'messaging' | 'presence' | 'room' | 'notification' = 'tools'): string {
  const dir = natsCredentialsDir();
  if (!dir) throw new Error('the infrastructure has no NATS credentials (SB_NATS_CREDENTIALS_DIR); run infra.sh up');
  return path.join(dir, `${user}.nk`);
}
