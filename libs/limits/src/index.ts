export { LIMIT_NAMES, limitDefaults, limitSettings, TenantLimitStore, type TenantLimits } from './settings';
export { LocalRate, SharedRateLimits, type RateDecision, type RateKind, type RatesDecision, type RateStep } from './rates';
export { ConnectionSlots, type SlotDecision } from './slots';
export { UsageCounters, type TenantUsage, type UsageField } from './usage';
