export { OpsServer, type OpsServerOptions, type ReadinessCheck } from './ops-server';
export { Lifecycle, type LifecycleOptions } from './lifecycle';
