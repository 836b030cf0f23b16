export { OpsServer, type OpsServerOptions, type ReadinessCheck } from './ops-server';
export { Lifecycle, type LifecycleOptions } from './lifecycle';
export { StartupError, startupStep, runMain } from './startup';
export { ServiceHost, type Dependency, type HostSettings, type Servable } from './service-host';
export { openNats, openPostgres, openRedis } from './infrastructure';
