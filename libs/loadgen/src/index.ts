export { runLoad, segmentsOf, DEFAULT_OPTIONS, type LoadOptions, type LoadResult, type EdgeMemory } from './run';
export { SCENARIOS, scaled, type Scenario } from './scenarios';
export { summaryOf } from './report';
export { plot, readResults } from './plot';
export { schedule, scheduledCount, type RateSegment } from './protocol';
export { SeqTracker } from './seq-tracker';
export { encodeBody, decodeBody, type LoadBody } from './body';
