/**
 * What the proxy accepts from a workload and what it sends upstream,
 * without sockets: checkRequest(), the upstream header set, and the
 * credential header (including random credential values, which must either
 * be withheld with a CredentialError or make a header Node can send).
 */
import { describe, expect, it } from 'vitest';
import http, { IncomingMessage } from 'node:http';
import { Socket } from 'node:net';
import { randomBytes } from 'node:crypto';
import { checkPlainRequest, checkRequest } from '../../controller/proxy/request-checks.js';
import { bodyEndsConnection, closingHeaders, originForm, upstreamRequestHeaders } from '../../controller/http/headers.js';
import { credentialHeader, prepareUpstreamRequest } from '../../controller/inject/inject.js';
import { Secret } from '../../controller/credentials/secret.js';
import { CredentialError } from '../../controller/errors.js';
import type { Credential } from '../../controller/credentials/credential.js';
import { REFUSAL_CODES } from '../../controller/refusals.js';
import { auditPath } from '../../controller/audit/audit-log.js';

const SNI = 'api.example.com';

function req(method: string, url: string, raw: string[], httpVersion = '1.1'): IncomingMessage {
  const m = new IncomingMessage(new Socket());
  m.method = method;
  m.url = url;
  m.httpVersion = httpVersion;
  m.rawHeaders = raw;
  for (let i = 0; i < raw.length; i += 2) {
    const k = (raw[i] as string).toLowerCase();
    const v = raw[i + 1] as string;
    const cur = m.headers[k];
    m.headers[k] = cur === undefined ? v : `${String(cur)}, ${v}`;
  }
  return m;
}

const credential = (value: string): Credential => ({ name: 'tok', secret: new Secret(value), fields: new Map() });

describe('checkPlainRequest (a restricted workload\'s plaintext request, judged by its Host)', () => {
  const plain = (url: string, host: string | string[], extra: string[] = [], method = 'GET') =>
    checkPlainRequest(req(method, url, [...(Array.isArray(host) ? host.flatMap((h) => ['Host', h]) : ['Host', host]), ...extra]), 8080);
  it('gives the name (lower-case, trailing dot dropped) and the authority to send', () => {
    expect(plain('/', 'Plain.Example.COM.')).toEqual({ name: 'plain.example.com', authority: 'plain.example.com' });
    expect(plain('/', 'plain.example.com:8080')).toEqual({ name: 'plain.example.com', authority: 'plain.example.com:8080' });
    expect(plain('http://plain.example.com:8080/x', 'plain.example.com')).toEqual({ name: 'plain.example.com', authority: 'plain.example.com' });
  });
  it('an IP literal or a name no rule could hold is no name', () => {
    for (const h of ['10.0.0.1', '[::1]', '10.0.0.1:8080', 'a..b', 'x_y z']) {
      const r = plain('/', h);
      expect('code' in r ? r.code : r.name).toBe('code' in r ? 'ambiguous-host' : undefined);
    }
  });
  it.each([
    ['another port in Host', '/', 'plain.example.com:80', [], 'host-mismatch'],
    ['an https target', 'https://plain.example.com/', 'plain.example.com', [], 'bad-target'],
    ['user info in the target', 'http://u:p@plain.example.com/', 'plain.example.com', [], 'bad-target'],
    ['a target naming another host', 'http://evil.example.com/', 'plain.example.com', [], 'host-mismatch'],
    ['a target naming another port', 'http://plain.example.com:81/', 'plain.example.com', [], 'host-mismatch'],
    ['two Host headers', '/', ['plain.example.com', 'evil.example.com'], [], 'ambiguous-host'],
    ['TRACE', '/', 'plain.example.com', [], 'method-not-allowed', 'TRACE'],
    ['Connection naming Host', '/', 'plain.example.com', ['Connection', 'host'], 'connection-names-protected'],
    ['Transfer-Encoding gzip', '/', 'plain.example.com', ['Transfer-Encoding', 'gzip'], 'bad-transfer-encoding'],
  ] as [string, string, string | string[], string[], string, string?][])('refuses %s', (_, url, host, extra, code, method) => {
    const r = plain(url, host, extra, method ?? 'GET');
    expect('code' in r ? r.code : 'accepted').toBe(code);
  });
});

