import type { LoadResult } from './run';

const mb = (bytes: number) => `${(bytes / 2 ** 20).toFixed(0)} MB`;

/** The readable summary of one run (the JSON result has everything). */
export function summaryOf(r: LoadResult): string {
  const o = r.options;
  const m = r.messages;
  const lines = [
    `== ${r.label}: ${o.target}, ${o.gateways} ${o.target === 'switchboard' ? 'gateway(s)' : 'instance(s)'}, ${o.connections} connections, pattern ${o.pattern}` +
      (o.pattern === 'room' ? ` (rooms of ${o.roomSize})` : '') +
      (o.pattern === 'idle' ? '' : `, ${o.perMinute}/min for ${o.durationS} s`) +
      (o.spike ? `, spike x${o.spike.factor} at ${o.spike.atS} s for ${o.spike.durationS} s` : '') +
      (o.churnPerMinute > 0 ? `, churn ${(o.churnPerMinute * 100).toFixed(0)}%/min` : ''),
    `   machine: ${r.machine.cpus} cores (${r.machine.model}), ${r.machine.memoryGiB} GiB, node ${r.machine.node}; load average ${r.load1.start} at start, ${r.load1.afterRamp} after the ramp, ${r.load1.end} at the end`,
    `   ramp: ${r.ramp.connected} connected, ${r.ramp.failed} failed in ${r.ramp.seconds.toFixed(1)} s; connect p50 ${r.ramp.connectLatency.p50Ms} ms p99 ${r.ramp.connectLatency.p99Ms} ms`,
    ...r.edges.map(
      (e) =>
        `   ${e.name}: ${e.connections} connections, RSS ${mb(e.rssBeforeBytes)} -> ${mb(e.rssAfterBytes)} = ${e.rssPerThousandMB} MB per 1,000` +
        (e.heapPerThousandMB !== undefined ? ` (heap ${e.heapPerThousandMB} MB per 1,000)` : '') +
        `, idle CPU ${e.idleCpuPercent}%`,
    ),
  ];
  if (o.pattern !== 'idle') {
    lines.push(
      `   messages: scheduled ${m.scheduled}, sent ${m.sent}, acked ${m.acked}, failed ${m.failed}, refusals retried ${m.retried ?? 0}; deliveries expected ${m.expectedDeliveries}, delivered ${m.delivered}` +
        ` (recovered by sync ${m.recovered}), lost ${m.lost}, duplicates ${m.duplicates}`,
      `   throughput: ${m.ackedPerMinute} acked/min, ${m.deliveredPerSecond} deliveries/s`,
      `   latency (intended send -> every receiving device): p50 ${m.latency.p50Ms} ms, p99 ${m.latency.p99Ms} ms, p99.9 ${m.latency.p999Ms} ms, max ${m.latency.maxMs} ms`,
      `   ack latency (intended send -> stored ack): p50 ${m.ackLatency.p50Ms} ms, p99 ${m.ackLatency.p99Ms} ms`,
      `   CPU: services ${(r.cpu.servicesMs / 1000).toFixed(1)} s, infrastructure ${(r.cpu.infraMs / 1000).toFixed(1)} s, ${r.cpu.perDeliveredUs} µs per delivered message`,
    );
  }
  if (r.churn.reconnects > 0) {
    lines.push(
      `   churn: ${r.churn.reconnects} reconnects, reconnect p50 ${r.churn.reconnectLatency.p50Ms} ms p99 ${r.churn.reconnectLatency.p99Ms} ms; ${r.churn.resent ?? 0} sends sent again after their reconnect`,
    );
  }
  lines.push(`   load generator: ${r.loadgen.workers} workers, ${(r.loadgen.cpuMs / 1000).toFixed(1)} s CPU, ${mb(r.loadgen.rssBytes)} RSS`);
  for (const stage of r.stages ?? []) {
    lines.push(`   stage ${stage.what}: ${stage.count} calls, mean ${stage.meanMs} ms, p50 <= ${stage.p50AtMostMs} ms, p99 <= ${stage.p99AtMostMs} ms`);
  }
  for (const [kind, lines2] of Object.entries(r.profiles ?? {})) {
    const of = kind === 'messagingCpu' ? 'cpu profile of messaging' : kind === 'notificationCpu' ? 'cpu profile of notification' : `${kind} profile of the first gateway`;
    lines.push(`   ${of} (top):`, ...lines2.slice(0, 10).map((l) => `     ${String(l.share).padStart(5)}%  ${l.where}`));
  }
  const errors = Object.entries(r.errors);
  if (errors.length > 0) lines.push(`   errors: ${errors.map(([k, v]) => `${v} x ${k}`).join('; ')}`);
  return lines.join('\n');
}
