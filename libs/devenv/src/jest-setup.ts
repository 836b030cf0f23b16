import { configureInternalCallers } from '@switchboard/grpc';
import { infraEnv } from './infra';

/**
 * Jest setup, per test file: the tests' own gRPC clients act as internal
 * callers of the mesh they start (x-sb-internal), so they carry the local
 * infrastructure's internal token like the services do. Tests that attack
 * the internal claim build their metadata by hand.
 */
configureInternalCallers({ GRPC_INTERNAL_TOKEN: infraEnv().GRPC_INTERNAL_TOKEN });
