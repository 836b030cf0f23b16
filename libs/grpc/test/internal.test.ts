import { Metadata } from '@grpc/grpc-js';
import { certificateIdentities, configureInternalCallers, INTERNAL_TOKEN_METADATA, tenantFromMetadata, tenantToMetadata, verifyInternalCaller } from '../src';

const TOKEN = 'a'.repeat(40);

afterEach(() => configureInternalCallers({}));

describe('the proof of internal calls', () => {
  it('clients add the configured token to internal calls only', () => {
    configureInternalCallers({ GRPC_INTERNAL_TOKEN: TOKEN });
    const internal = tenantToMetadata({ tenantId: 'acme', userId: '', deviceId: '', internal: true });
    expect(internal.get(INTERNAL_TOKEN_METADATA)).toEqual([TOKEN]);
    const user = tenantToMetadata({ tenantId: 'acme', userId: 'u1', deviceId: '', internal: false });
    expect(user.get(INTERNAL_TOKEN_METADATA)).toEqual([]);
    expect(() => verifyInternalCaller(internal, undefined)).not.toThrow();
    expect(tenantFromMetadata(internal).internal).toBe(true);
  });

  it('refuses a claim without the token, with another token, and any claim when no token is configured', () => {
    configureInternalCallers({ GRPC_INTERNAL_TOKEN: TOKEN });
    const claim = (token?: string) => {
      const md = new Metadata();
      md.set('x-sb-internal', 'true');
      if (token !== undefined) md.set(INTERNAL_TOKEN_METADATA, token);
      return md;
    };
    expect(() => verifyInternalCaller(claim(), undefined)).toThrow(/internal calls need the mesh internal token/);
    expect(() => verifyInternalCaller(claim('b'.repeat(40)), undefined)).toThrow(/internal calls need the mesh internal token/);
    expect(() => verifyInternalCaller(claim(`${TOKEN}a`), undefined)).toThrow(/internal calls need the mesh internal token/);
    configureInternalCallers({});
    expect(() => verifyInternalCaller(claim(TOKEN), undefined)).toThrow(/accepts no internal calls: GRPC_INTERNAL_TOKEN is not set/);
  });

  it('reads the identities a certificate names: subject CN, SAN DNS names and URIs', () => {
    const certificate = { subject: { CN: 'messaging' }, subjectaltname: 'DNS:messaging.switchboard.svc, URI:spiffe://switchboard/messaging, IP Address:10.0.0.1' };
    expect(certificateIdentities(certificate as never)).toEqual(['messaging', 'messaging.switchboard.svc', 'spiffe://switchboard/messaging']);
    expect(certificateIdentities(undefined)).toEqual([]);
    expect(certificateIdentities({} as never)).toEqual([]);
  });
});
