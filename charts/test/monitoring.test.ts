/**
 * Alerts and dashboards: valid PromQL (Prometheus's own parser and promtool),
 * alerts that fire when they should (promtool test rules), a runbook for each
 * in docs/deploy.md, and only metrics the services really export (or the
 * cluster's standard series).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { stringify } from 'yaml';
import { find, ofKind, template, type K8sObject } from './support/helm';
import { CLUSTER_SERIES, exportedSeries, metricsInCode, metricsUsed, queriesOf } from './support/metrics';
import { parsePromQL, promtool } from './support/promql';
import { repoRoot } from './support/paths';

let objects: K8sObject[];
let rule: K8sObject;
const alerts = () => rule.spec.groups.flatMap((g: any) => g.rules) as { alert: string; expr: string; for?: string; labels: Record<string, string>; annotations: Record<string, string> }[];

beforeAll(() => {
  objects = template();
  rule = find(objects, 'PrometheusRule', 'sb-switchboard');
});

describe('alerts', () => {
  test('the alerts an on-call needs exist, at the thresholds of the issue', () => {
    const byName = Object.fromEntries(alerts().map((a) => [a.alert, a]));
    expect(byName.SwitchboardConnectionSpike!.expr).toMatch(/\* 100 > 20\b/);
    expect(byName.SwitchboardFrameLatencyHigh!.expr).toMatch(/histogram_quantile\(0\.99,[\s\S]*> 0\.5\b/);
    expect(byName.SwitchboardRpcLatencyHigh!.expr).toMatch(/histogram_quantile\(0\.99,[\s\S]*> 0\.5\b/);
    expect(byName.SwitchboardMemoryHigh!.expr).toMatch(/\* 100 > 80\b/);
    expect(byName.SwitchboardRpcErrorRateHigh!.expr).toMatch(/\* 100 > 1\b/);
    expect(byName.SwitchboardFrameErrorRateHigh!.expr).toMatch(/\* 100 > 1\b/);
    expect(byName.SwitchboardGatewayDown!.expr).toMatch(/up\{job="gateway"/);
    expect(byName.SwitchboardNoGatewayUp).toBeDefined();
  });

  test('every alert has a severity, a summary, a description and a runbook in docs/deploy.md', () => {
    const runbook = fs.readFileSync(path.join(repoRoot, 'docs', 'deploy.md'), 'utf8');
    const anchors = new Set([...runbook.matchAll(/^#+\s+(.+)$/gm)].map((m) => m[1]!.trim().toLowerCase().replace(/[^\w\- ]/g, '').replace(/ /g, '-')));
    for (const alert of alerts()) {
      expect({ alert: alert.alert, severity: alert.labels.severity }).toEqual({ alert: alert.alert, severity: expect.stringMatching(/^(critical|warning)$/) });
      expect(alert.annotations.summary).toBeTruthy();
      expect(alert.annotations.description).toBeTruthy();
      const anchor = alert.annotations.runbook_url!.split('#')[1]!;
      expect(alert.annotations.runbook_url).toMatch(/docs\/deploy\.md#/);
      expect({ alert: alert.alert, runbook: anchors.has(anchor) }).toEqual({ alert: alert.alert, runbook: true });
    }
  });

  test('every alert selects the release namespace, so two installations never page for each other', () => {
    for (const alert of alerts()) expect({ alert: alert.alert, namespaced: /namespace="switchboard"/.test(alert.expr) }).toEqual({ alert: alert.alert, namespaced: true });
  });

  test('promtool accepts the rules (expressions and annotation templates)', () => {
    const { status, output } = promtool((dir) => ['check', 'rules', path.join(dir, 'rules.yaml')], { 'rules.yaml': stringify({ groups: rule.spec.groups }) });
    expect(output).toMatch(/SUCCESS/);
    expect(status).toBe(0);
  });

  test('the alerts fire when they should and stay quiet when they should (promtool test rules)', () => {
    // Annotations are checked above; here only when each alert fires and with which labels.
    const groups = rule.spec.groups.map((g: any) => ({ ...g, rules: g.rules.map(({ annotations: _annotations, ...r }: any) => r) }));
    const tests = fs.readFileSync(path.join(__dirname, 'fixtures', 'alerts.test.yaml'), 'utf8');
    const { status, output } = promtool((dir) => ['test', 'rules', path.join(dir, 'alerts.test.yaml')], { 'rules.yaml': stringify({ groups }), 'alerts.test.yaml': tests });
    expect(output).toMatch(/SUCCESS/);
    expect(status).toBe(0);
  });

  test('every alert is exercised by the promtool tests', () => {
    const tests = fs.readFileSync(path.join(__dirname, 'fixtures', 'alerts.test.yaml'), 'utf8');
    for (const alert of alerts()) expect({ alert: alert.alert, tested: tests.includes(`alertname: ${alert.alert}`) }).toEqual({ alert: alert.alert, tested: true });
  });

  test('thresholds come from the values', () => {
    const changed = find(template({ set: { 'monitoring.prometheusRule.thresholds.memoryPercent': 90, 'monitoring.prometheusRule.additionalAlertLabels.team': 'realtime' } }), 'PrometheusRule', 'sb-switchboard');
    const memory = changed.spec.groups.flatMap((g: any) => g.rules).find((r: any) => r.alert === 'SwitchboardMemoryHigh');
    expect(memory.expr).toMatch(/\* 100 > 90\b/);
    expect(memory.labels.team).toBe('realtime');
  });

  test('a disabled gateway takes its alerts with it (no "no gateway" page for a release without one)', () => {
    const withoutGateway = find(template({ set: { 'gateway.enabled': false } }), 'PrometheusRule', 'sb-switchboard');
    const names = withoutGateway.spec.groups.flatMap((g: any) => g.rules).map((r: any) => r.alert);
    expect(names).not.toContain('SwitchboardNoGatewayUp');
    expect(names).toContain('SwitchboardRpcErrorRateHigh');
  });
});

describe('dashboards', () => {
  const dashboards = () =>
    ofKind(objects, 'ConfigMap')
      .filter((c) => c.metadata.labels?.grafana_dashboard === '1')
      .map((c) => ({ configMap: c, json: JSON.parse(Object.values(c.data!)[0]!) }));

  test('cover connections, message throughput and latency, presence, notifications and per-tenant usage', () => {
    const titles = dashboards().map((d) => d.json.title as string);
    for (const topic of ['Connections', 'Messages', 'Presence', 'Notifications', 'Tenants']) expect(titles).toContain(`Switchboard / ${topic}`);
    const messages = dashboards().find((d) => d.json.title === 'Switchboard / Messages')!.json;
    const exprs = messages.panels.flatMap((p: any) => (p.targets ?? []).map((t: any) => t.expr)).join('\n');
    expect(exprs).toMatch(/sendMessage/);
    expect(exprs).toMatch(/histogram_quantile\(0\.99/);
  });

  test('the Tenants dashboard shows connections, messages, refusals by reason and bandwidth per tenant, from the gateway metrics', () => {
    const tenants = dashboards().find((d) => d.json.title === 'Switchboard / Tenants')!.json;
    const queries = tenants.panels.flatMap((p: any) => (p.targets ?? []).map((t: any) => ({ panel: p.title as string, expr: t.expr as string })));
    const panelUsing = (pattern: RegExp) => queries.filter((q: { expr: string }) => pattern.test(q.expr)).map((q: { panel: string }) => q.panel);
    expect(panelUsing(/sum by \(tenant\) \(gateway_tenant_connections\{/).length).toBeGreaterThan(0);
    expect(panelUsing(/sum by \(tenant\) \(rate\(gateway_tenant_messages_total\{/).length).toBeGreaterThan(0);
    expect(panelUsing(/sum by \(tenant, reason\) \(rate\(gateway_tenant_rejects_total\{/).length).toBeGreaterThan(0);
    expect(panelUsing(/gateway_tenant_bytes_total\{[^}]*direction="in"/).length).toBeGreaterThan(0);
    expect(panelUsing(/gateway_tenant_bytes_total\{[^}]*direction="out"/).length).toBeGreaterThan(0);
    // The tenant variable narrows every per-tenant traffic panel.
    for (const q of queries.filter((q: { expr: string }) => /gateway_tenant_(messages|frames|bytes|rejects)_total/.test(q.expr))) {
      expect({ panel: q.panel, tenantFilter: q.expr.includes('tenant=~"$tenant"') }).toEqual({ panel: q.panel, tenantFilter: true });
    }
    // Shipped only when dashboards are on.
    const off = ofKind(template({ set: { 'monitoring.dashboards.enabled': false } }), 'ConfigMap').filter((c) => c.metadata.labels?.grafana_dashboard === '1');
    expect(off).toEqual([]);
  });

  test('are well-formed Grafana dashboards: unique uids, a Prometheus data source variable, panels on the grid', () => {
    const uids = dashboards().map((d) => d.json.uid);
    expect(new Set(uids).size).toBe(uids.length);
    for (const { json } of dashboards()) {
      expect(json.templating.list.find((v: any) => v.name === 'datasource')).toMatchObject({ type: 'datasource', query: 'prometheus' });
      const ids = json.panels.map((p: any) => p.id);
      expect(new Set(ids).size).toBe(ids.length);
      for (const panel of json.panels) {
        expect(panel.gridPos.x + panel.gridPos.w).toBeLessThanOrEqual(24);
        if (panel.type !== 'row') {
          expect({ panel: panel.title, targets: panel.targets?.length > 0 }).toEqual({ panel: panel.title, targets: true });
          expect(panel.datasource.uid).toBe('${datasource}');
          // Scoped to the chosen namespace, like the alerts.
          for (const target of panel.targets) expect({ panel: panel.title, namespaced: target.expr.includes('namespace="$namespace"') }).toEqual({ panel: panel.title, namespaced: true });
        }
      }
    }
  });

  test('every panel query parses (Prometheus grammar and promtool)', () => {
    const queries = queriesOf(objects).filter((q) => q.where.startsWith('dashboard'));
    for (const query of queries) expect({ where: query.where, errors: parsePromQL(query.expr).errors }).toEqual({ where: query.where, errors: [] });
    // promtool parses each as a recording rule.
    const rules = { groups: [{ name: 'dashboards', rules: queries.map((q, i) => ({ record: `dashboard:query:${i}`, expr: q.expr })) }] };
    const { status, output } = promtool((dir) => ['check', 'rules', path.join(dir, 'rules.yaml')], { 'rules.yaml': stringify(rules) });
    expect(output).toMatch(/SUCCESS/);
    expect(status).toBe(0);
  });
});

describe('metric names', () => {
  test('the services export the instruments the code creates (read from the sources)', () => {
    const names = metricsInCode().map((m) => m.name);
    for (const name of ['gateway_connections', 'gateway_tenant_connections', 'gateway_frame_duration_seconds', 'rpc_server_duration_seconds', 'messaging_outbox_pending', 'process_memory_bytes']) expect(names).toContain(name);
  });

  test('every metric an alert, a dashboard or the HPA uses is exported by a service or is a standard cluster series', () => {
    const exported = exportedSeries();
    const used = metricsUsed(queriesOf(objects));
    expect(used.size).toBeGreaterThan(10);
    const unknown = [...used].filter(([name]) => !exported.has(name) && !CLUSTER_SERIES.has(name)).map(([name, where]) => `${name} (${where[0]})`);
    expect(unknown).toEqual([]);
  });

  test('the check notices a metric nobody exports', () => {
    const exported = exportedSeries();
    const used = metricsUsed([{ where: 'test', expr: 'sum(rate(gateway_frames_recieved_total[5m]))' }]);
    expect([...used.keys()].filter((n) => !exported.has(n) && !CLUSTER_SERIES.has(n))).toEqual(['gateway_frames_recieved_total']);
  });
});
