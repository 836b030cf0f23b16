import { ErrorCode } from '@switchboard/errors';
import { notificationV1 } from '@switchboard/proto';
import { analyse, builtInTemplate, localeChain, MissingVariablesError, normaliseLocale, render } from '../src/templates';

const content = (fields: Partial<{ title: string; body: string; htmlBody: string; data: Record<string, string> }>) => ({ title: '', body: '', htmlBody: '', data: {}, ...fields });

describe('templates', () => {
  it('fills placeholders, plain in text and escaped in HTML', () => {
    const rendered = render(
      content({ title: 'Result for {{patient}}', body: '{{patient}} & co', htmlBody: '<p>{{patient}}</p>', data: { link: 'app://labs/{{id}}' } }),
      { patient: '<script>alert(1)</script>', id: 'r1' },
      'test',
    );
    expect(rendered.title).toBe('Result for <script>alert(1)</script>');
    expect(rendered.body).toBe('<script>alert(1)</script> & co');
    expect(rendered.htmlBody).toBe('<p>&lt;script&gt;alert(1)&lt;/script&gt;</p>');
    expect(rendered.data).toEqual({ link: 'app://labs/r1' });
  });

  it('names every missing variable instead of rendering blanks', () => {
    const thrown = (() => {
      try {
        render(content({ title: '{{a}} {{b}}', body: '{{c}}' }), { b: 'x' }, 'lab.result_ready in-app en template');
      } catch (err) {
        return err as MissingVariablesError;
      }
      throw new Error('expected a failure');
    })();
    expect(thrown).toBeInstanceOf(MissingVariablesError);
    expect(thrown.code).toBe(ErrorCode.ERROR_CODE_INVALID_ARGUMENT);
    expect(thrown.missing).toEqual(['a', 'c']);
    expect(thrown.message).toBe('missing variables for lab.result_ready in-app en template: a, c');
    // Lenient (author preview): reported, rendered empty.
    expect(render(content({ title: '{{a}}!' }), {}, 'x', true)).toMatchObject({ title: '!', missing: ['a'] });
  });

  it('treats variables only tested by #if as optional', () => {
    const t = content({ title: '{{#if urgent}}URGENT: {{/if}}{{what}}' });
    expect(render(t, { what: 'K+ 6.1' }, 'x').title).toBe('K+ 6.1');
    expect(render(t, { what: 'K+ 6.1', urgent: 'yes' }, 'x').title).toBe('URGENT: K+ 6.1');
    expect([...analyse(t).optional]).toEqual(['urgent']);
  });

  it.each([
    ['a helper', '{{lookup this "constructor"}}'],
    ['a path into an object', '{{user.name}}'],
    ['a parent path', '{{../secret}}'],
    ['data variables', '{{@root}}'],
    ['partials', '{{> evil}}'],
    ['#each', '{{#each items}}{{this}}{{/each}}'],
    ['broken syntax', '{{unclosed'],
  ])('refuses %s', (_what, title) => {
    expect(() => analyse(content({ title }))).toThrow(expect.objectContaining({ code: ErrorCode.ERROR_CODE_INVALID_ARGUMENT, field: 'template.title' }));
  });

  it('refuses unescaped placeholders in HTML only', () => {
    expect(() => analyse(content({ htmlBody: '<p>{{{name}}}</p>' }))).toThrow(/unescaped/);
    expect(() => analyse(content({ body: '{{{name}}}' }))).not.toThrow();
  });

  it('falls back from the user’s locale to its language, the tenant default, then English', () => {
    expect(localeChain('es-MX', 'fr-CA')).toEqual(['es-MX', 'es', 'fr-CA', 'fr', 'en']);
    expect(localeChain('', 'en')).toEqual(['en']);
    expect(localeChain('zh-Hant-TW', '')).toEqual(['zh-Hant-TW', 'zh-Hant', 'zh', 'en']);
    expect(normaliseLocale('es-mx', 'locale')).toBe('es-MX');
    expect(() => normaliseLocale('español', 'locale')).toThrow(expect.objectContaining({ field: 'locale' }));
  });

  it('ships platform templates for messages that keep message text out of push and email', () => {
    for (const kind of ['message.new', 'message.mention', 'message.announcement']) {
      expect(builtInTemplate(kind, notificationV1.Channel.CHANNEL_IN_APP)!.body).toBe('{{preview}}');
      for (const channel of [notificationV1.Channel.CHANNEL_PUSH, notificationV1.Channel.CHANNEL_EMAIL]) {
        const t = builtInTemplate(kind, channel)!;
        expect(JSON.stringify(t)).not.toContain('preview');
      }
    }
    expect(builtInTemplate('lab.result_ready', notificationV1.Channel.CHANNEL_IN_APP)).toBeUndefined();
  });
});
