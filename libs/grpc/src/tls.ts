import { readFileSync } from 'node:fs';
import { credentials, ServerCredentials, type ChannelCredentials } from '@grpc/grpc-js';

/** Where a service finds its mutual-TLS material (PEM files); all three or none. */
export interface GrpcTlsSettings {
  GRPC_TLS_CA_FILE?: string | undefined;
  GRPC_TLS_CERT_FILE?: string | undefined;
  GRPC_TLS_KEY_FILE?: string | undefined;
}

let material: { ca: Buffer; cert: Buffer; key: Buffer } | undefined;

/**
 * Mutual TLS between services, for the whole process: once configured, every
 * GrpcServer requires a client certificate signed by the CA and every client
 * made by createClient presents this process's certificate. Without settings
 * the mesh speaks plaintext (local development; the network policy is then
 * the boundary). ServiceHost.start calls this from the service's config.
 */
export function configureGrpcTls(settings: GrpcTlsSettings): void {
  const files = [settings.GRPC_TLS_CA_FILE, settings.GRPC_TLS_CERT_FILE, settings.GRPC_TLS_KEY_FILE];
  if (files.every((f) => !f)) {
    material = undefined;
    return;
  }
  if (files.some((f) => !f)) throw new Error('GRPC_TLS_CA_FILE, GRPC_TLS_CERT_FILE and GRPC_TLS_KEY_FILE go together: set all three or none');
  material = { ca: readFileSync(settings.GRPC_TLS_CA_FILE!), cert: readFileSync(settings.GRPC_TLS_CERT_FILE!), key: readFileSync(settings.GRPC_TLS_KEY_FILE!) };
}

export function grpcTlsEnabled(): boolean {
  return material !== undefined;
}

export function serverCredentials(): ServerCredentials {
  if (!material) return ServerCredentials.createInsecure();
  // true: a client without a certificate from the CA is refused during the handshake.
  return ServerCredentials.createSsl(material.ca, [{ cert_chain: material.cert, private_key: material.key }], true);
}

export function channelCredentials(): ChannelCredentials {
  if (!material) return credentials.createInsecure();
  return credentials.createSsl(material.ca, material.key, material.cert);
}
