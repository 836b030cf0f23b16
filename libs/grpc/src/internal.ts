import { createHash, timingSafeEqual } from 'node:crypto';
import type { PeerCertificate } from 'node:tls';
import type { Metadata } from '@grpc/grpc-js';
import { UnauthenticatedError } from '@switchboard/errors';
import { grpcTlsEnabled } from './tls';

/** Where a service finds the proof it gives and accepts for internal calls (docs/security.md, "Service-to-service calls"). */
export interface InternalCallerSettings {
  /** Without mutual TLS: the mesh's shared secret; a call claiming to be internal must carry it. */
  GRPC_INTERNAL_TOKEN?: string | undefined;
  /** With mutual TLS: the client certificate identities (subject CN, SAN DNS name or URI) that may call as internal. */
  GRPC_INTERNAL_IDENTITIES?: readonly string[] | undefined;
}

/** The metadata key that carries the internal token beside `x-sb-internal`. */
export const INTERNAL_TOKEN_METADATA = 'x-sb-internal-token';

let token: Buffer | undefined;
let identities: ReadonlySet<string> = new Set();

/**
 * Internal callers (x-sb-internal: true) skip the user checks, so the claim
 * needs proof. One rule per transport:
 *   - mutual TLS configured: the caller's client certificate (already verified
 *     against the mesh CA in the handshake) must name an identity in
 *     GRPC_INTERNAL_IDENTITIES;
 *   - plaintext: the call must carry GRPC_INTERNAL_TOKEN, compared in
 *     constant time.
 * A claim without its proof is refused (UNAUTHENTICATED), never served as a
 * user. Process-wide like configureGrpcTls: every client of the process sends
 * the token with internal calls. ServiceHost.start calls this.
 */
export function configureInternalCallers(settings: InternalCallerSettings): void {
  token = settings.GRPC_INTERNAL_TOKEN ? Buffer.from(settings.GRPC_INTERNAL_TOKEN, 'utf8') : undefined;
  identities = new Set(settings.GRPC_INTERNAL_IDENTITIES ?? []);
}

/** Adds the token to an internal call's metadata (clients). */
export function addInternalProof(metadata: Metadata): void {
  if (token) metadata.set(INTERNAL_TOKEN_METADATA, token.toString('utf8'));
}

function digest(value: Buffer): Buffer {
  // Equal lengths for timingSafeEqual whatever the caller sent.
  return createHash('sha256').update(value).digest();
}

/** The names a certificate gives its holder: subject CN, SAN DNS names and URIs. */
export function certificateIdentities(certificate: PeerCertificate | undefined): string[] {
  if (!certificate || Object.keys(certificate).length === 0) return [];
  const names: string[] = [];
  const cn = certificate.subject?.CN;
  if (cn) names.push(...(Array.isArray(cn) ? cn : [cn]));
  for (const entry of (certificate.subjectaltname ?? '').split(',')) {
    const match = /^\s*(DNS|URI):(.+)$/.exec(entry);
    if (match) names.push(match[2]!.trim());
  }
  return names;
}

/**
 * Throws UNAUTHENTICATED unless an internal claim carries the proof its
 * transport requires (see configureInternalCallers).
 */
export function verifyInternalCaller(metadata: Metadata, peerCertificate: PeerCertificate | undefined): void {
  if (grpcTlsEnabled()) {
    const names = certificateIdentities(peerCertificate);
    if (names.some((name) => identities.has(name))) return;
    throw new UnauthenticatedError(
      `internal calls need a client certificate of an internal identity (GRPC_INTERNAL_IDENTITIES); this one names ${names.length ? names.join(', ') : 'nobody'}`,
      { field: 'x-sb-internal' },
    );
  }
  const given = metadata.get(INTERNAL_TOKEN_METADATA)[0];
  if (token && typeof given === 'string' && timingSafeEqual(digest(Buffer.from(given, 'utf8')), digest(token))) return;
  throw new UnauthenticatedError(
    token ? 'internal calls need the mesh internal token (x-sb-internal-token)' : 'this service accepts no internal calls: GRPC_INTERNAL_TOKEN is not set',
    { field: 'x-sb-internal' },
  );
}
