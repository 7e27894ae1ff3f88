/**
 * HTTP/1.1 on the wire for the proxy's fast path (controller/proxy/h1-wire.ts),
 * without sockets: which request heads parseRequestHead takes (everything
 * else goes to Node's server), where ResponseFramer says a response
 * ends, whatever the chunks it arrives in, and how ReadAhead keeps what a
 * connection read ahead.
 */
import { describe, expect, it } from 'vitest';
import { METHODS } from 'node:http';
import { findHeadEnd, parseRequestHead, ReadAhead, ResponseFramer, ResponseFramingError, responseFields, responseHead, type FastRequestHead } from '../../controller/proxy/h1-wire.js';
import { maskedValues, maskText, ResponseMask, type MaskSet } from '../../controller/inject/reflection.js';

const HOST = 'api.example.com';
const head = (s: string) => Buffer.from(s, 'latin1');
const req = (lines: string[], first = 'GET / HTTP/1.1') => head(`${first}\r\n${lines.map((l) => `${l}\r\n`).join('')}\r\n`);

/** Numbers from a fixed seed (a linear congruential generator): a failing generated case names itself and reruns the same. */
function seeded(seed: number): { rand: (n: number) => number; pick: <T>(xs: readonly T[]) => T } {
  const rand = (n: number) => {
    seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
    return (seed >>> 8) % n;
  };
  return { rand, pick: <T,>(xs: readonly T[]) => xs[rand(xs.length)] as T };
}

