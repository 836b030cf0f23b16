import { ConfigError, env, loadConfig } from '../src';

const shape = {
  PORT: env.port(8080),
  NAME: env.string('gateway'),
  DATABASE_URL: env.url('postgres://localhost/db', ['postgres']),
  ORIGINS: env.list([]),
  ENABLED: env.boolean(false),
};

describe('loadConfig', () => {
  it('uses the defaults when nothing is set, and empty variables count as unset', () => {
    expect(loadConfig(shape, { NAME: '' })).toEqual({ PORT: 8080, NAME: 'gateway', DATABASE_URL: 'postgres://localhost/db', ORIGINS: [], ENABLED: false });
  });

  it('parses set variables into their types', () => {
    const config = loadConfig(shape, { PORT: '9000', ORIGINS: 'https://a.example, https://b.example', ENABLED: 'true' });
    expect(config.PORT).toBe(9000);
    expect(config.ORIGINS).toEqual(['https://a.example', 'https://b.example']);
    expect(config.ENABLED).toBe(true);
  });

  it('names every bad variable and what it got', () => {
    let thrown: unknown;
    try {
      loadConfig(shape, { PORT: 'abc', DATABASE_URL: 'mysql://x', ENABLED: 'yes' });
    } catch (err) {
      thrown = err;
    }
    expect(thrown).toBeInstanceOf(ConfigError);
    const message = (thrown as Error).message;
    expect(message).toContain('PORT: expected a port (0-65535), got "abc"');
    expect(message).toContain('DATABASE_URL: expected a URL with scheme postgres, got "mysql://x"');
    expect(message).toContain('ENABLED: expected true or false, got "yes"');
    expect((thrown as ConfigError).problems).toHaveLength(3);
  });

  it('refuses ports out of range', () => {
    expect(() => loadConfig(shape, { PORT: '70000' })).toThrow('PORT: expected a port (0-65535), got "70000"');
  });
});
