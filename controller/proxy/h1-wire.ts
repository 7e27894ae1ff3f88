/**
 * HTTP/1.1 on the wire, for the proxy's fast path (h1-fast.ts): which
 * request heads it may take itself, and where each upstream response ends.
 *
 * The request side never refuses anything. It accepts a conservative
 * subset (an origin-form target, visible ASCII only, one Host, at most one
 * plain Content-Length, no Transfer-Encoding, Expect, Upgrade or TE, a
 * Connection header of keep-alive or close only) and answers undefined for
 * everything else: that request, and the rest of its connection, then go
 * to Node's HTTP server (llhttp, strict), whose checks and refusals stand
 * as they are. A head accepted here still goes through checkRequest() and
 * the injection like any other.
 *
 * The response side frames what the upstream (a peer verified as the
 * bound service) sends: one response per request, by Content-Length,
 * chunked coding or the connection's close, interim 1xx heads first. It is
 * strict where framing is at stake (bare CR or LF, obs-fold, Content-Length
 * with Transfer-Encoding, a coding other than chunked, more bytes than the
 * response): the exchange then fails, and the upstream connection is never
 * reused. The head the workload gets is rewritten (hop-by-hop headers
 * dropped, framing stated by the proxy); the body's bytes pass untouched.
 */
import { METHODS } from 'node:http';
import type { ResponseMask } from '../inject/reflection.js';

/** Largest request or response head (request line or status line and headers), as Node's HTTP server and undici allow by default. */
export const MAX_HEAD_BYTES = 16 * 1024;
/** More request headers than this: Node's server takes the request. */
const MAX_FAST_HEADERS = 100;
/** Longest chunk-size line (size and extensions) and trailer section of a chunked response. */
const MAX_CHUNK_LINE = 4096;
const MAX_TRAILERS = MAX_HEAD_BYTES;

const CRLF = Buffer.from('\r\n');
const HEAD_END = Buffer.from('\r\n\r\n');
/** A chunked body's last-chunk line (trailers and the empty line follow). */
const LAST_CHUNK = Buffer.from('0\r\n');

/** A request head the fast path takes: HTTP/1.1, an origin-form target, the subset above. */
export interface FastRequestHead {
  method: string;
  url: string;
  /** [name, value, ...] as received, values without surrounding whitespace. */
  rawHeaders: string[];
  httpVersion: '1.1';
  /** Body bytes that follow the head (its Content-Length; 0 without one). */
  bodyLength: number;
  /** The workload asked for the connection to close after this exchange. */
  close: boolean;
}

/** The least a ReadAhead store holds. */
const READ_AHEAD_STORE_MIN = 4096;

/**
 * Bytes a connection has read ahead of where it is, appended in amortised
 * constant time per byte however small the chunks come (a workload may send
 * one-byte TLS records): a chunk goes into the spare room after the bytes
 * this last copied, or, with the bytes kept, into a new store twice their
 * size. It never writes memory a view it handed out covers (those stay as
 * they were), or a chunk the socket gave (kept as it came until another
 * arrives).
 */
export class ReadAhead {
  #store: Buffer | undefined;
  /** Where the kept bytes end in #store. */
  #end = 0;
  /** Bytes copied so far, for its test. */
  copied = 0;