describe('checkRequest', () => {
  const ok = ['Host', SNI];
  it.each([
    ['Connection: content-length', ['Connection', 'content-length'], 'connection-names-protected'],
    ['Connection: Host', ['Connection', 'Host'], 'connection-names-protected'],
    ['Connection: keep-alive, authorization', ['Connection', 'keep-alive, authorization'], 'connection-names-protected'],
    ['Connection: x-amz-date', ['Connection', 'x-amz-date'], 'connection-names-protected'],
    ['Transfer_Encoding', ['Transfer_Encoding', 'chunked'], 'bad-header-name'],
    ['TE gzip, chunked', ['Transfer-Encoding', 'gzip, chunked'], 'bad-transfer-encoding'],
    ['TE chunked twice', ['Transfer-Encoding', 'chunked', 'Transfer-Encoding', 'chunked'], 'bad-transfer-encoding'],
    ['method override TRACE', ['X-HTTP-Method-Override', 'trace'], 'method-not-allowed'],
  ])('refuses %s', (_, extra, code) => {
    expect(checkRequest(req('POST', '/', [...ok, ...extra]), SNI, 443)?.code).toBe(code);
  });

  it('refuses a Connection header naming the injected header, and lets other Connection tokens through', () => {
    expect(checkRequest(req('GET', '/', [...ok, 'Connection', 'X-Api-Key']), SNI, 443, 'x-api-key')?.code).toBe('connection-names-protected');
    expect(checkRequest(req('GET', '/', [...ok, 'Connection', 'keep-alive, X-Debug']), SNI, 443, 'x-api-key')).toBeNull();
  });

  it('refuses Transfer-Encoding on HTTP/1.0, TRACE, TRACK and CONNECT', () => {
    expect(checkRequest(req('POST', '/', [...ok, 'Transfer-Encoding', 'chunked'], '1.0'), SNI, 443)?.code).toBe('bad-transfer-encoding');
    for (const m of ['TRACE', 'TRACK', 'CONNECT']) expect(checkRequest(req(m, '/', ok), SNI, 443)?.code).toBe('method-not-allowed');
  });

  it('every code it returns is in the shared list', () => {
    const codes = new Set<string>(REFUSAL_CODES);
    for (const raw of [['Host', 'x'], ['Connection', 'host'], ['A_B', '1'], [], ['Host', SNI, 'Host', SNI]]) {
      const r = checkRequest(req('GET', '/', raw), SNI, 443);
      if (r) expect(codes.has(r.code)).toBe(true);
    }
  });
});

