/**
 * The kernel HTTP datapath's scanners, compiled for the host
 * (test/support/http-parser-host.ts): what they refuse and why, where they
 * put request boundaries, and the fuzz test's reference model run against
 * them on random and mutated streams. The same C as the BPF program's; the
 * kernel tier (test/kernel/http-inject.test.ts) covers the glue around it.
 */
import { describe, expect, it } from 'vitest';
import { hostParse, type HostCase, type HostParse } from '../support/http-parser-host.js';
import { prng, randomPieces, requestHeads } from '../support/http-reference.js';

const get = (target = '/', extra = '') => `GET ${target} HTTP/1.1\r\nHost: upstream\r\n${extra}\r\n`;
const post = (target: string, body: string, extra = '') =>
  `POST ${target} HTTP/1.1\r\nHost: upstream\r\nContent-Length: ${Buffer.byteLength(body)}\r\n${extra}\r\n${body}`;
const chunkedHead = (extra = '') => `POST /c HTTP/1.1\r\nHost: upstream\r\nTransfer-Encoding: chunked\r\n${extra}\r\n`;
/** A chunked request whose framing (after the head) is `framing`, followed by a GET. */
const chunked = (framing: string) => chunkedHead() + framing + get('/after');
const one = (c: HostCase): HostParse => hostParse([c])[0]!;
/** What the scanners make of `stream` written in one piece. */
const parse = (stream: string): HostParse => one({ writes: [stream] });

/** Runs a table of [description, stream, refusal or null] and returns the mismatches, so one failure shows them all. */
function table(rows: [string, string, string | null][]): string[] {
  const got = hostParse(rows.map(([, s]) => ({ writes: [s] })));
  return rows.flatMap(([what, , want], i) => (got[i]!.refused === want ? [] : [`${what}: ${got[i]!.refused} (want ${want})`]));
}

