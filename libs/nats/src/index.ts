export { connectNats, natsReady, type NatsOptions } from './connection';
export { subjects, SYSTEM_SUBJECTS } from './subjects';
export { newEnvelope, publishEnvelope, decodeEnvelope, type EventOf, type ReceivedEnvelope } from './envelope';
export { headers as natsHeaders, type NatsConnection, type Msg, type Subscription } from '@nats-io/transport-node';