  /** `kept` (what the last call returned, a tail of it, or a chunk as it came) followed by `chunk`. */
  append(kept: Buffer | undefined, chunk: Buffer): Buffer {
    if (!kept?.length) return chunk;
    const store = this.#store;
    if (store && kept.buffer === store.buffer && kept.byteOffset + kept.length === store.byteOffset + this.#end && this.#end + chunk.length <= store.length) {
      chunk.copy(store, this.#end);
      this.copied += chunk.length;
      this.#end += chunk.length;
      return store.subarray(kept.byteOffset - store.byteOffset, this.#end);
    }
    const size = kept.length + chunk.length;
    // Not from Node's shared pool: the room after the bytes must be this one's alone.
    const next = Buffer.allocUnsafeSlow(Math.max(READ_AHEAD_STORE_MIN, 2 * size));
    kept.copy(next, 0);
    chunk.copy(next, kept.length);
    this.copied += size;
    this.#store = next;
    this.#end = size;
    return next.subarray(0, size);
  }
}

/** Where the request head starting at `buf[0]` ends (the index past its empty line), or -1; `from`: bytes already searched. */
export function findHeadEnd(buf: Buffer, from = 0): number {
  const at = buf.indexOf(HEAD_END, Math.max(0, from - 3));
  return at < 0 ? -1 : at + 4;
}

/** A target of RFC 3986 path and query characters only: '#', quotes, brackets, backslash and the like go to Node's server. */
const REQUEST_LINE = /^([A-Z]{1,20}) (\/[A-Za-z0-9\-._~%!$&'()*+,;=:@/?]*) HTTP\/1\.1$/;
/**
 * Per character code: FIELD_VALUE where a request field line may hold it
 * (HTAB and visible ASCII, SP included), FIELD_NAME where a field name may
 * too (RFC 9110 5.6.2 token characters without "_", see request-checks.ts).
 * Everything else (CTLs, DEL, obs-text, a CR or LF that does not end a
 * line) takes the request to Node's server.
 */
const FIELD_VALUE = 1;
const FIELD_NAME = 2;
const REQUEST_CHARS = (() => {
  const t = new Uint8Array(256);
  t[0x09] = FIELD_VALUE;
  for (let c = 0x20; c <= 0x7e; c++) t[c] = FIELD_VALUE;
  for (const c of "!#$%&'*+-.^`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz") t[c.charCodeAt(0)] = FIELD_VALUE | FIELD_NAME;
  return t;
})();

/**
 * A field value: `text` from `from` to `to` without the SP and HTAB around
 * it (String#trim would also take NBSP, an obs-text byte here).
 */
function fieldValue(text: string, from: number, to: number): string {
  while (from < to && (text.charCodeAt(from) === 0x20 || text.charCodeAt(from) === 0x09)) from++;
  while (to > from && (text.charCodeAt(to - 1) === 0x20 || text.charCodeAt(to - 1) === 0x09)) to--;
  return text.slice(from, to);
}

/** A field line's name and value (fieldValue()), or undefined without a colon. */
function splitField(line: string): [string, string] | undefined {
  const colon = line.indexOf(':');
  if (colon <= 0) return undefined;
  return [line.slice(0, colon), fieldValue(line, colon + 1, line.length)];
}
const LENGTH = /^(?:0|[1-9][0-9]{0,14})$/;
/** The methods Node's parser knows: any other is its to refuse, as it always was. */
const KNOWN_METHODS = new Set(METHODS);
/** Headers that take a request off the fast path (framing, protocol switches, what the proxy answers itself). */
const FAST_PATH_OFF = new Set(['transfer-encoding', 'expect', 'upgrade', 'te', 'trailer', 'http2-settings']);

/**
 * The head `head` (through its empty line, as findHeadEnd found it) if
 * the fast path may take it, else undefined (Node's HTTP server takes it).
 */
export function parseRequestHead(head: Buffer): FastRequestHead | undefined {
  if (head.length > MAX_HEAD_BYTES) return undefined;
  const text = head.toString('latin1', 0, head.length - 4);
  const n = text.length;
  // The request line: its pattern admits no CTL, CR or LF.
  let eol = text.indexOf('\r\n');
  if (eol < 0) eol = n;
  const line = REQUEST_LINE.exec(eol === n ? text : text.slice(0, eol));
  if (!line || !KNOWN_METHODS.has(line[1] as string)) return undefined;
  const url = line[2] as string;
  const rawHeaders: string[] = [];
  let hosts = 0;
  let length: string | undefined;
  let close = false;
  // One pass over each field line: a name of token characters up to the
  // first colon, then a value of HTAB and visible ASCII, the line ended by
  // CRLF (or the head's end).
  for (let at = eol + 2; at < n; ) {
    if (rawHeaders.length === 2 * MAX_FAST_HEADERS) return undefined;
    let colon = -1;
    let i = at;
    for (; i < n; i++) {
      const c = text.charCodeAt(i);
      if (c === 0x0d) break;
      const kind = REQUEST_CHARS[c] ?? 0;
      if (colon >= 0) {
        if (!(kind & FIELD_VALUE)) return undefined;
      } else if (c === 0x3a) {
        colon = i;
      } else if (!(kind & FIELD_NAME)) {
        return undefined;
      }
    }
    if (colon <= at) return undefined;
    if (i < n && text.charCodeAt(i + 1) !== 0x0a) return undefined;
    const name = text.slice(at, colon);
    const value = fieldValue(text, colon + 1, i);
    at = i + 2;
    const lower = name.toLowerCase();
    if (FAST_PATH_OFF.has(lower)) return undefined;
    if (lower === 'host') hosts++;
    else if (lower === 'content-length') {
      if (length !== undefined || !LENGTH.test(value)) return undefined;
      length = value;
    } else if (lower === 'connection') {
      for (const token of value.split(',')) {
        const t = token.trim().toLowerCase();
        if (t === 'close') close = true;
        else if (t !== 'keep-alive') return undefined;
      }
    }
    rawHeaders.push(name, value);
  }
  if (hosts !== 1) return undefined;
  return { method: line[1] as string, url, rawHeaders, httpVersion: '1.1', bodyLength: length === undefined ? 0 : Number(length), close };
}

/** The bytes of one request head for the upstream: request line, `headers` ([name, value, ...]) and the empty line. */
export function serializeRequestHead(method: string, path: string, headers: string[]): Buffer {
  let s = `${method} ${path} HTTP/1.1\r\n`;
  for (let i = 0; i < headers.length; i += 2) s += `${headers[i]}: ${headers[i + 1]}\r\n`;
  return Buffer.from(`${s}\r\n`, 'latin1');
}

/** The upstream's response broke HTTP/1.1 framing: the exchange fails and the connection is not reused. */
export class ResponseFramingError extends Error {}

/** What ResponseFramer.push found in one chunk from the upstream. */
export interface FramedChunk {
  /** Bytes for the workload, in order: rewritten heads (interim and final) and body bytes as received. */
  out: Buffer[];
  /** The final head's status, once it was in this chunk. */
  status?: number;
  /** The response ended in this chunk. */
  done: boolean;
}

type Stage =
  | 'head' // a status line and headers, interim or final
  | 'length' // `left` body bytes of a Content-Length
  | 'size' // a chunk-size line
  | 'data' // `left` bytes of a chunk's data
  | 'data-end' // the CRLF after a chunk's data (`left` bytes of it)
  | 'trailers' // trailer fields after the last chunk, to the empty line
  | 'close' // until the upstream closes
  | 'done';

const STATUS_LINE = /^HTTP\/1\.([01]) ([1-5][0-9]{2})(?: ([^\x00-\x08\x0a-\x1f\x7f]*))?$/;
/** Response header names may hold "_": what the upstream says is passed on, not routed by. */
const RESPONSE_FIELD_NAME = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
/** Not forwarded: they describe one connection's framing and options (RFC 9110 7.6.1). The proxy states framing itself. */
const RESPONSE_HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'te', 'trailer', 'transfer-encoding', 'upgrade', 'content-length']);
/** CTLs but HTAB, and DEL, within one line (where any CR or LF is a bare one); obs-text (0x80-0xff) is allowed in response values. */
const LINE_CTL = /[\x00-\x08\x0a-\x1f\x7f]/;
const BAD_BYTES = 'a control character, or a bare CR or LF, in the head';

/**
 * Per character code: FIELD_VALUE where a response field line may hold it
 * (HTAB, visible ASCII, SP, obs-text), FIELD_NAME where a name may too
 * (token characters, "_" included).
 */
const RESPONSE_CHARS = (() => {
  const t = new Uint8Array(256);
  t[0x09] = FIELD_VALUE;
  for (let c = 0x20; c <= 0xff; c++) if (c !== 0x7f) t[c] = FIELD_VALUE;
  for (const c of "!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz") t[c.charCodeAt(0)] = FIELD_VALUE | FIELD_NAME;
  return t;
})();

/**
 * The field lines of a response head `text` (without its empty line)
 * after the status line, which ends at `eol` (-1: no field lines), as
 * [name, value, lower-case name, ...], values without the SP and HTAB
 * around them. One pass per line: a CTL, DEL or bare CR or LF anywhere in
 * a line is BAD_BYTES; otherwise a line without a colon, or whose name is
 * empty or not a token, is malformed. Exported for its test.
 * @throws ResponseFramingError
 */
export function responseFields(text: string, eol: number): string[] {
  const fields: string[] = [];
  const n = text.length;
  for (let at = eol + 2; eol >= 0; at = eol + 2) {
    let colon = -1;
    let badName = false;
    let i = at;
    eol = -1;
    for (; i < n; i++) {
      const c = text.charCodeAt(i);
      if (c === 0x0d && text.charCodeAt(i + 1) === 0x0a) {
        eol = i;
        break;
      }
      const kind = RESPONSE_CHARS[c] ?? 0;
      if (!(kind & FIELD_VALUE)) throw new ResponseFramingError(BAD_BYTES);
      if (colon < 0) {
        if (c === 0x3a) colon = i;
        else if (!(kind & FIELD_NAME)) badName = true;
      }
    }
    if (colon <= at || badName) throw new ResponseFramingError('malformed header line');
    const name = text.slice(at, colon);
    fields.push(name, fieldValue(text, colon + 1, i), name.toLowerCase());
  }
  return fields;
}

/** A trailer field line: a name, a colon, no control characters. */
function responseField(line: string): boolean {
  const field = LINE_CTL.test(line) ? undefined : splitField(line);
  return field !== undefined && RESPONSE_FIELD_NAME.test(field[0]);
}

const CHUNK_SIZE = /^([0-9A-Fa-f]{1,12})(?:[\t ]*;[^\r\n]*)?$/;

/**
 * Finds where one upstream response ends, chunk by chunk as they arrive,
 * and rewrites its heads for the workload. One instance per exchange.
 */
export class ResponseFramer {
  readonly #headRequest: boolean;
  readonly #closeAfter: boolean;
  #stage: Stage = 'head';
  /** Bytes of an unfinished head, chunk-size line or trailer section. */
  #pending: Buffer | undefined;
  /** Made the first time a partial head or line waits (most responses never do). */
  #readAhead: ReadAhead | undefined;
  #status = 0;
  #left = 0;
  /** The connection may carry another exchange once this one is done. */
  #reusable = true;
  /** The workload's connection must close after this response (it is delimited by the close). */
  #closeDownstream = false;
  /** The response's mask for the request's credential values (reflection.ts); undefined when none is looked for. */
  readonly #mask: ResponseMask | undefined;
  /** Past a final head with a body, while masking: the body's content goes through the mask. */
  #scanning = false;
  /** The scanned body is chunked: its chunks are framed anew around what the mask releases. */
  #rechunk = false;

  /**
   * `headRequest`: the request was HEAD (its response has no body whatever
   * its headers say); `closeAfter`: the workload's connection closes after
   * this response (it asked to), which its head then says.
   */
  constructor(headRequest: boolean, closeAfter = false, mask?: ResponseMask) {
    this.#headRequest = headRequest;
    this.#closeAfter = closeAfter;
    this.#mask = mask;
  }

  /** Whether the upstream connection may serve another exchange (checked once done). */
  get reusable(): boolean {
    return this.#reusable && this.#stage === 'done';
  }

  /** The response is delimited by the upstream's close: the workload's connection closes after it. */
  get closeDelimited(): boolean {
    return this.#closeDownstream;
  }

  /** The final head's status once it was read (0 before). */
  get status(): number {
    return this.#status;
  }

  /** Whether a final head was forwarded (a failure after that can only cut the response). */
  get headSent(): boolean {
    return this.#stage !== 'head';
  }

  /** @throws ResponseFramingError */
  push(chunk: Buffer): FramedChunk {
    const result: FramedChunk = { out: [], done: false };
    // An upstream may send a head or a chunk-size line a byte at a time: what waits grows in amortised constant time per byte.
    let buf = this.#pending ? (this.#readAhead ??= new ReadAhead()).append(this.#pending, chunk) : chunk;
    this.#pending = undefined;
    let pos = 0;
    /** Body bytes from `bodyStart` to `pos` go out as one slice of the chunk. */
    let bodyStart = -1;
    const flushBody = () => {
      if (bodyStart >= 0 && pos > bodyStart) result.out.push(buf.subarray(bodyStart, pos));
      bodyStart = -1;
    };
    const keep = (limit: number, what: string) => {
      if (buf.length - pos > limit) throw new ResponseFramingError(`${what} longer than ${limit} bytes`);
      this.#pending = buf.subarray(pos);
    };
    while (pos < buf.length) {
      // Past a final head, what follows is body bytes (framing included) until the response ends;
      // a scanned body's content goes through its scanner (#content), framed anew, and its trailer lines masked.
      if (bodyStart < 0 && this.#stage !== 'head' && !this.#scanning) bodyStart = pos;
      switch (this.#stage) {
        case 'head': {
          flushBody();
          const end = buf.indexOf(HEAD_END, pos);
          if (end < 0) {
            keep(MAX_HEAD_BYTES, 'response head');
            return result;
          }
          if (end + 4 - pos > MAX_HEAD_BYTES) throw new ResponseFramingError(`response head longer than ${MAX_HEAD_BYTES} bytes`);
          const head = this.#head(buf.toString('latin1', pos, end));
          pos = end + 4;
          result.out.push(head.bytes);
          if (head.interim) continue;
          result.status = head.status;
          if ((this.#stage as Stage) === 'done') {
            result.done = true;
            return this.#finish(result, buf, pos);
          }
          continue;
        }
        case 'length': {
          const n = Math.min(this.#left, buf.length - pos);
          if (this.#scanning) this.#content(result, buf.subarray(pos, pos + n));
          pos += n;
          this.#left -= n;
          if (this.#left === 0) {
            this.#stage = 'done';
            flushBody();
            this.#contentEnd(result);
            result.done = true;
            return this.#finish(result, buf, pos);
          }
          continue;
        }
        case 'size': {
          const eol = buf.indexOf(CRLF, pos);
          if (eol < 0) {
            // The partial line is kept and sent with the rest of it.
            flushBody();
            keep(MAX_CHUNK_LINE, 'chunk-size line');
            return result;
          }
          const m = CHUNK_SIZE.exec(buf.toString('latin1', pos, eol));
          if (!m || eol - pos > MAX_CHUNK_LINE) throw new ResponseFramingError('malformed chunk-size line');
          const size = parseInt(m[1] as string, 16);
          pos = eol + 2;
          if (size === 0) {
            this.#stage = 'trailers';
            this.#left = 0;
            if (this.#scanning) {
              // What was held back goes as the last data chunk, then the last-chunk line, then the trailers.
              this.#contentEnd(result);
              result.out.push(LAST_CHUNK);
            }
          } else {
            this.#stage = 'data';
            this.#left = size;
          }
          continue;
        }
        case 'data': {
          const n = Math.min(this.#left, buf.length - pos);
          if (this.#scanning) this.#content(result, buf.subarray(pos, pos + n));
          pos += n;
          this.#left -= n;
          if (this.#left === 0) {
            this.#stage = 'data-end';
            this.#left = 2;
          }
          continue;
        }
        case 'data-end': {
          const want = this.#left === 2 ? 0x0d : 0x0a;
          if (buf[pos] !== want) throw new ResponseFramingError('chunk data not followed by CRLF');
          pos++;
          if (--this.#left === 0) this.#stage = 'size';
          continue;
        }
        case 'trailers': {
          // Trailer fields, then an empty line: `left` counts the section's bytes so far.
          const eol = buf.indexOf(CRLF, pos);
          if (eol < 0) {
            flushBody();
            keep(MAX_TRAILERS - this.#left, 'trailer section');
            return result;
          }
          const line = buf.toString('latin1', pos, eol);
          this.#left += eol + 2 - pos;
          if (this.#left > MAX_TRAILERS) throw new ResponseFramingError(`trailer section longer than ${MAX_TRAILERS} bytes`);
          if (line !== '' && !responseField(line)) throw new ResponseFramingError('malformed trailer field');
          if (this.#scanning) result.out.push(Buffer.from(`${(this.#mask as ResponseMask).text(line)}\r\n`, 'latin1'));
          pos = eol + 2;
          if (line === '') {
            this.#stage = 'done';
            flushBody();
            result.done = true;
            return this.#finish(result, buf, pos);
          }
          continue;
        }
        case 'close':
          if (this.#scanning) this.#content(result, buf.subarray(pos));
          pos = buf.length;
          continue;
        case 'done':
          throw new ResponseFramingError('bytes after the response');
      }
    }
    flushBody();
    return result;
  }

  /**
   * A response delimited by the close: what its scanner held back, to send
   * before the connection closes (once end() said the response is whole).
   */
  heldAtClose(): Buffer | undefined {
    return this.#scanning ? this.#mask?.end() : undefined;
  }

  /** The upstream closed its side: the end of a response delimited by the close, else a response cut short. */
  end(): boolean {
    if (this.#stage === 'close') {
      this.#stage = 'done';
      this.#reusable = false;
      return true;
    }
    return this.#stage === 'done';
  }

  /** Content bytes of a scanned body: what the scanner releases, framed as a chunk when the response is chunked. */
  #content(result: FramedChunk, bytes: Buffer): void {
    const out = (this.#mask as ResponseMask).push(bytes);
    if (out.length) this.#emit(result, out);
  }

  /** The end of a scanned body's content: what its scanner held back. */
  #contentEnd(result: FramedChunk): void {
    const held = this.#scanning ? this.#mask?.end() : undefined;
    if (held?.length) this.#emit(result, held);
  }

  #emit(result: FramedChunk, bytes: Buffer): void {
    if (this.#rechunk) result.out.push(Buffer.from(`${bytes.length.toString(16)}\r\n`, 'latin1'), bytes, CRLF);
    else result.out.push(bytes);
  }

  /** Once the response is done: anything after it in the chunk is a broken upstream, never the next response. */
  #finish(result: FramedChunk, buf: Buffer, pos: number): FramedChunk {
    if (pos < buf.length) this.#reusable = false;
    return result;
  }

  /** One head: its bytes for the workload; sets the stage the body starts in. */
  #head(text: string): { bytes: Buffer; status: number; interim: boolean } {
    // Each line is checked apart: lines are split at CRLF, so a CR or LF left in one is a bare one.
    const eol = text.indexOf('\r\n');
    const first = eol < 0 ? text : text.slice(0, eol);
    if (LINE_CTL.test(first)) throw new ResponseFramingError(BAD_BYTES);
    const statusLine = STATUS_LINE.exec(first);
    if (!statusLine) throw new ResponseFramingError('malformed status line');
    const minor = statusLine[1] as string;
    const status = Number(statusLine[2]);
    const reason = this.#mask ? this.#mask.text(statusLine[3] ?? '') : (statusLine[3] ?? '');
    if (status === 101) throw new ResponseFramingError('a protocol switch nobody asked for');
    /** [name, value, lower-case name, ...] */
    const fields = responseFields(text, eol);
    let length: string | undefined;
    let lengths = 0;
    let codings = 0;
    let chunked = false;
    let tokens: string[] | undefined;
    for (let f = 0; f < fields.length; f += 3) {
      const value = fields[f + 1] as string;
      const lower = fields[f + 2] as string;
      if (lower === 'content-length') {
        lengths++;
        length = value;
      } else if (lower === 'transfer-encoding') {
        codings++;
        chunked = value.toLowerCase() === 'chunked';
      } else if (lower === 'connection') {
        for (const t of value.split(',')) {
          const token = t.trim().toLowerCase();
          if (token) (tokens ??= []).push(token);
        }
      }
    }
    // Masked once framing is read from the values as sent (the framing headers go out as the proxy states them).
    // (Content-Length goes out as the framing states it.)
    if (this.#mask) for (let f = 1; f < fields.length; f += 3) if (fields[f + 1] !== 'content-length') fields[f] = this.#mask.text(fields[f] as string);
    if (status < 200) return { bytes: rewriteHead(status, reason, fields, [], tokens), status, interim: true };
    this.#status = status;

    if (minor === '0' || tokens?.includes('close')) this.#reusable = false;
    const bodiless = this.#headRequest || status === 204 || status === 304;
    let framing: string[];
    if (codings > 0) {
      if (codings > 1 || !chunked || lengths > 0 || minor === '0') throw new ResponseFramingError('Transfer-Encoding other than one chunked, or with Content-Length');
      framing = ['Transfer-Encoding', 'chunked'];
      this.#stage = bodiless ? 'done' : 'size';
    } else if (lengths > 0) {
      if (lengths > 1 || !LENGTH.test(length as string)) throw new ResponseFramingError('Content-Length not one decimal number');
      framing = ['Content-Length', length as string];
      this.#left = Number(length);
      this.#stage = bodiless || this.#left === 0 ? 'done' : 'length';
    } else if (bodiless) {
      framing = [];
      this.#stage = 'done';
    } else {
      framing = ['Connection', 'close'];
      this.#closeDownstream = true;
      this.#reusable = false;
      this.#stage = 'close';
    }
    if (this.#closeAfter && !this.#closeDownstream) framing.push('Connection', 'close');
    if (this.#mask && this.#stage !== 'done') {
      this.#scanning = true;
      this.#rechunk = this.#stage === 'size';
    }
    return { bytes: rewriteHead(status, reason, fields, framing, tokens), status, interim: false };
  }

}

/**
 * A head for the workload: HTTP/1.1, the upstream's `fields` ([name, value,
 * lower-case name, ...]) without hop-by-hop ones and those its Connection
 * lists (`tokens`), then `framing`.
 */
function rewriteHead(status: number, reason: string, fields: string[], framing: string[], tokens: string[] | undefined): Buffer {
  let s = `HTTP/1.1 ${status} ${reason}\r\n`;
  for (let i = 0; i < fields.length; i += 3) {
    const lower = fields[i + 2] as string;
    if (RESPONSE_HOP.has(lower) || tokens?.includes(lower)) continue;
    s += `${fields[i]}: ${fields[i + 1]}\r\n`;
  }
  for (let i = 0; i < framing.length; i += 2) s += `${framing[i]}: ${framing[i + 1]}\r\n`;
  return Buffer.from(`${s}\r\n`, 'latin1');
}