describe('host-compiled HTTP parser: request heads', () => {
  it('injects after the request line of every request and passes the whole stream', () => {
    const s = get('/a') + post('/b', 'GET /x HTTP/1.1\r\n\r\n') + get('/c');
    const r = parse(s);
    expect(r.refused).toBeNull();
    expect(r.passed).toBe(s.length);
    expect(r.heads).toEqual(requestHeads(Buffer.from(s)).map((h) => [h.rlEnd, h.headEnd]));
    expect(r.heads).toHaveLength(3);
  });

  it('holds an incomplete head, however it is split, and decides on the complete one', () => {
    const s = get('/a', 'X-A: 1\r\n');
    const bytewise = one({ writes: [...s] });
    expect(bytewise).toEqual(parse(s));
    const partial = parse(s.slice(0, -1));
    expect(partial).toMatchObject({ heads: [], passed: 0, held: s.length - 1, refused: null });
  });

  it('allows exactly the seven methods, case-sensitively', () => {
    expect(table([
      ...['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS'].map((m): [string, string, null] => [m, `${m} / HTTP/1.1\r\n\r\n`, null]),
      ...['TRACE', 'TRACK', 'CONNECT', 'connect', 'Get', 'get', 'PROPFIND', 'GETS', 'OPTIONSX', 'M-SEARCH']
        .map((m): [string, string, string] => [m, `${m} / HTTP/1.1\r\n\r\n`, 'refusedMethod']),
    ])).toEqual([]);
  });

  it('refuses a malformed request line', () => {
    expect(table([
      ['no method', ' / HTTP/1.1\r\n\r\n', 'refusedMalformed'],
      ['two spaces', 'GET  / HTTP/1.1\r\n\r\n', 'refusedMalformed'],
      ['no target', 'GET HTTP/1.1\r\n\r\n', 'refusedMalformed'],
      ['HTTP/2.0', 'GET / HTTP/2.0\r\n\r\n', 'refusedMalformed'],
      ['HTTP/1.2', 'GET / HTTP/1.2\r\n\r\n', 'refusedMalformed'],
      ['lower-case version', 'GET / http/1.1\r\n\r\n', 'refusedMalformed'],
      ['HTTP/0.9 (no version)', 'GET /\r\n\r\n', 'refusedMalformed'],
      ['bare LF after the request line', 'GET / HTTP/1.1\n\r\n', 'refusedMalformed'],
      ['bare CR in the request line', 'GET /\ra HTTP/1.1\r\n\r\n', 'refusedMalformed'],
      ['control in the target', 'GET /\x01 HTTP/1.1\r\n\r\n', 'refusedMalformed'],
      ['DEL in the target', 'GET /\x7f HTTP/1.1\r\n\r\n', 'refusedMalformed'],
      ['space after the version', 'GET / HTTP/1.1 \r\n\r\n', 'refusedMalformed'],
      ['HTTP/1.0', 'GET / HTTP/1.0\r\n\r\n', null],
      ['asterisk-form', 'OPTIONS * HTTP/1.1\r\n\r\n', null],
    ])).toEqual([]);
  });

  it('refuses header lines that are not "token: value CRLF"', () => {
    const rl = 'GET / HTTP/1.1\r\n';
    expect(table([
      ['obs-fold (SP)', `${rl}X-A: 1\r\n 2\r\n\r\n`, 'refusedMalformed'],
      ['obs-fold (HT)', `${rl}X-A: 1\r\n\t2\r\n\r\n`, 'refusedMalformed'],
      ['bare LF ending a line', `${rl}X-A: 1\nX-B: 2\r\n\r\n`, 'refusedMalformed'],
      ['bare LF ending the head', `${rl}X-A: 1\r\n\n`, 'refusedMalformed'],
      ['bare CR in a value', `${rl}X-A: 1\r2\r\n\r\n`, 'refusedMalformed'],
      ['NUL in a value', `${rl}X-A: 1\x002\r\n\r\n`, 'refusedMalformed'],
      ['DEL in a value', `${rl}X-A: 1\x7f\r\n\r\n`, 'refusedMalformed'],
      ['space before the colon', `${rl}X-A : 1\r\n\r\n`, 'refusedMalformed'],
      ['an empty name', `${rl}: 1\r\n\r\n`, 'refusedMalformed'],
      ['no colon', `${rl}X-A\r\n\r\n`, 'refusedMalformed'],
      ['a separator in the name', `${rl}X(A): 1\r\n\r\n`, 'refusedMalformed'],
      ['obs-text in a value', `${rl}X-A: caf\xe9\r\n\r\n`, null],
      ['an empty value', `${rl}X-A:\r\n\r\n`, null],
      ['HT in a value', `${rl}X-A:\t1\t2\r\n\r\n`, null],
    ])).toEqual([]);
  });

  it('follows one Transfer-Encoding: chunked on HTTP/1.1 and refuses every other', () => {
    const te = (v: string, ver = '1.1', extra = '') => `POST / HTTP/${ver}\r\n${extra}Transfer-Encoding:${v}\r\n\r\n0\r\n\r\n`;
    expect(table([
      ['chunked', te(' chunked'), null],
      ['any case, whitespace around', te('\t CHUNKED \t'), null],
      ['gzip, chunked', te(' gzip, chunked'), 'refusedTransferEncoding'],
      ['chunked, chunked', te(' chunked, chunked'), 'refusedTransferEncoding'],
      ['gzip', te(' gzip'), 'refusedTransferEncoding'],
      ['a parameter', te(' chunked;q=1'), 'refusedTransferEncoding'],
      ['chunked with a space inside', te(' chun ked'), 'refusedTransferEncoding'],
      ['a prefix of chunked', te(' chunk'), 'refusedTransferEncoding'],
      ['an empty value', te(''), 'refusedTransferEncoding'],
      ['two lines', te(' chunked', '1.1', 'Transfer-Encoding: chunked\r\n'), 'refusedTransferEncoding'],
      ['on HTTP/1.0', te(' chunked', '1.0'), 'refusedTransferEncoding'],
      ['after Content-Length', te(' chunked', '1.1', 'Content-Length: 0\r\n'), 'refusedTransferEncoding'],
      ['before Content-Length', 'POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n', 'refusedTransferEncoding'],
    ])).toEqual([]);
    expect(parse(te(' chunked')).scan.seenTe).toBe(1);
  });

  it('takes one Content-Length of up to 15 digits', () => {
    const cl = (v: string, extra = '') => `POST / HTTP/1.1\r\n${extra}Content-Length:${v}\r\n\r\n`;
    expect(table([
      ['digits', cl(' 5'), null],
      ['whitespace around', cl('\t 5 \t'), null],
      ['15 digits', cl(' 999999999999999'), null],
      ['16 digits', cl(' 1000000000000000'), 'refusedContentLength'],
      ['duplicated, same value', cl(' 5', 'Content-Length: 5\r\n'), 'refusedContentLength'],
      ['duplicated, other case', cl(' 5', 'content-length: 6\r\n'), 'refusedContentLength'],
      ['a list', cl(' 5, 5'), 'refusedContentLength'],
      ['two numbers', cl(' 5 5'), 'refusedContentLength'],
      ['empty', cl(''), 'refusedContentLength'],
      ['only whitespace', cl('  '), 'refusedContentLength'],
      ['a sign', cl(' +5'), 'refusedContentLength'],
      ['hex', cl(' 0x5'), 'refusedContentLength'],
      ['a letter', cl(' 5a'), 'refusedContentLength'],
    ])).toEqual([]);
    expect(parse(cl(' 00012')).scan).toMatchObject({ clen: 12, seenLength: 1 });
    // The body is stepped over by count, never parsed: a request inside it is not one.
    const inner = get('/inner');
    const s = cl(` ${inner.length}`) + inner + get('/next');
    expect(parse(s).heads).toEqual([[17, cl(` ${inner.length}`).length], [s.length - get('/next').length + 'GET /next HTTP/1.1\r\n'.length, s.length]]);
  });

  it('refuses Upgrade, Connection: upgrade and the injected header sent by the client', () => {
    const rl = 'GET / HTTP/1.1\r\n';
    expect(table([
      ['Upgrade', `${rl}Upgrade: websocket\r\n\r\n`, 'refusedUpgrade'],
      ['Connection: Upgrade', `${rl}Connection: Upgrade\r\n\r\n`, 'refusedUpgrade'],
      ['Connection: keep-alive, upgrade', `${rl}Connection: keep-alive, uupgrade\r\n\r\n`, 'refusedUpgrade'],
      ['Connection: close', `${rl}Connection: close\r\n\r\n`, null],
      ['the injected header', `${rl}Authorization: Basic eA==\r\n\r\n`, 'refusedHeaderPresent'],
      ['the injected header, other case', `${rl}aUTHORIZATION: x\r\n\r\n`, 'refusedHeaderPresent'],
      ['a longer name', `${rl}Authorization-X: x\r\n\r\n`, null],
      ['a shorter name', `${rl}Authorizatio: x\r\n\r\n`, null],
    ])).toEqual([]);
    // The check follows the line being injected, whatever its name.
    expect(one({ line: 'X-Api-Key: k\r\n', writes: [`${rl}x-api-key: mine\r\n\r\n`] }).refused).toBe('refusedHeaderPresent');
    expect(one({ line: 'X-Api-Key: k\r\n', writes: [`${rl}Authorization: x\r\n\r\n`] }).refused).toBeNull();
  });

  it('allows exactly a WebSocket upgrade, injected once, then passes the rest of the stream unparsed', () => {
    const ws = (extra = '', method = 'GET', version = '1.1') =>
      `${method} /ws HTTP/${version}\r\nHost: upstream\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n` +
      `Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n${extra}\r\n`;
    const upgrade = ws();
    expect(table([
      ['a WebSocket upgrade', upgrade, null],
      ['any case, whitespace around', upgrade.replace('Upgrade: websocket', 'UPGRADE:  WebSocket \t'), null],
      ['Connection listing upgrade', upgrade.replace('Connection: Upgrade', 'Connection: keep-alive, Upgrade'), null],
      ['Content-Length: 0', ws('Content-Length: 0\r\n'), null],
      ['a body', ws('Content-Length: 5\r\n') + 'hello', 'refusedUpgrade'],
      ['chunked', ws('Transfer-Encoding: chunked\r\n') + '0\r\n\r\n', 'refusedUpgrade'],
      ['POST', ws('', 'POST'), 'refusedUpgrade'],
      ['HTTP/1.0', ws('', 'GET', '1.0'), 'refusedUpgrade'],
      ['h2c', upgrade.replace('Upgrade: websocket', 'Upgrade: h2c'), 'refusedUpgrade'],
      ['a list', upgrade.replace('Upgrade: websocket', 'Upgrade: websocket, h2c'), 'refusedUpgrade'],
      ['a version', upgrade.replace('Upgrade: websocket', 'Upgrade: websocket/13'), 'refusedUpgrade'],
      ['a prefix', upgrade.replace('Upgrade: websocket', 'Upgrade: websock'), 'refusedUpgrade'],
      ['inner space', upgrade.replace('Upgrade: websocket', 'Upgrade: web socket'), 'refusedUpgrade'],
      ['two Upgrade lines', ws('Upgrade: websocket\r\n'), 'refusedUpgrade'],
      ['Upgrade without Connection: upgrade', upgrade.replace('Connection: Upgrade\r\n', ''), 'refusedUpgrade'],
      ['Connection: upgrade without Upgrade', upgrade.replace('Upgrade: websocket\r\n', ''), 'refusedUpgrade'],
    ])).toEqual([]);

    // After it, frames (and anything that looks like a request, or the injected header) pass unparsed.
    const frames = Buffer.concat([Buffer.from([0x81, 0x85, 1, 2, 3, 4]), Buffer.from('GET /x HTTP/1.1\r\nAuthorization: x\r\n\r\n')]);
    const r = one({ writes: [upgrade, frames, get('/after'), 'TRACE / HTTP/1.1\r\n\r\n'] });
    expect(r).toMatchObject({ refused: null, passThrough: true, held: 0 });
    const rlEnd = (x: string) => x.indexOf('\r\n') + 2;
    expect(r.heads).toEqual([[rlEnd(upgrade), upgrade.length]]);
    expect(r.passed).toBe(upgrade.length + frames.length + get('/after').length + 'TRACE / HTTP/1.1\r\n\r\n'.length);
    // Split anywhere, the same: the upgrade byte by byte, and a frame in the same write as its end.
    const split = one({ writes: [...upgrade.slice(0, -1), upgrade.slice(-1) + 'GET / HTTP/1.1\r\n\r\n'] });
    expect(split).toMatchObject({ refused: null, passThrough: true, heads: [[rlEnd(upgrade), upgrade.length]] });

    // Pipelined after an ordinary request: each injected once, then pass-through.
    const piped = one({ writes: [get('/first') + upgrade + get('/never-injected')] });
    const first = get('/first');
    expect(piped.heads).toEqual([[rlEnd(first), first.length], [first.length + rlEnd(upgrade), first.length + upgrade.length]]);
    expect(piped.passThrough).toBe(true);
    // A refused upgrade passes nothing from itself on: the requests before it only.
    const refused = one({ writes: [get('/first') + upgrade.replace('websocket', 'h2c') + get('/next')] });
    expect(refused).toMatchObject({ refused: 'refusedUpgrade', passed: get('/first').length, passThrough: false });
  });

  it('refuses a second Host line and reads Host and absolute-form authorities', () => {
    expect(parse(get('/', 'Host: other\r\n')).refused).toBe('refusedHost');
    const host = (v: string) => parse(`GET / HTTP/1.1\r\nHost:${v}\r\n\r\n`).scan.host;
    expect(host(' API.Example.:8080 ')).toEqual({ state: 3, name: 'api.example.', port: 8080, digits: 4 });
    expect(host(' api.example')).toMatchObject({ state: 1, name: 'api.example', digits: 0 });
    expect(host(' [::1]:80').state).toBe(4);
    expect(host(' user@api').state).toBe(4);
    expect(host(' api:123456').state).toBe(4);
    expect(host(' a b').state).toBe(4);
    expect(host(' api%2e').state).toBe(4);
    const abs = parse('GET HTTP://Api.Example:81/x?y HTTP/1.1\r\nHost: api.example:81\r\n\r\n').scan;
    expect(abs).toMatchObject({ targetForm: 3, target: { state: 2, name: 'api.example', port: 81, digits: 2 } });
    expect(parse('GET https://api/ HTTP/1.1\r\n\r\n').scan.targetForm).toBe(4);
    expect(parse('GET /x HTTP/1.1\r\n\r\n').scan.targetForm).toBe(0);
  });

  it('for a service that lists hosts, refuses a request whose Host or absolute-form authority names another', () => {
    const hosts = { names: ['api.example', 'b.example'], port: 8080 };
    const req = (target: string, host: string | null) => `GET ${target} HTTP/1.1\r\n${host === null ? '' : `Host: ${host}\r\n`}\r\n`;
    const rows: [string, string, string | null][] = [
      ['a listed host', req('/', 'api.example'), null],
      ['upper case, the port, a trailing dot', req('/', 'API.Example.:8080'), null],
      ['another listed host', req('/', 'b.example'), null],
      ['no Host', req('/', null), 'refusedHost'],
      ['another host', req('/', 'evil.example'), 'refusedHost'],
      ['a suffix of a listed host', req('/', 'example'), 'refusedHost'],
      ['another port', req('/', 'api.example:80'), 'refusedHost'],
      ['an empty port', req('/', 'api.example:'), 'refusedHost'],
      ['userinfo', req('/', 'user@api.example'), 'refusedHost'],
      ['an IPv6 literal', req('/', '[::1]'), 'refusedHost'],
      ['an empty Host', req('/', ''), 'refusedHost'],
      ['a dot alone', req('/', '.'), 'refusedHost'],
      ['absolute form, same host', req('http://api.example:8080/x', 'api.example'), null],
      ['absolute form, without a path', req('http://api.example', 'api.example'), null],
      ['absolute form, another host', req('http://evil.example/', 'api.example'), 'refusedHost'],
      ['absolute form, another port', req('http://api.example:81/', 'api.example'), 'refusedHost'],
      ['https', req('https://api.example/', 'api.example'), 'refusedHost'],
      ['authority form', req('api.example:8080', 'api.example'), 'refusedHost'],
      ['asterisk form', 'OPTIONS * HTTP/1.1\r\nHost: api.example\r\n\r\n', null],
    ];
    const got = hostParse(rows.map(([, s]) => ({ writes: [s], hosts })));
    expect(rows.flatMap(([what, , want], i) => (got[i]!.refused === want ? [] : [`${what}: ${got[i]!.refused} (want ${want})`]))).toEqual([]);
    // Without a list, any Host goes (but never two).
    expect(parse(req('http://evil.example/', 'other')).refused).toBeNull();
  });

  it('refuses a head longer than 8 KiB, in one write or many', () => {
    const big = `GET / HTTP/1.1\r\nX-Pad: ${'a'.repeat(8192)}\r\n\r\n`;
    expect(parse(big).refused).toBe('refusedHeadSize');
    expect(one({ writes: randomPieces(big.length, 700, prng(1)).reduce<string[]>((a, n) => [...a, big.slice(a.join('').length, a.join('').length + n)], []) }).refused)
      .toBe('refusedHeadSize');
    const fits = `GET / HTTP/1.1\r\nX-Pad: ${'a'.repeat(8192 - 27)}\r\n\r\n`;
    expect(fits.length).toBe(8192);
    expect(parse(fits)).toMatchObject({ refused: null, passed: 8192 });
    expect(parse(fits.replace('X-Pad: ', 'X-Pad: a')).refused).toBe('refusedHeadSize');
  });
});

