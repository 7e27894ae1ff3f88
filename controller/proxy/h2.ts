/**
 * HTTP/2 towards the workload: a terminated TLS connection whose ALPN chose
 * `h2` is served by an HTTP/2 server session, and each stream is a request
 * that goes through the same admission as an HTTP/1.1 request (the plan in
 * force when it arrives, checkRequest(), the audit, the credential and its
 * injection: ProxyServer's admit()) after its HTTP/2 head is checked here.
 * Upstream, a stream goes over HTTP/2 when the destination offers it
 * (upstream-h2.ts) and over HTTP/1.1 otherwise.
 *
 * Node's HTTP/2 layer (nghttp2) already refuses, with RST_STREAM
 * PROTOCOL_ERROR, what RFC 9113 calls malformed: upper-case names,
 * connection-specific headers, `te` other than `trailers`, unknown or
 * repeated pseudo-headers, a pseudo-header after a regular one, a body
 * longer or shorter than its content-length. checkH2Head() checks all of it
 * again, so that nothing depends on one layer alone, and answers with a
 * refusal the workload can read where nghttp2 let a stream through.
 */
import http2 from 'node:http2';
import https from 'node:https';
import http from 'node:http';
import type tls from 'node:tls';
import type { Logger } from '../log.js';
import type { Refusal, RefusalCode } from '../refusals.js';
import type { RequestHead } from './request-checks.js';
import type { StreamedRequest, UpstreamRequest } from '../inject/inject.js';
import { MaskingStream, ResponseMask } from '../inject/reflection.js';
import type { Readable, Writable } from 'node:stream';
import { closingHeaders, downstreamResponseHeaders } from '../http/headers.js';
import { upstreamFailed } from './refusal-response.js';
import { neverReuseUnfinished, type PartitionedAgent, type PartitionedRequestOptions } from './upstream.js';
import { H2_SESSION_WINDOW, H2_STREAM_WINDOW, type UpstreamH2Pool } from './upstream-h2.js';

const {
  NGHTTP2_NO_ERROR, NGHTTP2_CANCEL, NGHTTP2_INTERNAL_ERROR, NGHTTP2_REFUSED_STREAM, NGHTTP2_ENHANCE_YOUR_CALM, NGHTTP2_FLAG_END_STREAM,
} = http2.constants;

/** Bounds on what one HTTP/2 connection from a workload can make the proxy hold or do (README: "HTTP/2 and gRPC"). */
export interface H2Limits {
  /** Streams open at once on one connection (SETTINGS_MAX_CONCURRENT_STREAMS); more are refused with REFUSED_STREAM. */
  maxConcurrentStreams: number;
  /** Decoded header list of one request, names and values plus 32 bytes a field (SETTINGS_MAX_HEADER_LIST_SIZE). */
  maxHeaderListSize: number;
  /** Header fields in one request. */
  maxHeaderListPairs: number;
  /** Memory one session's nghttp2 state may hold (MB): HPACK tables, queued frames, stream state. */
  maxSessionMemoryMb: number;
  /** Streams the workload may reset within `resetWindowMs` before the connection gets GOAWAY (rapid reset). */
  maxResets: number;
  resetWindowMs: number;
}

export const DEFAULT_H2_LIMITS: H2Limits = {
  maxConcurrentStreams: 100,
  maxHeaderListSize: 64 * 1024,
  maxHeaderListPairs: 128,
  maxSessionMemoryMb: 10,
  maxResets: 200,
  resetWindowMs: 10_000,
};

/** A request admitted by the proxy: the route it used, and the upstream request with its credential. */
export interface Admission {
  workload: string;
  service: string;
  injectKind: string;
  credentialName: string;
  upstream: UpstreamRequest;
  /** The upstream partition: workload, binding, credential version. */
  partition: string;
  /** The response's mask for the credential's values (responseMask()): its count goes in the audit line. */
  mask?: ResponseMask;
}

/**
 * Why a request that went upstream with its credential did not get its
 * response whole: the upstream's response broke or ended early after its
 * head, or the workload went away first. An inject line's `reason`.
 */
