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

/** Response header names may hold "_": what the upstream says is passed on, not routed by. */
const RESPONSE_FIELD_NAME = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
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

/** Per byte: A-Z as a-z, every other byte as itself (what String#toLowerCase does to the ASCII a name is made of). */
const LOWER = (() => {
  const t = new Uint8Array(256);
  for (let c = 0; c < 256; c++) t[c] = c >= 0x41 && c <= 0x5a ? c + 0x20 : c;
  return t;
})();

/** Whether buf[from, to) is `lower` (lower-case ASCII), ignoring ASCII case. */
function isLower(buf: Buffer, from: number, to: number, lower: string): boolean {
  if (to - from !== lower.length) return false;
  for (let i = 0; i < lower.length; i++) if (LOWER[buf[from + i] as number] !== lower.charCodeAt(i)) return false;
  return true;
}

/** What a response field's name makes of it: read for framing, or dropped as hop-by-hop, or (OTHER) passed on. */
const OTHER = 0;
const CONTENT_LENGTH = 1;
const TRANSFER_ENCODING = 2;
const CONNECTION = 3;
const HOP = 4;
/**
 * Not forwarded: they describe one connection's framing and options (RFC
 * 9110 7.6.1). The proxy states framing itself. By length, for
 * responseFieldKind().
 */
const RESPONSE_HOP: ReadonlyArray<readonly [string, number]> = [
  ['connection', CONNECTION], ['keep-alive', HOP], ['proxy-connection', HOP], ['te', HOP], ['trailer', HOP],
  ['transfer-encoding', TRANSFER_ENCODING], ['upgrade', HOP], ['content-length', CONTENT_LENGTH],
];
const HOP_BY_LENGTH = (() => {
  const t: (readonly [string, number])[][] = [];
  for (const entry of RESPONSE_HOP) (t[entry[0].length] ??= []).push(entry);
  return t;
})();

/** The kind of the response field named buf[from, to): one of RESPONSE_HOP's, or OTHER. */
function responseFieldKind(buf: Buffer, from: number, to: number): number {
  const candidates = HOP_BY_LENGTH[to - from];
  if (!candidates) return OTHER;
  for (let i = 0; i < candidates.length; i++) {
    const entry = candidates[i] as readonly [string, number];
    if (isLower(buf, from, to, entry[0])) return entry[1];
  }
  return OTHER;
}

/**
 * The field lines of a response head, read by scanResponseFields() into
 * FIELD_SLOTS numbers each: where the name starts and ends (its colon),
 * where the value starts and ends (without the SP and HTAB around it),
 * where the line ends (its CR, or the head's end), the name's kind, and
 * whether the line goes to the workload. One array, grown as needed and
 * reused: a head is read and rewritten in one call.
 */
const FIELD_SLOTS = 7;
const F_NAME = 0;
const F_COLON = 1;
const F_VALUE = 2;
const F_VALUE_END = 3;
const F_END = 4;
const F_KIND = 5;
const F_KEEP = 6;
let fieldSlots = new Int32Array(FIELD_SLOTS * 64);

/**
 * Reads the field lines of a response head, buf[from, to) (after the
 * status line's CRLF, without the head's empty line), into fieldSlots;
 * returns how many. One pass per line: a CTL, DEL or bare CR or LF
 * anywhere in a line is BAD_BYTES; otherwise a line without a colon, or
 * whose name is empty or not a token, is malformed.
 * @throws ResponseFramingError
 */