describe('host-compiled HTTP parser: chunked bodies', () => {
  it('steps over chunk data by its size, request-like data included, and finds the next request', () => {
    const data = get('/in-data');
    const framing = `${data.length.toString(16)};a=b;c\r\n${data}\r\n0\r\nX-Trailer: 1\r\n\r\n`;
    const s = chunked(framing);
    const r = parse(s);
    expect(r).toMatchObject({ refused: null, passed: s.length, chunked: false });
    expect(r.heads).toHaveLength(2);
    expect(r.heads[1]![0]).toBe(chunkedHead().length + framing.length + 'GET /after HTTP/1.1\r\n'.length);
    expect(one({ writes: [...s] })).toEqual(r);
  });

  it('accounts for data past the window whole and carries on after it', () => {
    const data = 'x'.repeat(10000);
    const s = chunked(`${data.length.toString(16)}\r\n${data}\r\n0\r\n\r\n`);
    expect(parse(s)).toMatchObject({ refused: null, passed: s.length });
    expect(parse(s).heads).toHaveLength(2);
  });

  it('refuses malformed framing', () => {
    const ok = (sz: string, ext = '') => chunked(`${sz}${ext}\r\nabc\r\n0\r\n\r\n`);
    expect(table([
      ['uppercase hex', chunked('A\r\n0123456789\r\n0\r\n\r\n'), null],
      ['leading zeros', ok('0003'), null],
      ['token extensions', ok('3', ';name=value; other ;x=y'), null],
      ['an empty size line', chunked('\r\nabc\r\n0\r\n\r\n'), 'refusedChunked'],
      ['a sign', ok('+3'), 'refusedChunked'],
      ['0x', ok('0x3'), 'refusedChunked'],
      ['leading whitespace', ok(' 3'), 'refusedChunked'],
      ['whitespace after the size', ok('3 '), 'refusedChunked'],
      ['16 hex digits', ok('0000000000000003'), 'refusedChunked'],
      ['bare LF after the size', chunked('3\nabc\r\n0\r\n\r\n'), 'refusedChunked'],
      ['a quoted extension', ok('3', ';a="b"'), 'refusedChunked'],
      ['a control in an extension', ok('3', ';a=\x01'), 'refusedChunked'],
      ['an extension over 1 KiB', ok('3', `;${'a'.repeat(1024)}`), 'refusedChunked'],
      ['an extension of 1 KiB', ok('3', `;${'a'.repeat(1023)}`), null],
      ['data longer than its size', chunked('3\r\nabcd\r\n0\r\n\r\n'), 'refusedChunked'],
      ['data shorter than its size', chunked('3\r\nab\r\n0\r\n\r\n'), 'refusedChunked'],
      ['bare LF after data', chunked('3\r\nabc\n0\r\n\r\n'), 'refusedChunked'],
      ['bare LF ending the body', chunked('0\r\n\n'), 'refusedChunked'],
      ['a trailer', chunked('0\r\nX-T: 1\r\nX-U:\r\n\r\n'), null],
      ['an obs-fold trailer', chunked('0\r\nX-T: 1\r\n 2\r\n\r\n'), 'refusedChunked'],
      ['a trailer without a name', chunked('0\r\n: 1\r\n\r\n'), 'refusedChunked'],
      ['space before a trailer colon', chunked('0\r\nX-T : 1\r\n\r\n'), 'refusedChunked'],
      ['bare CR in a trailer', chunked('0\r\nX-T: 1\r2\r\n\r\n'), 'refusedChunked'],
      ['bare LF after a trailer', chunked('0\r\nX-T: 1\n\r\n'), 'refusedChunked'],
      ['a control in a trailer', chunked('0\r\nX-T: \x00\r\n\r\n'), 'refusedChunked'],
      ['the injected header as a trailer', chunked('0\r\nauthorization: x\r\n\r\n'), 'refusedHeaderPresent'],
      ['a trailer section over 8 KiB', chunked(`0\r\nX-T: ${'a'.repeat(8192)}\r\n\r\n`), 'refusedChunked'],
    ])).toEqual([]);
  });

  it('carries the framing state across writes of one byte', () => {
    const s = chunked(`3;k=v\r\nabc\r\n10\r\n${'y'.repeat(16)}\r\n0\r\nX-T: 1\r\n\r\n`);
    expect(one({ writes: [...s] })).toEqual(parse(s));
    const bad = chunked('3\r\nabc\r\n0\r\nX-T : 1\r\n\r\n');
    expect(one({ writes: [...bad] }).refused).toBe('refusedChunked');
  });
});

