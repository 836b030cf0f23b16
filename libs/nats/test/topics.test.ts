import { ErrorCode, SwitchboardError } from '@switchboard/errors';
import { EVENT_STREAM, EVENT_STREAM_SUBJECT, eventStreamConfig, parseEventPattern, parseEventTopic, patternCovers, patternMatches } from '../src';

const p = (pattern: string) => parseEventPattern(pattern);
const t = (topic: string) => parseEventTopic(topic);

function refusal(parse: () => unknown): { code: ErrorCode; field: string; message: string } {
  try {
    parse();
  } catch (err) {
    expect(err).toBeInstanceOf(SwitchboardError);
    const { code, field, message } = err as SwitchboardError;
    return { code, field: field ?? '', message };
  }
  throw new Error('expected a refusal');
}

describe('event topics', () => {
  it('accepts dot-separated safe tokens', () => {
    expect(t('labs.results.ward-7')).toEqual(['labs', 'results', 'ward-7']);
    expect(t('a')).toEqual(['a']);
  });

  it.each([
    ['', /topic is required/],
    ['labs..results', /empty token at position 2/],
    ['.labs', /empty token at position 1/],
    ['labs.', /empty token at position 2/],
    ['labs.*', /contains the wildcard \*: an event is published on a concrete topic/],
    ['labs.>', /contains the wildcard >/],
    ['labs.res*', /mixes a wildcard with other characters/],
    ['labs.rés', /token "rés" must be 1-128 characters/],
    ['labs.a b', /token "a b" must be/],
    ['x'.repeat(257), /257 characters; an event topic has at most 256/],
    [Array.from({ length: 17 }, () => 'a').join('.'), /17 tokens; an event topic has at most 16/],
    [`labs.${'x'.repeat(129)}`, /must be 1-128 characters/],
  ])('refuses %j with INVALID_ARGUMENT saying why', (topic, message) => {
    const refused = refusal(() => t(topic));
    expect(refused).toMatchObject({ code: ErrorCode.ERROR_CODE_INVALID_ARGUMENT, field: 'topic' });
    expect(refused.message).toMatch(message);
  });
});

describe('event patterns', () => {
  it('accepts tokens, * anywhere and > last', () => {
    expect(p('labs.*.ward7')).toEqual(['labs', '*', 'ward7']);
    expect(p('labs.>')).toEqual(['labs', '>']);
    expect(p('>')).toEqual(['>']);
    expect(p('*')).toEqual(['*']);
  });

  it.each([
    ['', /pattern is required/],
    ['labs.>.x', /> at position 2 of 3: > matches the rest of a topic and must be the last token/],
    ['labs.**', /mixes a wildcard/],
    ['labs.a>', /mixes a wildcard/],
    ['labs..x', /empty token at position 2/],
    ['labs.$x', /token "\$x" must be/],
    ['x'.repeat(257), /at most 256/],
  ])('refuses %j with INVALID_ARGUMENT saying why', (pattern, message) => {
    const refused = refusal(() => p(pattern));
    expect(refused).toMatchObject({ code: ErrorCode.ERROR_CODE_INVALID_ARGUMENT, field: 'pattern' });
    expect(refused.message).toMatch(message);
  });

  it.each([
    ['labs.*', 'labs.results', true],
    ['labs.*', 'labs', false],
    ['labs.*', 'labs.results.ward7', false],
    ['labs.>', 'labs.results', true],
    ['labs.>', 'labs.results.ward7', true],
    ['labs.>', 'labs', false],
    ['*.results', 'labs.results', true],
    ['*.results', 'imaging.results', true],
    ['*.results', 'labs.orders', false],
    ['labs.results', 'labs.results', true],
    ['labs.results', 'labs.results.x', false],
    ['>', 'anything.at.all', true],
    ['labs.*.ward7', 'labs.results.ward7', true],
    ['labs.*.ward7', 'labs.results.ward8', false],
  ])('%s matches %s: %s', (pattern, topic, expected) => {
    expect(patternMatches(p(pattern), t(topic))).toBe(expected);
  });

  it.each([
    ['labs.>', 'labs.results', true],
    ['labs.>', 'labs.*', true],
    ['labs.>', 'labs.>', true],
    ['labs.>', 'labs.*.>', true],
    ['labs.>', 'labs', false],
    ['labs.>', 'imaging.>', false],
    ['labs.>', '>', false],
    ['labs.*', 'labs.results', true],
    ['labs.*', 'labs.*', true],
    ['labs.*', 'labs.>', false],
    ['labs.*', 'labs.results.ward7', false],
    ['*.results', 'labs.results', true],
    ['*.results', '*.results', true],
    ['*.results', '>', false],
    ['labs.results', 'labs.results', true],
    ['labs.results', 'labs.*', false],
    ['>', '>', true],
    ['>', 'a.*.>', true],
  ])('a claim of %s covers a subscription to %s: %s', (allowed, requested, expected) => {
    expect(patternCovers(p(allowed), p(requested))).toBe(expected);
  });
});

describe('the event stream', () => {
  it('stores every tenant\'s event subjects with limits retention, discard old and the duplicate window in nanoseconds', () => {
    const config = eventStreamConfig({ maxAgeMs: 3_600_000, maxBytes: 1024, duplicateWindowMs: 120_000, maxMessageBytes: 4096, replicas: 1 });
    expect(config).toMatchObject({
      name: EVENT_STREAM,
      subjects: [EVENT_STREAM_SUBJECT],
      retention: 'limits',
      discard: 'old',
      storage: 'file',
      max_age: 3_600_000 * 1e6,
      max_bytes: 1024,
      max_msg_size: 4096,
      duplicate_window: 120_000 * 1e6,
      num_replicas: 1,
    });
    expect(EVENT_STREAM_SUBJECT).toBe('sb.*.evt.>');
  });
});
