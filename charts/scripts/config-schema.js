#!/usr/bin/env node
// Keeps the `config` and `secretEnv` definitions of each service chart's
// values.schema.json (charts/switchboard/charts/<service>/) in step with what
// the service reads.
// The source of truth is the code: each service's built readConfig()
// (services/<name>/src/config.ts, after `pnpm build`), probed for its keys,
// their defaults and what it refuses. Keys the chart sets itself (listen
// addresses, infrastructure connections, the services a service calls, the
// gateway's auth settings) are left out of `config`; secrets are only accepted
// in `secretEnv`, as references to Secrets.
//
//   node charts/scripts/config-schema.js           rewrite the definitions
//   node charts/scripts/config-schema.js --check   exit 1 when they are stale
'use strict';
const fs = require('node:fs');
const path = require('node:path');

const root = path.resolve(__dirname, '..', '..');
const schemaFile = (service) => path.join(root, 'charts', 'switchboard', 'charts', service, 'values.schema.json');
const SERVICES = ['gateway', 'messaging', 'presence', 'room', 'notification'];
const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'];

/** Set by every service chart: listen settings and infrastructure connections (common/_config.tpl). */
const CHART_SET = [
  'HOST', 'GRPC_PORT', 'OPS_PORT', 'OTEL_EXPORTER_OTLP_ENDPOINT', 'DATABASE_URL', 'REDIS_URL', 'NATS_URL', 'KAFKA_BROKERS',
  // Mounted credentials and the proof of internal calls (common/_security.tpl).
  'NATS_NKEY_SEED_FILE', 'GRPC_TLS_CA_FILE', 'GRPC_TLS_CERT_FILE', 'GRPC_TLS_KEY_FILE', 'GRPC_INTERNAL_TOKEN', 'GRPC_INTERNAL_IDENTITIES',
];
/** Set by one chart only (gateway/_gateway.tpl). */
const CHART_SET_BY_SERVICE = {
  gateway: ['PORT', 'GATEWAY_ID', 'JWT_SECRET', 'JWT_JWKS_URL', 'JWT_ISSUER', 'JWT_AUDIENCE', 'ALLOWED_ORIGINS', 'TLS_CERT_FILE', 'TLS_KEY_FILE'],
};
/** Never in a ConfigMap: keys, passwords, credentials (accepted in secretEnv only). */
const SECRET = /SECRET|PASSWORD|PRIVATE|TOKEN|CREDENTIAL|SERVICE_ACCOUNT|^APNS_KEY$|^SMTP_URL$/;

/** The services a chart's pods call, from its "<chart>.backends" template: their *_ADDR keys are set by the chart. */
function backends(service) {
  const tpl = fs.readFileSync(path.join(root, 'charts', 'switchboard', 'charts', service, 'templates', `_${service}.tpl`), 'utf8');
  const match = new RegExp(`define "${service}\\.backends" -\\}\\}([^{]*)\\{\\{`).exec(tpl);
  return (match ? match[1].trim().split(/\s+/).filter(Boolean) : []).map((name) => `${name.toUpperCase()}_ADDR`);
}

/** The doc comment above each key in the service's config.ts, when it has one. */
function descriptions(service) {
  const source = fs.readFileSync(path.join(root, 'services', service, 'src', 'config.ts'), 'utf8');
  const found = {};
  const pattern = /\/\*\*((?:[^*]|\*(?!\/))*)\*\/\s*\n\s*([A-Z][A-Z0-9_]*)\s*:/g;
  for (let m = pattern.exec(source); m; m = pattern.exec(source)) {
    found[m[2]] = m[1].replace(/\s*\n\s*\*?\s*/g, ' ').trim();
  }
  return found;
}

function refuses(readConfig, key, value) {
  try {
    readConfig({ [key]: value });
    return false;
  } catch {
    return true;
  }
}

