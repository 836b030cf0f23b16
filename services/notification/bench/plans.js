#!/usr/bin/env node
// The plans of the pipeline's statements under the generic plan that a
// prepared statement (and plpgsql) switches to after five executions:
// EXPLAIN (ANALYZE, BUFFERS) of each statement for one batch of new
// notifications, as the service's role (row-level security on), for each
// tenant given. Everything runs in a transaction that is rolled back.
//
//   node services/notification/bench/plans.js [TENANT...] [--batch N] [--custom]
//
// The statement texts and parameters are the service's own: the pipeline's
// functions are called with a client that records what they send. A tenant
// that the statistics do not know is one created (or grown) after the last
// ANALYZE. --custom shows the custom plans instead (the first five calls).
// Needs the local infrastructure, a build, and the notification schema
// migrated (any run of the service does that).
const { infraEnv } = require('@switchboard/devenv');
const { PgClient } = require('@switchboard/postgres');
const { batchState, writeBatch, unreadCounts, deliveryRows } = require('../dist/pipeline');
const { Channel } = require('../dist/routing');
// The driver's own conversion of a parameter to PostgreSQL's text form (arrays, dates), for EXECUTE's literal arguments.
const { prepareValue } = require(require.resolve('pg/lib/utils', { paths: [require.resolve('@switchboard/postgres')] }));

const args = process.argv.slice(2);
const custom = args.includes('--custom');
const batchAt = args.indexOf('--batch');
const BATCH = batchAt >= 0 ? Number(args[batchAt + 1]) : 20;
const tenants = args.filter((a, i) => !a.startsWith('--') && (batchAt < 0 || i !== batchAt + 1));
if (tenants.length === 0) tenants.push('bigtenant', 'growntenant', `fresh${Date.now().toString(36)}`);

/** What a pipeline function sends, without sending it. */
function recorder(result) {
  const sent = [];
  return { sent, db: { query: async (config) => (sent.push(config), { rows: [result(config)] }) } };
}

/** A direct message's notification for a new user pair, as plannedForMessage makes it. */
function planned(i, run) {
  const createdAt = new Date();
  return {
    notificationId: `${run}n${i}`,
    userId: `u${i % 4000}`,
    kind: 'message.new',
    urgent: false,
    sourceId: `${run}e${i}`,
    requestId: '',
    roomId: '',
    conversationId: `c${i % 4000}`,
    messageSeq: i,
    variables: { preview: 'hello', senderId: 'u1', conversationId: `c${i}`, messageId: `m${i}` },
    data: { conversationId: `c${i}`, messageId: `m${i}`, seq: String(i), senderId: 'u1' },
    expiresAt: undefined,
    createdAt,
    fromMessage: true,
    requestedChannels: [],
  };
}

async function explain(db, label, config) {
  const name = `plan_${label.replace(/\W/g, '_')}`;
  await db.query(`PREPARE ${name} AS ${config.text}`);
  const args = config.values.map((v) => (v === null || v === undefined ? 'NULL' : db.escapeLiteral(String(prepareValue(v))))).join(', ');
  await db.query('SAVEPOINT plan');
  const { rows } = await db.query(`EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) EXECUTE ${name}(${args})`);
  await db.query('ROLLBACK TO SAVEPOINT plan');
  // Then for real, so that the next statement finds what this one wrote.
  await db.query(`EXECUTE ${name}(${args})`);
  console.log(`--- ${label}\n${rows.map((r) => r['QUERY PLAN']).join('\n')}`);
}

async function main() {
  const db = new PgClient({ connectionString: infraEnv().DATABASE_URL, options: '-c search_path=notification' });
  await db.connect();
  try {
    // confirm_in_app's statement, from the function as migrated, with its arguments as parameters.
    const { rows: fn } = await db.query(`SELECT prosrc FROM pg_proc WHERE proname = 'confirm_in_app'`);
    const body = /WITH[\s\S]*FROM delivered/.exec(fn[0].prosrc)[0].replace('INTO confirmed ', '');
    const confirmText = body.replace(/p_tenant/g, '$1::text').replace(/p_notification_ids/g, '$2::text[]').replace(/p_user_ids/g, '$3::text[]');
    for (const tenantId of tenants) {
      const run = `${Date.now().toString(36)}`;
      const batch = Array.from({ length: BATCH }, (_, i) => planned(i, run));
      const users = [...new Set(batch.map((p) => p.userId))].sort();
      const { rows: sized } = await db.query(`SELECT reltuples::bigint AS rows FROM pg_class WHERE relname = 'notifications'`);
      console.log(`=== tenant ${tenantId}: batch of ${BATCH}, ${custom ? 'custom' : 'generic'} plans (notifications table ≈ ${sized[0].rows} rows by the statistics)`);
      await db.query('BEGIN');
      try {
        await db.query(`SELECT set_config('app.tenant_id', $1, true)`, [tenantId]);
        await db.query(`SET LOCAL plan_cache_mode = ${custom ? 'force_custom_plan' : 'force_generic_plan'}`);
        const state = recorder(() => ({ sent: {}, reading: [], existing: [] }));
        await batchState(state.db, tenantId, users, batch, 120_000);
        await explain(db, 'batch state (hourly count, reading, already stored)', state.sent[0]);
        const deliveries = batch.flatMap((p) => [
          ...deliveryRows(p, Channel.CHANNEL_IN_APP, { action: 'send', reason: 'online' }, [], new Date(), 30_000),
          ...deliveryRows(p, Channel.CHANNEL_PUSH, { action: 'skip', skipReason: 1, reason: 'online' }, [], new Date(), 30_000),
          ...deliveryRows(p, Channel.CHANNEL_EMAIL, { action: 'skip', skipReason: 2, reason: 'no email address' }, [], new Date(), 30_000),
        ]);
        const rows = batch.map((p) => ({ p, title: 'New message', body: 'hello', data: p.data, hidden: false, silent: false }));
        const write = recorder(() => ({}));
        await writeBatch(write.db, tenantId, rows, deliveries, 'notification');
        await explain(db, 'batch write (notifications, deliveries, queue, badge counts)', write.sent[0]);
        // As many arguments as the migrated body uses (the user ids are read from the delivery rows now).
        const used = Math.max(...[...confirmText.matchAll(/\$(\d)/g)].map((m) => Number(m[1])));
        const confirmValues = [tenantId, batch.map((p) => p.notificationId), batch.map((p) => p.userId)].slice(0, used);
        await explain(db, 'confirm_in_app', { text: confirmText, values: confirmValues });
        const unread = recorder(() => ({}));
        await unreadCounts(unread.db, tenantId, users);
        await explain(db, 'unread counts (after reads)', unread.sent[0]);
      } finally {
        await db.query('ROLLBACK');
        // Prepared statements outlive the transaction: the next tenant prepares its own.
        await db.query('DEALLOCATE ALL');
      }
    }
  } finally {
    await db.end();
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
