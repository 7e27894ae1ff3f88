/**
 * The HTTP/2 head checks (controller/proxy/h2.ts checkH2Head), without
 * sockets: what is refused with which code, and the request head the shared
 * checks (checkRequest) then see.
 */
import { describe, expect, it } from 'vitest';
import { checkH2Head } from '../../controller/proxy/h2.js';
import { checkRequest } from '../../controller/proxy/request-checks.js';

const SNI = 'api.example.com';
const base = (authority = SNI, path = '/v1') => [':method', 'GET', ':scheme', 'https', ':authority', authority, ':path', path];
/** checkH2Head, then checkRequest on what it returns: what the proxy decides before the credential. */
const decide = (raw: string[]) => {
  const head = checkH2Head(raw);
  if ('code' in head) return head.code;
  return checkRequest(head, SNI, 443, 'authorization')?.code ?? 'ok';
};

describe('checkH2Head', () => {
  it.each([
    ['a plain GET', base(), 'ok'],
    ['host equal to :authority', [...base(), 'host', SNI], 'ok'],
    ['host only, no :authority', [':method', 'GET', ':scheme', 'https', ':path', '/', 'host', SNI], 'ok'],
    ['te: trailers (gRPC)', [...base(), 'te', 'trailers'], 'ok'],
    ['OPTIONS *', [':method', 'OPTIONS', ':scheme', 'https', ':authority', SNI, ':path', '*'], 'ok'],
    [':authority naming another host', base('other.example.com'), 'host-mismatch'],
    [':authority naming another port', base(`${SNI}:8443`), 'host-mismatch'],
    [':authority with userinfo', base(`user@${SNI}`), 'host-mismatch'],
    ['host disagreeing with :authority', [...base(), 'host', 'other.example.com'], 'host-mismatch'],
    ['two host headers', [...base(), 'host', SNI, 'host', SNI], 'ambiguous-host'],
    ['neither :authority nor host', [':method', 'GET', ':scheme', 'https', ':path', '/'], 'ambiguous-host'],
    ['connection', [...base(), 'connection', 'close'], 'malformed-request'],
    ['keep-alive', [...base(), 'keep-alive', '5'], 'malformed-request'],
    ['proxy-connection', [...base(), 'proxy-connection', 'x'], 'malformed-request'],
    ['transfer-encoding', [...base(), 'transfer-encoding', 'chunked'], 'malformed-request'],
    ['upgrade', [...base(), 'upgrade', 'websocket'], 'malformed-request'],
    ['te: gzip', [...base(), 'te', 'gzip'], 'malformed-request'],
    ['an upper-case name', [...base(), 'X-Upper', 'v'], 'malformed-request'],
    ['an unknown pseudo-header', [...base(), ':protocol', 'websocket'], 'malformed-request'],
    ['a pseudo-header after a regular one', [':method', 'GET', 'x-a', 'b', ':scheme', 'https', ':authority', SNI, ':path', '/'], 'malformed-request'],
    ['two :path', [...base(), ':path', '/again'], 'malformed-request'],
    ['no :method', [':scheme', 'https', ':authority', SNI, ':path', '/'], 'malformed-request'],
    ['no :path', [':method', 'GET', ':scheme', 'https', ':authority', SNI], 'malformed-request'],
    [':scheme http', [':method', 'GET', ':scheme', 'http', ':authority', SNI, ':path', '/'], 'bad-target'],
    [':path absolute', base(SNI, `https://${SNI}/x`), 'bad-target'],
    ['CONNECT', [':method', 'CONNECT', ':authority', `${SNI}:443`], 'method-not-allowed'],
    ['trace in lower case (sent upper-cased upstream)', [':method', 'trace', ':scheme', 'https', ':authority', SNI, ':path', '/'], 'method-not-allowed'],
    ['get in lower case', [':method', 'get', ':scheme', 'https', ':authority', SNI, ':path', '/'], 'method-not-allowed'],
    ['a method no HTTP/1.1 parser here knows', [':method', 'FROB', ':scheme', 'https', ':authority', SNI, ':path', '/'], 'method-not-allowed'],
    ['PROPFIND (a known method)', [':method', 'PROPFIND', ':scheme', 'https', ':authority', SNI, ':path', '/'], 'ok'],
    ['TRACE (shared check)', [':method', 'TRACE', ':scheme', 'https', ':authority', SNI, ':path', '/'], 'method-not-allowed'],
    ['"_" in a name (shared check)', [...base(), 'x_forwarded_host', 'evil'], 'bad-header-name'],
    ['two content-length (shared check)', [...base(), 'content-length', '1', 'content-length', '2'], 'ambiguous-length'],
  ])('%s: %s', (_what, raw, want) => {
    expect(decide(raw)).toBe(want);
  });

  it(':authority becomes the one Host; cookies are joined; te is kept apart', () => {
    const head = checkH2Head([...base(), 'cookie', 'a=1', 'accept', '*/*', 'cookie', 'b=2', 'te', 'trailers']);
    expect(head).toMatchObject({
      method: 'GET', url: '/v1', httpVersion: '2.0', teTrailers: true,
      rawHeaders: ['host', SNI, 'accept', '*/*', 'cookie', 'a=1; b=2'],
    });
  });
});
