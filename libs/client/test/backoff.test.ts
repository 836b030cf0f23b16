import { backoffCeiling, backoffDelay } from '../src';

describe('backoffDelay (exponential, full jitter)', () => {
  it('stays within [0, min(max, base * 2^attempt))', () => {
    for (let attempt = 0; attempt < 12; attempt++) {
      const ceiling = Math.min(10_000, 250 * 2 ** attempt);
      for (let i = 0; i < 200; i++) {
        const d = backoffDelay(attempt, 250, 10_000);
        expect(Number.isInteger(d)).toBe(true);
        expect(d).toBeGreaterThanOrEqual(0);
        expect(d).toBeLessThan(ceiling);
      }
    }
  });

  it('draws the delay from the random source over the whole window', () => {
    expect(backoffDelay(0, 250, 10_000, () => 0)).toBe(0);
    expect(backoffDelay(0, 250, 10_000, () => 0.5)).toBe(125);
    expect(backoffDelay(2, 250, 10_000, () => 0.5)).toBe(500);
    expect(backoffDelay(3, 250, 10_000, () => 0.999999)).toBe(1999);
    const calls: number[] = [];
    backoffDelay(1, 100, 1000, () => {
      calls.push(1);
      return 0.3;
    });
    expect(calls).toHaveLength(1);
  });

  it('caps the window at maxDelay however large the attempt', () => {
    expect(backoffCeiling(6, 250, 10_000)).toBe(10_000);
    expect(backoffCeiling(1_000_000, 250, 10_000)).toBe(10_000);
    expect(backoffDelay(50, 250, 10_000, () => 0.5)).toBe(5000);
    expect(backoffDelay(5000, 250, 10_000, () => 0.999999)).toBeLessThan(10_000);
  });

  it('grows exponentially until the cap', () => {
    expect([0, 1, 2, 3, 4, 5, 6].map((a) => backoffCeiling(a, 250, 10_000))).toEqual([250, 500, 1000, 2000, 4000, 8000, 10_000]);
  });

  it('starts over at the base once attempts are reset to 0', () => {
    const high = backoffDelay(8, 250, 10_000, () => 0.9);
    const reset = backoffDelay(0, 250, 10_000, () => 0.9);
    expect(high).toBe(9000);
    expect(reset).toBe(225);
  });

  it('tolerates odd inputs without NaN', () => {
    expect(backoffDelay(-3, 250, 10_000, () => 0.5)).toBe(125);
    expect(backoffDelay(Number.NaN, 250, 10_000, () => 0.5)).toBe(125);
    expect(backoffDelay(3, 0, 10_000, () => 0.5)).toBe(0);
    expect(backoffDelay(3000, 0, 10_000, () => 0.5)).toBe(0);
    expect(backoffDelay(1, 250, 10_000, () => 1)).toBe(499);
    expect(backoffDelay(1, 250, 10_000, () => Number.NaN)).toBe(0);
  });
});