function scanResponseFields(buf: Buffer, from: number, to: number): number {
  let n = 0;
  for (let at = from; ; ) {
    let i = at;
    // The name: token bytes up to the colon. Anything else makes the line malformed, once it is known to hold no bad byte.
    while (i < to && (RESPONSE_CHARS[buf[i] as number] as number) & FIELD_NAME) i++;
    const colon = i < to && buf[i] === 0x3a ? i : -1;
    const malformed = colon <= at;
    // The rest of the line (all of it when the name was cut short): any byte a value may hold, to the CRLF.
    let eol = -1;
    for (; i < to; i++) {
      const c = buf[i] as number;
      if ((RESPONSE_CHARS[c] as number) & FIELD_VALUE) continue;
      if (c === 0x0d && i + 1 < to && buf[i + 1] === 0x0a) {
        eol = i;
        break;
      }
      throw new ResponseFramingError(BAD_BYTES);
    }
    if (malformed) throw new ResponseFramingError('malformed header line');
    let vs = colon + 1;
    let ve = i;
    while (vs < ve && (buf[vs] === 0x20 || buf[vs] === 0x09)) vs++;
    while (ve > vs && (buf[ve - 1] === 0x20 || buf[ve - 1] === 0x09)) ve--;
    if ((n + 1) * FIELD_SLOTS > fieldSlots.length) {
      const grown = new Int32Array(fieldSlots.length * 2);
      grown.set(fieldSlots);
      fieldSlots = grown;
    }
    const f = n * FIELD_SLOTS;
    fieldSlots[f + F_NAME] = at;
    fieldSlots[f + F_COLON] = colon;
    fieldSlots[f + F_VALUE] = vs;
    fieldSlots[f + F_VALUE_END] = ve;
    fieldSlots[f + F_END] = i;
    fieldSlots[f + F_KIND] = responseFieldKind(buf, at, colon);
    fieldSlots[f + F_KEEP] = 1;
    n++;
    if (eol < 0) return n;
    at = eol + 2;
  }
}

/**
 * The field lines of a response head `text` (without its empty line)
 * after the status line, which ends at `eol` (-1: no field lines), as
 * [name, value, lower-case name, ...], values without the SP and HTAB
 * around them, read as responseHead() reads them. For its test.
 * @throws ResponseFramingError
 */
