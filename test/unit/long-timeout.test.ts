/** setLongTimeout: delays past Node's 2^31-1 ms limit run on time, not after 1 ms. */
import { describe, expect, it } from 'vitest';
import { MAX_TIMER_MS, setLongTimeout } from '../../controller/credentials/long-timeout.js';
import { FakeTimers } from '../support/fake-timers.js';

const DAY = 86_400_000;

describe('setLongTimeout', () => {
  it('runs a 40-day delay after 40 days, from timers Node keeps', async () => {
    const timers = new FakeTimers();
    let runs = 0;
    setLongTimeout(() => runs++, 40 * DAY, timers);
    await timers.advance(1);
    expect(runs).toBe(0);
    await timers.advance(40 * DAY - 2);
    expect(runs).toBe(0);
    await timers.advance(1);
    expect(runs).toBe(1);
    expect(timers.asked.every((ms) => ms <= MAX_TIMER_MS)).toBe(true);
    expect(timers.asked.length).toBe(2);
    await timers.advance(100 * DAY);
    expect(runs).toBe(1);
  });

  it('runs short and zero delays as asked', async () => {
    const timers = new FakeTimers();
    const order: string[] = [];
    setLongTimeout(() => order.push('b'), 5, timers);
    setLongTimeout(() => order.push('a'), 0, timers);
    setLongTimeout(() => order.push('nan'), NaN, timers);
    await timers.advance(5);
    expect(order).toEqual(['a', 'nan', 'b']);
  });

  it('never runs Infinity, and cancels at any stage of a chain', async () => {
    const timers = new FakeTimers();
    let runs = 0;
    setLongTimeout(() => runs++, Infinity, timers);
    const cancel = setLongTimeout(() => runs++, 60 * DAY, timers);
    await timers.advance(30 * DAY);
    cancel();
    cancel();
    await timers.advance(365 * DAY);
    expect(runs).toBe(0);
    // Only the Infinity chain is left.
    expect(timers.pending).toBe(1);
  });
});