/** A stream of valid requests of every kind the fuzz test sends, with request-like bodies. */
function randomStream(rnd: () => number): Buffer {
  const pick = <T>(xs: T[]) => xs[Math.floor(rnd() * xs.length)]!;
  const text = (n: number) => Array.from({ length: n }, () => pick(['a', 'Z', ' ', '\r', '\n', ':', '0', 'GET / HTTP/1.1\r\n\r\n', '\r\n\r\n'])).join('');
  const parts: string[] = [];
  for (let i = 0, n = 1 + Math.floor(rnd() * 5); i < n; i++) {
    const extra = rnd() < 0.3 ? `X-${i}: ${text(3).replace(/[\r\n]/g, '')}\r\n` : '';
    switch (pick(['get', 'post', 'chunked', 'head10'])) {
      case 'get':
        parts.push(get(`/f/${i}`, extra));
        break;
      case 'head10':
        parts.push(`HEAD /h HTTP/1.0\r\n${extra}\r\n`);
        break;
      case 'post':
        parts.push(post(`/p/${i}`, text(Math.floor(rnd() * 12)), extra));
        break;
      default: {
        const ext = pick(['', ';k=v', ';x']);
        const chunks = Array.from({ length: Math.floor(rnd() * 4) }, () => text(1 + Math.floor(rnd() * 10)));
        parts.push(chunkedHead(extra) + chunks.map((c) => `${Buffer.byteLength(c, 'latin1').toString(16)}${ext}\r\n${c}\r\n`).join('')
          + `0${ext}\r\n${pick(['', 'X-T: 1\r\n'])}\r\n`);
      }
    }
  }
  return Buffer.from(parts.join(''), 'latin1');
}

