/**
 * The one way the credential sources schedule work: a timeout of any
 * length. Node's setTimeout takes at most 2^31-1 ms (about 24.8 days) and
 * runs a callback asked for later than that after 1 ms instead, so a lease
 * or token of a few weeks, renewed at 2/3 of its TTL, would be renewed back
 * to back. Longer delays are chained here from timers of at most that much.
 */

/** The longest delay one Node timer keeps, ms. */
export const MAX_TIMER_MS = 2 ** 31 - 1;

/** The timer functions used; tests inject their own clock. */
export interface Timers {
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

/** Node's timers, unref'd: a pending renewal never keeps the process alive. */
export const NODE_TIMERS: Timers = {
  setTimeout(fn, ms) {
    const t = setTimeout(fn, ms);
    t.unref();
    return t;
  },
  clearTimeout(handle) {
    clearTimeout(handle as NodeJS.Timeout);
  },
};

/** Cancels a {@link setLongTimeout}; calling it again, or after it ran, does nothing. */
export type CancelTimeout = () => void;

/**
 * Runs `fn` once, `ms` milliseconds from now, however large `ms` is
 * (Infinity: never). Negative or NaN delays run it on the next timer turn.
 */
export function setLongTimeout(fn: () => void, ms: number, timers: Timers = NODE_TIMERS): CancelTimeout {
  let handle: unknown;
  let done = false;
  const arm = (left: number) => {
    const step = Math.min(left, MAX_TIMER_MS);
    handle = timers.setTimeout(() => {
      if (done) return;
      if (left > step) return arm(left - step);
      done = true;
      fn();
    }, step);
  };
  arm(Number.isNaN(ms) ? 0 : Math.max(0, ms));
  return () => {
    if (done) return;
    done = true;
    timers.clearTimeout(handle);
  };
}
