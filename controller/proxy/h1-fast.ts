/**
 * The proxy's fast path for terminated HTTP/1.1 connections: each request
 * head is read off the workload's TLS socket, checked and injected like any
 * other (the same admission as Node's server path), written to an upstream
 * connection of the request's partition, and its body and response move
 * as bytes, the response framed by h1-wire.ts. No request or response
 * objects, no streams between the sockets.
 *
 * Anything outside the subset parseRequestHead() accepts (and a head that
 * is not complete within Node's headers timeout) hands the connection,
 * with every byte not yet consumed, to Node's HTTP server at that request:
 * a request boundary, with no exchange of the fast path still open. From
 * there on that server has the connection, with all its checks and
 * refusals.
 *
 * One exchange at a time per connection: a pipelined request waits, read
 * but not parsed, until the response before it is forwarded whole.
 */
import tls from 'node:tls';
import type { Logger } from '../log.js';
import type { Refusal } from '../refusals.js';
import { refuseRaw, upstreamFailed } from './refusal-response.js';
import { closingHeaders } from '../http/headers.js';
import { findHeadEnd, MAX_HEAD_BYTES, parseRequestHead, ReadAhead, ResponseFramer, serializeRequestHead, type FastRequestHead } from './h1-wire.js';
import { responseMask, type Admission, type InjectOutcome } from './h2.js';
import { STREAM_HIGH_WATER_MARK } from './upstream-pool.js';

/** A terminated connection as the fast path needs it. */
export interface FastSession {
  orig: { address: string; port: number };
  sni: string;
}

/** What ProxyServer lends the fast path: the same admission, accounting and audit as Node's server path. */
export interface FastHost<S extends FastSession> {
  /** Whether the route in force for `session` may take its requests here (a header injection; SigV4 reads bodies). */
  eligible(session: S): boolean;
  /** At once when everything it needs is at hand (a header injection, its credential held), else a promise. */
  admit(session: S, head: FastRequestHead): Admission | Refusal | Promise<Admission | Refusal>;
  /**
   * Counts and audits a refused request. `sent`: its admission, when the
   * request had already gone upstream with the credential (an upstream that
   * failed before answering): the audit line is then an inject line.
   */
  refused(session: S, head: FastRequestHead, refusal: Refusal, sent?: Admission): void;
  /**
   * Audits a request that went upstream with the credential: its response
   * forwarded whole, or (`reason`) not: cut after its head (`status`, the
   * upstream's), or the workload gone first (`status` 0 when no head came).
   */
  completed(session: S, head: FastRequestHead, admission: Admission, status: number, reason?: InjectOutcome): void;
  upstreamLatency(session: S, seconds: number): void;
  /** Gives `socket` (paused, unconsumed bytes unshifted) to Node's HTTP server. */
  handOff(socket: tls.TLSSocket, session: S): void;
  upstreams: FastUpstreams;
  /** No bytes either way for this long: the connection closes (ms). */
  idleTimeoutMs: number;
  /** A request head not complete this long after its first byte goes to Node's server, which times it out (ms). */
  headersTimeoutMs: number;
  log: Logger;
}

/**
 * Serves `socket` (TLS established, HTTP/1.1) on the fast path until it
 * closes or is handed to Node's HTTP server.
 */
export function serveFast<S extends FastSession>(socket: tls.TLSSocket, session: S, host: FastHost<S>): void {
  new FastConnection(socket, session, host).start();
}

type State =
  | 'head' // reading a request head
  | 'admitting' // the head is being admitted (credential, checks)
  | 'exchange' // a request is upstream: its body, then its response
  | 'closed' // refused, ended, or gone
  | 'handed'; // Node's HTTP server has the connection

/**
 * Bytes read ahead of the request being served (pipelined requests, a body
 * sent before its admission) past which the workload's socket stops being
 * read until they are consumed.
 */
const READ_AHEAD_MAX = 64 * 1024;

/** Why the workload's socket is not being read: bits of FastConnection's holds. */
const HOLD_READ_AHEAD = 1;
const HOLD_UPSTREAM = 2;