export type InjectOutcome = 'response-cut' | 'workload-closed';

/** A terminated connection as this module needs it: where it was going and the SNI it named. */
export interface H2Connection {
  address: string;
  port: number;
  sni: string;
}

/** What ProxyServer lends the HTTP/2 front: the same admission, accounting and audit as an HTTP/1.1 request gets. */
export interface H2Host<S extends H2Connection> {
  /** The plan in force, checkRequest(), the audit's health, the credential and its injection; or why not. */
  admit(session: S, head: RequestHead, source: StreamedRequest): Admission | Refusal | Promise<Admission | Refusal>;
  /** Counts and audits a refused request; `sent`: it had gone upstream with its credential (an inject line, see FastHost.refused). */
  refused(session: S, head: { method?: string; url?: string }, refusal: Refusal, sent?: Admission): void;
  /** Counts and audits a connection closed for what it did (too many resets). */
  connectionRefused(session: S, code: RefusalCode): void;
  /** Audits a request that went upstream: its response forwarded whole, or cut short (`reset`), or none yet (`status` 0). */
  completed(session: S, head: { method: string; url: string }, admission: Admission, status: number, reset: number): void;
  upstreamLatency(session: S, seconds: number): void;
  /** Gives back the memory a body read for SigV4 signing took (the budget's owner is the stream). */
  releaseBody(owner: object): void;
  upstreamAgent: PartitionedAgent;
  upstreamH2: UpstreamH2Pool;
  idleTimeoutMs: number;
  log: Logger;
}

/** Where the proxy's session of a TLS socket is kept until the HTTP/2 server hands it its session. */
const CONNECTION = Symbol('wirekey.h2.connection');
const PSEUDO = new Set([':method', ':scheme', ':authority', ':path']);
/** RFC 9113 8.2.2: never in an HTTP/2 message. */
const CONNECTION_SPECIFIC = new Set(['connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'upgrade']);

/** An HTTP/2 request head, checked, as the shared checks and the injection take it. */
export interface H2Head extends RequestHead {
  method: string;
  url: string;
  /** The workload sent `te: trailers` (gRPC does): forwarded to an HTTP/2 upstream. */
  teTrailers: boolean;
}

const malformed = (message: string): Refusal => ({ status: 400, code: 'malformed-request', message });

/**
 * Checks what only HTTP/2 has (pseudo-headers, connection-specific
 * headers, `:authority` against `host`), and returns the request in the
 * form checkRequest() and the injection take: `:authority` (or the one
 * `host`) as its only Host header, cookies joined (RFC 9113 8.2.3). The
 * rest (header names, methods, Host against the SNI) is checkRequest()'s.
 */
export function checkH2Head(raw: string[]): H2Head | Refusal {
  const pseudo = new Map<string, string>();
  const regular: string[] = [];
  const hosts: string[] = [];
  const cookies: string[] = [];
  let teTrailers = false;
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i] as string;
    const value = raw[i + 1] as string;
    if (name.startsWith(':')) {
      if (regular.length || hosts.length || cookies.length || teTrailers) return malformed(`pseudo-header ${name.slice(0, 32)} after a regular header`);
      if (!PSEUDO.has(name)) return malformed(`unknown pseudo-header ${JSON.stringify(name.slice(0, 32))}`);
      if (pseudo.has(name)) return malformed(`more than one ${name}`);
      pseudo.set(name, value);
      continue;
    }
    if (name !== name.toLowerCase()) return malformed('an HTTP/2 header name must be lower-case');
    if (CONNECTION_SPECIFIC.has(name)) return malformed(`the connection-specific header ${name} is not allowed in HTTP/2`);
    if (name === 'te') {
      if (value.trim().toLowerCase() !== 'trailers') return malformed('te may only be "trailers" in HTTP/2');
      teTrailers = true;
    } else if (name === 'host') hosts.push(value);
    else if (name === 'cookie') cookies.push(value);
    else regular.push(name, value);
  }
  const method = pseudo.get(':method');
  const url = pseudo.get(':path');
  if (!method) return malformed(':method is missing');
  // The methods HTTP/1.1 requests may carry here (Node's parser knows no
  // others), spelt as they are: Node's client upper-cases a method on the
  // way upstream, so "trace" or "get" would be checked as one method and
  // sent as another.
  if (!KNOWN_METHODS.has(method)) {
    return { status: 405, code: 'method-not-allowed', message: `${JSON.stringify(method.slice(0, 32))} is not a method wirekey forwards (methods are upper-case)` };
  }
  if (method === 'CONNECT') return { status: 405, code: 'method-not-allowed', message: 'CONNECT is not supported through wirekey' };
  if (pseudo.get(':scheme') !== 'https') return { status: 400, code: 'bad-target', message: ':scheme must be https' };
  if (!url) return malformed(':path is missing or empty');
  if (!url.startsWith('/') && !(url === '*' && method === 'OPTIONS')) {
    return { status: 400, code: 'bad-target', message: ':path must be an absolute path (or * for OPTIONS)' };
  }
  if (hosts.length > 1) return { status: 400, code: 'ambiguous-host', message: 'more than one host header' };
  const authority = pseudo.get(':authority');
  const host = hosts[0];
  if (authority === undefined && host === undefined) return { status: 400, code: 'ambiguous-host', message: 'neither :authority nor host names the server' };
  if (authority !== undefined && host !== undefined && authority.toLowerCase() !== host.toLowerCase()) {
    return { status: 421, code: 'host-mismatch', message: ':authority and the host header name different servers' };
  }
  const rawHeaders = ['host', (authority ?? host) as string, ...regular];
  if (cookies.length) rawHeaders.push('cookie', cookies.join('; '));
  return { method, url, rawHeaders, httpVersion: '2.0', teTrailers };
}

