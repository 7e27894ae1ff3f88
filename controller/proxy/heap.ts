/**
 * The V8 heap setting a relaying process needs.
 *
 * Every TLS record the proxy reads becomes a new 16 KiB ArrayBuffer, and V8
 * counts the bytes of live ArrayBuffers against the old generation's
 * allocation limit. A bulk transfer keeps up to 32 MiB of young buffers
 * alive between two scavenges (V8 scavenges early once young buffers reach
 * twice its default semi-space). When the limit V8 picked at start-up left
 * less headroom than that over the live heap (it does in some runs and not
 * others: its growing factor follows its own early speed measurements),
 * every few megabytes of relayed data started a full mark-compact: about
 * ten a second, competing with the relay for the CPU, which halved bulk
 * throughput for the life of the process.
 *
 * A fixed growing factor of 4 leaves the headroom in every run: with the
 * agent's live heap of about 20 MiB, 60 MiB before the next full
 * collection. The agent's resident size under load did not change
 * measurably (its buffers, not its heap, dominate it).
 * Measured by `npm run bench -- --arms bulk-proxy,bulk-nginx-same-job`
 * with `--trace-gc` in the agent's flags: without it, one run in three made
 * 50-70 mark-compacts in two 512 MiB downloads and ran at about half the
 * others' rate; with it, two in every run.
 *
 * V8 reads the flag each time it sets a new limit, and the flag is
 * process-wide: set once, before the proxy serves, it holds for the proxy
 * worker threads' heaps too.
 */
import v8 from 'node:v8';

/** Percent the old generation may grow past its live size before the next full collection. */
export const HEAP_GROWING_PERCENT = 300;

export function tuneHeapForRelay(): void {
  v8.setFlagsFromString(`--heap-growing-percent=${HEAP_GROWING_PERCENT}`);
}
