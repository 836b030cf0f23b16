import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { toolsBin } from './paths';

// The package is ESM-first but ships a CommonJS build (its "require" export), which jest loads.
// eslint-disable-next-line @typescript-eslint/no-require-imports
const { parser } = require('@prometheus-io/lezer-promql') as typeof import('@prometheus-io/lezer-promql', { with: { 'resolution-mode': 'import' } });

export interface ParsedQuery {
  /** Metric names the expression selects (by name or by __name__="…"). */
  metrics: string[];
  /** Syntax errors (offsets into the expression). */
  errors: string[];
}

/** Parses PromQL with Prometheus's own grammar (@prometheus-io/lezer-promql). */
export function parsePromQL(expr: string): ParsedQuery {
  const tree = parser.parse(expr);
  const metrics = new Set<string>();
  const errors: string[] = [];
  const cursor = tree.cursor();
  do {
    if (cursor.type.isError) errors.push(`syntax error at ${cursor.from}: ${JSON.stringify(expr.slice(Math.max(0, cursor.from - 20), cursor.to + 20))}`);
    if (cursor.name === 'VectorSelector') {
      const node = cursor.node;
      const identifier = node.getChild('Identifier');
      if (identifier) metrics.add(expr.slice(identifier.from, identifier.to));
      for (const matcher of node.getChild('LabelMatchers')?.getChildren('UnquotedLabelMatcher') ?? []) {
        const name = matcher.getChild('LabelName');
        const value = matcher.getChild('StringLiteral');
        if (name && value && expr.slice(name.from, name.to) === '__name__' && matcher.getChild('MatchOp')?.getChild('EqlSingle')) {
          metrics.add(expr.slice(value.from + 1, value.to - 1));
        }
      }
    }
  } while (cursor.next());
  return { metrics: [...metrics], errors };
}

/** Grafana's variables replaced by values Prometheus understands, so a panel's query parses. */
export function withoutGrafanaVariables(expr: string): string {
  return expr
    .replaceAll('$__rate_interval', '5m')
    .replaceAll('$__interval', '1m')
    .replaceAll('$__range', '1h')
    .replace(/\$\{?(\w+)\}?/g, 'x');
}

/** The promtool the project installs (libs/devenv/bin/kube-tools.sh); PROMTOOL_BIN points elsewhere. */
export function promtoolBinary(): string {
  const bin = process.env.PROMTOOL_BIN ?? path.join(toolsBin, 'promtool');
  if (!fs.existsSync(bin)) throw new Error(`promtool not found at ${bin}: run bash libs/devenv/bin/kube-tools.sh (npm test does)`);
  return bin;
}

/** Runs promtool with files written to a temporary directory; returns its exit status and output. */
export function promtool(args: (dir: string) => string[], files: Record<string, string>): { status: number; output: string } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sb-promtool-'));
  try {
    for (const [name, content] of Object.entries(files)) fs.writeFileSync(path.join(dir, name), content);
    const result = spawnSync(promtoolBinary(), args(dir), { encoding: 'utf8', cwd: dir });
    if (result.error) throw result.error;
    return { status: result.status ?? 1, output: `${result.stdout}${result.stderr}` };
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}