const KNOWN_METHODS = new Set(http.METHODS);

function isRefusal(x: H2Head | Admission | Refusal): x is Refusal {
  return 'code' in x && 'status' in x && 'message' in x;
}

/** Raw [name, value, ...] headers as an HTTP/2 header object: lower-case names, repeated names as arrays. */
function toH2Object(raw: string[], into: http2.OutgoingHttpHeaders = {}): http2.OutgoingHttpHeaders {
  for (let i = 0; i < raw.length; i += 2) {
    const name = (raw[i] as string).toLowerCase();
    if (name.startsWith(':') || CONNECTION_SPECIFIC.has(name) || name === 'te') continue;
    const value = raw[i + 1] as string;
    const cur = into[name];
    if (cur === undefined) into[name] = value;
    else if (Array.isArray(cur)) cur.push(value);
    else into[name] = [String(cur), value];
  }
  return into;
}

/** An HTTP/2 header object (a response or trailers Node received) as raw [name, value, ...], pseudo-headers left out. */
function fromH2Object(headers: http2.IncomingHttpHeaders): string[] {
  const raw: string[] = [];
  for (const [name, value] of Object.entries(headers)) {
    if (name.startsWith(':') || value === undefined) continue;
    for (const v of Array.isArray(value) ? value : [value]) raw.push(name, v);
  }
  return raw;
}

export class H2Front<S extends H2Connection> {
  readonly #host: H2Host<S>;
  readonly #limits: H2Limits;
  readonly #server: http2.Http2Server;
  /** Streams the proxy itself reset: not counted against the workload. */
  readonly #ours = new WeakSet<http2.Http2Stream>();
  /** Streams answered with a refusal (audited as such, not as an injection). */
  readonly #refused = new WeakSet<http2.Http2Stream>();
  readonly #sessions = new Set<http2.ServerHttp2Session>();

