import Handlebars from 'handlebars';
import { InvalidArgumentError } from '@switchboard/errors';
import { notificationV1 } from '@switchboard/proto';

const { Channel } = notificationV1;
type Channel = notificationV1.Channel;

/**
 * Templates are Handlebars with a deliberately small grammar: `{{name}}`
 * placeholders (HTML-escaped in html_body, plain in text fields),
 * `{{#if name}}…{{else}}…{{/if}}` / `{{#unless}}` on a variable, and comments.
 * No helpers, no paths into objects, no partials: variables are a flat string
 * map, and a template can neither reach prototype properties nor run code.
 * A placeholder without a value is an error naming it, never a blank.
 */
export interface TemplateContent {
  title: string;
  body: string;
  htmlBody: string;
  data: Record<string, string>;
}

export interface Rendered extends TemplateContent {}

const VARIABLE = /^[A-Za-z_][A-Za-z0-9_]{0,63}$/;
const MAX_TEMPLATE_LENGTH = 20_000;

export class TemplateSyntaxError extends InvalidArgumentError {}

/** A placeholder without a value: names every missing variable at once. */
export class MissingVariablesError extends InvalidArgumentError {
  constructor(
    readonly missing: string[],
    where: string,
  ) {
    super(`missing variables for ${where}: ${missing.join(', ')}`, { field: 'variables' });
  }
}

interface Usage {
  /** Printed by a placeholder: must have a value. */
  required: Set<string>;
  /** Only tested by #if/#unless: may be absent (counts as false). */
  optional: Set<string>;
}

type Node = hbs.AST.Statement | hbs.AST.Program;

function variableName(expr: hbs.AST.Expression, field: string): string {
  const path = expr as hbs.AST.PathExpression;
  if (path.type !== 'PathExpression' || path.depth !== 0 || path.parts.length !== 1 || path.data || !VARIABLE.test(path.original)) {
    throw new TemplateSyntaxError(`${field}: only plain {{variable}} names are allowed`, { field });
  }
  return path.original;
}

function walk(node: Node, usage: Usage, field: string, html: boolean): void {
  switch (node.type) {
    case 'Program':
      for (const statement of (node as hbs.AST.Program).body) walk(statement, usage, field, html);
      return;
    case 'ContentStatement':
    case 'CommentStatement':
      return;
    case 'MustacheStatement': {
      const mustache = node as hbs.AST.MustacheStatement;
      if (mustache.params.length > 0 || mustache.hash) throw new TemplateSyntaxError(`${field}: helpers are not allowed`, { field });
      if (html && !mustache.escaped) throw new TemplateSyntaxError(`${field}: unescaped {{{…}}} placeholders are not allowed in HTML`, { field });
      usage.required.add(variableName(mustache.path, field));
      return;
    }
    case 'BlockStatement': {
      const block = node as hbs.AST.BlockStatement;
      const helper = (block.path as hbs.AST.PathExpression).original;
      if ((helper !== 'if' && helper !== 'unless') || block.params.length !== 1 || block.hash) {
        throw new TemplateSyntaxError(`${field}: only {{#if variable}} and {{#unless variable}} blocks are allowed`, { field });
      }
      usage.optional.add(variableName(block.params[0]!, field));
      if (block.program) walk(block.program, usage, field, html);
      if (block.inverse) walk(block.inverse, usage, field, html);
      return;
    }
    default:
      throw new TemplateSyntaxError(`${field}: ${node.type} is not allowed in templates`, { field });
  }
}

function parse(source: string, field: string): hbs.AST.Program {
  if (source.length > MAX_TEMPLATE_LENGTH) throw new TemplateSyntaxError(`${field} is longer than ${MAX_TEMPLATE_LENGTH} characters`, { field });
  try {
    return Handlebars.parse(source);
  } catch (err) {
    throw new TemplateSyntaxError(`${field} does not parse: ${(err as Error).message.split('\n')[0]}`, { field, cause: err });
  }
}

const analysed = new Map<string, Usage>();

/** Checks a template's grammar; returns the variables it prints and the ones it only tests (cached per content). */
export function analyse(content: TemplateContent): Usage {
  const key = JSON.stringify([content.title, content.body, content.htmlBody, content.data]);
  const known = analysed.get(key);
  if (known) return known;
  const usage = analyseUncached(content);
  if (analysed.size > 5000) analysed.clear();
  analysed.set(key, usage);
  return usage;
}

function analyseUncached(content: TemplateContent): Usage {
  const usage: Usage = { required: new Set(), optional: new Set() };
  walk(parse(content.title, 'template.title'), usage, 'template.title', false);
  walk(parse(content.body, 'template.body'), usage, 'template.body', false);
  walk(parse(content.htmlBody, 'template.html_body'), usage, 'template.html_body', true);
  for (const [key, value] of Object.entries(content.data)) walk(parse(value, `template.data.${key}`), usage, `template.data.${key}`, false);
  for (const name of usage.required) usage.optional.delete(name);
  return usage;
}

export function missingVariables(content: TemplateContent, variables: Record<string, string>): string[] {
  return [...analyse(content).required].filter((name) => !Object.prototype.hasOwnProperty.call(variables, name)).sort();
}

const compiled = new Map<string, HandlebarsTemplateDelegate>();