describe('the upstream request', () => {
  it('carries the proxy\'s Host and framing, never the workload\'s, and no routing hints', async () => {
    const r = req('POST', '/x', ['host', 'API.example.com', 'Content-Length', '3', 'Forwarded', 'host=evil', 'X-Forwarded-Host', 'evil',
      'X-Original-URL', '/admin', 'Authorization', 'Bearer mine', 'X-Keep', '1', 'Connection', 'X-Drop', 'X-Drop', 'gone']);
    const up = await prepareUpstreamRequest(r, { kind: 'bearer', credential: 'tok' }, credential('s3cret'), { host: SNI, port: 8443, sigv4BodyLimit: 0 });
    expect(up.headers).toEqual(['Host', `${SNI}:8443`, 'X-Keep', '1', 'Authorization', 'Bearer s3cret', 'Content-Length', '3']);
    const chunked = req('POST', '/x', ['Host', SNI, 'Transfer-Encoding', 'chunked']);
    const up2 = await prepareUpstreamRequest(chunked, { kind: 'header', credential: 'tok', name: 'X-Key', format: '{secret}' }, credential('k'), { host: SNI, port: 443, sigv4BodyLimit: 0 });
    expect(up2.headers).toEqual(['Host', SNI, 'X-Key', 'k', 'Transfer-Encoding', 'chunked']);
  });

  it('routing hints of every kind are dropped, X-HTTP-Host-Override and X-Original-URI among them', () => {
    const hints = ['Forwarded', 'X-Forwarded-Prefix', 'X-Original-URL', 'X-Original-URI', 'X-Rewrite-URL', 'X-Original-Host', 'X-Host',
      'X-HTTP-Host-Override', 'X-Envoy-Original-Path', 'X-Real-IP', 'X-ProxyUser-Ip'];
    expect(upstreamRequestHeaders([...hints.flatMap((h) => [h, 'evil']), 'X-Keep', '1'], new Set())).toEqual(['X-Keep', '1']);
  });

  it('an absolute-form target goes upstream in origin-form, its path and query byte for byte', async () => {
    expect(originForm('/a/../b?q=%2F')).toBe('/a/../b?q=%2F');
    expect(originForm('*')).toBe('*');
    expect(originForm('https://api%2Eexample%2Ecom/x')).toBe('/x');
    expect(originForm('https://api.example.com.:443/x/%2e%2e/y?z=1')).toBe('/x/%2e%2e/y?z=1');
    expect(originForm('HTTPS://user@api.example.com:0443')).toBe('/');
    expect(originForm('https://api.example.com?q=1')).toBe('/?q=1');
    const r = req('GET', `https://${SNI}./v1/models?limit=1`, ['Host', SNI]);
    const up = await prepareUpstreamRequest(r, { kind: 'bearer', credential: 'tok' }, credential('s3cret'), { host: SNI, port: 443, sigv4BodyLimit: 0 });
    expect(up.path).toBe('/v1/models?limit=1');
  });

  it('an absolute-form target with user info is refused (bad-target); audit lines give a target\'s path alone', () => {
    for (const url of [`https://alice:s3cret@${SNI}/v1/models?x=1`, `https://alice@${SNI}/`, `https://:s3cret@${SNI}/`]) {
      expect(checkRequest({ method: 'GET', url, rawHeaders: ['Host', SNI], httpVersion: '1.1' }, SNI, 443)).toMatchObject({ status: 400, code: 'bad-target' });
    }
    expect(auditPath(`https://alice:s3cret@${SNI}/v1/models?x=1`)).toBe('/v1/models');
    expect(auditPath(`HTTPS://alice:s3cret@${SNI}`)).toBe('/');
    expect(auditPath(`https://alice:s3cret@${SNI}?token=1`)).toBe('/');
    expect(auditPath(`https://alice:s3cret@${SNI}#frag`)).toBe('/');
    expect(auditPath('/a/b?token=1')).toBe('/a/b');
    expect(auditPath('/a/b#x')).toBe('/a/b');
    expect(auditPath('*')).toBe('*');
    expect(auditPath(undefined)).toBeUndefined();
  });

  it('a body on GET, HEAD, DELETE or OPTIONS ends the upstream connection after the request; elsewhere it does not', async () => {
    for (const m of ['GET', 'HEAD', 'DELETE', 'OPTIONS']) {
      expect(bodyEndsConnection(m, true), m).toBe(true);
      expect(bodyEndsConnection(m, false), m).toBe(false);
    }
    for (const m of ['POST', 'PUT', 'PATCH']) expect(bodyEndsConnection(m, true), m).toBe(false);
    const bearer = { kind: 'bearer', credential: 'tok' } as const;
    const opts = { host: SNI, port: 443, sigv4BodyLimit: 0 };
    const withLength = await prepareUpstreamRequest(req('GET', '/q', ['Host', SNI, 'Content-Length', '5']), bearer, credential('s'), opts);
    expect(withLength.closeAfter).toBe(true);
    const chunked = await prepareUpstreamRequest(req('DELETE', '/q', ['Host', SNI, 'Transfer-Encoding', 'chunked']), bearer, credential('s'), opts);
    expect(chunked.closeAfter).toBe(true);
    // An Expect: the upstream may answer before the body and leave it unread.
    const expecting = await prepareUpstreamRequest(req('POST', '/q', ['Host', SNI, 'Expect', '100-continue', 'Content-Length', '5']), bearer, credential('s'), opts);
    expect(expecting.closeAfter).toBe(true);
    for (const [m, raw] of [['GET', ['Host', SNI]], ['GET', ['Host', SNI, 'Content-Length', '0']], ['POST', ['Host', SNI, 'Content-Length', '5']]] as const) {
      expect((await prepareUpstreamRequest(req(m, '/q', [...raw]), bearer, credential('s'), opts)).closeAfter, `${m} ${raw.join(' ')}`).toBeUndefined();
    }
    expect(closingHeaders(['Host', SNI], true)).toEqual(['Host', SNI, 'Connection', 'close']);
    const kept = ['Host', SNI];
    expect(closingHeaders(kept, undefined)).toBe(kept);
  });

  it('upstreamRequestHeaders drops hop-by-hop headers and what Connection lists', () => {
    expect(upstreamRequestHeaders(['Keep-Alive', '5', 'TE', 'trailers', 'Upgrade', 'h2c', 'Connection', 'x-a', 'X-A', '1', 'X-B', '2'], new Set()))
      .toEqual(['X-B', '2']);
  });
});

describe('credential values', () => {
  it('a value with CR, LF, NUL or other controls is withheld, naming the credential and never the value', () => {
    for (const value of ['a\r\nInjected: 1', 'a\nb', 'a\0b', 'a\x7fb', 'trail\t', 'é€']) {
      let err: unknown;
      try {
        credentialHeader({ kind: 'bearer', credential: 'tok' }, credential(value));
      } catch (e) {
        err = e;
      }
      expect(err, JSON.stringify(value)).toBeInstanceOf(CredentialError);
      expect((err as Error).message).toContain('"tok"');
      expect((err as Error).message).not.toContain(value.trim());
    }
  });

  it('fuzz: any value either is withheld or makes a header Node sends as given', () => {
    for (let i = 0; i < 3000; i++) {
      const bytes = randomBytes(1 + (i % 40));
      const value = i % 3 === 0 ? bytes.toString('latin1') : i % 3 === 1 ? bytes.toString('utf8') : bytes.toString('base64');
      for (const inject of [{ kind: 'bearer' as const, credential: 'tok' }, { kind: 'header' as const, credential: 'tok', name: 'X-Key', format: 'k={secret}' },
        { kind: 'basic' as const, credential: 'tok', username: 'svc' }]) {
        let header;
        try {
          header = credentialHeader(inject, credential(value));
        } catch (err) {
          expect(err).toBeInstanceOf(CredentialError);
          continue;
        }
        expect(() => http.validateHeaderValue(header.name, header.value.reveal())).not.toThrow();
        expect(() => http.validateHeaderName(header.name)).not.toThrow();
      }
    }
  });
});
