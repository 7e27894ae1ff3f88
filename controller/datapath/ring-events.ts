/**
 * Records of a BPF ring buffer, read on the event loop and handed, decoded,
 * to a handler: the machinery under the kernel HTTP datapath's audit events
 * (kernel-events.ts) and the egress events (egress.ts).
 *
 * Nothing here blocks the JavaScript thread. The kernel wakes the reader
 * (a uv_poll_t on the ring's epoll fd, in the addon) when a program asks
 * it to; records it did not wake the reader for are picked up by a drain on
 * an unref'd timer, so they arrive at most `drainIntervalMs` late. Records
 * the ring had no room for are lost, never waited for: the programs count
 * them.
 *
 * A ring buffer has one read position: open one reader per ring and object.
 */
import { BpfError } from '../errors.js';
import { bpfCall, native, type NativeObject, type NativeRingBuffer } from './native.js';

export interface RingEventsOptions {
  /** How often records the kernel did not wake the reader for are read (default 100 ms). */
  drainIntervalMs?: number;
  /**
   * Receives what goes wrong: a record that cannot be decoded, a handler
   * that throws, a ring that cannot be read. Without it, the error is
   * rethrown asynchronously (an uncaught exception).
   */
  onError?: (err: unknown) => void;
}

/** What a decoder gives: a record stamped by the kernel with CLOCK_MONOTONIC. */
export interface MonotonicRecord {
  /** bpf_ktime_get_ns(): CLOCK_MONOTONIC, as process.hrtime.bigint() reads it. */
  monotonicNs: bigint;
}

/** A decoded record with its wall-clock time. */
export type Timed<R extends MonotonicRecord> = R & {
  /** Wall-clock time of the event, from `monotonicNs`. */
  time: Date;
};

/** Decodes the record of `length` bytes at `offset` in `data`. @throws on a record it does not know. */
export type RingDecoder<R> = (data: Buffer, offset: number, length: number) => R;

const DEFAULT_DRAIN_MS = 100;
const MAX_DRAIN_BATCHES = 4;

export class RingEvents<R extends MonotonicRecord> {
  readonly #mapName: string;
  readonly #decode: RingDecoder<R>;
  readonly #handler: (event: Timed<R>) => void;
  readonly #onError: ((err: unknown) => void) | undefined;
  #ring: NativeRingBuffer | null = null;
  #timer: NodeJS.Timeout | null = null;
  #delivered = 0;

  /**
   * Starts reading ring `mapName` of a loaded object. Records already
   * waiting in the ring are delivered first.
   * @throws BpfError when the object is not loaded or has no such ring.
   * @throws RangeError when drainIntervalMs is not a positive number.
   */
  constructor(object: NativeObject, mapName: string, decode: RingDecoder<R>, handler: (event: Timed<R>) => void, options: RingEventsOptions = {}) {
    const interval = options.drainIntervalMs ?? DEFAULT_DRAIN_MS;
    if (!(interval > 0) || !Number.isFinite(interval)) throw new RangeError(`drainIntervalMs ${interval} is not a positive number of milliseconds`);
    this.#mapName = mapName;
    this.#decode = decode;
    this.#handler = handler;
    this.#onError = options.onError;
    const map = bpfCall(() => object.map(mapName));
    this.#ring = bpfCall(() => new (native().RingBuffer)(map, (data, sizes, error) => this.#receive(data, sizes, error)));
    this.#timer = setInterval(() => this.drain(), interval).unref();
    // What the kernel wrote before anyone was reading (no wake-up may come for it).
    setImmediate(() => this.drain()).unref();
  }

  /**
   * Reads the records waiting now and delivers them before returning; the
   * number delivered. The timer calls it; so may a caller that wants
   * everything written so far (e.g. before shutting down). 0 once closed.
   */
  drain(): number {
    const before = this.#delivered;
    // A few batches at most: a flood must not hold the thread.
    for (let i = 0; i < MAX_DRAIN_BATCHES; i++) {
      const ring = this.#ring;
      if (!ring) break;
      let n: number;
      try {
        n = ring.consume();
      } catch (err) {
        this.#fail(new BpfError(`reading ${this.#mapName}: ${(err as Error).message}`, { errno: (err as { errno?: number }).errno, cause: err }));
        break;
      }
      if (n < native().RingBuffer.batch) break;
    }
    return this.#delivered - before;
  }

  /** Records handed to the handler so far. */
  get delivered(): number {
    return this.#delivered;
  }

  get closed(): boolean {
    return this.#ring === null;
  }

  /**
   * Stops delivery (also in the middle of a batch, if the handler calls
   * it) and frees the poll and the ring. Records written afterwards stay in
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
    if (error) this.#fail(new BpfError(`reading ${this.#mapName}: ${error.message}`, { errno: error.errno, cause: error }));
    if (!sizes.length) return;
    // CLOCK_MONOTONIC to wall clock, measured once per batch (milliseconds are all a Date holds).
    const offsetMs = Date.now() - Number(process.hrtime.bigint()) / 1e6;
    let offset = 0;
    for (const size of sizes) {
      const at = offset;
      offset += size;
      if (!this.#ring) return;
      let event: Timed<R>;
      try {
        const e = this.#decode(data, at, size) as Timed<R>;
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