class FastConnection<S extends FastSession> {
  readonly #socket: tls.TLSSocket;
  readonly #session: S;
  readonly #host: FastHost<S>;
  #state: State = 'head';
  /** Bytes read from the workload and not yet consumed. */
  #buf: Buffer | undefined;
  readonly #readAhead = new ReadAhead();
  /** Bytes of #buf already searched for a head's end. */
  #searched = 0;
  #headTimer: NodeJS.Timeout | undefined;
  #exchange: Exchange<S> | undefined;
  /** HOLD_* bits: the socket is paused while any is set. */
  #holds = 0;
  /** The workload closed its side ('end': every byte it sent has been read). */
  #readEnded = false;
  readonly #onData = (chunk: Buffer) => this.#data(chunk);
  readonly #onEnd = () => this.#ended();
  readonly #onTimeout = () => this.#socket.destroy();
  readonly #onExchanged = (keepOpen: boolean, refusal?: Refusal) => this.#exchanged(keepOpen, refusal);
  /** What the reads of one turn bring for the workload leaves in one write (TurnBatch); each exchange uses it in turn. */
  readonly #batch: TurnBatch;
  readonly #flow: Flow = {
    hold: () => this.#hold(HOLD_UPSTREAM),
    unhold: () => this.#unhold(HOLD_UPSTREAM),
  };

  constructor(socket: tls.TLSSocket, session: S, host: FastHost<S>) {
    this.#socket = socket;
    this.#batch = new TurnBatch(socket);
    this.#session = session;
    this.#host = host;
  }

  start(): void {
    const socket = this.#socket;
    socket.setTimeout(this.#host.idleTimeoutMs, this.#onTimeout);
    // A workload may close its side once its requests are written (TLS
    // close_notify, then FIN) and read on: what it sent is still answered.
    socket.allowHalfOpen = true;
    socket.on('data', this.#onData);
    socket.on('end', this.#onEnd);
    socket.once('close', () => {
      clearTimeout(this.#headTimer);
      if (this.#state === 'handed') return;
      this.#state = 'closed';
      // A workload gone mid-exchange: the upstream connection holds half an exchange and is never reused.
      this.#exchange?.abort();
    });
  }

  #hold(bit: number): void {
    if (!this.#holds) this.#socket.pause();
    this.#holds |= bit;
  }

  #unhold(bit: number): void {
    if (!(this.#holds & bit)) return;
    this.#holds &= ~bit;
    if (!this.#holds) this.#socket.resume();
  }

  #data(chunk: Buffer): void {
    // Refused or ended: what else the workload sends is not read into memory.
    if (this.#state === 'closed') return;
    if (this.#state === 'exchange' && this.#exchange?.takesBody) {
      const rest = this.#exchange.body(chunk);
      if (!rest) return;
      chunk = rest;
    }
    this.#buf = this.#readAhead.append(this.#buf, chunk);
    if (this.#state === 'head') this.#nextHead();
    // Read ahead of the request being served: kept until it is done, up to a bound.
    else if (this.#buf.length > READ_AHEAD_MAX) this.#hold(HOLD_READ_AHEAD);
  }

  #nextHead(): void {
    const buf = this.#buf;
    if (!buf?.length) return;
    const end = findHeadEnd(buf, this.#searched);
    if (end < 0) {
      // A head cut short by the workload's close never completes.
      if (this.#readEnded) return this.#close();
      this.#searched = buf.length;
      if (buf.length > MAX_HEAD_BYTES) return this.#handOff();
      this.#headTimer ??= setTimeout(() => this.#handOff(), this.#host.headersTimeoutMs);
      return;
    }
    clearTimeout(this.#headTimer);
    this.#headTimer = undefined;
    const head = parseRequestHead(buf.subarray(0, end));
    if (!head || !this.#host.eligible(this.#session)) return this.#handOff();
    this.#buf = end < buf.length ? buf.subarray(end) : undefined;
    this.#searched = 0;
    this.#state = 'admitting';
    let admitted;
    try {
      admitted = this.#host.admit(this.#session, head);
    } catch (err) {
      return this.#internalError(err);
    }
    if (admitted instanceof Promise) admitted.then((a) => this.#admitted(head, a), (err: unknown) => this.#internalError(err));
    else this.#admitted(head, admitted);
  }

  #internalError(err: unknown): void {
    this.#host.log.error('request to %s failed inside the proxy: %s', this.#session.sni, (err as Error)?.stack ?? String(err));
    this.#socket.destroy();
  }

  #admitted(head: FastRequestHead, admitted: Admission | Refusal): void {
    if (this.#state !== 'admitting') return;
    if (!('upstream' in admitted)) {
      this.#host.refused(this.#session, head, admitted);
      // The body, if any, is never read.
      this.#close(admitted);
      return;
    }
    let exchange: Exchange<S>;
    try {
      exchange = new Exchange(this.#socket, this.#batch, this.#flow, this.#session, this.#host, head, admitted, this.#onExchanged);
    } catch (err) {
      // The upstream connection could not even be started: refused, never fatal.
      this.#host.log.error('cannot connect upstream to %s: %s', this.#session.sni, (err as Error).message);
      const refusal = upstreamFailed(this.#session.sni, err, false);
      this.#host.refused(this.#session, head, refusal);
      this.#close(refusal);
      return;
    }
    this.#state = 'exchange';
    this.#exchange = exchange;
    const buf = this.#buf;
    this.#buf = undefined;
    const rest = exchange.send(buf);
    if (rest?.length) this.#buf = rest;
    if (this.#readEnded && exchange.takesBody) {
      this.#bodyCut(exchange);
      return;
    }
    if (!this.#buf || this.#buf.length <= READ_AHEAD_MAX) this.#unhold(HOLD_READ_AHEAD);
  }

  /** The exchange is over: its response forwarded whole (`keepOpen`: the connection may carry another), or failed (answered with `refusal`, or cut). */
  #exchanged(keepOpen: boolean, refusal?: Refusal): void {
    this.#exchange = undefined;
    this.#unhold(HOLD_UPSTREAM);
    if (this.#state !== 'exchange') return;
    if (!keepOpen) {
      this.#close(refusal);
      return;
    }
    this.#state = 'head';
    this.#unhold(HOLD_READ_AHEAD);
    if (this.#readEnded && !this.#buf?.length) {
      this.#close();
      return;
    }
    // A request read ahead waits for the I/O already received to be seen:
    // the upstream may have closed the connection just released along with
    // its response, and the next request must not be written to it.
    if (this.#buf?.length) {
      setImmediate(() => {
        if (this.#state === 'head') this.#nextHead();
      });
    }
  }

  /**
   * The workload closed its side. Requests it sent whole are still
   * answered, one by one, and the connection then closes; a request head
   * or body it left incomplete never will be: the connection closes now
   * (an exchange whose body stops short is aborted like a workload gone).
   */
  #ended(): void {
    this.#readEnded = true;
    if (this.#state === 'head') {
      // A whole head read ahead is taken up once the exchange before it is
      // over (#exchanged); anything else is a head that never completes.
      if (!this.#buf?.length || findHeadEnd(this.#buf, 0) < 0) this.#close();
    } else if (this.#state === 'exchange' && this.#exchange?.takesBody) {
      this.#bodyCut(this.#exchange);
    }
    // 'admitting': #admitted sees #readEnded.
  }

  /** A request body the workload stopped sending: its upstream connection holds half a request and is closed. */
  #bodyCut(exchange: Exchange<S>): void {
    this.#exchange = undefined;
    exchange.abort();
    this.#close();
  }

  /** Ends the connection (answering `refusal` first), as Node's server does after a last response: closed once flushed, never left half-open. */
  #close(refusal?: Refusal): void {
    this.#state = 'closed';
    this.#buf = undefined;
    const socket = this.#socket;
    if (socket.destroyed) return;
    socket.once('finish', () => socket.destroy());
    if (refusal) refuseRaw(socket, refusal);
    else if (!socket.writableEnded) socket.end();
    // Whatever else comes is dropped unread (#data), not held.
    this.#holds = 0;
    socket.resume();
  }

  /** Node's HTTP server takes the connection from this request on, with every byte not yet consumed. */
  #handOff(): void {
    if (this.#state !== 'head') return;
    // Node's server cannot take a stream that has ended: a request it would
    // have served after the workload closed its side gets the close instead.
    if (this.#readEnded) {
      this.#close();
      return;
    }
    this.#state = 'handed';
    clearTimeout(this.#headTimer);
    const socket = this.#socket;
    socket.off('data', this.#onData);
    socket.off('end', this.#onEnd);
    socket.setTimeout(0);
    socket.off('timeout', this.#onTimeout);
    socket.pause();
    if (this.#buf?.length) socket.unshift(this.#buf);
    this.#buf = undefined;
    this.#host.handOff(socket, this.#session);
  }
}

/**
 * Corks a socket until the event loop's check phase, so that what the reads
 * of one turn bring (a bulk body arrives a TLS record per read) leaves in
 * one write: one encryption call and one system call instead of one per
 * record. flush() writes at once (the end of a response or a request body).
 */
class TurnBatch {
  readonly #socket: tls.TLSSocket;
  #immediate: NodeJS.Immediate | undefined;
  readonly #onCheck = () => {
    this.#immediate = undefined;
    this.#socket.uncork();
  };

  constructor(socket: tls.TLSSocket) {
    this.#socket = socket;
  }

  hold(): void {
    if (this.#immediate) return;
    this.#socket.cork();
    this.#immediate = setImmediate(this.#onCheck);
  }

  flush(): void {
    if (!this.#immediate) return;
    clearImmediate(this.#immediate);
    this.#onCheck();
  }
}

/** Methods sent again on a new connection when a kept-alive one failed before any answer (no body: nothing to replay). */
const RETRIED_METHODS = new Set(['GET', 'HEAD', 'OPTIONS', 'PUT', 'DELETE']);

/** How an exchange stops and restarts reading the workload's socket (the upstream cannot take more body yet). */
interface Flow {
  hold(): void;
  unhold(): void;
}

/** One request upstream and its response back: the owner of its upstream connection meanwhile. */
class Exchange<S extends FastSession> implements UpstreamOwner {
  readonly #down: tls.TLSSocket;
  readonly #flow: Flow;
  readonly #session: S;
  readonly #host: FastHost<S>;
  readonly #head: FastRequestHead;
  readonly #admission: Admission;
  readonly #done: (keepOpen: boolean, refusal?: Refusal) => void;
  readonly #framer: ResponseFramer;
  #up: UpstreamConnection;
  readonly #headBytes: Buffer;
  /** Bytes came from the upstream for this exchange. */
  #answered = false;
  #retried = false;
  /** Request body bytes still to come from the workload. */
  #bodyLeft: number;
  #over = false;
  /** The upstream socket is paused for the workload's (the response's backpressure). */
  #upHeld = false;
  readonly #sentAt = performance.now();
  /** The workload's socket is paused for the upstream's (the request body's backpressure). */
  #bodyHeld = false;
  /** The workload's socket's TurnBatch (its connection's). */
  readonly #downBatch: TurnBatch;
  #upBatch: TurnBatch | undefined;
  /** Made the first time either side's backpressure is waited out (most exchanges never do). */
  #onBodyDrain: (() => void) | undefined;
  #onResponseDrain: (() => void) | undefined;

  constructor(
    down: tls.TLSSocket, downBatch: TurnBatch, flow: Flow, session: S, host: FastHost<S>, head: FastRequestHead, admission: Admission,
    done: (keepOpen: boolean, refusal?: Refusal) => void,
  ) {
    this.#down = down;
    this.#flow = flow;
    this.#session = session;
    this.#host = host;
    this.#head = head;
    this.#admission = admission;
    this.#done = done;
    this.#bodyLeft = head.bodyLength;
    this.#framer = new ResponseFramer(head.method === 'HEAD', head.close, responseMask(admission));
    this.#headBytes = serializeRequestHead(head.method, admission.upstream.path, closingHeaders(admission.upstream.headers, admission.upstream.closeAfter));
    this.#up = host.upstreams.lease(admission.partition, session.orig.address, session.orig.port, session.sni, this);
    this.#downBatch = downBatch;
  }

  /** Whether bytes from the workload are still this request's body. */
  get takesBody(): boolean {
    return this.#bodyLeft > 0 && !this.#over;
  }

  /** Sends the head and what of `buffered` is body; returns the bytes after the body (the next request's). */
  send(buffered: Buffer | undefined): Buffer | undefined {
    const up = this.#up.socket;
    if (!buffered?.length || this.#bodyLeft === 0) {
      up.write(this.#headBytes);
      return buffered;
    }
    up.cork();
    up.write(this.#headBytes);
    const rest = this.body(buffered);
    up.uncork();
    return rest;
  }

  /** Forwards what of `chunk` is body; returns the bytes after it. */
  body(chunk: Buffer): Buffer | undefined {
    const n = Math.min(this.#bodyLeft, chunk.length);
    if (n === 0) return chunk;
    this.#bodyLeft -= n;
    const up = this.#up.socket;
    // A body's records of one turn go out in one write; its last bytes at once.
    const batch = (this.#upBatch ??= new TurnBatch(up));
    if (this.#bodyLeft > 0) batch.hold();
    const flowing = up.write(n === chunk.length ? chunk : chunk.subarray(0, n));
    if (this.#bodyLeft === 0) batch.flush();
    if (!flowing && !this.#over && !this.#bodyHeld) {
      this.#bodyHeld = true;
      this.#flow.hold();
      up.once('drain', (this.#onBodyDrain ??= () => {
        this.#bodyHeld = false;
        if (!this.#over) this.#flow.unhold();
      }));
    }
    return n < chunk.length ? chunk.subarray(n) : undefined;
  }

  /** The workload went away: the upstream connection is closed, never reused. */
  abort(): void {
    if (this.#over) return;
    this.#finish();
    const sent = this.#sent();
    this.#up.socket.destroy();
    if (sent) this.#host.completed(this.#session, this.#head, this.#admission, this.#framer.status, 'workload-closed');
  }

  /**
   * Whether the request may have reached the upstream, credential and all:
   * its connection's TLS was established and verified (a write made before
   * that goes out once it is), or bytes of the answer came.
   */
  #sent(): boolean {
    return this.#answered || this.#up.socket.authorized;
  }

  data(chunk: Buffer): void {
    if (this.#over) return;
    this.#answered = true;
    let framed;
    try {
      framed = this.#framer.push(chunk);
    } catch (err) {
      this.#fail(err as Error);
      return;
    }
    if (framed.status !== undefined) {
      this.#host.upstreamLatency(this.#session, (performance.now() - this.#sentAt) / 1000);
    }
    const down = this.#down;
    const out = framed.out;
    let flowing = true;
    // One write for a head and a small body; a long body's records of one turn together (TurnBatch).
    if (!framed.done) this.#downBatch.hold();
    if (out.length === 1) flowing = down.write(out[0] as Buffer);
    else if (out.length > 1) flowing = down.write(Buffer.concat(out));
    if (framed.done) {
      this.#downBatch.flush();
      return this.#complete();
    }
    if (!flowing && !this.#upHeld) {
      this.#upHeld = true;
      this.#up.socket.pause();
      down.once('drain', (this.#onResponseDrain ??= () => {
        if (this.#over || !this.#upHeld) return;
        this.#upHeld = false;
        this.#up.socket.resume();
      }));
    }
  }

  end(): void {
    if (this.#over) return;
    if (this.#framer.end()) {
      const held = this.#framer.heldAtClose();
      if (held?.length) this.#down.write(held);
      this.#complete();
    } else this.#fail(new Error('the upstream closed the connection before the response ended'));
  }

  error(err: Error): void {
    if (!this.#over) this.#fail(err);
  }

  closed(): void {
    if (!this.#over) this.#fail(new Error('the upstream connection closed'));
  }

  /** The response was forwarded whole. */
  #complete(): void {
    this.#finish();
    this.#host.completed(this.#session, this.#head, this.#admission, this.#framer.status);
    // A request whose body was not all sent (the upstream answered early) leaves the upstream mid-request, and the workload mid-body.
    const whole = this.#bodyLeft === 0;
    if (whole && this.#framer.reusable && !this.#admission.upstream.closeAfter) this.#host.upstreams.release(this.#up);
    else this.#up.socket.destroy();
    this.#done(whole && !this.#framer.closeDelimited && !this.#head.close);
  }

  #fail(err: Error): void {
    if (this.#retry(err)) return;
    this.#finish();
    const sent = this.#sent();
    this.#up.socket.destroy();
    this.#host.log.debug('exchange with %s failed: %s', this.#session.sni, err.message);
    if (!this.#framer.headSent && this.#down.writable) {
      const refusal = upstreamFailed(this.#session.sni, err, sent);
      this.#host.refused(this.#session, this.#head, refusal, sent ? this.#admission : undefined);
      this.#done(false, refusal);
    } else {
      // Part of the response is out: it can only be cut. (Or the workload is gone.)
      this.#down.destroy();
      if (this.#framer.headSent) this.#host.completed(this.#session, this.#head, this.#admission, this.#framer.status, 'response-cut');
      else if (sent) this.#host.completed(this.#session, this.#head, this.#admission, this.#framer.status, 'workload-closed');
      this.#done(false);
    }
  }

  /**
   * A kept-alive connection the upstream closed (or that failed) before any
   * byte of the answer: the upstream may close an idle connection just as a
   * request is written to it. A request without a body whose method is
   * idempotent (RFC 9110 9.2.2) is sent once more, on a new connection.
   */
  #retry(err: Error): boolean {
    if (this.#answered || this.#retried || !this.#up.reused || this.#head.bodyLength !== 0 || !RETRIED_METHODS.has(this.#head.method)) return false;
    this.#retried = true;
    this.#host.log.debug('kept-alive connection to %s failed before an answer (%s): sending %s again on a new one', this.#session.sni, err.message, this.#head.method);
    const old = this.#up;
    old.owner = undefined;
    old.socket.destroy();
    const { orig, sni } = this.#session;
    this.#up = this.#host.upstreams.lease(this.#admission.partition, orig.address, orig.port, sni, this, true);
    this.#up.socket.write(this.#headBytes);
    return true;
  }

  #finish(): void {
    this.#over = true;
    this.#downBatch.flush();
    this.#upBatch?.flush();
    this.#up.owner = undefined;
    if (this.#onBodyDrain) this.#up.socket.off('drain', this.#onBodyDrain);
    if (this.#onResponseDrain) this.#down.off('drain', this.#onResponseDrain);
    if (this.#upHeld) {
      this.#upHeld = false;
      this.#up.socket.resume();
    }
  }
}

/** Who an upstream connection's events go to while it is lent. */
export interface UpstreamOwner {
  data(chunk: Buffer): void;
  end(): void;
  error(err: Error): void;
  closed(): void;
}

/** An upstream connection: its events go to its owner (an exchange), or, idle, close it. */
export interface UpstreamConnection {
  readonly socket: tls.TLSSocket;
  readonly key: string;
  owner: UpstreamOwner | undefined;
  /** When it became idle (performance.now()). */
  idleSince: number;
  /** It served an exchange before this one (taken from the idle connections). */
  reused: boolean;
}

export interface FastUpstreamOptions {
  /** The trust store (upstreamSecureContext); undefined: Node's own. */
  secureContext?: tls.SecureContext;
  /** How long an idle connection is kept (ms). */
  idleMs?: number;
  /** Idle connections kept per partition and destination. */
  maxIdle?: number;
}

/**
 * Upstream TLS connections for the fast path, kept idle per partition
 * (workload, binding, credential version) and destination (address, port,
 * verified server name), as UpstreamPools keeps undici's: a connection, and
 * the TLS session it resumes, never serves another partition.
 */
export class FastUpstreams {
  readonly #idle = new Map<string, UpstreamConnection[]>();
  readonly #sessions = new Map<string, Buffer>();
  readonly #secureContext: tls.SecureContext | undefined;
  readonly #idleMs: number;
  readonly #maxIdle: number;
  readonly #open = new Set<UpstreamConnection>();
  readonly #sweep: NodeJS.Timeout;
  #closed = false;

  constructor(opts: FastUpstreamOptions = {}) {
    this.#secureContext = opts.secureContext;
    this.#idleMs = opts.idleMs ?? 60_000;
    this.#maxIdle = opts.maxIdle ?? 64;
    this.#sweep = setInterval(() => this.#closeIdle(), Math.max(1000, this.#idleMs / 2)).unref();
  }

  /**
   * A connection for one exchange, its events going to `owner`: an idle
   * one of the partition's (unless `fresh`), else a new one (certificate
   * verified against `servername`). Give it back with release() or destroy
   * its socket.
   */
  lease(partition: string, address: string, port: number, servername: string, owner: UpstreamOwner, fresh = false): UpstreamConnection {
    const key = `${partition}\0${address}\0${port}\0${servername}`;
    const conn = (fresh ? undefined : this.#takeIdle(key)) ?? this.#connect(key, address, port, servername);
    conn.owner = owner;
    return conn;
  }

  /** An exchange ended cleanly on `conn`: it may serve the same partition and destination again. */
  release(conn: UpstreamConnection): void {
    conn.owner = undefined;
    const socket = conn.socket;
    if (this.#closed || socket.destroyed) return void socket.destroy();
    let list = this.#idle.get(conn.key);
    if (!list) {
      list = [];
      this.#idle.set(conn.key, list);
    }
    if (list.length >= this.#maxIdle) return void socket.destroy();
    conn.idleSince = performance.now();
    list.push(conn);
  }

  close(): void {
    this.#closed = true;
    clearInterval(this.#sweep);
    for (const c of this.#open) c.socket.destroy();
    this.#idle.clear();
    this.#sessions.clear();
  }

  #takeIdle(key: string): UpstreamConnection | undefined {
    const list = this.#idle.get(key);
    while (list?.length) {
      const c = list.pop() as UpstreamConnection;
      if (!list.length) this.#idle.delete(key);
      if (!c.socket.destroyed && c.socket.readable && c.socket.writable) {
        c.reused = true;
        return c;
      }
      c.socket.destroy();
    }
    return undefined;
  }

  #connect(key: string, address: string, port: number, servername: string): UpstreamConnection {
    const session = this.#sessions.get(key);
    const options: tls.ConnectionOptions & { highWaterMark: number } = {
      host: address, port, servername, rejectUnauthorized: true, ALPNProtocols: ['http/1.1'],
      ...(this.#secureContext ? { secureContext: this.#secureContext } : {}),
      ...(session ? { session } : {}),
      highWaterMark: STREAM_HIGH_WATER_MARK,
    };
    const socket = tls.connect(options);
    socket.setNoDelay(true);
    const conn: UpstreamConnection = { socket, key, owner: undefined, idleSince: 0, reused: false };
    this.#open.add(conn);
    // Lent, its events are the exchange's; idle, anything the upstream sends belongs to no request, and ends it.
    socket.on('data', (chunk: Buffer) => {
      if (conn.owner) conn.owner.data(chunk);
      else this.#drop(conn);
    });
    socket.on('end', () => {
      if (conn.owner) conn.owner.end();
      else this.#drop(conn);
    });
    socket.on('error', (err: Error) => conn.owner?.error(err));
    socket.on('close', () => {
      this.#open.delete(conn);
      if (conn.owner) conn.owner.closed();
      else this.#drop(conn);
    });
    socket.on('session', (s: Buffer) => {
      // One per partition and destination; a long-running agent keeps a bounded few.
      if (this.#sessions.size >= 4096) this.#sessions.clear();
      this.#sessions.set(key, s);
    });
    if (this.#closed) socket.destroy();
    return conn;
  }

  /** Closes an idle connection and forgets it. */
  #drop(conn: UpstreamConnection): void {
    const list = this.#idle.get(conn.key);
    const i = list?.indexOf(conn) ?? -1;
    if (list && i >= 0) {
      list.splice(i, 1);
      if (!list.length) this.#idle.delete(conn.key);
    }
    conn.socket.destroy();
  }

  #closeIdle(): void {
    const before = performance.now() - this.#idleMs;
    for (const list of [...this.#idle.values()]) {
      for (const c of list.filter((x) => x.idleSince <= before)) this.#drop(c);
    }
  }
}
