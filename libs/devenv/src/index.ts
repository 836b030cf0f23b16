export { infraEnv, natsCredentialsDir, natsSeedFile, repoRoot } from './infra';
export { launchService, freePort, waitReady, type ServiceProcess, type LaunchOptions, SERVICES, type ServiceName } from './process';
export { startMesh, type Mesh, type MeshOptions } from './mesh-plan';
export { launchWithClient, errorOf, eventually, startFreezableProxy, type FreezableProxy } from './testing';
