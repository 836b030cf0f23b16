import { UnavailableError } from '@switchboard/errors';
import { runner } from 'node-pg-migrate';
import pg from 'pg';

export type { PoolClient, Pool, QueryResult } from 'pg';
export { Client as PgClient } from 'pg';

export interface PoolOptions {
  connectionString: string;
  applicationName: string;
  max?: number;
  /** The owning service's schema, first on the search path so queries name tables plainly. */
  schema?: string;
  /** Called for errors of idle clients (a restarting server); without a handler they would crash the process. */
  onError?: (err: Error) => void;
}

export function createPool(options: PoolOptions): pg.Pool {
  const pool = new pg.Pool({
    connectionString: options.connectionString,
    application_name: options.applicationName,
    max: options.max ?? 20,
    connectionTimeoutMillis: 3000,
    idleTimeoutMillis: 30_000,
    ...(options.schema ? { options: `-c search_path=${options.schema}` } : {}),
  });
  pool.on('error', (err) => options.onError?.(err));
  return pool;
}

/**
 * Runs `fn` in a transaction scoped to one tenant: `app.tenant_id` is set for
 * the transaction only, and every table's row-level security policy compares
 * against it, so a query that forgets the tenant sees nothing of another's.
 */
export async function withTenantTransaction<T>(pool: pg.Pool, tenantId: string, fn: (client: pg.PoolClient) => Promise<T>): Promise<T> {
  const client = await connectOrUnavailable(pool);
  try {
    // One round trip opens the transaction and scopes it to the tenant (the literal is escaped by the driver).
    await client.query(`BEGIN; SELECT set_config('app.tenant_id', ${client.escapeLiteral(tenantId)}, true)`);
    const result = await fn(client);
    await client.query('COMMIT');
    return result;
  } catch (err) {
    await client.query('ROLLBACK').catch(() => undefined);
    throw err;
  } finally {
    client.release();
  }
}

/**
 * A named query: PostgreSQL parses and plans it once per connection and
 * reuses the plan, instead of planning on every call. For the hot statements
 * whose text never changes (planning a CTE with row-level security costs more
 * CPU than running it). The name must be unique per text within a process.
 */
export function prepared(name: string, text: string, values: unknown[]): pg.QueryConfig {
  return { name, text, values };
}

/**
 * A pooled connection, or UNAVAILABLE (retryable, with a hint when to retry)
 * when the database cannot be reached or every connection stayed busy past
 * the pool's wait: the caller learns to come back, not that something broke.
 */
export async function connectOrUnavailable(pool: pg.Pool): Promise<pg.PoolClient> {
  try {
    return await pool.connect();
  } catch (err) {
    throw new UnavailableError('the database is busy or unreachable; try again', { cause: err, retryAfterMs: 200 });
  }
}

export interface MigrateOptions {
  databaseUrl: string;
  /** The owning service's schema; created when missing, and the only one its migrations touch. */
  schema: string;
  /** Folder of the service's migration files (`.sql` with `-- Up Migration` / `-- Down Migration`). */
  dir: string;
  log?: (message: string) => void;
}

/** Applies pending migrations with node-pg-migrate under its advisory lock, so concurrent starts are safe. */
export async function migrate(options: MigrateOptions): Promise<void> {
  await runner({
    databaseUrl: options.databaseUrl,
    dir: options.dir,
    direction: 'up',
    count: Infinity,
    schema: options.schema,
    createSchema: true,
    migrationsSchema: options.schema,
    migrationsTable: 'schema_migrations',
    checkOrder: true,
    singleTransaction: true,
    log: options.log ?? (() => undefined),
    verbose: false,
  });
}

export interface OpenDatabaseOptions extends Omit<PoolOptions, 'schema'> {
  /** The owning service's schema: migrated first, then first on the pool's search path. */
  schema: string;
  migrationsDir: string;
  log?: (message: string) => void;
}

/** Migrates the service's schema, then opens its pool: what every PostgreSQL-backed service does at start. */
export async function openDatabase(options: OpenDatabaseOptions): Promise<pg.Pool> {
  await migrate({ databaseUrl: options.connectionString, schema: options.schema, dir: options.migrationsDir, ...(options.log ? { log: options.log } : {}) });
  const pool = createPool(options);
  // Fail the start here, not on the first request, if the service's own role cannot connect.
  await pool.query('SELECT 1');
  return pool;
}
