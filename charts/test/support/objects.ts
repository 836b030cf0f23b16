import { find, ofKind, podSpec, RELEASE, type K8sObject } from './helm';
import type { Service } from './paths';

export const fullname = (service: string, release = RELEASE) => `${release}-${service}`;

/** Does a label selector (matchLabels) select these labels? */
export function selects(selector: Record<string, string> | undefined, labels: Record<string, string> | undefined): boolean {
  if (!selector || Object.keys(selector).length === 0) return false;
  return Object.entries(selector).every(([k, v]) => labels?.[k] === v);
}

export function deployment(objects: K8sObject[], service: Service, release = RELEASE): K8sObject {
  return find(objects, 'Deployment', fullname(service, release));
}

export function mainContainer(workload: K8sObject): any {
  const containers = podSpec(workload).containers as any[];
  return containers[0];
}

/** The environment a container sees: its ConfigMaps (envFrom) and its own env, by name. */
export function containerEnv(objects: K8sObject[], container: any): Record<string, string | { secret: string; key: string } | { field: string }> {
  const env: Record<string, any> = {};
  for (const source of container.envFrom ?? []) {
    if (source.configMapRef) Object.assign(env, find(objects, 'ConfigMap', source.configMapRef.name).data);
  }
  for (const entry of container.env ?? []) {
    if (entry.valueFrom?.secretKeyRef) env[entry.name] = { secret: entry.valueFrom.secretKeyRef.name, key: entry.valueFrom.secretKeyRef.key };
    else if (entry.valueFrom?.fieldRef) env[entry.name] = { field: entry.valueFrom.fieldRef.fieldPath };
    else env[entry.name] = entry.value;
  }
  return env;
}

/** Every workload's pod template with a name, for per-container checks. */
export function workloads(objects: K8sObject[]): K8sObject[] {
  return [...ofKind(objects, 'Deployment'), ...ofKind(objects, 'StatefulSet'), ...ofKind(objects, 'Job')];
}
