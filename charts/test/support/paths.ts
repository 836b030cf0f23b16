import * as path from 'node:path';

/** The repository root (charts/test/support → ../../..). */
export const repoRoot = path.resolve(__dirname, '..', '..', '..');
export const chartsDir = path.join(repoRoot, 'charts');
export const umbrellaDir = path.join(chartsDir, 'switchboard');
export const serviceChartDir = (service: string) => path.join(umbrellaDir, 'charts', service);
export const scenariosDir = path.join(umbrellaDir, 'ci');
export const toolsBin = path.join(process.env.SB_TOOLS_DIR ?? path.join(repoRoot, '.data', 'tools'), 'bin');

export const SERVICES = ['gateway', 'messaging', 'presence', 'room', 'notification'] as const;
export type Service = (typeof SERVICES)[number];
/** The services that own a PostgreSQL schema (and so a migrations Job). */
export const DB_SERVICES: readonly Service[] = ['messaging', 'room', 'notification'];
