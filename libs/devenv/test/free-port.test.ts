import { createServer } from 'node:net';
import { freePort } from '../src/process';

describe('freePort', () => {
  it('hands out distinct ports that can be listened on, even when the kernel offers a closed one again', async () => {
    const ports: number[] = [];
    for (let i = 0; i < 200; i++) ports.push(await freePort());
    expect(new Set(ports).size).toBe(ports.length);
    const server = createServer();
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(ports[ports.length - 1], '127.0.0.1', resolve);
    });
    await new Promise((resolve) => server.close(resolve));
  });
});
