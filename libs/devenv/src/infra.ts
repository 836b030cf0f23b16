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