describe('parseRequestHead', () => {
  it('takes a plain request: method, target, headers as sent, the body length, close', () => {
    expect(parseRequestHead(req([`Host: ${HOST}`, 'Content-Length: 12', 'X-A:  padded \t', 'Connection: keep-alive, Close'], 'POST /v1/x?y=1&z=%20 HTTP/1.1'))).toEqual({
      method: 'POST', url: '/v1/x?y=1&z=%20', httpVersion: '1.1', bodyLength: 12, close: true,
      rawHeaders: ['Host', HOST, 'Content-Length', '12', 'X-A', 'padded', 'Connection', 'keep-alive, Close'],
    });
    expect(parseRequestHead(req([`host: ${HOST}`]))).toMatchObject({ bodyLength: 0, close: false });
  });

  /** Everything outside the subset: undefined, so Node's server takes it (and refuses what it refuses). */
  it.each([
    ['HTTP/1.0', req([`Host: ${HOST}`], 'GET / HTTP/1.0')],
    ['HTTP/2.0 in the request line', req([`Host: ${HOST}`], 'GET / HTTP/2.0')],
    ['a lower-case method', req([`Host: ${HOST}`], 'get / HTTP/1.1')],
    ['an unknown method', req([`Host: ${HOST}`], 'TRACK / HTTP/1.1')],
    ['an absolute target', req([`Host: ${HOST}`], `GET https://${HOST}/ HTTP/1.1`)],
    ['an authority target', req([`Host: ${HOST}`], `CONNECT ${HOST}:443 HTTP/1.1`)],
    ['OPTIONS *', req([`Host: ${HOST}`], 'OPTIONS * HTTP/1.1')],
    ['a fragment', req([`Host: ${HOST}`], 'GET /a#b HTTP/1.1')],
    ['a backslash', req([`Host: ${HOST}`], 'GET /a\\b HTTP/1.1')],
    ['a quote', req([`Host: ${HOST}`], 'GET /a"b HTTP/1.1')],
    ['obs-text in the target', req([`Host: ${HOST}`], 'GET /\xe9 HTTP/1.1')],
    ['two spaces in the request line', req([`Host: ${HOST}`], 'GET  / HTTP/1.1')],
    ['a tab in the request line', req([`Host: ${HOST}`], 'GET\t/ HTTP/1.1')],
    ['a trailing space in the request line', req([`Host: ${HOST}`], 'GET / HTTP/1.1 ')],
    ['a leading empty line', head(`\r\nGET / HTTP/1.1\r\nHost: ${HOST}\r\n\r\n`)],
    ['no Host', req([])],
    ['two Hosts', req([`Host: ${HOST}`, `Host: ${HOST}`])],
    ['Host twice in other spellings', req([`Host: ${HOST}`, `HOST: ${HOST}`])],
    ['two Content-Lengths, equal', req([`Host: ${HOST}`, 'Content-Length: 1', 'Content-Length: 1'])],
    ['a Content-Length list', req([`Host: ${HOST}`, 'Content-Length: 1, 1'])],
    ['a signed Content-Length', req([`Host: ${HOST}`, 'Content-Length: +1'])],
    ['a Content-Length with a leading zero', req([`Host: ${HOST}`, 'Content-Length: 01'])],
    ['a Content-Length in hex', req([`Host: ${HOST}`, 'Content-Length: 0x10'])],
    ['an empty Content-Length', req([`Host: ${HOST}`, 'Content-Length:'])],
    ['a Content-Length past 2^53', req([`Host: ${HOST}`, 'Content-Length: 9999999999999999'])],
    ['Transfer-Encoding', req([`Host: ${HOST}`, 'Transfer-Encoding: chunked'])],
    ['Transfer-Encoding in capitals', req([`Host: ${HOST}`, 'TRANSFER-ENCODING: chunked'])],
    ['Transfer-Encoding with Content-Length', req([`Host: ${HOST}`, 'Content-Length: 5', 'Transfer-Encoding: chunked'])],
    ['Expect', req([`Host: ${HOST}`, 'Expect: 100-continue'])],
    ['Upgrade', req([`Host: ${HOST}`, 'Upgrade: websocket'])],
    ['TE', req([`Host: ${HOST}`, 'TE: trailers'])],
    ['Trailer', req([`Host: ${HOST}`, 'Trailer: X-A'])],
    ['HTTP2-Settings', req([`Host: ${HOST}`, 'HTTP2-Settings: AAMAAABkAAQAAP__'])],
    ['Connection: upgrade', req([`Host: ${HOST}`, 'Connection: upgrade'])],
    ['Connection naming a header', req([`Host: ${HOST}`, 'Connection: authorization'])],
    ['an empty Connection', req([`Host: ${HOST}`, 'Connection:'])],
    ['a Connection list with an empty member', req([`Host: ${HOST}`, 'Connection: keep-alive,,close'])],
    ['obs-fold', req([`Host: ${HOST}`, 'X-A: b', ' c'])],
    ['obs-fold holding a colon', req([`Host: ${HOST}`, 'X-A: b', ' Content-Length: 5'])],
    ['obs-fold with a tab', req([`Host: ${HOST}`, 'X-A: b', '\tTransfer-Encoding: chunked'])],
    ['a NBSP around a value', req([`Host: ${HOST}`, 'Content-Length: \xa05'])],
    ['a vertical tab in a value', req([`Host: ${HOST}`, 'X-A: b\x0bc'])],
    ['a form feed around a Content-Length', req([`Host: ${HOST}`, 'Content-Length:\x0c5'])],
    ['a bare LF in a value', req([`Host: ${HOST}`, 'X-A: b\nX-B: c'])],
    ['a bare LF ending the request line', head(`GET / HTTP/1.1\nHost: ${HOST}\r\n\r\n`)],
    ['a bare CR in a value', req([`Host: ${HOST}`, 'X-A: b\rX-B: c'])],
    ['a NUL in a value', req([`Host: ${HOST}`, 'X-A: b\x00c'])],
    ['DEL in a value', req([`Host: ${HOST}`, 'X-A: b\x7fc'])],
    ['obs-text in a value', req([`Host: ${HOST}`, 'X-A: caf\xe9'])],
    ['a space before the colon', req([`Host: ${HOST}`, 'Content-Length : 5'])],
    ['a tab before the colon', req([`Host: ${HOST}`, 'Content-Length\t: 5'])],
    ['a line without a colon', req([`Host: ${HOST}`, 'X-A'])],
    ['an empty name', req([`Host: ${HOST}`, ': x'])],
    ['"_" in a name', req([`Host: ${HOST}`, 'Content_Length: 5'])],
    ['a name with a space inside', req([`Host: ${HOST}`, 'X A: b'])],
    ['a line starting with whitespace', req([` Host: ${HOST}`])],
    ['101 headers', req([`Host: ${HOST}`, ...Array.from({ length: 100 }, (_, i) => `X-${i}: ${i}`)])],
    ['a head over 16 KiB', req([`Host: ${HOST}`, `X-Big: ${'a'.repeat(16 * 1024)}`])],
  ])('%s: not taken', (_what, bytes) => {
    expect(parseRequestHead(bytes)).toBeUndefined();
  });

  it('100 headers and a head of just under 16 KiB are taken', () => {
    expect(parseRequestHead(req([`Host: ${HOST}`, ...Array.from({ length: 99 }, (_, i) => `X-${i}: ${i}`)]))).toBeDefined();
    const base = req([`Host: ${HOST}`, 'X-Big: ']).length;
    expect(parseRequestHead(req([`Host: ${HOST}`, `X-Big: ${'a'.repeat(16 * 1024 - base)}`]))?.rawHeaders).toHaveLength(4);
  });

  /**
   * The reference: what parseRequestHead takes, written as plainly as it
   * can be (split into lines, a regular expression per rule). The parser
   * makes one pass per line for speed; it must take exactly what this takes.
   */
  const REF_NOT_PLAIN = /[^\t\x20-\x7e\r\n]|\r(?!\n)|(?<!\r)\n/;
  const REF_LINE = /^([A-Z]{1,20}) (\/[A-Za-z0-9\-._~%!$&'()*+,;=:@/?]*) HTTP\/1\.1$/;
  const REF_NAME = /^[!#$%&'*+\-.^`|~0-9A-Za-z]+$/;
  const REF_METHODS = new Set(METHODS);
  const REF_OFF = new Set(['transfer-encoding', 'expect', 'upgrade', 'te', 'trailer', 'http2-settings']);
  function referenceParse(bytes: Buffer): FastRequestHead | undefined {
    if (bytes.length > 16 * 1024) return undefined;
    const text = bytes.toString('latin1', 0, bytes.length - 4);
    if (REF_NOT_PLAIN.test(text)) return undefined;
    const lines = text.split('\r\n');
    const line = REF_LINE.exec(lines[0] as string);
    if (!line || !REF_METHODS.has(line[1] as string) || lines.length - 1 > 100) return undefined;
    const rawHeaders: string[] = [];
    let hosts = 0;
    let length: string | undefined;
    let close = false;
    for (const l of lines.slice(1)) {
      const colon = l.indexOf(':');
      if (colon <= 0 || !REF_NAME.test(l.slice(0, colon))) return undefined;
      const name = l.slice(0, colon);
      const value = l.slice(colon + 1).replace(/^[ \t]+|[ \t]+$/g, '');
      const lower = name.toLowerCase();
      if (REF_OFF.has(lower)) return undefined;
      if (lower === 'host') hosts++;
      else if (lower === 'content-length') {
        if (length !== undefined || !/^(?:0|[1-9][0-9]{0,14})$/.test(value)) return undefined;
        length = value;
      } else if (lower === 'connection') {
        for (const t of value.split(',').map((x) => x.trim().toLowerCase())) {
          if (t === 'close') close = true;
          else if (t !== 'keep-alive') return undefined;
        }
      }
      rawHeaders.push(name, value);
    }
    if (hosts !== 1) return undefined;
    return { method: line[1] as string, url: line[2] as string, rawHeaders, httpVersion: '1.1', bodyLength: length === undefined ? 0 : Number(length), close };
  }

  it('takes exactly what the reference takes, over 20,000 generated heads with hostile bytes', () => {
    const { rand, pick } = seeded(0x5eed1234);
    const nasty = ['\r', '\n', '\r\n', '\t', ' ', ':', '_', '\x00', '\x01', '\x1f', '\x7f', '\x80', '\xa0', '\xff', ',', '"', '(', '/', '?', '#'];
    const plain = 'aZ0-.~!x';
    const token = () => Array.from({ length: 1 + rand(6) }, () => (rand(12) ? pick([...plain, 'A', 'k']) : pick(nasty))).join('');
    const value = () => Array.from({ length: rand(10) }, () => (rand(8) ? pick([...plain, ' ', '\t', 'v']) : pick(nasty))).join('');
    const names = ['Host', 'host', 'HOST', 'Content-Length', 'Connection', 'Transfer-Encoding', 'Expect', 'TE', 'Upgrade', 'X-A', 'Authorization', 'Accept', 'User-Agent', 'X-Request-Id', 'Content-Type'];
    const values = ['', '0', '12', '012', 'close', 'keep-alive', 'Close, keep-alive', 'upgrade', 'chunked', HOST, ' 7 ', '1'.repeat(16)];
    const firsts = ['GET / HTTP/1.1', 'POST /v1/x?y=1 HTTP/1.1', 'get / HTTP/1.1', 'GET / HTTP/1.0', 'TRACK / HTTP/1.1', 'GET  / HTTP/1.1', 'GET /a b HTTP/1.1', 'PUT /p%20q HTTP/1.1'];
    let taken = 0;
    for (let k = 0; k < 20_000; k++) {
      const first = rand(10) ? pick(firsts) : `${pick(firsts)}${pick(nasty)}`;
      const lines: string[] = [];
      const count = rand(6);
      for (let j = 0; j < count; j++) {
        const name = rand(4) ? pick(names) : token();
        const sep = rand(10) ? ':' : pick([' :', '', '::', ': ']);
        lines.push(`${name}${sep}${rand(3) ? ' ' : ''}${rand(3) ? pick(values) : value()}${rand(5) ? '' : pick([' ', '\t', '\r'])}`);
      }
      if (rand(3)) lines.splice(rand(lines.length + 1), 0, `Host: ${HOST}`);
      const bytes = head(`${first}\r\n${lines.map((l) => `${l}\r\n`).join('')}\r\n`);
      // What the fast path hands the parser: through the first empty line.
      const end = findHeadEnd(bytes);
      if (end < 0) continue;
      const whole = bytes.subarray(0, end);
      const want = referenceParse(whole);
      if (want) taken++;
      expect(parseRequestHead(whole), JSON.stringify(whole.toString('latin1'))).toEqual(want);
    }
    // Both outcomes well represented.
    expect(taken, String(taken)).toBeGreaterThan(1000);
    expect(taken).toBeLessThan(19_000);
  });

  it('findHeadEnd finds the first empty line, also when searched in steps', () => {
    const bytes = head(`GET / HTTP/1.1\r\nHost: ${HOST}\r\n\r\nGET /next HTTP/1.1\r\n\r\n`);
    const end = bytes.indexOf('\r\n\r\n') + 4;
    expect(findHeadEnd(bytes)).toBe(end);
    for (let seen = 0; seen <= end; seen++) {
      // `seen` bytes already searched without success: the search resumes where a split CRLFCRLF may start.
      expect(findHeadEnd(bytes.subarray(0, end), Math.min(seen, end - 1))).toBe(end);
    }
    expect(findHeadEnd(head('GET / HTTP/1.1\r\nHost: x\r\n'))).toBe(-1);
  });
});

/** What a framer makes of `chunks`: the bytes for the workload, whether it ended, its status and reusability; or the framing error. */
function frame(chunks: Buffer[], opts: { head?: boolean; close?: boolean } = {}) {
  const framer = new ResponseFramer(opts.head ?? false);
  const out: Buffer[] = [];
  let done = false;
  let status: number | undefined;
  try {
    for (const c of chunks) {
      if (done) throw new ResponseFramingError('pushed after done');
      const r = framer.push(c);
      out.push(...r.out);
      if (r.status !== undefined) status = r.status;
      done = r.done;
    }
    if (!done && opts.close) done = framer.end();
  } catch (err) {
    if (err instanceof ResponseFramingError) return { error: err.message };
    throw err;
  }
  return { out: Buffer.concat(out).toString('latin1'), done, status, reusable: framer.reusable, closeDelimited: framer.closeDelimited };
}
const bytewise = (s: string) => [...Buffer.from(s, 'latin1')].map((b) => Buffer.from([b]));
const whole = (s: string) => [Buffer.from(s, 'latin1')];

/** Responses ResponseFramer takes: [what, bytes, HEAD request, delimited by the close, the bytes the workload gets]. */
const GOOD: [string, string, boolean, boolean, string][] = [
  ['Content-Length', 'HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello', false, false,
    'HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello'],
  ['an empty reason', 'HTTP/1.1 200 \r\nContent-Length: 0\r\n\r\n', false, false, 'HTTP/1.1 200 \r\nContent-Length: 0\r\n\r\n'],
  ['no reason at all', 'HTTP/1.1 404\r\nContent-Length: 1\r\n\r\nx', false, false, 'HTTP/1.1 404 \r\nContent-Length: 1\r\n\r\nx'],
  ['chunked, extensions and trailers', 'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;a=b\r\nabc\r\nA\r\n0123456789\r\n0\r\nX-T: 1\r\nX-U: 2\r\n\r\n', false, false,
    'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;a=b\r\nabc\r\nA\r\n0123456789\r\n0\r\nX-T: 1\r\nX-U: 2\r\n\r\n'],
  ['interim heads', 'HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok', false, false,
    'HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok'],
  ['HEAD with a length', 'HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n', true, false, 'HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n'],
  ['HEAD with chunked', 'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n', true, false, 'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n'],
  ['204', 'HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n', false, false, 'HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n'],
  ['304 with a length', 'HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n', false, false, 'HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n'],
  ['hop-by-hop dropped', 'HTTP/1.1 200 OK\r\nConnection: X-Hop, keep-alive\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\nProxy-Connection: x\r\nUpgrade: h2c\r\nTrailer: X-T\r\nX-Kept: 1\r\nContent-Length: 1\r\n\r\nz', false, false,
    'HTTP/1.1 200 OK\r\nX-Kept: 1\r\nContent-Length: 1\r\n\r\nz'],
  ['close-delimited', 'HTTP/1.1 200 OK\r\nX-A: 1\r\n\r\nall of it until the close', false, true, 'HTTP/1.1 200 OK\r\nX-A: 1\r\nConnection: close\r\n\r\nall of it until the close'],
  ['HTTP/1.0 with a length', 'HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nabc', false, false, 'HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc'],
  ['a NBSP kept in a value (only SP and HTAB are trimmed)', 'HTTP/1.1 200 OK\r\nX-A: \t\xa0v\xa0 \r\nContent-Length: 0\r\n\r\n', false, false,
    'HTTP/1.1 200 OK\r\nX-A: \xa0v\xa0\r\nContent-Length: 0\r\n\r\n'],
  ['obs-text in a value and the reason', 'HTTP/1.1 200 \xe9t\xe9\r\nX-A: caf\xe9\r\nContent-Length: 0\r\n\r\n', false, false, 'HTTP/1.1 200 \xe9t\xe9\r\nX-A: caf\xe9\r\nContent-Length: 0\r\n\r\n'],
];

describe('ResponseFramer', () => {
  /**
   * The reference for a response head's field lines: split at CRLF, then
   * a regular expression per rule. responseFields() makes one pass per line
   * for speed; it must answer exactly what this answers, error included.
   */
  const REF_CTL = /[\x00-\x08\x0a-\x1f\x7f]/;
  const REF_NAME = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
  function referenceFields(text: string, eol: number): string[] | string {
    const fields: string[] = [];
    if (eol < 0) return fields;
    for (const line of text.slice(eol + 2).split('\r\n')) {
      if (REF_CTL.test(line)) return 'a control character, or a bare CR or LF, in the head';
      const colon = line.indexOf(':');
      if (colon <= 0 || !REF_NAME.test(line.slice(0, colon))) return 'malformed header line';
      const name = line.slice(0, colon);
      fields.push(name, line.slice(colon + 1).replace(/^[ \t]+|[ \t]+$/g, ''), name.toLowerCase());
    }
    return fields;
  }

  it('reads field lines exactly as the reference does, over 20,000 generated heads with hostile bytes', () => {
    const { rand, pick } = seeded(0x0badcafe);
    const nasty = ['\r', '\n', '\t', ' ', ':', '_', '\x00', '\x1f', '\x7f', '\x80', '\xa0', '\xff', ',', '"', '@'];
    const chars = (len: number, safe: string) => Array.from({ length: len }, () => (rand(12) ? pick([...safe]) : pick(nasty))).join('');
    const names = ['Content-Length', 'Transfer-Encoding', 'Connection', 'Server', 'X_Under', 'Set-Cookie', 'Date'];
    let good = 0;
    for (let k = 0; k < 20_000; k++) {
      const lines = Array.from({ length: rand(6) }, () => {
        const name = rand(3) ? pick(names) : chars(1 + rand(6), 'aZ0-._~');
        const sep = rand(12) ? ':' : pick(['', ' :', '::']);
        return `${name}${sep}${pick(['', ' ', '\t ', '  '])}${chars(rand(12), 'abc 1,;=/\xe9')}${pick(['', ' ', '\t'])}`;
      });
      const text = ['HTTP/1.1 200 OK', ...lines].join('\r\n');
      const eol = text.indexOf('\r\n');
      const want = referenceFields(text, eol);
      let got: string[] | string;
      try {
        got = responseFields(text, eol);
      } catch (err) {
        expect(err, JSON.stringify(text)).toBeInstanceOf(ResponseFramingError);
        got = (err as Error).message;
      }
      expect(got, JSON.stringify(text)).toEqual(want);
      if (Array.isArray(want)) good++;
    }
    expect(good, String(good)).toBeGreaterThan(2000);
    expect(good, String(good)).toBeLessThan(18_000);
  });

  /**
   * The reference for a whole response head: a string per line and per
   * field, a regular expression per rule, maskText() per value, the head
   * built as a string. responseHead() reads and writes bytes; it must
   * answer exactly what this answers: the same bytes, status and framing,
   * the same error, the same count of masked values.
   */
  const REF_STATUS = /^HTTP\/1\.([01]) ([1-5][0-9]{2})(?: ([^\x00-\x08\x0a-\x1f\x7f]*))?$/;
  const REF_HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'te', 'trailer', 'transfer-encoding', 'upgrade', 'content-length']);
  type RefHead = { bytes: string; status: number; interim: boolean; stage?: string; left?: number; keepAlive?: boolean; masked: number };
  function referenceHead(text: string, headRequest: boolean, closeAfter: boolean, set: MaskSet | undefined): RefHead | string {
    let masked = 0;
    const mask = (v: string) => {
      const m = set ? maskText(v, set) : v;
      if (m !== v) masked++;
      return m;
    };
    const eol = text.indexOf('\r\n');
    const first = eol < 0 ? text : text.slice(0, eol);
    if (REF_CTL.test(first)) return 'a control character, or a bare CR or LF, in the head';
    const line = REF_STATUS.exec(first);
    if (!line) return 'malformed status line';
    const minor = line[1] as string;
    const status = Number(line[2]);
    const reason = mask(line[3] ?? '');
    if (status === 101) return 'a protocol switch nobody asked for';
    const fields = referenceFields(text, eol);
    if (typeof fields === 'string') return fields;
    let length: string | undefined;
    let lengths = 0;
    let codings = 0;
    let chunked = false;
    const tokens: string[] = [];
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
        for (const t of value.split(',')) if (t.trim()) tokens.push(t.trim().toLowerCase());
      }
    }
    for (let f = 1; f < fields.length; f += 3) if (fields[f + 1] !== 'content-length') fields[f] = mask(fields[f] as string);
    const build = (framing: string[]) => {
      let s = `HTTP/1.1 ${status} ${reason}\r\n`;
      for (let i = 0; i < fields.length; i += 3) {
        const lower = fields[i + 2] as string;
        if (!REF_HOP.has(lower) && !tokens.includes(lower)) s += `${fields[i]}: ${fields[i + 1]}\r\n`;
      }
      for (let i = 0; i < framing.length; i += 2) s += `${framing[i]}: ${framing[i + 1]}\r\n`;
      return `${s}\r\n`;
    };
    if (status < 200) return { bytes: build([]), status, interim: true, masked };
    const keepAlive = minor !== '0' && !tokens.includes('close');
    const bodiless = headRequest || status === 204 || status === 304;
    let framing: string[];
    let stage: string;
    let left = 0;
    if (codings > 0) {
      if (codings > 1 || !chunked || lengths > 0 || minor === '0') return 'Transfer-Encoding other than one chunked, or with Content-Length';
      framing = ['Transfer-Encoding', 'chunked'];
      stage = bodiless ? 'done' : 'size';
    } else if (lengths > 0) {
      if (lengths > 1 || !/^(?:0|[1-9][0-9]{0,14})$/.test(length as string)) return 'Content-Length not one decimal number';
      framing = ['Content-Length', length as string];
      left = Number(length);
      stage = bodiless || left === 0 ? 'done' : 'length';
    } else if (bodiless) {
      framing = [];
      stage = 'done';
    } else {
      framing = ['Connection', 'close'];
      stage = 'close';
    }
    if (closeAfter && stage !== 'close') framing.push('Connection', 'close');
    return { bytes: build(framing), status, interim: false, stage, left, keepAlive, masked };
  }

  it('rewrites heads exactly as the reference does, masks included, over 30,000 generated heads with hostile bytes', () => {
    const { rand, pick } = seeded(0x5eed1e55);
    const secret = 'Bearer sk-live-\xe9/"ab\\cd';
    // A numeric secret may equal a Content-Length: that is the body's length, never masked.
    const sets = [undefined, maskedValues([secret]), maskedValues([secret, 'token-\u20ac-outside-latin1']), maskedValues(['123456789012'])];
    const spellings = [secret, JSON.stringify(secret).slice(1, -1), JSON.stringify(secret).slice(1, -1).replaceAll('/', '\\/')];
    const nasty = ['\r', '\n', '\t', ' ', ':', '_', '\x00', '\x1f', '\x7f', '\x80', '\xa0', '\xff', ',', '"', '\x0b'];
    const chars = (len: number, safe: string) => Array.from({ length: len }, () => (rand(16) ? pick([...safe]) : pick(nasty))).join('');
    const names = ['Content-Length', 'content-LENGTH', 'Transfer-Encoding', 'TRANSFER-encoding', 'Connection', 'CONNECTION', 'Keep-Alive', 'Proxy-Connection',
      'TE', 'Trailer', 'Upgrade', 'Server', 'X-Hop', 'x-hop', 'Date', 'X_Under', 'Set-Cookie', 'Close'];
    const value = (name: string) => {
      const lower = name.toLowerCase();
      if (lower === 'content-length') return pick(['0', '5', '12', '007', '-1', '1, 1', '+1', '999999999999999', '9999999999999999', 'x', '', '123456789012']);
      if (lower === 'transfer-encoding') return pick(['chunked', 'CHUNKED', 'gzip', 'chunked, gzip', ' chunked', 'chunked\xa0']);
      if (lower === 'connection') return Array.from({ length: 1 + rand(3) }, () => `${pick(['', ' ', '\t', '\xa0'])}${pick(['keep-alive', 'close', 'CLOSE', 'x-hop', 'X-HOP', 'server', 'te', '', 'cl\xf6se'])}${pick(['', ' ', '\xa0'])}`).join(pick([',', ', ', ' ,']));
      return rand(4) ? chars(rand(14), 'abc 1,;=/\xe9') : `${chars(rand(4), 'ab ')}${pick([...spellings, '123456789012'])}${rand(2) ? pick(spellings) : ''}${chars(rand(4), 'ab ')}`;
    };
    const outcomes = new Map<string, number>();
    let masked = 0;
    for (let k = 0; k < 30_000; k++) {
      const version = rand(10) ? 'HTTP/1.1' : pick(['HTTP/1.0', 'HTTP/1.2', 'http/1.1', 'HTTP/2']);
      const code = pick(['200', '204', '304', '100', '103', '101', '404', '20', '600', '199', '500']);
      const reason = pick(['', ' OK', ' ', ` ${chars(rand(10), 'Ok \xe9')}`, ` x${pick(spellings)}`, '\tOK']);
      const lines = Array.from({ length: rand(8) }, () => {
        const name = rand(5) ? pick(names) : chars(1 + rand(5), 'aZ0-._~');
        const sep = rand(20) ? ':' : pick(['', ' :', '::']);
        return `${name}${sep}${pick(['', ' ', '\t ', '  '])}${value(name)}${pick(['', '', ' ', '\t'])}`;
      });
      const text = [`${version} ${code}${reason}`, ...lines].join('\r\n');
      const headRequest = rand(8) === 0;
      const closeAfter = rand(8) === 0;
      const set = pick(sets);
      const want = referenceHead(text, headRequest, closeAfter, set);
      // After bytes of another head, and before the empty line and a body: positions are the buffer's.
      const before = rand(2) ? '' : 'HTTP/1.1 100 Continue\r\n\r\n';
      const buf = Buffer.from(`${before}${text}\r\n\r\n${chars(rand(20), 'body')}`, 'latin1');
      const mask = set ? new ResponseMask(set) : undefined;
      let got: RefHead | string;
      try {
        const h = responseHead(buf, before.length, before.length + text.length, headRequest, closeAfter, mask);
        got = { bytes: h.bytes.toString('latin1'), status: h.status, interim: h.interim, masked: mask?.masked ?? 0,
          ...(h.interim ? {} : { stage: h.stage, left: h.left, keepAlive: h.keepAlive }) };
      } catch (err) {
        expect(err, JSON.stringify(text)).toBeInstanceOf(ResponseFramingError);
        got = (err as Error).message;
      }
      expect(got, JSON.stringify(text)).toEqual(want);
      // The buffer read is never written to.
      expect(buf.toString('latin1')).toBe(`${before}${text}\r\n\r\n${buf.toString('latin1', before.length + text.length + 4)}`);
      const outcome = typeof want === 'string' ? want : want.interim ? 'interim' : `final ${want.stage}`;
      outcomes.set(outcome, (outcomes.get(outcome) ?? 0) + 1);
      if (typeof want !== 'string' && want.masked) masked++;
    }
    // Every outcome well represented: each error, each framing, masking.
    for (const o of ['a control character, or a bare CR or LF, in the head', 'malformed status line', 'a protocol switch nobody asked for', 'malformed header line',
      'Transfer-Encoding other than one chunked, or with Content-Length', 'Content-Length not one decimal number', 'interim', 'final done', 'final length', 'final size', 'final close']) {
      expect(outcomes.get(o) ?? 0, `${o}: ${JSON.stringify([...outcomes])}`).toBeGreaterThan(100);
    }
    expect(masked, String(masked)).toBeGreaterThan(500);
  });

  it('rewrites a head of over a thousand fields, and the small head after it, as the reference does', () => {
    // Every seventh a Connection line naming the field after it, which is then dropped.
    const many = ['HTTP/1.1 200 OK', ...Array.from({ length: 1300 }, (_, i) => (i % 7 === 0 ? `Connection:a${i + 1}` : `a${i}:1`))].join('\r\n');
    expect(many.length).toBeLessThan(16 * 1024);
    for (const text of [many, 'HTTP/1.1 204 No Content\r\nX-A: 1', many.replace('a1000:1', 'a1000:\x00')]) {
      const want = referenceHead(text, false, false, undefined);
      let got: unknown;
      try {
        const h = responseHead(Buffer.from(`${text}\r\n\r\n`, 'latin1'), 0, text.length, false, false);
        got = { bytes: h.bytes.toString('latin1'), status: h.status, interim: h.interim, masked: 0, stage: h.stage, left: h.left, keepAlive: h.keepAlive };
      } catch (err) {
        got = (err as Error).message;
      }
      expect(got).toEqual(want);
    }
  });

  it.each(GOOD)('%s: the same bytes out whether fed whole or byte by byte', (_what, bytes, headRequest, close, expected) => {
    const a = frame(whole(bytes), { head: headRequest, close });
    const b = frame(bytewise(bytes), { head: headRequest, close });
    expect(a).toMatchObject({ out: expected, done: true });
    expect(b).toEqual(a);
  });

  it('reusable only after a response that ended by its own framing and said nothing of closing', () => {
    expect(frame(whole('HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx'))).toMatchObject({ reusable: true, closeDelimited: false, status: 200 });
    expect(frame(whole('HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\nx'))).toMatchObject({ done: true, reusable: false, closeDelimited: false });
    expect(frame(whole('HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nx'))).toMatchObject({ done: true, reusable: false });
    expect(frame(whole('HTTP/1.1 200 OK\r\n\r\nx'), { close: true })).toMatchObject({ done: true, reusable: false, closeDelimited: true });
    // Bytes after the response in the same chunk: the response is forwarded, the connection never reused, the extra never forwarded.
    const extra = frame(whole('HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nxHTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil'));
    expect(extra).toMatchObject({ out: 'HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx', done: true, reusable: false });
    // A body not ended by the close: not done.
    expect(frame(whole('HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nabc'), { close: true })).toMatchObject({ done: false });
    expect(frame(whole('HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n'), { close: true })).toMatchObject({ done: false });
    expect(frame(whole('HTTP/1.1 200 OK\r\nContent-Length: 5\r\n'), { close: true })).toMatchObject({ done: false });
  });

  it('a head is forwarded as soon as it is whole, before its body', () => {
    const framer = new ResponseFramer(false);
    const r = framer.push(Buffer.from('HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n'));
    expect(r).toMatchObject({ status: 200, done: false });
    expect(Buffer.concat(r.out).toString()).toBe('HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n');
    expect(framer.headSent).toBe(true);
  });

  /** Responses ResponseFramer refuses, whole or byte by byte. */
  it.each([
    ['Content-Length with Transfer-Encoding', 'HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n'],
    ['Transfer-Encoding other than chunked', 'HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nabc'],
    ['chunked not last', 'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n'],
    ['two Transfer-Encodings', 'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n'],
    ['chunked in HTTP/1.0', 'HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n'],
    ['two Content-Lengths', 'HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx'],
    ['a Content-Length list', 'HTTP/1.1 200 OK\r\nContent-Length: 1, 1\r\n\r\nx'],
    ['a negative Content-Length', 'HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n'],
    ['a Content-Length in hex', 'HTTP/1.1 200 OK\r\nContent-Length: 0x1\r\n\r\nx'],
    ['an unsolicited 101', 'HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n'],
    ['a status of two digits', 'HTTP/1.1 20 OK\r\nContent-Length: 0\r\n\r\n'],
    ['a status of 600', 'HTTP/1.1 600 OK\r\nContent-Length: 0\r\n\r\n'],
    ['HTTP/2 in the status line', 'HTTP/2 200 OK\r\nContent-Length: 0\r\n\r\n'],
    ['HTTP/1.2', 'HTTP/1.2 200 OK\r\nContent-Length: 0\r\n\r\n'],
    ['a lower-case protocol', 'http/1.1 200 OK\r\nContent-Length: 0\r\n\r\n'],
    ['no status line', 'Content-Length: 0\r\n\r\n'],
    ['a bare LF in the head', 'HTTP/1.1 200 OK\r\nX-A: b\nContent-Length: 0\r\n\r\n'],
    ['a bare LF after the status line', 'HTTP/1.1 200 OK\nContent-Length: 0\r\n\r\n'],
    ['a bare CR in a value', 'HTTP/1.1 200 OK\r\nX-A: b\rc\r\nContent-Length: 0\r\n\r\n'],
    ['a NUL in a value', 'HTTP/1.1 200 OK\r\nX-A: b\x00c\r\nContent-Length: 0\r\n\r\n'],
    ['obs-fold', 'HTTP/1.1 200 OK\r\nX-A: b\r\n c\r\nContent-Length: 0\r\n\r\n'],
    ['obs-fold holding a colon', 'HTTP/1.1 200 OK\r\nX-A: b\r\n Content-Length: 4\r\nContent-Length: 0\r\n\r\n'],
    ['a continuation line after the status line', 'HTTP/1.1 200 OK\r\n\tContent-Length: 0\r\n\r\n'],
    ['a vertical tab in a value', 'HTTP/1.1 200 OK\r\nX-A: b\x0bc\r\nContent-Length: 0\r\n\r\n'],
    ['a form feed before a length', 'HTTP/1.1 200 OK\r\nContent-Length:\x0c2\r\n\r\nok'],
    ['a bare CR in a trailer', 'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX-T: 1\rX-U: 2\r\n\r\n'],
    ['a trailer line starting with whitespace', 'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n X-T: 1\r\n\r\n'],
    ['a space before the colon', 'HTTP/1.1 200 OK\r\nContent-Length : 0\r\n\r\n'],
    ['a line without a colon', 'HTTP/1.1 200 OK\r\nX-A\r\nContent-Length: 0\r\n\r\n'],
    ['a head over 16 KiB', `HTTP/1.1 200 OK\r\nX-Big: ${'a'.repeat(16 * 1024)}\r\nContent-Length: 0\r\n\r\n`],
    ['a bad chunk-size', 'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n'],
    ['a negative chunk-size', 'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\n'],
    ['a chunk-size with a leading space', 'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n 3\r\nabc\r\n0\r\n\r\n'],
    ['a chunk-size of 13 digits', 'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0000000000003\r\nabc\r\n0\r\n\r\n'],
    ['a chunk-size ending in a bare LF', 'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc\r\n0\r\n\r\n'],
    ['chunk data longer than its size', 'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcd\r\n0\r\n\r\n'],
    ['chunk data ended by a bare LF', 'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\n0\r\n\r\n'],
    ['a chunk-size line over 4 KiB', `HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;${'a'.repeat(5000)}\r\nabc\r\n0\r\n\r\n`],
    ['a malformed trailer', 'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX-T 1\r\n\r\n'],
    ['a trailer with a bare LF', 'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX-T: 1\nX-U: 2\r\n\r\n'],
    ['a trailer section over 16 KiB', `HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n${'X-T: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n'.repeat(400)}\r\n`],
  ])('%s: a framing error, fed whole or byte by byte', (_what, bytes) => {
    expect(frame(whole(bytes)).error).toBeDefined();
    expect(frame(bytewise(bytes)).error).toBeDefined();
  });

  it('bytes pushed after the response ended are an error, never a response', () => {
    const framer = new ResponseFramer(false);
    expect(framer.push(Buffer.from('HTTP/1.1 204 No Content\r\n\r\n')).done).toBe(true);
    expect(() => framer.push(Buffer.from('HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n'))).toThrow(ResponseFramingError);
  });
});

