/**
 * A manual clock for code that takes a `Timers` (controller/credentials/
 * long-timeout.ts): nothing runs until the test advances it. Delays are
 * treated as Node treats them, so a delay Node would cut short is cut
 * short here too: above 2^31-1 ms (or below 1 ms) a timer runs after 1 ms.
 */
import type { Timers } from '../../controller/credentials/long-timeout.js';

interface Pending {
  id: number;
  at: number;
  fn: () => void;
}

export class FakeTimers implements Timers {
  /** Milliseconds advanced so far. */
  now = 0;
  /** Every delay asked for, as asked (before Node's clamping). */
  readonly asked: number[] = [];
  #pending: Pending[] = [];
  #next = 1;

  setTimeout(fn: () => void, ms: number): unknown {
    this.asked.push(ms);
    const delay = !(ms >= 1 && ms <= 2 ** 31 - 1) ? 1 : Math.trunc(ms);
    const id = this.#next++;
    this.#pending.push({ id, at: this.now + delay, fn });
    return id;
  }

  clearTimeout(handle: unknown): void {
    this.#pending = this.#pending.filter((p) => p.id !== handle);
  }

  /** Timers waiting to run. */
  get pending(): number {
    return this.#pending.length;
  }

  /** The time the next timer runs at, or undefined. */
  nextAt(): number | undefined {
    return this.#pending.reduce<number | undefined>((m, p) => (m === undefined || p.at < m ? p.at : m), undefined);
  }

  /**
   * Moves the clock `ms` forward, running every timer due on the way in
   * order (and timers those set, if due), letting promises settle after each.
   */
  async advance(ms: number): Promise<void> {
    const end = this.now + ms;
    for (;;) {
      const due = this.#pending.filter((p) => p.at <= end).sort((a, b) => a.at - b.at || a.id - b.id)[0];
      if (!due) break;
      this.#pending = this.#pending.filter((p) => p !== due);
      this.now = Math.max(this.now, due.at);
      due.fn();
      await settle();
    }
    this.now = end;
  }
}

/** Lets pending promise callbacks and I/O already done run. */
export function settle(): Promise<void> {
  return new Promise((r) => setImmediate(r));
}
