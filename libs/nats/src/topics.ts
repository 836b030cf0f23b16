import { InvalidArgumentError } from '@switchboard/errors';
import { SAFE_ID_PATTERN } from '@switchboard/ids';

/**
 * Broadcast event topics and the NATS-style patterns that select them, below
 * a tenant's `sb.<tenant>.evt.` (docs/protocol.md, "Live events"). A topic is
 * dot-separated tokens of the safe id alphabet; a pattern may also use `*`
 * (exactly one token) and `>` (one or more tokens, last only). Parsed here,
 * once, so the gateway's frames, its admin API and the token's claim all
 * refuse the same things with the same words.
 */
export const EVENT_TOPIC_LIMITS = {
  /** Characters of a whole topic or pattern. */
  maxLength: 256,
  /** Tokens of a topic or pattern. */
  maxTokens: 16,
} as const;

export type EventTokens = readonly string[];

function tokensOf(value: unknown, field: string, what: 'topic' | 'pattern'): string[] {
  if (typeof value !== 'string') throw new InvalidArgumentError(`${field} must be a string (an event ${what})`, { field });
  if (value === '') throw new InvalidArgumentError(`${field} is required`, { field });
  if (value.length > EVENT_TOPIC_LIMITS.maxLength) {
    throw new InvalidArgumentError(`${field} is ${value.length} characters; an event ${what} has at most ${EVENT_TOPIC_LIMITS.maxLength}`, { field });
  }
  const tokens = value.split('.');
  if (tokens.length > EVENT_TOPIC_LIMITS.maxTokens) {
    throw new InvalidArgumentError(`${field} has ${tokens.length} tokens; an event ${what} has at most ${EVENT_TOPIC_LIMITS.maxTokens}`, { field });
  }
  return tokens;
}

/** Echoes a refused token safely (bounded, printable) in an error message. */
function quote(token: string): string {
  return JSON.stringify(token.length > 32 ? `${token.slice(0, 32)}…` : token);
}

function checkLiteral(token: string, index: number, field: string, what: 'topic' | 'pattern'): void {
  if (token === '') throw new InvalidArgumentError(`${field} has an empty token at position ${index + 1} (no leading, trailing or double dots)`, { field });
  if (SAFE_ID_PATTERN.test(token)) return;
  if (what === 'topic' && (token === '*' || token === '>')) {
    throw new InvalidArgumentError(`${field} contains the wildcard ${token}: an event is published on a concrete topic (wildcards are for subscribing)`, { field });
  }
  if (/[*>]/.test(token)) {
    throw new InvalidArgumentError(`${field} token ${quote(token)} mixes a wildcard with other characters: * and > stand alone as a whole token`, { field });
  }
  throw new InvalidArgumentError(`${field} token ${quote(token)} must be 1-128 characters of A-Z, a-z, 0-9, '_' or '-'`, { field });
}

/** A topic to publish on: tokens of the safe alphabet, no wildcards. Throws INVALID_ARGUMENT naming `field`. */
export function parseEventTopic(topic: unknown, field = 'topic'): EventTokens {
  const tokens = tokensOf(topic, field, 'topic');
  tokens.forEach((token, index) => checkLiteral(token, index, field, 'topic'));
  return tokens;
}

/** A pattern to subscribe with: tokens, `*`, and `>` as the last token only. Throws INVALID_ARGUMENT naming `field`. */
export function parseEventPattern(pattern: unknown, field = 'pattern'): EventTokens {
  const tokens = tokensOf(pattern, field, 'pattern');
  tokens.forEach((token, index) => {
    if (token === '*') return;
    if (token === '>') {
      if (index === tokens.length - 1) return;
      throw new InvalidArgumentError(`${field} has > at position ${index + 1} of ${tokens.length}: > matches the rest of a topic and must be the last token`, { field });
    }
    checkLiteral(token, index, field, 'pattern');
  });
  return tokens;
}

/** Whether a topic (no wildcards) is selected by a pattern. */
export function patternMatches(pattern: EventTokens, topic: EventTokens): boolean {
  for (let index = 0; index < pattern.length; index += 1) {
    const token = pattern[index];
    if (token === '>') return topic.length > index;
    if (index >= topic.length) return false;
    if (token !== '*' && token !== topic[index]) return false;
  }
  return pattern.length === topic.length;
}

/**
 * Whether every topic `requested` selects is also selected by `allowed` (the
 * token's claim covers the subscription). `*` covers any one token or `*`;
 * `>` covers one or more tokens of anything, `>` included.
 */
export function patternCovers(allowed: EventTokens, requested: EventTokens): boolean {
  for (let index = 0; index < allowed.length; index += 1) {
    const token = allowed[index];
    if (token === '>') return requested.length > index;
    if (index >= requested.length) return false;
    const wanted = requested[index];
    if (wanted === '>') return false;
    if (token !== '*' && token !== wanted) return false;
  }
  return allowed.length === requested.length;
}
