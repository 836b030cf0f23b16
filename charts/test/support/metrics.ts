import * as fs from 'node:fs';
import * as path from 'node:path';
import { ofKind, type K8sObject } from './helm';
import { parsePromQL, withoutGrafanaVariables } from './promql';
import { repoRoot } from './paths';

/**
 * Series that come from the cluster's standard exporters, not from Switchboard:
 * Prometheus itself (up), cAdvisor through the kubelet (container_*) and
 * kube-state-metrics (kube_*). Everything else an alert, a dashboard or the
 * HPA uses must be exported by a service.
 */
export const CLUSTER_SERIES = new Set([
  'up',
  'container_memory_working_set_bytes',
  'container_cpu_usage_seconds_total',
  'kube_pod_container_resource_limits',
  'kube_deployment_status_replicas_unavailable',
]);

/** Series the OpenTelemetry Prometheus exporter adds on its own. */
export const EXPORTER_SERIES = new Set(['target_info']);

export interface CodeMetric {
  name: string;
  instrument: string;
  file: string;
}

/**
 * The instruments the services and libs create (createCounter('name', …) and
 * friends, and libs/telemetry's `new HotCounter(meter, 'name', …)`, an
 * observable counter), read from their sources.
 */
export function metricsInCode(): CodeMetric[] {
  const found: CodeMetric[] = [];
  const pattern = /\.create(Counter|UpDownCounter|Histogram|Gauge|ObservableGauge|ObservableCounter|ObservableUpDownCounter)\(\s*['"`]([a-zA-Z_:][a-zA-Z0-9_:]*)['"`]/g;
  const hotCounter = /new HotCounter\(\s*[\w.]+,\s*['"`]([a-zA-Z_:][a-zA-Z0-9_:]*)['"`]/g;
  for (const top of ['services', 'libs']) {
    for (const pkg of fs.readdirSync(path.join(repoRoot, top))) {
      const src = path.join(repoRoot, top, pkg, 'src');
      if (!fs.existsSync(src)) continue;
      const files = (fs.readdirSync(src, { recursive: true }) as string[]).filter((f) => f.endsWith('.ts'));
      for (const file of files) {
        const text = fs.readFileSync(path.join(src, file), 'utf8');
        for (const m of text.matchAll(pattern)) found.push({ name: m[2]!, instrument: m[1]!, file: path.join(top, pkg, 'src', file) });
        for (const m of text.matchAll(hotCounter)) found.push({ name: m[1]!, instrument: 'ObservableCounter', file: path.join(top, pkg, 'src', file) });
      }
    }
  }
  return found;
}

/** The series names an instrument appears as on /metrics (OpenTelemetry's Prometheus exporter). */
export function seriesOf(metric: CodeMetric): string[] {
  if (metric.instrument === 'Histogram') return ['_bucket', '_sum', '_count'].map((s) => metric.name + s);
  if (/Counter$/.test(metric.instrument) && !/UpDown/.test(metric.instrument)) return [metric.name.endsWith('_total') ? metric.name : `${metric.name}_total`];
  return [metric.name];
}

export function exportedSeries(): Set<string> {
  return new Set([...metricsInCode().flatMap(seriesOf), ...EXPORTER_SERIES]);
}

export interface Query {
  where: string;
  expr: string;
}

/** Every PromQL expression the chart ships: alert rules, dashboard panels, the HPA's custom metric. */
export function queriesOf(objects: K8sObject[]): Query[] {
  const queries: Query[] = [];
  for (const rule of ofKind(objects, 'PrometheusRule')) {
    for (const group of rule.spec.groups) for (const r of group.rules) queries.push({ where: `alert ${r.alert ?? r.record}`, expr: r.expr });
  }
  for (const configMap of ofKind(objects, 'ConfigMap')) {
    for (const [file, json] of Object.entries(configMap.data ?? {})) {
      if (!file.endsWith('.json')) continue;
      const dashboard = JSON.parse(json) as { title: string; panels: { title: string; targets?: { expr: string }[] }[]; templating?: { list: { query?: { query?: string } | string; name: string }[] } };
      for (const panel of dashboard.panels) for (const target of panel.targets ?? []) queries.push({ where: `dashboard "${dashboard.title}" panel "${panel.title}"`, expr: withoutGrafanaVariables(target.expr) });
      for (const variable of dashboard.templating?.list ?? []) {
        const query = typeof variable.query === 'string' ? variable.query : variable.query?.query;
        const inner = query && /^label_values\((.+),\s*\w+\)$/.exec(query)?.[1];
        if (inner) queries.push({ where: `dashboard "${dashboard.title}" variable ${variable.name}`, expr: inner });
      }
    }
  }
  for (const hpa of ofKind(objects, 'HorizontalPodAutoscaler')) {
    for (const metric of hpa.spec.metrics) if (metric.type === 'Pods') queries.push({ where: `HPA ${hpa.metadata.name}`, expr: metric.pods.metric.name });
  }
  return queries;
}

/** Metric names a set of queries selects, with where each is used. */
export function metricsUsed(queries: Query[]): Map<string, string[]> {
  const used = new Map<string, string[]>();
  for (const query of queries) {
    for (const metric of parsePromQL(query.expr).metrics) used.set(metric, [...(used.get(metric) ?? []), query.where]);
  }
  return used;
}
