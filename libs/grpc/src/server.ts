import { readFileSync } from 'node:fs';
import { Server, type ServiceDefinition, type UntypedServiceImplementation } from '@grpc/grpc-js';
import { loadFileDescriptorSetFromBuffer } from '@grpc/proto-loader';
import { ReflectionService } from '@grpc/reflection';
import type { Logger } from '@switchboard/logging';
import { descriptorSetPath } from '@switchboard/proto';
import { HealthImplementation } from 'grpc-health-check';
import { endStreams } from './handlers';
import { serverCredentials } from './tls';

export interface GrpcServerOptions {
  logger: Logger;
  /** Largest message accepted, in bytes. */
  maxReceiveMessageBytes?: number;
}

/**
 * A grpc-js server that always serves the gRPC health protocol and server
 * reflection (so `grpcurl` works against every service), and shuts down with
 * `tryShutdown` first and `forceShutdown` at the deadline.
 */
export class GrpcServer {
  readonly server: Server;
  private readonly health = new HealthImplementation({ '': 'NOT_SERVING' });
  private readonly serviceNames: string[] = [];

  constructor(private readonly options: GrpcServerOptions) {
    this.server = new Server({
      'grpc.max_receive_message_length': options.maxReceiveMessageBytes ?? 4 * 1024 * 1024,
      'grpc.keepalive_time_ms': 30_000,
      'grpc.keepalive_timeout_ms': 10_000,
    });
    this.health.addToServer(this.server);
  }

  addService<I extends UntypedServiceImplementation>(name: string, definition: ServiceDefinition<I>, implementation: Partial<I>): this {
    this.server.addService(definition, implementation as I);
    this.serviceNames.push(name);
    this.health.setStatus(name, 'NOT_SERVING');
    return this;
  }

  /** Binds and starts; returns the bound port (useful with port 0). */
  async listen(host: string, port: number): Promise<number> {
    // Reflection describes exactly the services this process serves, so
    // `grpcurl list` against it does not advertise other services' APIs.
    const descriptors = loadFileDescriptorSetFromBuffer(readFileSync(descriptorSetPath));
    new ReflectionService(descriptors, { services: this.serviceNames }).addToServer(this.server);
    return new Promise((resolve, reject) => {
      this.server.bindAsync(`${host}:${port}`, serverCredentials(), (err, boundPort) => {
        if (err) reject(new Error(`gRPC cannot listen on ${host}:${port}: ${err.message}`, { cause: err }));
        else resolve(boundPort);
      });
    });
  }

  /** Marks every service (and the server as a whole) SERVING or NOT_SERVING in the health protocol. */
  setServing(serving: boolean): void {
    const status = serving ? 'SERVING' : 'NOT_SERVING';
    this.health.setStatus('', status);
    for (const name of this.serviceNames) this.health.setStatus(name, status);
  }

  /** This server as one of a ServiceHost's servers: listens on start, SERVING when the host is up, graceful stop. */
  servable(host: string, port: number, shutdownDeadlineMs: number) {
    return {
      name: 'grpc',
      start: async () => ({ grpcPort: await this.listen(host, port) }),
      ready: () => this.setServing(true),
      stop: () => this.shutdown(shutdownDeadlineMs),
    };
  }

  async shutdown(deadlineMs: number): Promise<void> {
    this.setServing(false);
    // Long-lived streams end once their requests in flight are answered; callers open new ones elsewhere.
    endStreams();
    await new Promise<void>((resolve) => {
      const timer = setTimeout(() => {
        this.options.logger.warn({ deadlineMs }, 'gRPC calls still running at the deadline: forcing shutdown');
        this.server.forceShutdown();
        resolve();
      }, deadlineMs);
      this.server.tryShutdown(() => {
        clearTimeout(timer);
        resolve();
      });
    });
  }
}
