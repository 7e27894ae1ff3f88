/**
 * The upstream leg of a terminated HTTP/1.1 request: undici connection
 * pools, one per partition (workload, binding, credential version) and
 * destination (address, port, verified server name). A connection, and the
 * TLS session it resumes from, never serves another partition, so no
 * workload's request is framed into, or read back from, another's
 * exchange, and no workload resumes a session another workload's request
 * established.
 *
 * undici's client does less per request than https.request with an Agent
 * (no ClientRequest, no socket re-pooling by name, no per-request header
 * object), which is most of what the proxy spends besides TLS and the
 * kernel. Requests are never pipelined (one in flight per connection);
 * responses are framed strictly (a length mismatch, or bytes arriving
 * while no request waits, close the connection). What undici cannot send
 * (Expect: 100-continue) goes by https.request (upstream.ts).
 */
import type tls from 'node:tls';
import { Pool } from 'undici';

/**
 * Bytes a proxied TLS connection (the workload's, and the upstream's on
 * either client) buffers in each direction before it pushes back. The
 * stream default, 16 KiB, is one TLS record: a bulk body then paused and
 * resumed both sockets at every record (a readStop/readStart pair and a
 * turn of the event loop each), which cost more CPU than the copies.
 * With 256 KiB a body moves in batches of many records per turn.
 */
export const STREAM_HIGH_WATER_MARK = 256 * 1024;

export interface UpstreamPoolOptions {
  /** The trust store (upstreamSecureContext); undefined: Node's own. */
  secureContext?: tls.SecureContext;
  /** How long an idle kept-alive connection is kept, and an unused pool (ms). */
  idleMs?: number;
  /** Bytes an upstream connection buffers in each direction before it pushes back (default STREAM_HIGH_WATER_MARK). */
  highWaterMark?: number;
}

/** One partition's pool for one destination, as requests use it (see UpstreamPools.begin/end). */
export interface UpstreamPool {
  readonly pool: Pool;
  /** Requests dispatched and not yet settled. */
  active: number;
  lastUsed: number;
  /** Closed for being idle: ask UpstreamPools.pool() for a new one. */
  closed: boolean;
}

export class UpstreamPools {
  readonly #pools = new Map<string, UpstreamPool>();
  readonly #secureContext: tls.SecureContext | undefined;
  readonly #idleMs: number;
  readonly #highWaterMark: number;
  readonly #sweep: NodeJS.Timeout;

  constructor(opts: UpstreamPoolOptions = {}) {
    this.#secureContext = opts.secureContext;
    this.#idleMs = opts.idleMs ?? 60_000;
    this.#highWaterMark = opts.highWaterMark ?? STREAM_HIGH_WATER_MARK;
    // Pools of partitions nobody used for a while (a rotated credential's, a removed binding's) are closed.
    this.#sweep = setInterval(() => this.#closeIdle(), Math.max(1000, this.#idleMs)).unref();
  }

  /**
   * The pool of `partition` for `address:port`, certificates verified
   * against `servername`. Requests dispatched on it are counted with
   * begin() and end(): a pool with requests in flight is never closed.
   */
  pool(partition: string, address: string, port: number, servername: string): UpstreamPool {
    const key = `${partition}\0${address}\0${port}\0${servername}`;
    let entry = this.#pools.get(key);
    if (!entry) {
      const host = address.includes(':') ? `[${address}]` : address;
      const pool = new Pool(`https://${host}:${port}`, {
        pipelining: 1,
        keepAliveTimeout: this.#idleMs,
        keepAliveMaxTimeout: this.#idleMs,
        // No deadline of its own on a slow upstream: the workload's connection has one (ProxyLimits.idleTimeoutMs), and closing it aborts the request.
        headersTimeout: 0,
        bodyTimeout: 0,
        // undici's default is one TLS record (16 KiB): see STREAM_HIGH_WATER_MARK.
        // tls.connect takes highWaterMark, though undici's connect options do not list it.
        connect: {
          servername,
          rejectUnauthorized: true,
          ...(this.#secureContext ? { secureContext: this.#secureContext } : {}),
          ...({ highWaterMark: this.#highWaterMark } as object),
        },
      });
      entry = { pool, active: 0, lastUsed: performance.now(), closed: false };
      this.#pools.set(key, entry);
    }
    return entry;
  }

  begin(entry: UpstreamPool): void {
    entry.active++;
  }

  end(entry: UpstreamPool): void {
    entry.active--;
    entry.lastUsed = performance.now();
  }

  /** Pools open now. */
  get size(): number {
    return this.#pools.size;
  }

  close(): void {
    clearInterval(this.#sweep);
    for (const entry of this.#pools.values()) {
      entry.closed = true;
      entry.pool.destroy().catch(() => {});
    }
    this.#pools.clear();
  }

  #closeIdle(): void {
    const before = performance.now() - this.#idleMs;
    for (const [key, entry] of this.#pools) {
      if (entry.active > 0 || entry.lastUsed > before) continue;
      this.#pools.delete(key);
      entry.closed = true;
      entry.pool.close().catch(() => {});
    }
  }
}
