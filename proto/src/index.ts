// The public entry of the generated contracts: one namespace per protobuf
// package, named with its version so that a v2 can live beside v1.
import * as path from 'node:path';

export * as commonV1 from './gen/switchboard/common/v1/common';
export * as eventsV1 from './gen/switchboard/events/v1/events';
export * as gatewayV1 from './gen/switchboard/gateway/v1/gateway';
export * as framesV1 from './frames';
export * as messagingV1 from './gen/switchboard/messaging/v1/messaging';
export * as presenceV1 from './gen/switchboard/presence/v1/presence';
export * as roomV1 from './gen/switchboard/room/v1/room';
export * as notificationV1 from './gen/switchboard/notification/v1/notification';
export { Timestamp } from './gen/google/protobuf/timestamp';

/** The FileDescriptorSet of every contract (built by `buf build`), served by gRPC reflection. */
export const descriptorSetPath = path.join(__dirname, '..', 'descriptors.binpb');
