import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import Ajv, { type ErrorObject, type ValidateFunction } from 'ajv';
import { parse as parseYaml } from 'yaml';
import type { K8sObject } from './helm';

/**
 * Validation of rendered objects against the Kubernetes API's own OpenAPI v3
 * schemas (api/openapi-spec/v3 of the k8s.io/kubernetes Go module, pinned
 * here and fetched by `go mod download`, checksum-verified through the Go
 * checksum database) and the Prometheus Operator's CRDs (example/
 * prometheus-operator-crd of its Go module). Like `kubectl apply
 * --validate=strict`, unknown fields are errors: every object schema with
 * properties is closed unless it preserves unknown fields, and list-map keys
 * must be unique.
 */
export const KUBERNETES_VERSIONS = ['v1.30.14', 'v1.37.2'] as const;
export const PROMETHEUS_OPERATOR_VERSION = 'v0.85.0';

const GO_ENV = { ...process.env, PATH: `${process.env.PATH}:/usr/local/go/bin`, GOFLAGS: '-mod=mod' };

/** The unpacked directory of a Go module version, downloading it once. */
export function goModuleDir(module: string, version: string): string {
  const cache = execFileSync('go', ['env', 'GOMODCACHE'], { encoding: 'utf8', env: GO_ENV }).trim();
  // Module paths are case-encoded in the cache: an upper-case letter becomes "!" + lower case.
  const dir = path.join(cache, `${module.replace(/[A-Z]/g, (c) => `!${c.toLowerCase()}`)}@${version}`);
  if (!fs.existsSync(dir)) {
    const printed = execFileSync('go', ['mod', 'download', '-json', `${module}@${version}`], { encoding: 'utf8', env: GO_ENV, cwd: os.tmpdir(), maxBuffer: 16 * 1024 * 1024 });
    const info = JSON.parse(printed) as { Dir?: string; Error?: string };
    if (!info.Dir) throw new Error(`go mod download ${module}@${version}: ${info.Error ?? printed}`);
    return info.Dir;
  }
  return dir;
}

type Schema = Record<string, any>;

/** Closes object schemas (no unknown fields) the way strict field validation does, in place. */
function strict(node: unknown): void {
  if (Array.isArray(node)) {
    node.forEach(strict);
    return;
  }
  if (!node || typeof node !== 'object') return;
  const schema = node as Schema;
  if (schema.properties && schema.additionalProperties === undefined && !schema['x-kubernetes-preserve-unknown-fields']) {
    schema.additionalProperties = false;
  }
  for (const value of Object.values(schema)) strict(value);
}

/** CRD patterns are Go (RE2) regular expressions: an inline `(?i)` becomes JavaScript's i flag (for the whole pattern). */
const goRegExp = Object.assign(
  (pattern: string, flags: string) => (pattern.includes('(?i)') ? new RegExp(pattern.replaceAll('(?i)', ''), `${flags}i`) : new RegExp(pattern, flags)),
  { code: 'goRegExp' },
);

function newAjv(): Ajv {
  const ajv = new Ajv({ strict: false, allErrors: true, validateFormats: false, code: { regExp: goRegExp } });
  // listType=map: the API server rejects two items with the same key (two env vars or ports of one name).
  ajv.addKeyword({
    keyword: 'x-kubernetes-list-map-keys',
    type: 'array',
    schemaType: 'array',
    validate: function unique(keys: string[], data: unknown[]) {
      const seen = new Set<string>();
      for (const item of data) {
        if (!item || typeof item !== 'object') continue;
        const key = JSON.stringify(keys.map((k) => (item as Record<string, unknown>)[k] ?? null));
        if (seen.has(key)) {
          (unique as unknown as { errors: Partial<ErrorObject>[] }).errors = [{ keyword: 'x-kubernetes-list-map-keys', message: `has two items with the same ${keys.join('+')} ${key}`, params: {} }];
          return false;
        }
        seen.add(key);
      }
      return true;
    },
    errors: true,
  });
  return ajv;
}

function describe(errors: ErrorObject[] | null | undefined): string[] {
  return (errors ?? []).map((e) => {
    const where = e.instancePath || '/';
    if (e.keyword === 'additionalProperties') return `${where}: unknown field "${(e.params as { additionalProperty: string }).additionalProperty}"`;
    return `${where}: ${e.message ?? e.keyword}`;
  });
}

