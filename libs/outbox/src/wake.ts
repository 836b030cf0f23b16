import type { NatsConnection } from '@switchboard/nats';
import type { OutboxRelay } from './relay';

/**
 * Wakes the relay leader after a commit wrote outbox rows: the local relay
 * directly, and (the leader may be another replica) with an empty NATS ping
 * on `wakeSubject`, at most one per event-loop tick however many commits
 * happened in it. The leader itself sends no ping: its own wake-up is direct, and
 * the ping would only come back to it and make each sink read once more for
 * nothing. Polling covers a lost ping (or a leadership that moved meanwhile).
 * Returns the function to call
 * after such a commit and the unsubscribe for shutdown.
 */
export function outboxWaker(relay: OutboxRelay, nats: NatsConnection, wakeSubject: string): { written: () => void; close: () => void } {
  const subscription = nats.subscribe(wakeSubject, { callback: () => relay.wake() });
  let pending = false;
  const written = () => {
    relay.wake();
    if (pending || relay.leads) return;
    pending = true;
    setImmediate(() => {
      pending = false;
      if (!nats.isClosed()) nats.publish(wakeSubject);
    });
  };
  return { written, close: () => subscription.unsubscribe() };
}