describe('ReadAhead', () => {
  it('keeps every byte in order, never changes a view it handed out or a chunk it was given, and copies each byte a bounded number of times', () => {
    for (let seed = 1; seed <= 50; seed++) {
      const { rand } = seeded(seed);
      const ahead = new ReadAhead();
      // Chunks are views of one shared buffer, as a socket's may be: the bytes around them are not the ReadAhead's to write.
      const pool = Buffer.alloc(1 << 20, 0xee);
      let poolAt = 0;
      const expected: number[] = [];
      const handedOut: Array<[Buffer, Buffer]> = [];
      let kept: Buffer | undefined;
      let appended = 0;
      const guards: number[] = [];
      for (let step = 0; step < 400; step++) {
        // Mostly tiny chunks (one-byte records), sometimes large ones.
        const n = rand(10) === 0 ? 1 + rand(5000) : 1 + rand(3);
        if (poolAt + n > pool.length) break;
        const chunk = pool.subarray(poolAt, poolAt + n);
        for (let i = 0; i < n; i++) chunk[i] = rand(256);
        guards.push(poolAt + n);
        poolAt += n + 1; // a guard byte between chunks
        expected.push(...chunk);
        appended += n;
        kept = ahead.append(kept, chunk);
        expect(Buffer.compare(kept, Buffer.from(expected)), `seed ${seed} step ${step}`).toBe(0);
        // Sometimes a head is taken up: a view of it goes elsewhere (written upstream), the rest is kept.
        if (rand(4) === 0) {
          const taken = rand(kept.length + 1);
          const view = kept.subarray(0, taken);
          handedOut.push([view, Buffer.from(view)]);
          kept = taken < kept.length ? kept.subarray(taken) : undefined;
          expected.splice(0, taken);
        }
      }
      for (const [view, copy] of handedOut) expect(Buffer.compare(view, copy), `seed ${seed}: a handed-out view changed`).toBe(0);
      // The guard bytes between the chunks were never written.
      for (const g of guards) expect(pool[g], `seed ${seed}: the byte after a chunk was written`).toBe(0xee);
      // Amortised: at most about three copies of each byte, not one per chunk that came after it.
      expect(ahead.copied, `seed ${seed}`).toBeLessThanOrEqual(3 * appended + 4096);
    }
  });

  it('leaves the bytes around a chunk it was given as they were', () => {
    const pool = Buffer.alloc(64, 0xee);
    const ahead = new ReadAhead();
    const first = pool.subarray(10, 12).fill(1);
    const second = pool.subarray(20, 22).fill(2);
    const kept = ahead.append(ahead.append(undefined, first), second);
    expect([...kept]).toEqual([1, 1, 2, 2]);
    expect([...ahead.append(kept, pool.subarray(30, 31).fill(3))]).toEqual([1, 1, 2, 2, 3]);
    expect(pool.filter((b) => b === 0xee).length).toBe(64 - 5);
  });

  it('a tail of what it returned is grown in place; anything else is copied', () => {
    const ahead = new ReadAhead();
    let kept = ahead.append(Buffer.from('ab'), Buffer.from('cd'));
    const copied = ahead.copied;
    kept = ahead.append(kept.subarray(1), Buffer.from('e'));
    expect(kept.toString()).toBe('bcde');
    expect(ahead.copied).toBe(copied + 1);
    kept = ahead.append(Buffer.from('xy'), Buffer.from('z'));
    expect(kept.toString()).toBe('xyz');
    expect(ahead.copied).toBe(copied + 1 + 3);
  });
});
