import { TestEnvironment } from 'jest-environment-node';
import { LAUNCHED } from './process';
import type { ServiceProcess } from './process';

/**
 * The tests' jest environment: Node's, plus a last word when a test file
 * ends. Service processes run in their own process group (see launchService),
 * so one a failed test forgot — or froze with SIGSTOP — outlives its file:
 * it keeps holding its leader locks and sockets while the next file's
 * services start, and its pipes keep jest from exiting. Whatever the file
 * left running is killed here and named on stderr.
 */
export default class ServiceProcessEnvironment extends TestEnvironment {
  override async teardown(): Promise<void> {
    const holder = this.global as unknown as Record<symbol, Set<ServiceProcess> | undefined>;
    const leftovers = [...(holder[LAUNCHED] ?? [])].filter((service) => service.child.exitCode === null && service.child.signalCode === null);
    for (const service of leftovers) {
      process.stderr.write(`[devenv] ${service.name} (pid ${service.child.pid}) was left running by the test file; killing it\n`);
      try {
        // The whole group: a service's own children go with it.
        process.kill(-service.child.pid!, 'SIGKILL');
      } catch {
        service.child.kill('SIGKILL');
      }
    }
    await Promise.race([Promise.all(leftovers.map((service) => service.exited)), new Promise((r) => setTimeout(r, 5000).unref())]);
    await super.teardown();
  }
}
