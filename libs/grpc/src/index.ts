export { GrpcServer, type GrpcServerOptions } from './server';
export { batchItemContext, endStreams, heldOpen, observeRpc, unary, unaryStream, type BatchItemCaller, type CallContext, type StreamedRequest, type StreamedResponse, type UnaryHandler } from './handlers';
export { actingUser, targetUser, viewer } from './callers';
export { callMetadata, createClient, type CallOptions, type PromiseClient } from './client';
export { toServiceError, fromServiceError, grpcStatusFor, ERROR_TRAILER } from './errors';
export { configureGrpcTls, grpcTlsEnabled, serverCredentials, channelCredentials, type GrpcTlsSettings } from './tls';
export { configureInternalCallers, verifyInternalCaller, certificateIdentities, INTERNAL_TOKEN_METADATA, type InternalCallerSettings } from './internal';
export { checkedRoles, MAX_ROLES, TENANT_METADATA, rolesFromMetadata, rolesToMetadata, tenantToMetadata, tenantFromMetadata } from './tenant';
export { Metadata, status as GrpcStatus, credentials } from '@grpc/grpc-js';
