// The WebSocket protocol (package switchboard.gateway.v1) is several files:
// the frames, and the room operations they carry (rooms.proto). One namespace.
export * from './gen/switchboard/gateway/v1/frames';
export * from './gen/switchboard/gateway/v1/rooms';
