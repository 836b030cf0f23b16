#!/usr/bin/env node
// Kept as a thin entry point: direct-message latency is the load generator's
// `direct` pattern now (libs/loadgen; docs/benchmarks.md has every scenario).
//   node services/gateway/bench/direct-latency.js [pairs=200] [messagesPerMinute=12000] [seconds=30]
'use strict';
const { runLoad, summaryOf } = require('@switchboard/loadgen');

const pairs = Number(process.argv[2] ?? 200);
const perMinute = Number(process.argv[3] ?? 12_000);
const seconds = Number(process.argv[4] ?? 30);

runLoad({ label: 'direct-latency', target: 'switchboard', gateways: 2, connections: pairs * 2, pattern: 'direct', perMinute, durationS: seconds }).then(
  (result) => console.log(`${summaryOf(result)}\n${JSON.stringify({ ...result, samples: undefined })}`),
  (err) => {
    console.error(err);
    process.exit(1);
  },
);