function compile(source: string, html: boolean): HandlebarsTemplateDelegate {
  const key = `${html ? 'h' : 't'}:${source}`;
  let fn = compiled.get(key);
  if (!fn) {
    fn = Handlebars.compile(source, { noEscape: !html, strict: false, knownHelpersOnly: true, knownHelpers: { if: true, unless: true } });
    if (compiled.size > 5000) compiled.clear();
    compiled.set(key, fn);
  }
  return fn;
}

/**
 * Renders every part. With `lenient`, missing variables render empty and
 * are reported (for authors previewing a draft); otherwise they throw.
 */
export function render(content: TemplateContent, variables: Record<string, string>, where: string, lenient = false): Rendered & { missing: string[] } {
  const usage = analyse(content);
  const missing = [...usage.required].filter((name) => !Object.prototype.hasOwnProperty.call(variables, name)).sort();
  if (missing.length > 0 && !lenient) throw new MissingVariablesError(missing, where);
  const scope: Record<string, string> = Object.create(null) as Record<string, string>;
  for (const name of [...usage.required, ...usage.optional]) scope[name] = Object.prototype.hasOwnProperty.call(variables, name) ? variables[name]! : '';
  const options = { allowProtoPropertiesByDefault: false, allowProtoMethodsByDefault: false };
  const data: Record<string, string> = {};
  for (const [key, value] of Object.entries(content.data)) data[key] = compile(value, false)(scope, options);
  return {
    title: compile(content.title, false)(scope, options),
    body: compile(content.body, false)(scope, options),
    htmlBody: content.htmlBody ? compile(content.htmlBody, true)(scope, options) : '',
    data,
    missing,
  };
}

/** BCP 47, loosely: `en`, `es-MX`, `zh-Hant-TW`. */
const LOCALE = /^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8}){0,3}$/;

export function normaliseLocale(locale: string, field: string): string {
  if (!LOCALE.test(locale)) throw new InvalidArgumentError(`${field} is not a BCP 47 language tag`, { field });
  try {
    return Intl.getCanonicalLocales(locale)[0]!;
  } catch {
    throw new InvalidArgumentError(`${field} is not a BCP 47 language tag`, { field });
  }
}

/**
 * Locales to try, best first: the user's (`es-MX`), its language (`es`),
 * the tenant default and its language, then `en`.
 */
export function localeChain(userLocale: string, tenantLocale: string): string[] {
  const chain: string[] = [];
  const add = (locale: string) => {
    if (!locale) return;
    const parts = locale.split('-');
    for (let n = parts.length; n >= 1; n -= 1) {
      const candidate = parts.slice(0, n).join('-');
      if (!chain.includes(candidate)) chain.push(candidate);
    }
  };
  add(userLocale);
  add(tenantLocale);
  add('en');
  return chain;
}

/**
 * What the platform says when a tenant has no template of its own. Push and
 * email leave the platform, so they carry no message text (no health
 * information); in-app shows a preview.
 */
const BUILT_IN: Record<string, Partial<Record<Channel, TemplateContent>>> = {
  'message.new': {
    [Channel.CHANNEL_IN_APP]: { title: 'New message', body: '{{preview}}', htmlBody: '', data: {} },
    [Channel.CHANNEL_PUSH]: { title: 'New message', body: 'You have a new message', htmlBody: '', data: {} },
    [Channel.CHANNEL_EMAIL]: {
      title: 'You have a new message',
      body: 'You have an unread message. Open the app to read it.',
      htmlBody: '<p>You have an unread message. Open the app to read it.</p>',
      data: {},
    },
  },
  'message.mention': {
    [Channel.CHANNEL_IN_APP]: { title: 'You were mentioned', body: '{{preview}}', htmlBody: '', data: {} },
    [Channel.CHANNEL_PUSH]: { title: 'You were mentioned', body: 'Someone mentioned you in a conversation', htmlBody: '', data: {} },
    [Channel.CHANNEL_EMAIL]: {
      title: 'You were mentioned',
      body: 'Someone mentioned you in a conversation. Open the app to read it.',
      htmlBody: '<p>Someone mentioned you in a conversation. Open the app to read it.</p>',
      data: {},
    },
  },
  'message.announcement': {
    [Channel.CHANNEL_IN_APP]: { title: 'Announcement', body: '{{preview}}', htmlBody: '', data: {} },
    [Channel.CHANNEL_PUSH]: { title: 'Announcement', body: 'There is a new announcement', htmlBody: '', data: {} },
    [Channel.CHANNEL_EMAIL]: {
      title: 'New announcement',
      body: 'There is a new announcement. Open the app to read it.',
      htmlBody: '<p>There is a new announcement. Open the app to read it.</p>',
      data: {},
    },
  },
  'notification.digest': {
    [Channel.CHANNEL_PUSH]: { title: 'You have {{count}} new notifications', body: '{{summary}}', htmlBody: '', data: {} },
    [Channel.CHANNEL_EMAIL]: {
      title: 'You have {{count}} new notifications',
      body: '{{summary}}',
      htmlBody: '<p>You have {{count}} new notifications:</p><pre>{{summary}}</pre>',
      data: {},
    },
  },
};

export const DIGEST_KIND = 'notification.digest';

export function builtInTemplate(kind: string, channel: Channel): TemplateContent | undefined {
  return BUILT_IN[kind]?.[channel];
}
