// Three projects, one command: unit tests (pure logic, scripted peers),
// integration tests (*.int.test.ts: real PostgreSQL, Redis, NATS, Kafka, one
// real service process) and end-to-end tests (*.e2e.test.ts: the whole mesh,
// two gateways, real WebSocket clients). Tests import the built packages, so
// `pnpm build` runs first (README's test command does).
const transform = { '^.+\\.ts$': ['ts-jest', { tsconfig: '<rootDir>/tsconfig.test.json' }] };
const roots = ['<rootDir>/libs', '<rootDir>/services', '<rootDir>/charts'];
// testEnvironment: Node's, which also kills service processes a test file left running (libs/devenv/src/jest-environment.ts).
// setupFiles: the tests' gRPC clients carry the infrastructure's internal token (libs/devenv/src/jest-setup.ts).
const common = { transform, roots, testEnvironment: '<rootDir>/libs/devenv/dist/jest-environment.js', modulePathIgnorePatterns: ['<rootDir>/.*/dist/'], setupFiles: ['<rootDir>/libs/devenv/dist/jest-setup.js'] };

module.exports = {
  globalSetup: '<rootDir>/libs/devenv/dist/jest-global-setup.js',
  // Service processes share the machine's two cores: one test file at a time keeps timings honest.
  maxWorkers: 1,
  testTimeout: 60_000,
  projects: [
    { ...common, displayName: 'unit', testMatch: ['**/test/**/*.test.ts'], testPathIgnorePatterns: ['\\.int\\.test\\.ts$', '\\.e2e\\.test\\.ts$', '/node_modules/'] },
    { ...common, displayName: 'integration', testMatch: ['**/test/**/*.int.test.ts'], testPathIgnorePatterns: ['/node_modules/'] },
    { ...common, displayName: 'e2e', testMatch: ['**/test/**/*.e2e.test.ts'], testPathIgnorePatterns: ['/node_modules/'] },
  ],
};
