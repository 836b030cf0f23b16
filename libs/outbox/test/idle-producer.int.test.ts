// The relay's Kafka producer, idle after a send, must leave its process idle.
// kafkajs 2.2.4 re-armed a 1 ms timer forever once a connection had answered
// a request (patches/kafkajs@2.2.4.patch): about a thousand wake-ups a second
// in every process with a producer or consumer, a fifth of a core for the
// mesh with nothing to do. Counted here as timers set, not as time.
import { infraEnv } from '@switchboard/devenv';
import { createIdempotentProducer, createKafka, TOPICS } from '@switchboard/kafka';

test('an idle producer sets no timers over and over after its last request', async () => {
  const kafka = createKafka({ brokers: infraEnv()['KAFKA_BROKERS']!, clientId: 'outbox-idle-test' });
  const producer = createIdempotentProducer(kafka);
  await producer.connect();
  try {
    // Two sends in a row: with one request in flight at most, the second waits in the queue and is sent from the queue's check.
    await Promise.all([0, 1].map((i) => producer.send({ topic: TOPICS.events, acks: -1, messages: [{ key: 'idle-test', value: `idle ${i}` }] })));
    const timers = jest.spyOn(global, 'setTimeout');
    const before = timers.mock.calls.length;
    // Waits without a timer of its own, so the count holds only kafkajs's (and Node's).
    const idleFor = new Promise<void>((resolve) => {
      const started = Date.now();
      const spin = () => (Date.now() - started >= 300 ? resolve() : setImmediate(spin));
      spin();
    });
    await idleFor;
    const set = timers.mock.calls.length - before;
    timers.mockRestore();
    // The unpatched queue sets one every millisecond or so: hundreds here. A handful may come from the client's own housekeeping.
    expect(set).toBeLessThan(20);
  } finally {
    await producer.disconnect();
  }
});
