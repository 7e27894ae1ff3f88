/** The test helpers' waits: what a wait that gives up reports. */
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { eventually, waitFor } from '../support/wait.js';

describe('test waits', () => {
  beforeEach(() => {
    vi.useFakeTimers();
  });
  afterEach(() => {
    vi.useRealTimers();
  });

  it('eventually returns the first truthy value, retrying a check that throws', async () => {
    let n = 0;
    const p = eventually(async () => {
      n++;
      if (n < 3) throw new Error(`not yet ${n}`);
      return `done ${n}`;
    }, 1000, 'the third try');
    await vi.advanceTimersByTimeAsync(500);
    await expect(p).resolves.toBe('done 3');
  });

  it('eventually gives up with what it waited for and the last error, kept as the cause', async () => {
    let n = 0;
    const p = eventually(async () => {
      n++;
      throw new Error(`still failing ${n}`);
    }, 1000, 'a check that never passes');
    const settled = p.catch((e: unknown) => e);
    await vi.advanceTimersByTimeAsync(2000);
    const err = (await settled) as Error;
    expect(err.message).toMatch(/^timed out after 1000ms \(\d+ checks\) waiting for a check that never passes; the last check threw: still failing \d+$/);
    expect(err.message).toContain(`still failing ${n}`);
    expect((err.cause as Error).message).toBe(`still failing ${n}`);
  });

  it('eventually keeps an earlier error when later checks only return nothing', async () => {
    let n = 0;
    const p = eventually(async () => {
      n++;
      if (n === 1) throw new Error('the first check broke');
      return undefined;
    }, 1000, 'a value');
    const settled = p.catch((e: unknown) => e);
    await vi.advanceTimersByTimeAsync(2000);
    const err = (await settled) as Error;
    expect(err.message).toMatch(/waiting for a value; check 1 of \d+ threw: the first check broke$/);
  });

  it('waitFor names what it waited for', async () => {
    const settled = waitFor(() => false, 'something', 100).catch((e: unknown) => e);
    await vi.advanceTimersByTimeAsync(500);
    expect(((await settled) as Error).message).toBe('timed out after 100ms waiting for something');
  });
});
