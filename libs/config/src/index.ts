import { readFileSync } from 'node:fs';
import { z } from 'zod';

export { z };

/** Thrown at start when the environment does not describe a valid configuration. */
export class ConfigError extends Error {
  constructor(readonly problems: string[]) {
    super(`invalid configuration:\n  ${problems.join('\n  ')}`);
    this.name = 'ConfigError';
  }
}

/**
 * Reads a typed configuration from environment variables. The schema's keys
 * are the variable names themselves, so every problem names the variable to
 * fix: `GATEWAY_PORT: expected a port (1-65535), got "abc"`.
 */
export function loadConfig<S extends z.ZodRawShape>(
  shape: S,
  env: NodeJS.ProcessEnv = process.env,
): z.infer<z.ZodObject<S>> {
  const input: Record<string, string | undefined> = {};
  for (const key of Object.keys(shape)) {
    const value = env[key];
    // An empty variable means "not set": use the default.
    input[key] = value === '' ? undefined : value;
  }
  const result = z.object(shape).safeParse(input);
  if (result.success) return result.data;
  throw new ConfigError(
    result.error.issues.map((issue) => {
      const name = issue.path.join('.');
      const given = input[name];
      return `${name}: ${issue.message}${given === undefined ? '' : `, got ${JSON.stringify(given)}`}`;
    }),
  );
}

/** Schema helpers for the kinds of values services read. */
export const env = {
  port: (fallback: number) =>
    z.coerce.number({ error: 'expected a port (0-65535)' }).int('expected a port (0-65535)').min(0, 'expected a port (0-65535)').max(65535, 'expected a port (0-65535)').default(fallback),
  positiveInt: (fallback: number) =>
    z.coerce.number({ error: 'expected a positive integer' }).int('expected a positive integer').positive('expected a positive integer').default(fallback),
  string: (fallback: string) => z.string().min(1).default(fallback),
  optionalString: () => z.string().min(1).optional(),
  url: (fallback: string, protocols: string[]) =>
    z
      .string()
      .default(fallback)
      .refine((value) => {
        try {
          return protocols.includes(new URL(value).protocol.replace(/:$/, ''));
        } catch {
          return false;
        }
      }, `expected a URL with scheme ${protocols.join(' or ')}`),
  list: (fallback: string[]) =>
    z
      .string()
      .optional()
      .transform((value) => (value === undefined ? fallback : value.split(',').map((item) => item.trim()).filter(Boolean))),
  boolean: (fallback: boolean) =>
    z
      .enum(['true', 'false', '1', '0'], { error: 'expected true or false' })
      .optional()
      .transform((value) => (value === undefined ? fallback : value === 'true' || value === '1')),
  logLevel: () => z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
};

/**
 * What every service reads: where it listens and how it logs, traces and
 * stops. Spread it into a service's shape with that service's ports.
 */
export function serviceSettings(defaults: { grpcPort: number; opsPort: number; shutdownDeadlineMs?: number }) {
  return {
    HOST: env.string('127.0.0.1'),
    GRPC_PORT: env.port(defaults.grpcPort),
    OPS_PORT: env.port(defaults.opsPort),
    LOG_LEVEL: env.logLevel(),
    OTEL_EXPORTER_OTLP_ENDPOINT: env.optionalString(),
    SHUTDOWN_DEADLINE_MS: env.positiveInt(defaults.shutdownDeadlineMs ?? 10_000),
    ...grpcTlsSettings(),
    ...grpcInternalSettings(),
  };
}

/**
 * Proof of internal calls (x-sb-internal, which skips user checks): with mutual
 * TLS the client certificate identities allowed to call as internal; without
 * it a shared secret of the mesh (docs/security.md).
 */
export function grpcInternalSettings() {
  return {
    GRPC_INTERNAL_TOKEN: z.string().min(32, 'expected at least 32 characters (a random secret)').optional(),
    GRPC_INTERNAL_IDENTITIES: env.list([]),
  };
}

/** Mutual TLS between services (PEM files, all three or none): the CA, this service's certificate and key. */
export function grpcTlsSettings() {
  return {
    GRPC_TLS_CA_FILE: env.optionalString(),
    GRPC_TLS_CERT_FILE: env.optionalString(),
    GRPC_TLS_KEY_FILE: env.optionalString(),
  };
}

/**
 * A path to a NATS user nkey seed file, checked at start: readable, and its
 * first line that is not a comment a user seed, so a wrong mount or a swapped
 * key fails naming the variable instead of as a refused connection later.
 */
function nkeySeedFile() {
  return z
    .string()
    .min(1)
    .optional()
    .superRefine((file, ctx) => {
      if (file === undefined) return;
      let text: string;
      try {
        text = readFileSync(file, 'utf8');
      } catch (err) {
        ctx.addIssue({ code: 'custom', message: `cannot read the nkey seed file (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})` });
        return;
      }
      const seed = text.split('\n').map((line) => line.trim()).find((line) => line && !line.startsWith('#')) ?? '';
      if (!/^SU[A-Z2-7]{56}$/.test(seed)) ctx.addIssue({ code: 'custom', message: 'the file holds no NATS user nkey seed (a line of 58 characters starting with "SU", as `nk -gen user` writes it)' });
    });
}

/** Where the infrastructure is; the defaults are the local processes of `infra.sh`. */
export const infraSettings = {
  postgres: () => ({ DATABASE_URL: env.url('postgres://switchboard:switchboard@127.0.0.1:54329/switchboard', ['postgres', 'postgresql']) }),
  redis: () => ({ REDIS_URL: env.url('redis://127.0.0.1:63799', ['redis', 'rediss']) }),
  nats: () => ({
    NATS_URL: env.url('nats://127.0.0.1:42229', ['nats', 'tls']),
    /** This service's NATS user: a file holding its nkey seed (`SU…`); the server allows that user only the service's subjects. */
    NATS_NKEY_SEED_FILE: nkeySeedFile(),
  }),
  kafka: () => ({ KAFKA_BROKERS: env.string('127.0.0.1:19092') }),
};
