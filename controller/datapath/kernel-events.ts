/**
 * Audit events of the kernel HTTP datapath: bpf/http-inject.bpf.c writes
 * one record per injected request and one per refusal into the
 * wk_http_events ring buffer; this reads them on the event loop and hands
 * them, decoded, to a handler.
 *
 * Nothing here blocks the JavaScript thread. The kernel wakes the reader
 * (a uv_poll_t on the ring's epoll fd, in the addon) for every refusal and
 * whenever enough injections are waiting; quieter injections are picked up
 * by a drain on an unref'd timer, so they arrive at most `drainIntervalMs`
 * late. Events the ring had no room for are lost, never waited for: the
 * kernel counts them (KernelHttp.stats().eventsLost).
 *
 * A ring buffer has one read position: open one reader per loaded object.
 *
 * A refusal's reason is its wk_http_stats name (layout.ts WK_HTTP_STATS):
 * 'refusedBinding', 'refusedMethod', ...; audit lines carry the refusal
 * code that name maps to (httpStatRefusal: 'binding-changed', ...).
 * 'refusedAgent' (the heartbeat lapsed or was set to 0: see kernel-http.ts)
 * reaches a reader only while the agent that owns the ring still reads it:
 * a hung agent once it recovers, or a stopping one up to its last drain.
 * Refusals made after the agent is gone are counted, not read.
 */
import { BpfError } from '../errors.js';
import { bpfCall, native, type NativeObject, type NativeRingBuffer } from './native.js';
import { decodeHttpEvent, type HttpEventRecord } from './layout.js';

/** One injected request or refusal. Never any header bytes: the line is named by `headerVersion`. */
export interface KernelHttpEvent extends HttpEventRecord {
  /** Wall-clock time of the event, from `monotonicNs`. */
  time: Date;
}

export type KernelHttpEventHandler = (event: KernelHttpEvent) => void;

export interface KernelHttpEventsOptions {
  /** How often events the kernel did not wake the reader for are read (default 100 ms). */
  drainIntervalMs?: number;
  /**
   * Receives what goes wrong: a record that cannot be decoded, a handler
   * that throws, a ring that cannot be read. Without it, the error is
   * rethrown asynchronously (an uncaught exception).
   */
  onError?: (err: unknown) => void;
}

export const EVENTS_MAP = 'wk_http_events';
const DEFAULT_DRAIN_MS = 100;
const MAX_DRAIN_BATCHES = 4;

export class KernelHttpEvents {
  readonly #handler: KernelHttpEventHandler;
  readonly #onError: ((err: unknown) => void) | undefined;
  #ring: NativeRingBuffer | null = null;
  #timer: NodeJS.Timeout | null = null;
  #delivered = 0;

  private constructor(handler: KernelHttpEventHandler, options: KernelHttpEventsOptions) {
    this.#handler = handler;
    this.#onError = options.onError;
  }

  /**
   * Starts reading the events of a loaded object (KernelHttp.events() is
   * the usual way in). Events already waiting in the ring are delivered
   * first.
   * @throws BpfError when the object is not loaded or has no wk_http_events.
   * @throws RangeError when drainIntervalMs is not a positive number.
   */
  static open(object: NativeObject, handler: KernelHttpEventHandler, options: KernelHttpEventsOptions = {}): KernelHttpEvents {
    const interval = options.drainIntervalMs ?? DEFAULT_DRAIN_MS;
    if (!(interval > 0) || !Number.isFinite(interval)) throw new RangeError(`drainIntervalMs ${interval} is not a positive number of milliseconds`);
    const events = new KernelHttpEvents(handler, options);
    const map = bpfCall(() => object.map(EVENTS_MAP));
    events.#ring = bpfCall(() => new (native().RingBuffer)(map, (data, sizes, error) => events.#receive(data, sizes, error)));
    events.#timer = setInterval(() => events.drain(), interval).unref();
    // What the kernel wrote before anyone was reading (no wake-up may come for it).
    setImmediate(() => events.drain()).unref();
    return events;
  }

  /**
   * Reads the events waiting now and delivers them before returning; the
   * number delivered. The timer calls it; so may a caller that wants
   * everything written so far (e.g. before shutting down). 0 once closed.
   */
  drain(): number {
    const before = this.#delivered;
    // A few batches at most: the ring holds about 16k events, and a flood must not hold the thread.
    for (let i = 0; i < MAX_DRAIN_BATCHES; i++) {
      const ring = this.#ring;
      if (!ring) break;
      let n: number;
      try {
        n = ring.consume();
      } catch (err) {
        this.#fail(new BpfError(`reading ${EVENTS_MAP}: ${(err as Error).message}`, { errno: (err as { errno?: number }).errno, cause: err }));
        break;
      }
      if (n < native().RingBuffer.batch) break;
    }
    return this.#delivered - before;
  }

  /** Events handed to the handler so far. */
  get delivered(): number {
    return this.#delivered;
  }

  get closed(): boolean {
    return this.#ring === null;
  }

  /**
   * Stops delivery (also in the middle of a batch, if the handler calls
   * it) and frees the poll and the ring. Events written afterwards stay in
   * the ring for the next reader, or are lost when it fills. Idempotent.
   */
  close(): void {
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = null;
    const ring = this.#ring;
    this.#ring = null;
    ring?.close();
  }

  #receive(data: Buffer, sizes: Uint32Array, error?: Error & { errno?: number }): void {
    if (error) this.#fail(new BpfError(`reading ${EVENTS_MAP}: ${error.message}`, { errno: error.errno, cause: error }));
    if (!sizes.length) return;
    // CLOCK_MONOTONIC to wall clock, measured once per batch (milliseconds are all a Date holds).
    const offsetMs = Date.now() - Number(process.hrtime.bigint()) / 1e6;
    let offset = 0;
    for (const size of sizes) {
      const at = offset;
      offset += size;
      if (!this.#ring) return;
      let event: KernelHttpEvent;
      try {
        const e = decodeHttpEvent(data, at, size) as KernelHttpEvent;
        e.time = new Date(Number(e.monotonicNs) / 1e6 + offsetMs);
        event = e;
      } catch (err) {
        this.#fail(err);
        continue;
      }
      this.#delivered++;
      try {
        this.#handler(event);
      } catch (err) {
        this.#fail(err);
      }
    }
  }

  #fail(err: unknown): void {
    if (this.#onError) this.#onError(err);
    else queueMicrotask(() => {
      throw err;
    });
  }
}
