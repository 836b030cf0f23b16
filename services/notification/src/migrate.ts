import { createLogger } from '@switchboard/logging';
import { migrate } from '@switchboard/postgres';
import { runMain, startupStep } from '@switchboard/runtime';
import { readConfig } from './config';
import { path } from './paths';

/**
 * Applies the notification schema's pending migrations and exits: the Helm chart's
 * pre-install/pre-upgrade Job runs `node dist/migrate.js` from the service's
 * image, so the schema is in place before new pods start and a failed
 * migration fails the upgrade. main.js still migrates at start (a no-op once
 * this ran; node-pg-migrate's advisory lock makes concurrent runs safe).
 */
async function main(): Promise<void> {
  const config = readConfig();
  const logger = createLogger({ service: 'notification', level: config.LOG_LEVEL, base: { task: 'migrate' } });
  const started = Date.now();
  await startupStep(logger, 'PostgreSQL', () =>
    migrate({ databaseUrl: config.DATABASE_URL, schema: 'notification', dir: path.migrations, log: (line) => logger.info(line) }),
  );
  logger.info({ elapsedMs: Date.now() - started }, 'migrations applied');
  logger.flush?.();
}

runMain(main);
