export { OutboxRelay, type OutboxRelayOptions } from './relay';
export { enqueue, type OutboxEvent } from './writer';
export { outboxWaker } from './wake';
