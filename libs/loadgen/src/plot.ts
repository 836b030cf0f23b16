import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import * as vega from 'vega';
import * as vl from 'vega-lite';
import type { LoadResult } from './run';

/** Renders a Vega-Lite spec to SVG in Node (vega's own renderer: no canvas, no browser). */
async function toSvg(spec: vl.TopLevelSpec): Promise<string> {
  const view = new vega.View(vega.parse(vl.compile(spec).spec), { renderer: 'none' });
  const svg = await view.toSVG();
  view.finalize();
  return svg;
}

export function readResults(dir: string): LoadResult[] {
  return readdirSync(dir)
    .filter((f) => f.endsWith('.json'))
    .map((f) => JSON.parse(readFileSync(path.join(dir, f), 'utf8')) as LoadResult);
}

/**
 * Two plots for docs/benchmarks.md: delivery latency (p50, p99) against the
 * offered direct-message rate, and edge-process memory against connections
 * during the ramp, Switchboard and Socket.IO side by side.
 */
export async function plot(results: LoadResult[], outDir: string): Promise<string[]> {
  const written: string[] = [];
  const latency = results
    .filter((r) => r.options.pattern === 'direct' && r.label.startsWith('sweep'))
    .flatMap((r) => [
      { target: r.options.target, percentile: 'p50', rate: r.options.perMinute, ms: r.messages.latency.p50Ms },
      { target: r.options.target, percentile: 'p99', rate: r.options.perMinute, ms: r.messages.latency.p99Ms },
    ]);
  if (latency.length > 0) {
    const file = path.join(outDir, 'benchmarks-latency.svg');
    writeFileSync(
      file,
      await toSvg({
        $schema: 'https://vega.github.io/schema/vega-lite/v5.json',
        title: 'Direct-message delivery latency against offered load (two gateways / instances)',
        width: 520,
        height: 300,
        data: { values: latency },
        mark: { type: 'line', point: true },
        encoding: {
          x: { field: 'rate', type: 'quantitative', title: 'offered messages per minute' },
          y: { field: 'ms', type: 'quantitative', title: 'latency from intended send (ms)', scale: { type: 'log' } },
          color: { field: 'target', type: 'nominal' },
          strokeDash: { field: 'percentile', type: 'nominal' },
        },
      }),
    );
    written.push(file);
  }
  const memory = results
    .filter((r) => r.options.pattern === 'idle')
    .flatMap((r) => r.samples.filter((s) => s.connected > 0).map((s) => ({ target: `${r.options.target} (${r.options.gateways} process)`, connections: s.connected, mb: s.edgeRssBytes / 2 ** 20 })));
  if (memory.length > 0) {
    const file = path.join(outDir, 'benchmarks-memory.svg');
    writeFileSync(
      file,
      await toSvg({
        $schema: 'https://vega.github.io/schema/vega-lite/v5.json',
        title: 'Connection-holding process RSS against open connections (ramp)',
        width: 520,
        height: 300,
        data: { values: memory },
        mark: { type: 'line' },
        encoding: {
          x: { field: 'connections', type: 'quantitative', title: 'authenticated connections' },
          y: { field: 'mb', type: 'quantitative', title: 'RSS (MB)' },
          color: { field: 'target', type: 'nominal' },
        },
      }),
    );
    written.push(file);
  }
  return written;
}