/** A JSON schema for one key, from its default and what readConfig refuses. */
function keySchema(readConfig, key, value) {
  if (key === 'LOG_LEVEL') return { type: 'string', enum: LOG_LEVELS };
  if (typeof value === 'number') return { type: 'integer', minimum: refuses(readConfig, key, '0') ? 1 : 0 };
  if (typeof value === 'boolean') return { type: 'boolean' };
  if (Array.isArray(value)) return { type: 'array', items: { type: 'string', minLength: 1, pattern: '^[^,]+$' } };
  const schema = { type: 'string', minLength: 1 };
  if (refuses(readConfig, key, 'not a url')) schema.pattern = '^[a-z][a-z0-9+.-]*://[^\\s]+$';
  return schema;
}

function definitions() {
  const defs = {};
  const problems = [];
  for (const service of SERVICES) {
    const entry = path.join(root, 'services', service, 'dist', 'config.js');
    if (!fs.existsSync(entry)) throw new Error(`${entry} is missing: run pnpm build first`);
    // eslint-disable-next-line global-require, import/no-dynamic-require
    const { readConfig } = require(entry);
    const defaults = readConfig({});
    const chartSet = new Set([...CHART_SET, ...(CHART_SET_BY_SERVICE[service] ?? []), ...backends(service)]);
    for (const key of Object.keys(defaults)) {
      if (/_ADDR$/.test(key) && !chartSet.has(key)) {
        problems.push(`${service} reads ${key}, but its chart's "${service}.backends" (charts/switchboard/charts/${service}/templates/_${service}.tpl) does not list that service`);
      }
    }
    const notes = descriptions(service);
    const config = {};
    const secretEnv = {};
    for (const [key, value] of Object.entries(defaults).sort(([a], [b]) => a.localeCompare(b))) {
      if (chartSet.has(key)) continue;
      const schema = keySchema(readConfig, key, value);
      if (notes[key]) schema.description = notes[key];
      secretEnv[key] = { $ref: '#/$defs/secretRef', ...(notes[key] ? { description: notes[key] } : {}) };
      if (!SECRET.test(key)) config[key] = schema;
    }
    defs[service] = {};
    defs[service].config = {
      type: 'object',
      description: `Settings of ${service} as environment variables (services/${service}/src/config.ts); the chart sets ${[...chartSet].filter((k) => k in defaults).join(', ')} itself.`,
      additionalProperties: false,
      required: ['LOG_LEVEL', 'SHUTDOWN_DEADLINE_MS'].filter((k) => k in config),
      properties: config,
    };
    defs[service].secretEnv = {
      type: 'object',
      description: `Settings of ${service} read from Secrets, by environment variable name.`,
      additionalProperties: false,
      properties: secretEnv,
    };
  }
  return { defs, problems };
}

function main() {
  const check = process.argv.includes('--check');
  const { defs, problems } = definitions();
  // Descriptions follow the code's comments but do not make a schema stale.
  const shape = (value) => JSON.stringify(value, (key, v) => (key === 'description' ? undefined : v));
  const stale = [];
  for (const service of SERVICES) {
    const file = schemaFile(service);
    const schema = JSON.parse(fs.readFileSync(file, 'utf8'));
    if (shape({ config: schema.$defs.config, secretEnv: schema.$defs.secretEnv }) === shape(defs[service])) continue;
    stale.push(service);
    if (!check) {
      Object.assign(schema.$defs, defs[service]);
      fs.writeFileSync(file, `${JSON.stringify(schema, null, 2)}\n`);
    }
  }
  for (const problem of problems) console.error(problem);
  if (check) {
    if (stale.length > 0) console.error(`the config schema of ${stale.join(', ')} is out of step with the code: run node charts/scripts/config-schema.js`);
    process.exit(problems.length > 0 || stale.length > 0 ? 1 : 0);
  }
  console.log(stale.length > 0 ? `updated ${stale.map((s) => `charts/switchboard/charts/${s}/values.schema.json`).join(', ')}` : 'the config schemas are up to date');
  process.exit(problems.length > 0 ? 1 : 0);
}

if (require.main === module) main();
module.exports = { definitions, SERVICES };
