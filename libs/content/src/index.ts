import { InvalidArgumentError } from '@switchboard/errors';

/**
 * The content policy (docs/security.md, "Content"): text that users store
 * and other users' clients display is plain text, made HTML-inert on the way
 * in, so that no stored value can become markup or script in any client.
 *
 * 1. Unicode is made well-formed (lone surrogates become U+FFFD) and NFC
 *    normalised, so one text has one stored form.
 * 2. Control characters are removed, except tab, line feed and carriage
 *    return: they have no place in a message and some (NUL) break storage or
 *    terminals.
 * 3. `&`, `<` and `>` are stored as `&amp;`, `&lt;` and `&gt;` (the rule
 *    Slack's message format uses). Without a raw `<` the HTML tokenizer can
 *    never open a tag, comment or CDATA section, so a client that inserts the
 *    text as HTML shows the characters and creates no element, attribute,
 *    URL or event handler. A client that renders plain text turns the three
 *    entities back with {@link unescapeText}.
 *
 * Quotes are left alone: message text belongs in element content, never in
 * an attribute; a client that puts it into an attribute must encode it for
 * that context itself.
 */

const HTML_ESCAPES: Record<string, string> = { '&': '&amp;', '<': '&lt;', '>': '&gt;' };
const HTML_UNESCAPES: Record<string, string> = { '&amp;': '&', '&lt;': '<', '&gt;': '>' };
// C0 controls except \t \n \r, DEL, and C1 controls.
const CONTROL_CHARACTERS = /[\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F-\u009F]/g;

/** Plain text as it is stored: well-formed, NFC, without control characters, HTML-inert. */
export function inertText(text: string): string {
  return text
    .replace(/\p{Cs}/gu, '\uFFFD')
    .normalize('NFC')
    .replace(CONTROL_CHARACTERS, '')
    .replace(/[&<>]/g, (c) => HTML_ESCAPES[c]!);
}

/** What a plain-text client shows: the stored text with the three entities turned back. */
export function unescapeText(stored: string): string {
  return stored.replace(/&(amp|lt|gt);/g, (entity) => HTML_UNESCAPES[entity]!);
}

/** Bounds of a message's user-supplied parts. */
export const MESSAGE_BOUNDS = {
  attachments: 10,
  attachmentIdLength: 128,
  fileNameLength: 255,
  contentTypeLength: 127,
  storageRefLength: 1024,
  mentions: 50,
  metadataEntries: 32,
  metadataKeyLength: 64,
  metadataValueLength: 1024,
} as const;

export interface MessageAttachment {
  attachmentId: string;
  contentType: string;
  sizeBytes: number;
  fileName: string;
  storageRef: string;
}

export interface MessageContent {
  text: string;
  attachments: MessageAttachment[];
  mentions: string[];
  metadata: { [key: string]: string };
}

// type/subtype with the token characters of RFC 6838, optional parameters not allowed.
const MIME_TYPE = /^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,62}\/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,62}$/;
const METADATA_KEY = /^[A-Za-z0-9_.-]+$/;
// An object-storage key: printable ASCII without quotes, angle brackets or backslash.
const STORAGE_REF = /^[A-Za-z0-9_.~:/=+@,;!*()$%-]+$/;

function bounded(value: string, max: number, field: string): string {
  if (value.length > max) throw new InvalidArgumentError(`${field} is longer than ${max} characters`, { field });
  return value;
}

/**
 * Checks every user-supplied part of a message against its bounds and
 * returns it as stored: text, file names and metadata values HTML-inert,
 * content types and storage references limited to their own alphabets.
 * Throws INVALID_ARGUMENT naming the field for anything out of bounds.
 */
export function messageContent(content: MessageContent, bounds: { maxTextLength: number }): MessageContent {
  const text = inertText(bounded(content.text, bounds.maxTextLength, 'text'));
  if (content.text.length > 0 && text.length === 0 && content.attachments.length === 0) {
    throw new InvalidArgumentError('text has no visible characters', { field: 'text' });
  }
  if (content.attachments.length > MESSAGE_BOUNDS.attachments) {
    throw new InvalidArgumentError(`at most ${MESSAGE_BOUNDS.attachments} attachments`, { field: 'attachments' });
  }
  const attachments = content.attachments.map((attachment, index) => {
    const field = (name: string) => `attachments[${index}].${name}`;
    const attachmentId = bounded(attachment.attachmentId, MESSAGE_BOUNDS.attachmentIdLength, field('attachment_id'));
    if (!/^[A-Za-z0-9_-]+$/.test(attachmentId)) throw new InvalidArgumentError('attachment_id must be 1-128 characters of A-Z, a-z, 0-9, _ or -', { field: field('attachment_id') });
    if (!MIME_TYPE.test(attachment.contentType)) throw new InvalidArgumentError('content_type must be a MIME type (type/subtype)', { field: field('content_type') });
    const storageRef = bounded(attachment.storageRef, MESSAGE_BOUNDS.storageRefLength, field('storage_ref'));
    if (storageRef !== '' && !STORAGE_REF.test(storageRef)) throw new InvalidArgumentError('storage_ref has characters an object key cannot have', { field: field('storage_ref') });
    return {
      attachmentId,
      contentType: attachment.contentType,
      sizeBytes: attachment.sizeBytes,
      fileName: inertText(bounded(attachment.fileName, MESSAGE_BOUNDS.fileNameLength, field('file_name'))),
      storageRef,
    };
  });
  if (content.mentions.length > MESSAGE_BOUNDS.mentions) {
    throw new InvalidArgumentError(`at most ${MESSAGE_BOUNDS.mentions} mentions`, { field: 'mentions' });
  }
  const entries = Object.entries(content.metadata);
  if (entries.length > MESSAGE_BOUNDS.metadataEntries) {
    throw new InvalidArgumentError(`at most ${MESSAGE_BOUNDS.metadataEntries} metadata entries`, { field: 'metadata' });
  }
  const metadata: { [key: string]: string } = {};
  for (const [key, value] of entries) {
    if (!METADATA_KEY.test(bounded(key, MESSAGE_BOUNDS.metadataKeyLength, 'metadata'))) {
      throw new InvalidArgumentError('metadata keys are 1-64 characters of A-Z, a-z, 0-9, _, . or -', { field: 'metadata' });
    }
    metadata[key] = inertText(bounded(value, MESSAGE_BOUNDS.metadataValueLength, `metadata.${key}`));
  }
  return { text, attachments, mentions: content.mentions, metadata };
}