/** Drops nulls, as the API server does for unset fields. */
function withoutNulls(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(withoutNulls);
  if (value && typeof value === 'object') {
    return Object.fromEntries(Object.entries(value).filter(([, v]) => v !== null).map(([k, v]) => [k, withoutNulls(v)]));
  }
  return value;
}

export class KubernetesSchemas {
  private readonly ajv = newAjv();
  private readonly specDir: string;
  private readonly loaded = new Map<string, Map<string, string>>();
  private readonly added = new Set<string>();
  private readonly validators = new Map<string, ValidateFunction>();

  constructor(readonly version: (typeof KUBERNETES_VERSIONS)[number]) {
    this.specDir = path.join(goModuleDir('k8s.io/kubernetes', version), 'api', 'openapi-spec', 'v3');
  }

  /** Problems of one object; empty when the API server would take it. */
  validate(object: K8sObject): string[] {
    if (!object || typeof object.apiVersion !== 'string' || typeof object.kind !== 'string') return ['not a Kubernetes object (apiVersion and kind are required)'];
    const validator = this.validatorFor(object.apiVersion, object.kind);
    if (!validator) return [`${object.apiVersion} ${object.kind} is not served by Kubernetes ${this.version} (nor a known CRD)`];
    const problems = validator(withoutNulls(object)) ? [] : describe(validator.errors);
    if (!object.metadata?.name) problems.push('/metadata/name: required');
    else if (!/^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/.test(object.metadata.name) || object.metadata.name.length > 253) problems.push(`/metadata/name: "${object.metadata.name}" is not a DNS subdomain name`);
    return problems;
  }

  private validatorFor(apiVersion: string, kind: string): ValidateFunction | undefined {
    const key = `${apiVersion}/${kind}`;
    if (this.validators.has(key)) return this.validators.get(key);
    const [group, version] = apiVersion.includes('/') ? (apiVersion.split('/') as [string, string]) : ['', apiVersion];
    let validator: ValidateFunction | undefined;
    const crd = this.crdSchema(group, version, kind);
    if (crd) {
      validator = this.ajv.compile(crd);
    } else {
      const name = this.load(group, version).get(`${group}/${version}/${kind}`);
      if (name) validator = this.ajv.getSchema(`k8s:${name}`);
    }
    if (validator) this.validators.set(key, validator);
    return validator;
  }

  /**
   * Adds one group-version's component schemas, each under its own id
   * (k8s:<name>), skipping those another group-version already added: the
   * pod template that Deployments and Jobs share is compiled once.
   * Returns the kinds it serves, by group/version/kind.
   */
  private load(group: string, version: string): Map<string, string> {
    const file = path.join(this.specDir, group ? `apis__${group}__${version}_openapi.json` : `api__${version}_openapi.json`);
    let kinds = this.loaded.get(file);
    if (kinds) return kinds;
    kinds = new Map();
    this.loaded.set(file, kinds);
    if (!fs.existsSync(file)) return kinds;
    const text = fs.readFileSync(file, 'utf8').replaceAll('"#/components/schemas/', '"k8s:');
    const schemas = (JSON.parse(text) as Schema).components.schemas as Record<string, Schema>;
    for (const [name, schema] of Object.entries(schemas)) {
      for (const gvk of (schema['x-kubernetes-group-version-kind'] ?? []) as Schema[]) kinds.set(`${gvk.group}/${gvk.version}/${gvk.kind}`, name);
      if (this.added.has(name)) continue;
      strict(schema);
      this.ajv.addSchema({ ...schema, $id: `k8s:${name}` });
      this.added.add(name);
    }
    return kinds;
  }

  /** A Prometheus Operator CRD's schema (ServiceMonitor, PrometheusRule, …). */
  private crdSchema(group: string, version: string, kind: string): Schema | undefined {
    if (group !== 'monitoring.coreos.com') return undefined;
    const dir = path.join(goModuleDir('github.com/prometheus-operator/prometheus-operator', PROMETHEUS_OPERATOR_VERSION), 'example', 'prometheus-operator-crd');
    const file = path.join(dir, `${group}_${kind.toLowerCase()}s.yaml`);
    if (!fs.existsSync(file)) return undefined;
    const crd = parseYaml(fs.readFileSync(file, 'utf8')) as Schema;
    const served = (crd.spec.versions as Schema[]).find((v) => v.name === version);
    if (!served) return undefined;
    const schema = structuredClone(served.schema.openAPIV3Schema) as Schema;
    strict(schema);
    return schema;
  }
}
