import { TimerWheel } from '../src/timer-wheel';

const later = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('timer wheel', () => {
  it('runs each deadline once, not before its time, and forgets cancelled or replaced ones', async () => {
    const wheel = new TimerWheel<string>(10);
    const fired: string[] = [];
    const start = Date.now();
    const firedAt = new Map<string, number>();
    const at = (key: string) => () => {
      fired.push(key);
      firedAt.set(key, Date.now());
    };
    wheel.schedule('a', start + 30, at('a'));
    wheel.schedule('b', start + 30, at('b'));
    wheel.schedule('c', start + 30, at('c'));
    wheel.cancel('b');
    wheel.schedule('c', start + 60, at('c'));
    expect(wheel.size).toBe(2);
    await later(150);
    expect(fired.sort()).toEqual(['a', 'c']);
    expect(firedAt.get('a')!).toBeGreaterThanOrEqual(start + 30);
    expect(firedAt.get('c')!).toBeGreaterThanOrEqual(start + 60);
    expect(wheel.size).toBe(0);
    expect(wheel.has('a')).toBe(false);
  });

  it('runs a deadline already past at the next tick', async () => {
    const wheel = new TimerWheel<number>(10);
    let ran = false;
    wheel.schedule(1, Date.now() - 1000, () => (ran = true));
    await later(50);
    expect(ran).toBe(true);
  });
});
