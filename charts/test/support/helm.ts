import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { parseAllDocuments } from 'yaml';
import { toolsBin, umbrellaDir } from './paths';

/** The helm the project installs (libs/devenv/bin/kube-tools.sh); HELM_BIN points elsewhere. */
export function helmBinary(): string {
  const bin = process.env.HELM_BIN ?? path.join(toolsBin, 'helm');
  if (!fs.existsSync(bin)) {
    throw new Error(`helm not found at ${bin}: run bash libs/devenv/bin/kube-tools.sh (npm test does)`);
  }
  return bin;
}

export interface RunResult {
  status: number;
  stdout: string;
  stderr: string;
}

export function helm(args: string[]): RunResult {
  const result = spawnSync(helmBinary(), args, { encoding: 'utf8', maxBuffer: 64 * 1024 * 1024, env: { ...process.env, HELM_CACHE_HOME: '/tmp/sb-helm-cache', HELM_CONFIG_HOME: '/tmp/sb-helm-config', HELM_DATA_HOME: '/tmp/sb-helm-data' } });
  if (result.error) throw result.error;
  return { status: result.status ?? 1, stdout: result.stdout, stderr: result.stderr };
}

/** A rendered Kubernetes object. */
export interface K8sObject {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string; labels?: Record<string, string>; annotations?: Record<string, string> };
  spec?: any;
  data?: Record<string, string>;
  [key: string]: any;
}

export interface TemplateOptions {
  /** Values files (absolute, or relative to the umbrella chart). */
  values?: string[];
  /** --set pairs. */
  set?: Record<string, string | number | boolean>;
  /** --set-json pairs. */
  setJson?: Record<string, unknown>;
  release?: string;
  namespace?: string;
  /** Chart directory; the umbrella by default. */
  chart?: string;
  kubeVersion?: string;
}

export const RELEASE = 'sb';
export const NAMESPACE = 'switchboard';

function templateArgs(options: TemplateOptions): string[] {
  const args = ['template', options.release ?? RELEASE, options.chart ?? umbrellaDir, '--namespace', options.namespace ?? NAMESPACE];
  if (options.kubeVersion) args.push('--kube-version', options.kubeVersion);
  for (const file of options.values ?? []) args.push('--values', path.isAbsolute(file) ? file : path.join(umbrellaDir, file));
  for (const [key, value] of Object.entries(options.set ?? {})) args.push('--set', `${key}=${value}`);
  for (const [key, value] of Object.entries(options.setJson ?? {})) args.push('--set-json', `${key}=${JSON.stringify(value)}`);
  return args;
}

/** `helm template` output, parsed; throws with helm's message when it fails. */
export function template(options: TemplateOptions = {}): K8sObject[] {
  const result = helm(templateArgs(options));
  if (result.status !== 0) throw new Error(`helm template failed:\n${result.stderr}`);
  return parseManifests(result.stdout);
}

/** `helm template` expected to fail: its error output (throws when it rendered). */
export function templateError(options: TemplateOptions): string {
  const result = helm(templateArgs(options));
  if (result.status === 0) throw new Error(`helm template accepted ${JSON.stringify({ ...options.set, ...options.setJson, values: options.values })}`);
  return result.stderr;
}

export function parseManifests(text: string): K8sObject[] {
  const objects: K8sObject[] = [];
  for (const doc of parseAllDocuments(text)) {
    if (doc.errors.length > 0) throw new Error(`rendered YAML does not parse: ${doc.errors[0]!.message}`);
    const value = doc.toJS();
    if (value === null || value === undefined) continue;
    objects.push(value as K8sObject);
  }
  return objects;
}

export const ofKind = (objects: K8sObject[], kind: string) => objects.filter((o) => o.kind === kind);

export function find(objects: K8sObject[], kind: string, name: string): K8sObject {
  const found = objects.find((o) => o.kind === kind && o.metadata.name === name);
  if (!found) throw new Error(`no ${kind} ${name} among ${objects.map((o) => `${o.kind}/${o.metadata.name}`).join(', ')}`);
  return found;
}

/** The pod template of a workload (Deployment, Job, StatefulSet). */
export function podSpec(object: K8sObject): any {
  return object.spec?.template?.spec;
}
