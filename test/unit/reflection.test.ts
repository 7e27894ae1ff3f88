/**
 * The credential reflection guard (controller/inject/reflection.ts): a
 * credential value an upstream echoes back is masked, byte for byte,
 * however the response is cut into reads and chunks, in heads, bodies and
 * trailers; nothing else is changed, and nothing is held back that cannot
 * begin a value.
 */
import { describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import { ResponseMask, maskedValues, maskHeaderPairs, maskText, MIN_MASKED_BYTES } from '../../controller/inject/reflection.js';
import { ResponseFramer } from '../../controller/proxy/h1-wire.js';
import { injectHeader, prepareUpstreamRequest, type StreamedRequest } from '../../controller/inject/inject.js';
import type { Credential } from '../../controller/credentials/credential.js';
import { Secret } from '../../controller/credentials/secret.js';
import type { PlanInjection } from '../../controller/policy/types.js';

const TOKEN = 'sk-live-7f3a9c2e1b';
const values = maskedValues([TOKEN])!;
const MASKED = '*'.repeat(TOKEN.length);

/** `body` cut at `cuts` (offsets), pushed through one ResponseMask: what the workload gets, and what was held after each push. */
function scan(body: string, cuts: number[], vs = values): { out: string; held: number[]; masked: number } {
  const mask = new ResponseMask(vs);
  const bytes = Buffer.from(body, 'latin1');
  const parts: Buffer[] = [];
  const held: number[] = [];
  let sent = 0;
  let at = 0;
  for (const cut of [...cuts, bytes.length]) {
    const out = mask.push(bytes.subarray(at, cut));
    parts.push(out);
    sent += out.length;
    held.push(cut - sent);
    at = cut;
  }
  const rest = mask.end();
  if (rest) parts.push(rest);
  return { out: Buffer.concat(parts).toString('latin1'), held, masked: mask.masked };
}

describe('ResponseMask', () => {
  it('masks a value split at every offset across two reads, and only it', () => {
    const body = `{"headers":{"Authorization":"Bearer ${TOKEN}","Accept":"*/*"}}`;
    const expected = body.replace(TOKEN, MASKED);
    for (let cut = 0; cut <= body.length; cut++) {
      const r = scan(body, [cut]);
      expect(r.out, `cut at ${cut}`).toBe(expected);
      expect(r.masked).toBe(1);
    }
  });

  it('masks a value cut into single bytes, and every occurrence of it', () => {
    const body = `${TOKEN}..${TOKEN}${TOKEN}.`;
    const r = scan(body, Array.from({ length: body.length - 1 }, (_, i) => i + 1));
    expect(r.out).toBe(`${MASKED}..${MASKED}${MASKED}.`);
    expect(r.masked).toBe(3);
  });

  it('holds back only bytes that could begin a value, and passes a body without one untouched', () => {
    const body = Buffer.from('no credential in here at all, just bytes.', 'latin1');
    const mask = new ResponseMask(values);
    // Nothing held, nothing copied: the same buffer comes back.
    expect(mask.push(body)).toBe(body);
    expect(mask.end()).toBeUndefined();
    // "sk-li" could begin the token: held until the next bytes say it does not.
    const r = scan('abc sk-li', []);
    expect(r.held).toEqual([5]);
    expect(r.out).toBe('abc sk-li');
    const r2 = scan('abc sk-liX and more', [9]);
    expect(r2.held).toEqual([5, 0]);
    expect(r2.out).toBe('abc sk-liX and more');
  });

  it('finds values in random bodies cut at random places (several values, overlapping prefixes)', () => {
    const vs = maskedValues([TOKEN, 'sk-live-0000000000', 'Zm9vOmJhcjEyMzQ1Njc4'])!;
    for (let round = 0; round < 300; round++) {
      const pieces: string[] = [];
      let expected = '';
      const n = 1 + (round % 7);
      for (let i = 0; i < n; i++) {
        const filler = randomBytes(round % 40).toString('latin1').replace(/[sZ*]/g, '.');
        const v = vs.texts[(round + i) % vs.texts.length]!;
        // Near-misses: a value's prefix that does not go on.
        const miss = v.slice(0, (round + i) % v.length);
        pieces.push(filler, miss, '.', v);
        expected += filler + miss + '.' + '*'.repeat(v.length);
      }
      const body = pieces.join('');
      const cuts = Array.from({ length: round % 9 }, () => Math.floor(Math.random() * body.length)).sort((a, b) => a - b);
      expect(scan(body, cuts, vs).out, `round ${round}, cuts ${cuts.join(',')}`).toBe(expected);
    }
  });

  it('looks for a value as a JSON string spells it too (escaped slash, quote, backslash)', () => {
    const pair = 'c3ZjOmh1bnRlcjI+/x==';
    const vs = maskedValues([pair, 'tok"en\\value-1'])!;
    expect(vs.texts).toEqual([pair, 'c3ZjOmh1bnRlcjI+\\/x==', 'tok"en\\value-1', 'tok\\"en\\\\value-1']);
    // PHP's json_encode: the slash escaped.
    const body = `{"authorization":"Basic ${pair.replace('/', '\\/')}","raw":"${pair}"}`;
    expect(scan(body, [30], vs).out).toBe(`{"authorization":"Basic ${'*'.repeat(pair.length + 1)}","raw":"${'*'.repeat(pair.length)}"}`);
  });

  it('looks for values of MIN_MASKED_BYTES or more only, once each', () => {
    expect(maskedValues(['short', 'x'.repeat(MIN_MASKED_BYTES - 1)])).toBeUndefined();
    expect(maskedValues([TOKEN, TOKEN])?.texts).toEqual([TOKEN]);
    expect(maskText(`Bearer ${TOKEN}; again ${TOKEN}`, values)).toBe(`Bearer ${MASKED}; again ${MASKED}`);
  });
});

/** What the workload gets from the fast path's framer for `wire`, cut at `cuts`; and whether the response ended. */
function frame(wire: string, cuts: number[], opts: { close?: boolean } = {}): { out: string; done: boolean; masked: number } {
  const mask = new ResponseMask(values);
  const framer = new ResponseFramer(false, false, mask);
  const bytes = Buffer.from(wire, 'latin1');
  const out: Buffer[] = [];
  let done = false;
  let at = 0;
  for (const cut of [...cuts, bytes.length]) {
    if (cut <= at && cut !== bytes.length) continue;
    const r = framer.push(bytes.subarray(at, cut));
    out.push(...r.out);
    done ||= r.done;
    at = cut;
  }
  if (opts.close) {
    expect(framer.end()).toBe(true);
    const held = framer.heldAtClose();
    if (held) out.push(held);
    done = true;
  }
  return { out: Buffer.concat(out).toString('latin1'), done, masked: mask.masked };
}

/** A chunked body's content, and its trailer section. */
function dechunk(body: string): { content: string; trailers: string } {
  let content = '';
  let at = 0;
  for (;;) {
    const eol = body.indexOf('\r\n', at);
    const size = parseInt(body.slice(at, eol), 16);
    at = eol + 2;
    if (size === 0) return { content, trailers: body.slice(at) };
    content += body.slice(at, at + size);
    expect(body.slice(at + size, at + size + 2)).toBe('\r\n');
    at += size + 2;
  }
}

describe('ResponseFramer with the reflection guard', () => {
  it('masks a reflected header value and a Content-Length body cut anywhere; the length stays true', () => {
    const body = `you sent: Authorization: Bearer ${TOKEN}`;
    const wire = `HTTP/1.1 200 OK\r\nX-Echo: Bearer ${TOKEN}\r\nContent-Length: ${body.length}\r\n\r\n${body}`;
    for (let cut = 1; cut < wire.length; cut++) {
      const r = frame(wire, [cut]);
      expect(r.done).toBe(true);
      expect(r.out, `cut at ${cut}`).toBe(wire.replaceAll(TOKEN, MASKED));
      expect(r.masked).toBe(2);
    }
  });

  it('masks a value split across chunks of a chunked body, framing the content anew, trailers masked', () => {
    const content = `{"auth":"Bearer ${TOKEN}"}`;
    const split = content.indexOf(TOKEN) + 5;
    const wire = 'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Echo\r\n\r\n' +
      `${split.toString(16)};ext=1\r\n${content.slice(0, split)}\r\n` +
      `${(content.length - split).toString(16)}\r\n${content.slice(split)}\r\n` +
      `0\r\nX-Echo: ${TOKEN}\r\n\r\n`;
    for (const cuts of [[], [wire.indexOf(TOKEN.slice(0, 5)) + 2], Array.from({ length: wire.length - 1 }, (_, i) => i + 1)]) {
      const r = frame(wire, cuts);
      expect(r.done).toBe(true);
      const head = r.out.slice(0, r.out.indexOf('\r\n\r\n') + 4);
      expect(head).toContain('Transfer-Encoding: chunked');
      const { content: got, trailers } = dechunk(r.out.slice(head.length));
      expect(got).toBe(content.replace(TOKEN, MASKED));
      expect(trailers).toBe(`X-Echo: ${MASKED}\r\n\r\n`);
      expect(r.out).not.toContain(TOKEN);
    }
  });

  it('sends what it held back when a close-delimited body ends with the connection', () => {
    const wire = 'HTTP/1.1 200 OK\r\n\r\nthe end: sk-li';
    const r = frame(wire, [wire.length - 3], { close: true });
    expect(r.out).toBe('HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nthe end: sk-li');
  });

  it('a numeric secret equal to the body\'s length: the length is framing, not an echo, and stays', () => {
    const digits = maskedValues(['12345678'])!;
    const framer = new ResponseFramer(false, false, new ResponseMask(digits));
    const r = framer.push(Buffer.from(`HTTP/1.1 200 OK\r\nContent-Length: 12345678\r\nX-Echo: 12345678\r\n\r\nxxxxxxxxxx`, 'latin1'));
    expect(r.out[0]?.toString('latin1')).toBe('HTTP/1.1 200 OK\r\nX-Echo: ********\r\nContent-Length: 12345678\r\n\r\n');
    const pairs = ['Content-Length', '12345678', 'X-Echo', '12345678'];
    expect(maskHeaderPairs(pairs, digits)).toBe(1);
    expect(pairs).toEqual(['Content-Length', '12345678', 'X-Echo', '********']);
  });

  it('leaves a response without the value as it would without the guard', () => {
    const wire = 'HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n';
    const r = frame(wire, [30]);
    expect(r.out).toBe(wire);
    expect(r.masked).toBe(0);
  });
});

describe('what an injected request carries for the guard', () => {
  const credential = (secret: string, fields: Record<string, string> = {}): Credential =>
    ({ name: 'c', secret: new Secret(secret), fields: new Map(Object.entries(fields).map(([k, v]) => [k, new Secret(v)])) }) as unknown as Credential;
  const req = (rawHeaders: string[]): StreamedRequest => ({ method: 'GET', url: '/x', rawHeaders, unknownLength: false }) as unknown as StreamedRequest;
  const opts = { host: 'api.example.com', port: 443 };

  it('a bearer: the token, and Accept-Encoding: identity in place of the workload\'s', () => {
    const up = injectHeader(req(['Accept-Encoding', 'gzip, br', 'Accept', '*/*']), { kind: 'bearer', credential: 'c' } as PlanInjection & { kind: 'bearer' }, credential(TOKEN), opts);
    expect(up.masked?.texts).toEqual([TOKEN]);
    const pairs = up.headers.map((h, i) => (i % 2 ? '' : `${h}: ${up.headers[i + 1]}`)).filter(Boolean);
    expect(pairs).toContain('Accept-Encoding: identity');
    expect(pairs).not.toContain('Accept-Encoding: gzip, br');
  });

  it('basic authentication: the encoded pair and the password', () => {
    const up = injectHeader(req([]), { kind: 'basic', credential: 'c', username: 'svc' } as PlanInjection & { kind: 'basic' }, credential('hunter2-long-pass'), opts);
    expect(up.masked?.texts).toEqual([Buffer.from('svc:hunter2-long-pass').toString('base64'), 'hunter2-long-pass']);
  });

  it('a value too short to look for: nothing masked, the workload\'s Accept-Encoding kept', () => {
    const up = injectHeader(req(['Accept-Encoding', 'gzip']), { kind: 'header', credential: 'c', name: 'X-Api-Key', format: '{secret}' } as PlanInjection & { kind: 'header' }, credential('abc'), opts);
    expect(up.masked).toBeUndefined();
    expect(up.headers).toContain('gzip');
  });

  it('SigV4: the session token, and identity asked for', async () => {
    const up = await prepareUpstreamRequest(req(['Accept-Encoding', 'gzip']), { kind: 'sigv4', credential: 'c', service: 's3', region: 'us-east-1' } as PlanInjection,
      credential('', { access_key: 'AKIDEXAMPLE', secret_key: 'secret-key-value', session_token: 'session-token-value-123' }),
      { ...opts, host: 's3.us-east-1.amazonaws.com', sigv4BodyLimit: 1024 });
    expect(up.masked?.texts).toEqual(['session-token-value-123']);
    expect(up.headers).toContain('identity');
    expect(up.headers).not.toContain('gzip');
  });
});