/** One random edit: a byte changed, inserted or deleted, or a span repeated. */
function mutate(s: Buffer, rnd: () => number): Buffer {
  const at = Math.floor(rnd() * s.length);
  const byte = Buffer.from([Math.floor(rnd() * 256)]);
  const special = Buffer.from('\r\n :;0 \t'[Math.floor(rnd() * 8)]!, 'latin1');
  const b = rnd() < 0.5 ? byte : special;
  switch (Math.floor(rnd() * 4)) {
    case 0: return Buffer.concat([s.subarray(0, at), b, s.subarray(at + 1)]);
    case 1: return Buffer.concat([s.subarray(0, at), b, s.subarray(at)]);
    case 2: return Buffer.concat([s.subarray(0, at), s.subarray(at + 1)]);
    default: return Buffer.concat([s.subarray(0, at), s.subarray(at, at + 20), s.subarray(at)]);
  }
}

/** `s` cut into writes at random places. */
const split = (s: Buffer, rnd: () => number, max: number) => {
  let at = 0;
  return randomPieces(s.length, max, rnd).map((n) => s.subarray(at, (at += n)));
};

describe('host-compiled HTTP parser against the fuzz test\'s reference model', () => {
  const SEEDS = 400;

  it('agrees on every request boundary of valid streams, however they are split', () => {
    const cases: { stream: Buffer; writes: Buffer[] }[] = [];
    for (let seed = 1; seed <= SEEDS; seed++) {
      const rnd = prng(seed);
      const stream = randomStream(rnd);
      cases.push({ stream, writes: [stream] }, { stream, writes: split(stream, rnd, 1 + Math.floor(rnd() * 40)) });
    }
    const got = hostParse(cases.map((c) => ({ writes: c.writes })));
    const bad: string[] = [];
    cases.forEach((c, i) => {
      const r = got[i]!;
      const want = requestHeads(c.stream).map((h) => [h.rlEnd, h.headEnd]);
      if (r.refused || r.passed !== c.stream.length || r.held || JSON.stringify(r.heads) !== JSON.stringify(want))
        bad.push(`case ${i} (seed ${1 + (i >> 1)}): ${JSON.stringify({ refused: r.refused, passed: r.passed, len: c.stream.length, heads: r.heads, want })}`);
    });
    expect(bad.slice(0, 5)).toEqual([]);
  });

  it('on mutated streams, injects only where the model finds a head and never depends on the split', () => {
    const cases: { stream: Buffer; writes: Buffer[] }[] = [];
    for (let seed = 1; seed <= SEEDS * 2; seed++) {
      const rnd = prng(100_000 + seed);
      let stream = randomStream(rnd);
      for (let k = 1 + Math.floor(rnd() * 3); k > 0; k--) stream = mutate(stream, rnd);
      cases.push({ stream, writes: [stream] }, { stream, writes: split(stream, rnd, 1 + Math.floor(rnd() * 40)) });
    }
    const got = hostParse(cases.map((c) => ({ writes: c.writes })));
    const bad: string[] = [];
    const outcomes = new Map<string, number>();
    for (let i = 0; i < cases.length; i += 2) {
      const { stream } = cases[i]!;
      const whole = got[i]!;
      const pieces = got[i + 1]!;
      for (const r of [whole, pieces]) {
        // What the upstream gets: a prefix of the stream with the line after
        // the request line of exactly the model's heads complete in it.
        const want = requestHeads(stream).filter((h) => h.headEnd <= r.passed).map((h) => [h.rlEnd, h.headEnd]);
        if (JSON.stringify(r.heads) !== JSON.stringify(want) || r.passed > stream.length)
          bad.push(`seed ${100_000 + 1 + i / 2}: ${JSON.stringify({ heads: r.heads, want, passed: r.passed })} ${JSON.stringify(stream.toString('latin1'))}`);
        if (r.refused === 'refusedInternal') bad.push(`seed ${100_000 + 1 + i / 2}: internal refusal`);
        if (!r.refused && r.held === 0 && r.passed !== stream.length) bad.push(`seed ${100_000 + 1 + i / 2}: bytes neither passed nor held`);
      }
      // A head's fate and the reason never depend on how the stream was written.
      if (whole.refused !== pieces.refused || JSON.stringify(whole.heads) !== JSON.stringify(pieces.heads))
        bad.push(`seed ${100_000 + 1 + i / 2}: split changes ${JSON.stringify([whole.refused, whole.heads])} to ${JSON.stringify([pieces.refused, pieces.heads])}`);
      outcomes.set(whole.refused ?? 'accepted', (outcomes.get(whole.refused ?? 'accepted') ?? 0) + 1);
    }
    expect(bad.slice(0, 5)).toEqual([]);
    // The mutations reach both outcomes and several refusals, or the test proves little.
    expect(outcomes.get('accepted') ?? 0).toBeGreaterThan(SEEDS / 10);
    expect([...outcomes.keys()].length).toBeGreaterThan(4);
  });
});


