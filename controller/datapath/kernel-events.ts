/**
 * Audit events of the kernel HTTP datapath: bpf/http-inject.bpf.c writes
 * one record per refusal, and one per injection at the grain
 * KernelHttp.setAuditGrain() chose (once per connection and header
 * version, or per request), into the wk_http_events ring buffer; this
 * reads them on the event loop and hands them, decoded, to a handler.
 * (Every injected request is counted apart from events: KernelHttp.usage().)
 *
 * The reading is ring-events.ts's. The kernel wakes the reader for every
 * refusal and whenever enough injections are waiting; quieter injections
 * are picked up by a drain on an unref'd timer, so they arrive at most
 * `drainIntervalMs` late. Events the ring had no room for are lost, never
 * waited for: the kernel counts them (KernelHttp.stats().eventsLost).
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
import type { NativeObject } from './native.js';
import { decodeHttpEvent, type HttpEventRecord } from './layout.js';
import { RingEvents, type RingEventsOptions, type Timed } from './ring-events.js';

/** One injected request or refusal. Never any header bytes: the line is named by `headerVersion`. */
export type KernelHttpEvent = Timed<HttpEventRecord>;

export type KernelHttpEventHandler = (event: KernelHttpEvent) => void;

export type KernelHttpEventsOptions = RingEventsOptions;

export const EVENTS_MAP = 'wk_http_events';

export class KernelHttpEvents extends RingEvents<HttpEventRecord> {
  /**
   * Starts reading the events of a loaded object (KernelHttp.events() is
   * the usual way in). Events already waiting in the ring are delivered
   * first.
   * @throws BpfError when the object is not loaded or has no wk_http_events.
   * @throws RangeError when drainIntervalMs is not a positive number.
   */
  static open(object: NativeObject, handler: KernelHttpEventHandler, options: KernelHttpEventsOptions = {}): KernelHttpEvents {
    return new KernelHttpEvents(object, EVENTS_MAP, decodeHttpEvent, handler, options);
  }
}
