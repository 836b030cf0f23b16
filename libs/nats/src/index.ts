export { connectNats, natsReady, readNkeySeed, NatsCredentialsError, type NatsOptions } from './connection';
export { subjects, SYSTEM_SUBJECTS } from './subjects';
export { NATS_USERS, NATS_PERMISSIONS, natsAuthorizationConfig, nkeyVariable, type NatsUser, type NatsPermissions, type NkeyReferences } from './permissions';
export { newEnvelope, publishEnvelope, decodeEnvelope, type EventOf, type ReceivedEnvelope } from './envelope';
export { headers as natsHeaders, nkeys, type NatsConnection, type Msg, type Subscription } from '@nats-io/transport-node';
