/**
 * Waiting on another process, the kernel or a timer, for tests. Every wait
 * is for an event (a condition that becomes true) and is bounded: the bound
 * only decides when to give up, never what the test asserts, and a wait
 * that gives up says what it was waiting for and what it saw last.
 */

/** Pauses between two checks of a condition; not for synchronising on anything. */
export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Waits until `cond()` holds, checking every 20 ms. */
export async function waitFor(cond: () => boolean, what: string, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs}ms waiting for ${what}`);
    await sleep(20);
  }
}

/**
 * Runs `check` until it returns a truthy value (which it returns) or
 * `timeoutMs` passes; a check that throws counts as not yet. On timeout the
 * error names `what` and carries the last error `check` threw (as its
 * message and its `cause`), so a wait that never succeeds says why.
 */
export async function eventually<T>(check: () => Promise<T | undefined | false>, timeoutMs: number, what: string): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let lastError: { err: unknown; attempt: number } | undefined;
  let attempts = 0;
  for (;;) {
    attempts++;
    try {
      const v = await check();
      if (v) return v;
    } catch (err) {
      lastError = { err, attempt: attempts };
    }
    if (Date.now() > deadline) {
      let last = 'no check threw';
      if (lastError) {
        const which = lastError.attempt === attempts ? 'the last check' : `check ${lastError.attempt} of ${attempts}`;
        last = `${which} threw: ${messageOf(lastError.err)}`;
      }
      throw new Error(`timed out after ${timeoutMs}ms (${attempts} checks) waiting for ${what}; ${last}`, { cause: lastError?.err });
    }
    await sleep(100);
  }
}

/** Waits until the wall clock passes `epochMs`: for deadlines that a server outside the test keeps (a Vault TTL). */
export async function untilClockPasses(epochMs: number): Promise<void> {
  while (Date.now() <= epochMs) await sleep(Math.min(100, epochMs - Date.now() + 1));
}

function messageOf(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