  constructor(host: H2Host<S>, limits: Partial<H2Limits> = {}) {
    this.#host = host;
    this.#limits = { ...DEFAULT_H2_LIMITS, ...limits };
    const l = this.#limits;
    this.#server = http2.createServer({
      maxSessionMemory: l.maxSessionMemoryMb,
      maxHeaderListPairs: l.maxHeaderListPairs,
      // A SETTINGS frame with more entries, or more SETTINGS/PINGs unanswered, ends the session.
      maxSettings: 32,
      maxOutstandingPings: 10,
      // Frames nghttp2 rejects, and streams it refuses past the concurrency limit, before the session is torn down.
      maxSessionInvalidFrames: 100,
      maxSessionRejectedStreams: 100,
      settings: {
        enablePush: false,
        maxConcurrentStreams: l.maxConcurrentStreams,
        maxHeaderListSize: l.maxHeaderListSize,
        initialWindowSize: H2_STREAM_WINDOW,
      },
    });
    this.#server.on('session', (session) => this.#onSession(session));
    this.#server.on('sessionError', (err) => this.#host.log.debug('HTTP/2 session with a workload failed: %s', err.message));
  }

  /** Serves `socket` (TLS established, ALPN `h2`) as connection `conn`. */
  serve(socket: tls.TLSSocket, conn: S): void {
    (socket as unknown as Record<symbol, unknown>)[CONNECTION] = conn;
    // A server-side TLSSocket made without a tls.Server never clears
    // secureConnecting, and an HTTP/2 session waits for it to clear (for a
    // 'secureConnect' a server socket never emits) before it reads a byte.
    (socket as unknown as { secureConnecting: boolean }).secureConnecting = false;
    this.#server.emit('connection', socket);
  }

  close(): void {
    for (const s of this.#sessions) s.destroy();
  }

  #onSession(session: http2.ServerHttp2Session): void {
    // session.socket is a proxy whose reads go to the TLS socket.
    const conn = (session.socket as unknown as Record<symbol, S | undefined>)[CONNECTION];
    if (!conn) {
      session.destroy();
      return;
    }
    this.#sessions.add(session);
    session.once('close', () => this.#sessions.delete(session));
    session.setLocalWindowSize(H2_SESSION_WINDOW);
    session.on('error', (err) => this.#host.log.debug('HTTP/2 session of %s failed: %s', conn.sni, err.message));
    // No frames either way for this long: closed, as an idle HTTP/1.1 connection is.
    session.setTimeout(this.#host.idleTimeoutMs, () => session.destroy());
    let resets = 0;
    let windowStart = performance.now();
    session.on('stream', (stream: http2.ServerHttp2Stream, _headers: http2.IncomingHttpHeaders, flags: number, rawHeaders: string[]) => {
      stream.on('error', (err: Error) => this.#host.log.debug('HTTP/2 stream to %s: %s', conn.sni, err.message));
      stream.once('close', () => {
        if (stream.rstCode === undefined || stream.rstCode === NGHTTP2_NO_ERROR || this.#ours.has(stream)) return;
        // Rapid reset (CVE-2023-44487): each stream opened and reset costs an
        // admission and maybe an upstream stream; past the limit, GOAWAY.
        const now = performance.now();
        if (now - windowStart > this.#limits.resetWindowMs) {
          windowStart = now;
          resets = 0;
        }
        if (++resets === this.#limits.maxResets + 1) {
          this.#host.log.warn('HTTP/2 connection to %s reset more than %d streams in %d ms: GOAWAY', conn.sni, this.#limits.maxResets, this.#limits.resetWindowMs);
          this.#host.connectionRefused(conn, 'too-many-resets');
          session.destroy(undefined, NGHTTP2_ENHANCE_YOUR_CALM);
        }
      });
      this.#onStream(conn, session, stream, flags, rawHeaders).catch((err: unknown) => {
        this.#host.log.error('HTTP/2 request to %s failed inside the proxy: %s', conn.sni, (err as Error)?.stack ?? String(err));
        this.#reset(stream, NGHTTP2_INTERNAL_ERROR);
      });
    });
  }

  async #onStream(conn: S, session: http2.ServerHttp2Session, stream: http2.ServerHttp2Stream, flags: number, raw: string[]): Promise<void> {
    const endStream = (flags & NGHTTP2_FLAG_END_STREAM) !== 0;
    const head = checkH2Head(raw);
    if (isRefusal(head)) {
      const at = { method: pseudoOf(raw, ':method'), url: pseudoOf(raw, ':path') };
      return this.#refuse(conn, stream, at, head);
    }
    const declared = head.rawHeaders.some((v, i) => i % 2 === 0 && v === 'content-length');
    const source: StreamedRequest = { method: head.method, url: head.url, rawHeaders: head.rawHeaders, body: stream, unknownLength: !endStream && !declared };
    const admission = await this.#host.admit(conn, head, source);
    if (isRefusal(admission)) {
      this.#refuse(conn, stream, head, admission);
      // As on HTTP/1.1, a binding changed under the connection ends it: no new streams.
      if (admission.code === 'binding-changed') session.close();
      return;
    }
    if (admission.upstream.body) {
      if (stream.closed || stream.destroyed) this.#host.releaseBody(stream);
      else stream.once('close', () => this.#host.releaseBody(stream));
    }
    if (stream.closed || stream.destroyed) return;
    // SigV4 stays on HTTP/1.1 upstream (README: "HTTP/2 and gRPC").
    let upstream: http2.ClientHttp2Session | null = null;
    if (admission.injectKind !== 'sigv4') {
      try {
        upstream = await this.#host.upstreamH2.session({ partition: admission.partition, address: conn.address, port: conn.port, servername: conn.sni });
      } catch (err) {
        this.#host.log.debug('upstream %s (%s:%d) failed: %s', conn.sni, conn.address, conn.port, (err as Error).message);
        return this.#refuse(conn, stream, head, upstreamFailed(conn.sni, err, false));
      }
    }
    if (stream.closed || stream.destroyed) return;
    if (upstream) this.#viaH2(conn, upstream, stream, head, admission, endStream);
    else this.#viaH1(conn, stream, head, admission, endStream);
  }

  /** The request on the partition's HTTP/2 session upstream; RST_STREAM either way cancels the other side. */
  #viaH2(conn: S, upstream: http2.ClientHttp2Session, stream: http2.ServerHttp2Stream, head: H2Head, admission: Admission, endStream: boolean): void {
    const { headers, path, body } = admission.upstream;
    const out: http2.OutgoingHttpHeaders = { ':method': head.method, ':scheme': 'https', ':path': path };
    const rest: string[] = [];
    for (let i = 0; i < headers.length; i += 2) {
      if ((headers[i] as string).toLowerCase() === 'host') out[':authority'] = headers[i + 1];
      else rest.push(headers[i] as string, headers[i + 1] as string);
    }
    toH2Object(rest, out);
    if (head.teTrailers) out.te = 'trailers';
    let up: http2.ClientHttp2Stream;
    try {
      up = upstream.request(out, { endStream: endStream && !body });
    } catch (err) {
      return this.#refuse(conn, stream, head, { status: 502, code: 'upstream-failed', message: `upstream ${conn.sni}: the request could not be built` });
    }
    const sentAt = performance.now();
    let status = 0;
    let trailers: http2.IncomingHttpHeaders | undefined;
    up.on('error', (err) => this.#host.log.debug('HTTP/2 stream from %s: %s', conn.sni, err.message));
    up.once('response', (h, flags) => {
      this.#host.upstreamLatency(conn, (performance.now() - sentAt) / 1000);
      status = Number(h[':status']);
      const ended = (flags & NGHTTP2_FLAG_END_STREAM) !== 0 || head.method === 'HEAD';
      if (!this.#respond(stream, status, maskedHead(admission, fromH2Object(h)), ended)) {
        up.close(NGHTTP2_CANCEL);
        return;
      }
      if (ended) up.resume();
      else maskedPipe(admission, up, stream);
    });
    up.on('trailers', (t) => (trailers = t));
    stream.on('wantTrailers', () => this.#sendTrailers(stream, trailers ? maskedHead(admission, fromH2Object(trailers)) : []));
    up.once('close', () => {
      const code = up.rstCode ?? NGHTTP2_NO_ERROR;
      // Closed because the workload's stream was (a cancel): nothing to tell it.
      if (code === NGHTTP2_NO_ERROR || stream.closed || stream.destroyed) return;
      if (!status && code !== NGHTTP2_REFUSED_STREAM) {
        // No response yet: the workload gets a refusal it can read.
        this.#refuse(conn, stream, head, { status: 502, code: 'upstream-failed', message: `upstream ${conn.sni} reset the stream (HTTP/2 error ${code})` }, admission);
        return;
      }
      // REFUSED_STREAM (a GOAWAY that left it out, or a refused stream):
      // the upstream never processed it, and the workload may retry.
      this.#reset(stream, code === NGHTTP2_REFUSED_STREAM ? NGHTTP2_REFUSED_STREAM : NGHTTP2_CANCEL);
    });
    const complete = this.#completion(conn, stream, head, admission, () => status);
    stream.once('close', () => {
      if (!up.closed && !up.destroyed) up.close(NGHTTP2_CANCEL);
      complete();
    });
    if (body) up.end(body);
    else if (!endStream) stream.pipe(up);
  }

  /**
   * Audits a stream whose request went upstream with its credential, once:
   * when its response has been written whole ('finish': before the
   * workload can have read its end, as an HTTP/1.1 response is audited),
   * or, cut short, when it closes (answered or not; status 0: cancelled
   * before the response). Returns the close-time call.
   */
  #completion(conn: S, stream: http2.ServerHttp2Stream, head: H2Head, admission: Admission, status: () => number): () => void {
    let done = false;
    const complete = () => {
      if (done || this.#refused.has(stream)) return;
      done = true;
      this.#host.completed(conn, head, admission, status(), stream.rstCode ?? NGHTTP2_NO_ERROR);
    };
    stream.once('finish', complete);
    return complete;
  }

  /** The request over the partition's HTTP/1.1 pool, for an upstream that does not offer h2 (or a SigV4 binding). */
  #viaH1(conn: S, stream: http2.ServerHttp2Stream, head: H2Head, admission: Admission, endStream: boolean): void {
    const { headers, path, body, closeAfter } = admission.upstream;
    const options: PartitionedRequestOptions = {
      agent: this.#host.upstreamAgent,
      partition: admission.partition,
      host: conn.address,
      port: conn.port,
      servername: conn.sni,
      method: head.method,
      path,
      headers: closingHeaders(headers, closeAfter) as unknown as http.OutgoingHttpHeaders,
      setHost: false,
    };
    let up: http.ClientRequest;
    try {
      up = https.request(options);
    } catch (err) {
      return this.#refuse(conn, stream, head, { status: 502, code: 'upstream-failed', message: `upstream ${conn.sni}: the request could not be built` });
    }
    const sentAt = performance.now();
    let status = 0;
    let res: http.IncomingMessage | undefined;
    up.once('response', (r) => {
      res = r;
      neverReuseUnfinished(up, r, body || endStream ? undefined : stream);
      this.#host.upstreamLatency(conn, (performance.now() - sentAt) / 1000);
      status = r.statusCode ?? 502;
      const ended = head.method === 'HEAD' || status === 204 || status === 304;
      if (!this.#respond(stream, status, maskedHead(admission, downstreamResponseHeaders(r.rawHeaders)), ended)) {
        up.destroy();
        return;
      }
      r.once('error', () => this.#reset(stream, NGHTTP2_INTERNAL_ERROR));
      // A response cut short upstream must not look complete downstream.
      r.once('aborted', () => this.#reset(stream, NGHTTP2_INTERNAL_ERROR));
      if (ended) r.resume();
      else maskedPipe(admission, r, stream);
    });
    stream.on('wantTrailers', () => this.#sendTrailers(stream, maskedHead(admission, [...(res?.rawTrailers ?? [])])));
    up.on('error', (err) => {
      if (stream.closed || stream.destroyed) return;
      // Written on a verified TLS connection, the request went out with its credential.
      const sent = (up.socket as tls.TLSSocket | null)?.authorized ? admission : undefined;
      this.#host.log.debug('upstream %s (%s:%d) failed: %s', conn.sni, conn.address, conn.port, err.message);
      if (!status) this.#refuse(conn, stream, head, upstreamFailed(conn.sni, err, sent !== undefined), sent);
      else this.#reset(stream, NGHTTP2_INTERNAL_ERROR);
    });
    const complete = this.#completion(conn, stream, head, admission, () => status);
    stream.once('close', () => {
      // Cut short by the workload (before the response, or before its
      // request was all sent): the upstream connection goes too, never
      // reused, nor held open, half-sent.
      if (!res?.complete || !up.writableFinished) up.destroy();
      complete();
    });
    if (body) up.end(body);
    else if (!endStream) stream.pipe(up);
    else up.end();
  }

  /** Sends the response head; false when it cannot be sent (the stream is gone, or a header Node will not send). */
  #respond(stream: http2.ServerHttp2Stream, status: number, raw: string[], ended: boolean): boolean {
    if (stream.closed || stream.destroyed) return false;
    try {
      stream.respond(toH2Object(raw, { ':status': status }), ended ? { endStream: true } : { waitForTrailers: true });
      return true;
    } catch (err) {
      this.#host.log.debug('response not forwardable over HTTP/2: %s', (err as Error).message);
      this.#reset(stream, NGHTTP2_INTERNAL_ERROR);
      return false;
    }
  }

  /** Ends a response sent with waitForTrailers: with the upstream's trailers (gRPC's grpc-status), or an empty block. */
  #sendTrailers(stream: http2.ServerHttp2Stream, raw: string[]): void {
    try {
      stream.sendTrailers(toH2Object(raw));
    } catch (err) {
      this.#host.log.debug('trailers not forwardable over HTTP/2: %s', (err as Error).message);
      this.#reset(stream, NGHTTP2_INTERNAL_ERROR);
    }
  }

  /** Answers `refusal` on the stream (or resets it when a response is no longer possible); its body is never read. */
  #refuse(conn: S, stream: http2.ServerHttp2Stream, head: { method?: string; url?: string }, refusal: Refusal, sent?: Admission): void {
    this.#host.refused(conn, head, refusal, sent);
    this.#refused.add(stream);
    if (stream.closed || stream.destroyed) return;
    if (stream.headersSent) return this.#reset(stream, NGHTTP2_INTERNAL_ERROR);
    const body = `wirekey: ${refusal.message}\n`;
    try {
      stream.respond({
        ':status': refusal.status,
        'content-type': 'text/plain; charset=utf-8',
        'content-length': Buffer.byteLength(body),
        'x-wirekey-error': refusal.code,
      });
      // Then RST_STREAM NO_ERROR: the workload stops sending a body nobody reads.
      stream.end(body, () => {
        if (!stream.readableEnded) this.#reset(stream, NGHTTP2_NO_ERROR);
      });
    } catch {
      this.#reset(stream, NGHTTP2_INTERNAL_ERROR);
    }
  }

  #reset(stream: http2.Http2Stream, code: number): void {
    if (stream.closed || stream.destroyed) return;
    this.#ours.add(stream);
    stream.close(code);
  }
}

function pseudoOf(raw: string[], name: string): string | undefined {
  for (let i = 0; i < raw.length; i += 2) if (raw[i] === name) return raw[i + 1] as string;
  return undefined;
}

/**
 * The response's mask for the request's credential values (reflection.ts),
 * made once and kept on `admission`, whose audit line counts what it
 * changed; undefined when the request carried none to look for.
 */
export function responseMask(admission: Admission): ResponseMask | undefined {
  return admission.upstream.masked && (admission.mask ??= new ResponseMask(admission.upstream.masked));
}

/** A response head's (or trailers') raw pairs with the request's credential values masked. */
function maskedHead(admission: Admission, raw: string[]): string[] {
  return responseMask(admission)?.pairs(raw) ?? raw;
}

/** Pipes a response body to the workload's stream, through the credential mask when the request carried values to mask. */
function maskedPipe(admission: Admission, from: Readable, to: Writable): void {
  const mask = responseMask(admission);
  if (mask) from.pipe(new MaskingStream(mask)).pipe(to);
  else from.pipe(to);
}