describe('host-compiled HTTP parser: 8 bytes at a time', () => {
  /** Heads whose targets and values run long enough for the word scan, with the bytes that must stop it. */
  function wordyStream(rnd: () => number): Buffer {
    const pick = <T>(xs: readonly T[]) => xs[Math.floor(rnd() * xs.length)]!;
    const odd = [' ', '\t', '\r', '\n', '\x00', '\x1f', '\x7f', '\x80', '\xff', 'a', 'Z', '/', ':', '%'];
    const oddness = pick([0, 0, 0, 0.005, 0.03]);
    const run = (n: number) => Array.from({ length: n }, () => (rnd() < oddness ? pick(odd) : pick(['a', 'B', '9', '-', '.', '/', '?', '=', '&', '~', ';', 'u', 'P']))).join('');
    const hostName = (n: number) => Array.from({ length: n }, () => (rnd() < oddness ? pick(odd) : pick(['a', 'Q', 'z', '0', '9', '-', '.', '.', '_', '~']))).join('');
    const name = () => pick(['', '', 'Authorization', 'authorizatioN', 'AUTHORIZATION', 'Authorizatio', 'Authorization-X', 'Au', 'X-Request-Id-', 'Accept-Encoding'])
      + Array.from({ length: Math.floor(rnd() * 30) }, () => (rnd() < oddness ? pick(odd) : pick(['a', 'Z', 'm', '0', '9', '-', '-', '_', '.', '!', '~', '`']))).join('');
    const parts: string[] = [];
    for (let i = 0, n = 1 + Math.floor(rnd() * 2); i < n; i++) {
      const method = (rnd() < 0.1 ? pick(['GETX', 'get', 'PUTT', 'POS', 'GET\t']) : pick(['GET', 'PUT', 'POST', 'HEAD', 'DELETE']));
      const target = pick(['/', '/', '/', 'http://upstream', 'http://Upstream:80', '*', 'HTTP://x']) + run(Math.floor(rnd() * 40));
      const version = (rnd() < 0.1 ? pick(['HTTP/1.2', 'HTTP/1.11', 'http/1.1', 'HTTP/1.1 ']) : pick(['HTTP/1.1', 'HTTP/1.0']));
      const lines = Array.from({ length: Math.floor(rnd() * 5) }, () => {
        const kind = rnd();
        // A Host value's name is taken a word at a time, up to near the longest a name may be.
        if (kind < 0.2) return `${pick(['Host', 'host', 'HOST'])}:${pick(['', ' ', '  ', '\t'])}${hostName(Math.floor(rnd() * (rnd() < 0.1 ? 270 : 40)))}${pick(['', '', ':443', ':8080', ':', ':123456', ' ', '.'])}\r\n`;
        // Names a word at a time: long ones, any case, and ones that start as the injected header's.
        if (kind < 0.5) return `${name()}:${run(Math.floor(rnd() * 48))}\r\n`;
        // Connection values a word at a time between the bytes that may begin "upgrade".
        if (kind < 0.6) return `${pick(['Connection', 'connection'])}:${pick([' keep-alive', ' Upgrade', ' close, upgrade', ' uuupgrade', ' x-UPGRADE-y', ' upgradeupgrade', ' keep-alive, Upgrad', ''])}${run(Math.floor(rnd() * 20))}\r\n`;
        return `${pick(['X-Long', 'User-Agent', 'Accept', 'Cookie', 'Connection', 'Content-Length'])}:${run(Math.floor(rnd() * 48))}\r\n`;
      });
      parts.push(`${method} ${target} ${version}\r\n${lines.join('')}\r\n`);
    }
    return Buffer.from(parts.join(''), 'latin1');
  }

  it('decides every head exactly as a byte at a time, whole and split', () => {
    const cases: { writes: Buffer[] }[] = [];
    for (let seed = 1; seed <= 1500; seed++) {
      const rnd = prng(200_000 + seed);
      let stream = wordyStream(rnd);
      if (rnd() < 0.5) stream = mutate(stream, rnd);
      cases.push({ writes: [stream] }, { writes: split(stream, rnd, 1 + Math.floor(rnd() * 20)) });
    }
    const words = hostParse(cases);
    const bytes = hostParse(cases, { bytes: true });
    const bad = cases.flatMap((c, i) => (JSON.stringify(words[i]) === JSON.stringify(bytes[i]) ? []
      : [`case ${i}: ${JSON.stringify(Buffer.concat(c.writes).toString('latin1'))}: ${JSON.stringify(words[i])} vs ${JSON.stringify(bytes[i])}`]));
    expect(bad.slice(0, 3)).toEqual([]);
    // The cases reach acceptance and refusal, or the comparison proves little.
    const refused = words.filter((r) => r.refused).length;

    expect(refused).toBeGreaterThan(cases.length / 10);
    expect(refused).toBeLessThan(cases.length * 0.9);
  });
});