export function responseFields(text: string, eol: number): string[] {
  if (eol < 0) return [];
  const buf = Buffer.from(text, 'latin1');
  const n = scanResponseFields(buf, eol + 2, buf.length);
  const fields: string[] = [];
  for (let k = 0; k < n; k++) {
    const f = k * FIELD_SLOTS;
    const name = buf.toString('latin1', fieldSlots[f + F_NAME], fieldSlots[f + F_COLON]);
    fields.push(name, buf.toString('latin1', fieldSlots[f + F_VALUE], fieldSlots[f + F_VALUE_END]), name.toLowerCase());
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
          const head = this.#head(buf, pos, end);
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

  /** Applies one head (responseHead()) to the framer: the stage its body starts in. */
  #head(buf: Buffer, from: number, to: number): ResponseHead {
    const head = responseHead(buf, from, to, this.#headRequest, this.#closeAfter, this.#mask);
    if (head.interim) return head;
    this.#status = head.status;
    if (!head.keepAlive) this.#reusable = false;
    this.#stage = head.stage;
    this.#left = head.left;
    if (head.stage === 'close') {
      this.#closeDownstream = true;
      this.#reusable = false;
    }
    if (this.#mask && this.#stage !== 'done') {
      this.#scanning = true;
      this.#rechunk = this.#stage === 'size';
    }
    return head;
  }
}

/** One response head as responseHead() reads it. */
export interface ResponseHead {
  /** The head for the workload (see responseHead()). */
  bytes: Buffer;
  status: number;
  /** A 1xx head: the final one is still to come (the fields below then say nothing of the body). */
  interim: boolean;
  /** Where the body starts: none at all, `left` bytes, chunks, or everything up to the upstream's close. */
  stage: 'done' | 'length' | 'size' | 'close';
  left: number;
  /** The upstream may keep the connection for another exchange (HTTP/1.1, no Connection: close). */
  keepAlive: boolean;
}

const HTTP11 = 'HTTP/1.1 ';

/**
 * Reads the response head buf[from, to) (without its empty line) and
 * rewrites it for the workload: HTTP/1.1, the upstream's fields without
 * hop-by-hop ones and those its Connection lists, then the framing the
 * proxy states. `headRequest`: the request was HEAD (no body whatever the
 * head says); `closeAfter`: the workload's connection closes after this
 * response, which the head then says; `mask`: the credential values whose
 * occurrences in the reason and field values (Content-Length's aside) are
 * masked. Works on the bytes: no string per field, one buffer out.
 * @throws ResponseFramingError
 */
export function responseHead(buf: Buffer, from: number, to: number, headRequest: boolean, closeAfter: boolean, mask?: ResponseMask): ResponseHead {
  // Each line is checked apart: lines are split at CRLF, so a CR or LF left in one is a bare one.
  let eol = buf.indexOf(CRLF, from);
  if (eol < 0 || eol >= to) eol = -1;
  const firstEnd = eol < 0 ? to : eol;
  for (let i = from; i < firstEnd; i++) {
    const c = buf[i] as number;
    if ((c < 0x20 && c !== 0x09) || c === 0x7f) throw new ResponseFramingError(BAD_BYTES);
  }
  // HTTP/1.x SSS[ reason]
  const len = firstEnd - from;
  if (len < 12 || !isText(buf, from, 'HTTP/1.')
    || (buf[from + 7] !== 0x30 && buf[from + 7] !== 0x31) || buf[from + 8] !== 0x20
    || !((buf[from + 9] as number) >= 0x31 && (buf[from + 9] as number) <= 0x35) || !isDigit(buf[from + 10] as number) || !isDigit(buf[from + 11] as number)
    || (len > 12 && buf[from + 12] !== 0x20)) {
    throw new ResponseFramingError('malformed status line');
  }
  const http10 = buf[from + 7] === 0x30;
  const status = ((buf[from + 9] as number) - 0x30) * 100 + ((buf[from + 10] as number) - 0x30) * 10 + ((buf[from + 11] as number) - 0x30);
  const reasonAt = len > 12 ? from + 13 : firstEnd;
  if (status === 101) throw new ResponseFramingError('a protocol switch nobody asked for');
  const n = eol < 0 ? 0 : scanResponseFields(buf, eol + 2, to);

  let lengths = 0;
  let lengthField = -1;
  let codings = 0;
  let chunked = false;
  let closing = false;
  let tokens: number[] | undefined;
  for (let k = 0; k < n; k++) {
    const f = k * FIELD_SLOTS;
    const kind = fieldSlots[f + F_KIND];
    if (kind === OTHER) continue;
    fieldSlots[f + F_KEEP] = 0;
    const vs = fieldSlots[f + F_VALUE] as number;
    const ve = fieldSlots[f + F_VALUE_END] as number;
    if (kind === CONTENT_LENGTH) {
      lengths++;
      lengthField = f;
    } else if (kind === TRANSFER_ENCODING) {
      codings++;
      chunked = isLower(buf, vs, ve, 'chunked');
    } else if (kind === CONNECTION) {
      // Its comma-separated tokens, without the whitespace String#trim takes around each (of what a value may hold: SP, HTAB, NBSP).
      for (let a = vs; a < ve; ) {
        let b = buf.indexOf(0x2c, a);
        if (b < 0 || b > ve) b = ve;
        let ts = a;
        let te = b;
        while (ts < te && isTrimmed(buf[ts] as number)) ts++;
        while (te > ts && isTrimmed(buf[te - 1] as number)) te--;
        if (te > ts) {
          (tokens ??= []).push(ts, te);
          if (isLower(buf, ts, te, 'close')) closing = true;
        }
        a = b + 1;
      }
    }
  }
  // Fields the Connection header lists are hop-by-hop too.
  if (tokens) {
    for (let k = 0; k < n; k++) {
      const f = k * FIELD_SLOTS;
      if (!fieldSlots[f + F_KEEP]) continue;
      const ns = fieldSlots[f + F_NAME] as number;
      const ne = fieldSlots[f + F_COLON] as number;
      for (let t = 0; t < tokens.length; t += 2) {
        if (sameLowerBytes(buf, ns, ne, tokens[t] as number, tokens[t + 1] as number)) {
          fieldSlots[f + F_KEEP] = 0;
          break;
        }
      }
    }
  }
  // Masked once framing is read from the values as sent, in a copy (the head and its CRLF): a chunk from the upstream is never written to.
  let src = buf;
  let delta = 0;
  if (mask?.occursIn(buf.subarray(from, to))) {
    src = Buffer.from(buf.subarray(from, to + 2));
    delta = from;
    mask.maskRange(src, reasonAt - delta, firstEnd - delta);
    // (Content-Length goes out as the framing states it.)
    for (let k = 0; k < n; k++) {
      const f = k * FIELD_SLOTS;
      if (fieldSlots[f + F_KIND] !== CONTENT_LENGTH) mask.maskRange(src, (fieldSlots[f + F_VALUE] as number) - delta, (fieldSlots[f + F_VALUE_END] as number) - delta);
    }
  }
  if (status < 200) return { bytes: writeHead(src, delta, from + 9, reasonAt, firstEnd, n, ''), status, interim: true, stage: 'done', left: 0, keepAlive: true };

  const keepAlive = !http10 && !closing;
  const bodiless = headRequest || status === 204 || status === 304;
  let framing: string;
  let stage: ResponseHead['stage'];
  let left = 0;
  if (codings > 0) {
    if (codings > 1 || !chunked || lengths > 0 || http10) throw new ResponseFramingError('Transfer-Encoding other than one chunked, or with Content-Length');
    framing = 'Transfer-Encoding: chunked\r\n';
    stage = bodiless ? 'done' : 'size';
  } else if (lengths > 0) {
    left = lengths > 1 ? -1 : decimal(buf, fieldSlots[lengthField + F_VALUE] as number, fieldSlots[lengthField + F_VALUE_END] as number);
    if (left < 0) throw new ResponseFramingError('Content-Length not one decimal number');
    framing = `Content-Length: ${left}\r\n`;
    stage = bodiless || left === 0 ? 'done' : 'length';
  } else if (bodiless) {
    framing = '';
    stage = 'done';
  } else {
    framing = 'Connection: close\r\n';
    stage = 'close';
  }
  if (closeAfter && stage !== 'close') framing += 'Connection: close\r\n';
  return { bytes: writeHead(src, delta, from + 9, reasonAt, firstEnd, n, framing), status, interim: false, stage, left, keepAlive };
}

/** Whether `text` (ASCII) is at buf[at]. */
function isText(buf: Buffer, at: number, text: string): boolean {
  for (let i = 0; i < text.length; i++) if (buf[at + i] !== text.charCodeAt(i)) return false;
  return true;
}

/**
 * The number buf[from, to) spells as LENGTH allows it (no sign, no
 * leading zero, at most 15 digits: exact as a double), or -1.
 */
function decimal(buf: Buffer, from: number, to: number): number {
  if (to <= from || to - from > 15 || (buf[from] === 0x30 && to - from > 1)) return -1;
  let n = 0;
  for (let i = from; i < to; i++) {
    const c = buf[i] as number;
    if (!isDigit(c)) return -1;
    n = n * 10 + (c - 0x30);
  }
  return n;
}

function isDigit(c: number): boolean {
  return c >= 0x30 && c <= 0x39;
}

/** What String#trim takes from a token's ends, of the bytes a field value may hold. */
function isTrimmed(c: number): boolean {
  return c === 0x20 || c === 0x09 || c === 0xa0;
}

/** Whether buf[a, ae) and buf[b, be) are the same bytes once A-Z are taken as a-z. */
function sameLowerBytes(buf: Buffer, a: number, ae: number, b: number, be: number): boolean {
  if (ae - a !== be - b) return false;
  for (let i = 0; i < ae - a; i++) if (LOWER[buf[a + i] as number] !== LOWER[buf[b + i] as number]) return false;
  return true;
}

/**
 * The rewritten head: "HTTP/1.1 ", the status and reason, the fields kept
 * (fieldSlots, `n` of them) as "name: value", `framing` (whole lines) and
 * the empty line. Positions are buf's; `src` holds the bytes at position
 * minus `delta` (a masked copy of the head and its CRLF, or buf itself).
 * Lines that go out as they came (most of an ordinary head) are copied in
 * runs.
 */
function writeHead(src: Buffer, delta: number, statusAt: number, reasonAt: number, reasonEnd: number, n: number, framing: string): Buffer {
  let size = HTTP11.length + 4 + (reasonEnd - reasonAt) + 2 + framing.length + 2;
  for (let k = 0; k < n; k++) {
    const f = k * FIELD_SLOTS;
    if (fieldSlots[f + F_KEEP]) size += (fieldSlots[f + F_COLON] as number) - (fieldSlots[f + F_NAME] as number) + 2 + (fieldSlots[f + F_VALUE_END] as number) - (fieldSlots[f + F_VALUE] as number) + 2;
  }
  const out = Buffer.allocUnsafe(size);
  let o = 0;
  /** A run of src (buf positions) still to copy, lines as they came. */
  let runFrom = -1;
  let runTo = -1;
  const lineStart = statusAt - 9;
  // "HTTP/1.1 SSS reason" comes out as it came.
  if (src[lineStart + 7 - delta] === 0x31 && reasonAt === statusAt + 4) {
    runFrom = lineStart;
    runTo = reasonEnd + 2;
  } else {
    o = putText(out, o, HTTP11);
    o = putBytes(out, o, src, statusAt - delta, statusAt - delta + 3);
    out[o++] = 0x20;
    o = putBytes(out, o, src, reasonAt - delta, reasonEnd - delta);
    out[o++] = 0x0d;
    out[o++] = 0x0a;
  }
  for (let k = 0; k < n; k++) {
    const f = k * FIELD_SLOTS;
    if (!fieldSlots[f + F_KEEP]) continue;
    const name = fieldSlots[f + F_NAME] as number;
    const colon = fieldSlots[f + F_COLON] as number;
    const value = fieldSlots[f + F_VALUE] as number;
    const valueEnd = fieldSlots[f + F_VALUE_END] as number;
    const end = fieldSlots[f + F_END] as number;
    // "name: value" with nothing after the value comes out as it came.
    if (value === colon + 2 && src[colon + 1 - delta] === 0x20 && valueEnd === end) {
      if (runTo !== name) {
        if (runFrom >= 0) o = putBytes(out, o, src, runFrom - delta, runTo - delta);
        runFrom = name;
      }
      runTo = end + 2;
      continue;
    }
    if (runFrom >= 0) o = putBytes(out, o, src, runFrom - delta, runTo - delta);
    runFrom = runTo = -1;
    o = putBytes(out, o, src, name - delta, colon - delta);
    out[o++] = 0x3a;
    out[o++] = 0x20;
    o = putBytes(out, o, src, value - delta, valueEnd - delta);
    out[o++] = 0x0d;
    out[o++] = 0x0a;
  }
  if (runFrom >= 0) o = putBytes(out, o, src, runFrom - delta, runTo - delta);
  o = putText(out, o, framing);
  out[o++] = 0x0d;
  out[o++] = 0x0a;
  return out;
}

/** Copies src[from, to) to out at `o`; returns where it ends. Short runs (most field names and values) by a loop, not a call into the runtime. */
function putBytes(out: Buffer, o: number, src: Buffer, from: number, to: number): number {
  if (to - from > 64) return o + src.copy(out, o, from, to);
  for (let i = from; i < to; i++) out[o++] = src[i] as number;
  return o;
}

/** Writes `text` (ASCII) to out at `o`; returns where it ends. */
function putText(out: Buffer, o: number, text: string): number {
  for (let i = 0; i < text.length; i++) out[o++] = text.charCodeAt(i);
  return o;
}
