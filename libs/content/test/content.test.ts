import { readFileSync } from 'node:fs';
import * as path from 'node:path';
import { parse, parseFragment } from 'parse5';
import { ErrorCode, SwitchboardError } from '@switchboard/errors';
import { inertText, messageContent, MESSAGE_BOUNDS, unescapeText } from '../src';

// Known XSS vectors (OWASP filter-evasion cheat sheet and friends), one per line.
const corpus = [
  ...readFileSync(path.join(__dirname, 'xss-vectors.txt'), 'utf8').split('\n').filter(Boolean),
  '<script\n>alert(1)</script>',
  '<img\u0000 src=x onerror=alert(1)>',
  '<scr\u0000ipt>alert(1)</script>',
];

type Node = { nodeName: string; childNodes?: Node[]; content?: Node };

/** Every node an HTML parser builds from the string, as a browser's innerHTML would. */
function nodesOf(root: Node): Node[] {
  const all: Node[] = [];
  const walk = (node: Node) => {
    for (const child of node.childNodes ?? []) {
      all.push(child);
      walk(child);
    }
    if (node.content) walk(node.content);
  };
  walk(root);
  return all;
}

function inert(text: string) {
  return messageContent({ text, attachments: [], mentions: [], metadata: {} }, { maxTextLength: 16_384 }).text;
}

describe('content policy: stored text is HTML-inert', () => {
  it(`no vector of the corpus (${corpus.length}) makes an element, comment or attribute when a client inserts it as HTML`, () => {
    const held: string[] = [];
    for (const vector of corpus) {
      const stored = inert(vector);
      // In a <div> (innerHTML) and as the whole body of a page, the parser sees text only.
      const inDiv = nodesOf(parseFragment(stored) as unknown as Node);
      const inPage = nodesOf(parse(`<!doctype html><title>t</title><body>${stored}</body>`) as unknown as Node);
      const body = inPage.find((n) => n.nodeName === 'body')!;
      const underBody = nodesOf(body);
      expect({ vector, kinds: [...new Set(inDiv.map((n) => n.nodeName))] }).toEqual({ vector, kinds: inDiv.length ? ['#text'] : [] });
      expect({ vector, kinds: [...new Set(underBody.map((n) => n.nodeName))] }).toEqual({ vector, kinds: underBody.length ? ['#text'] : [] });
      expect(stored).not.toMatch(/</);
      held.push(vector);
    }
    console.log(`content policy: ${held.length} XSS vectors stored HTML-inert (text nodes only in a parser)`);
  });

  it('keeps what the user wrote: a plain-text client shows the original characters', () => {
    for (const vector of corpus.filter((v) => !/[\u0000]/.test(v))) {
      expect(unescapeText(inert(vector))).toBe(vector.normalize('NFC'));
    }
    expect(inertText('BP < 120 & HR > 60')).toBe('BP &lt; 120 &amp; HR &gt; 60');
    expect(unescapeText(inertText('already &amp; escaped'))).toBe('already &amp; escaped');
  });

  it('removes control characters, repairs lone surrogates and normalises to NFC', () => {
    expect(inertText('a\u0000b\u0007c\u001bd\u009be')).toBe('abcde');
    expect(inertText('line\nnext\ttab\r')).toBe('line\nnext\ttab\r');
    expect(inertText('bad \ud800 surrogate')).toBe('bad \ufffd surrogate');
    expect(inertText('e\u0301')).toBe('\u00e9');
    expect(inertText('emoji 😀 kept')).toBe('emoji 😀 kept');
  });

  it('makes file names and metadata values inert too', () => {
    const stored = messageContent(
      {
        text: '',
        attachments: [{ attachmentId: 'att-1', contentType: 'application/pdf', sizeBytes: 10, fileName: '<img src=x onerror=alert(1)>.pdf', storageRef: 'tenants/acme/att-1' }],
        mentions: [],
        metadata: { note: '<script>alert(1)</script>' },
      },
      { maxTextLength: 100 },
    );
    expect(stored.attachments[0]!.fileName).toBe('&lt;img src=x onerror=alert(1)&gt;.pdf');
    expect(stored.metadata['note']).toBe('&lt;script&gt;alert(1)&lt;/script&gt;');
  });
});

describe('content policy: bounds', () => {
  const base = { text: 'hi', attachments: [], mentions: [], metadata: {} };
  const attachment = { attachmentId: 'a1', contentType: 'image/png', sizeBytes: 1, fileName: 'x.png', storageRef: 'k/x.png' };
  const refused = (content: Partial<Parameters<typeof messageContent>[0]>): SwitchboardError => {
    try {
      messageContent({ ...base, ...content }, { maxTextLength: 100 });
    } catch (err) {
      return err as SwitchboardError;
    }
    throw new Error('expected a refusal');
  };

  it.each([
    ['text', { text: 'x'.repeat(101) }],
    ['attachments', { attachments: Array.from({ length: MESSAGE_BOUNDS.attachments + 1 }, () => attachment) }],
    ['attachments[0].content_type', { attachments: [{ ...attachment, contentType: 'text/html"><script>' }] }],
    ['attachments[0].attachment_id', { attachments: [{ ...attachment, attachmentId: '../etc/passwd' }] }],
    ['attachments[0].storage_ref', { attachments: [{ ...attachment, storageRef: 'javascript:"<x>"' }] }],
    ['attachments[0].file_name', { attachments: [{ ...attachment, fileName: 'n'.repeat(256) }] }],
    ['mentions', { mentions: Array.from({ length: MESSAGE_BOUNDS.mentions + 1 }, (_, i) => `u${i}`) }],
    ['metadata', { metadata: Object.fromEntries(Array.from({ length: MESSAGE_BOUNDS.metadataEntries + 1 }, (_, i) => [`k${i}`, 'v'])) }],
    ['metadata', { metadata: { 'bad key': 'v' } }],
    ['metadata.k', { metadata: { k: 'v'.repeat(MESSAGE_BOUNDS.metadataValueLength + 1) } }],
    ['text', { text: '\u0000\u0001' }],
  ])('refuses an out-of-bounds %s with INVALID_ARGUMENT naming it', (field, content) => {
    const err = refused(content as Partial<Parameters<typeof messageContent>[0]>);
    expect(err.code).toBe(ErrorCode.ERROR_CODE_INVALID_ARGUMENT);
    expect(err.field).toBe(field);
  });
});
