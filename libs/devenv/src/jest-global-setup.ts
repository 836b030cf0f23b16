import { execFileSync } from 'node:child_process';
import * as path from 'node:path';
import { repoRoot } from './infra';

/**
 * Jest global setup: finds the local infrastructure or starts it (infra.sh up
 * is idempotent and fast when everything already runs), so any test command
 * works on its own, not only through README's.
 */
export default function globalSetup(): void {
  if (process.env.SB_SKIP_INFRA === '1') return;
  execFileSync('bash', [path.join(repoRoot, 'libs', 'devenv', 'infra', 'infra.sh'), 'up'], { stdio: 'inherit' });
}
