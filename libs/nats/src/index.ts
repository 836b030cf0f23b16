export { connectNats, natsReady, readNkeySeed, NatsCredentialsError, type NatsOptions } from './connection';
export { subjects, SYSTEM_SUBJECTS } from './subjects';
export { NATS_USERS, NATS_PERMISSIONS, natsAuthorizationConfig, nkeyVariable, inboxPrefixOf, type NatsUser, type NatsPermissions, type NkeyReferences } from './permissions';
export { newEnvelope, publishEnvelope, publishEnvelopeToStream, decodeEnvelope, type EventOf, type ReceivedEnvelope } from './envelope';
export { EVENT_TOPIC_LIMITS, parseEventTopic, parseEventPattern, patternMatches, patternCovers, type EventTokens } from './topics';
export { EVENT_STREAM, EVENT_STREAM_SUBJECT, eventStreamConfig, ensureEventStream, eventStreamClients, type EventStreamSettings, type EnsuredStream } from './event-stream';
export { DeliverPolicy, JetStreamApiError, type JetStreamClient, type JetStreamManager, type JsMsg, type PubAck } from '@nats-io/jetstream';
export { headers as natsHeaders, nkeys, type NatsConnection, type Msg, type Subscription } from '@nats-io/transport-node';
