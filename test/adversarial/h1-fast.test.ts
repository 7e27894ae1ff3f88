/**
 * The HTTP/1.1 fast path (controller/proxy/h1-fast.ts, h1-wire.ts) under
 * attack, with real parts: workloads in a test cgroup whose connections the
 * kernel redirects, TLS both ways, and two upstreams. upstream-server.mjs
 * (api, HOST:443) is Node's HTTP server, strict: a request smuggled past
 * the proxy shows up there as a record of its own. raw-upstream.mjs (raw,
 * OTHER:8443) writes scripted bytes, so the proxy's framing of what an
 * upstream sends can be attacked too, and it numbers its connections, so a
 * test sees which upstream connection a request came on.
 *
 * A workload here is a process that writes exactly the bytes given
 * (TlsSession): requests pipelined in one write, bodies cut into many.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createHash, randomBytes } from 'node:crypto';
import { chmodSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { E2eFixture, HOST, OTHER, sha256 } from '../support/e2e-fixture.js';
import { kernelSkipReason } from '../support/requirements.js';
import { runInCgroup } from '../support/cgroup.js';
import { TlsSession, type SessionResponse } from '../support/tls-session.js';
import { startUpstream, type Upstream, type UpstreamRecord } from '../support/upstream.js';
import { repoRoot } from '../support/paths.js';
import type { RunningAgent } from '../support/agent.js';
import { eventually, waitFor } from '../support/wait.js';

const skip = kernelSkipReason();
const RAW_PORT = 8443;
const RAW_UPSTREAM = path.join(repoRoot, 'test/support/raw-upstream.mjs');
const RAW_TLS = path.join(repoRoot, 'test/support/clients/raw-tls.mjs');
/** A name the upstream's certificate does not carry. */
const MISNAMED = 'misnamed.wirekey.test';

/** A raw-upstream.mjs record: a request (`conn`: its connection's number), or an event line. */
type RawRecord = UpstreamRecord & { conn: number; unreadable?: boolean; event?: 'partial' | 'closed' };

describe.skipIf(skip)(`adversarial: the HTTP/1.1 fast path${skip ? ` (skipped: ${skip})` : ''}`, () => {
  const f = new E2eFixture();
  const keyedToken = `wk-canary-keyed-${randomBytes(12).toString('hex')}`;
  const keyedFile = () => path.join(f.dir, 'keyed-token');
  let cg: { alice: string; keyed: string; rel: string };
  let raw: Upstream;
  let agent: RunningAgent;

  const policy = (opts: { relBound?: boolean } = {}) => `apiVersion: wirekey.dev/v1alpha1
kind: CredentialSource
metadata: {name: keyed-token}
spec: {file: {path: ${keyedFile()}}}
---
apiVersion: wirekey.dev/v1alpha1
kind: Service
metadata: {name: raw}
spec: {hosts: [${OTHER}], port: ${RAW_PORT}, tls: true}
---
${['alice', 'keyed', 'rel'].map((w) => `apiVersion: wirekey.dev/v1alpha1
kind: Workload
metadata: {name: ${w}}
spec: {selector: {cgroup: ${f.cgBase}/${w}}}
---
`).join('')}apiVersion: wirekey.dev/v1alpha1
kind: Binding
metadata: {name: alice-api}
spec: {workload: alice, service: api, inject: {bearer: {credential: api-token}}}
---
apiVersion: wirekey.dev/v1alpha1
kind: Binding
metadata: {name: alice-raw}
spec: {workload: alice, service: raw, inject: {bearer: {credential: api-token}}}
---
apiVersion: wirekey.dev/v1alpha1
kind: Service
metadata: {name: misnamed}
spec: {hosts: [${MISNAMED}], port: ${RAW_PORT}, tls: true}
---
apiVersion: wirekey.dev/v1alpha1
kind: Binding
metadata: {name: alice-misnamed}
spec: {workload: alice, service: misnamed, inject: {bearer: {credential: api-token}}}
---
apiVersion: wirekey.dev/v1alpha1
kind: Binding
metadata: {name: keyed-api}
spec: {workload: keyed, service: api, inject: {header: {credential: keyed-token, name: X-Api-Key}}}
${opts.relBound === false ? '' : `---
apiVersion: wirekey.dev/v1alpha1
kind: Binding
metadata: {name: rel-api}
spec: {workload: rel, service: api, inject: {bearer: {credential: api-token}}}
`}`;

  const sessions: TlsSession[] = [];
  const open = (cgroup: string) => {
    const s = new TlsSession(cgroup, HOST, f.host.ipv4, 443, f.bothCas);
    sessions.push(s);
    return s;
  };
  const openRaw = () => {
    const s = new TlsSession(cg.alice, OTHER, f.host.ipv4, RAW_PORT, f.bothCas);
    sessions.push(s);
    return s;
  };
  const request = (method: string, target: string, headers: string[] = [], body = '', host = HOST) =>
    `${method} ${target} HTTP/1.1\r\nHost: ${host}\r\n${headers.map((h) => `${h}\r\n`).join('')}` +
    `${body ? `Content-Length: ${Buffer.byteLength(body, 'latin1')}\r\n` : ''}\r\n${body}`;
  const rawRequest = (method: string, target: string, headers: string[] = [], body = '') => request(method, target, headers, body, `${OTHER}:${RAW_PORT}`);
  /** A complete request, as a body or a pipelined tail: what a smuggling attempt wants the upstream to take as a request of its own. */
  const planted = request('GET', '/planted', ['Authorization: Bearer planted']);
  const chunked = (body: string) => `${body.length.toString(16)}\r\n${body}\r\n0\r\n\r\n`;
  const header = (r: SessionResponse, name: string) => r.headers?.find(([n]) => n.toLowerCase() === name)?.[1];
  const leaks = (text: string) => [f.token, keyedToken].filter((t) => text.includes(t));
  /** The audit log, once the agent has written every line recorded so far (proxy worker threads send theirs). */
  const audit = async () => {
    await f.settled();
    return readFileSync(f.auditPath, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>);
  };
  const rawRecords = async (before: number) => {
    await raw.sync();
    return (raw.records.slice(before) as RawRecord[]);
  };
  const rawRequests = async (before: number) => (await rawRecords(before)).filter((r) => r.url !== undefined && r.event === undefined);
  /**
   * A "CL.0" smuggling attempt: a GET whose body is the head of a request
   * of the workload's making, sent to an upstream that reads no body on a
   * GET (raw-upstream.mjs, /cl0/...). Had the upstream connection been
   * reused, that request (an /echo whose Content-Length covers the next
   * request's head, credential line included) would swallow the workload's
   * next request and echo it back.
   */
  const cl0 = async (tag: string) => {
    const before = raw.records.length;
    const s = openRaw();
    const nextTarget = `/cl0/${tag}/next`;
    // The next request as the fast path would write it upstream: Host, then the credential.
    const seen = `GET ${nextTarget} HTTP/1.1\r\nHost: ${OTHER}:${RAW_PORT}\r\nAuthorization: Bearer ${f.token}\r\n\r\n`;
    const smuggled = `POST /echo HTTP/1.1\r\nHost: ${OTHER}:${RAW_PORT}\r\nContent-Length: ${seen.length}\r\n\r\n`;
    s.send(rawRequest('GET', `/cl0/${tag}/first`, [], smuggled));
    const first = await s.read();
    expect(first.status).toBe(200);
    s.send(rawRequest('GET', nextTarget));
    const next = await s.read();
    expect(leaks(`${next.body ?? ''}${next.error ?? ''}`)).toEqual([]);
    expect(next.status).toBe(200);
    expect(JSON.parse(next.body as string)).toMatchObject({ path: nextTarget });
    const recs = await rawRequests(before);
    expect(recs.map((r) => r.url)).toEqual([`/cl0/${tag}/first`, nextTarget]);
    // Sent with Connection: close, and the next request went on another connection.
    expect(recs[0]?.headerNames).toContain('connection');
    expect(recs[1]?.conn).not.toBe(recs[0]?.conn);
    s.close();
  };
  /** A workload asks for `target` (a large response) and goes away once the upstream has the request; the upstream's record of it. */
  const abandonWhileStreaming = async (target: string): Promise<UpstreamRecord> => {
    const before = f.upstream.records.length;
    const s = open(cg.alice);
    s.send(request('GET', target));
    // The upstream has the request (its record comes before its response): the exchange is under way.
    await waitFor(() => f.upstream.records.slice(before).some((r) => r.url === target), 'the large response under way');
    s.close();
    return f.upstream.records.slice(before).find((r) => r.url === target) as UpstreamRecord;
  };

  /** Writes `raw` on a new connection and closes the workload's side at once; the status lines it got before the proxy closed, or 'closed'. */
  const halfClosed = async (cgroup: string, raw: string, host = HOST, port = 443): Promise<string> => {
    const r = await runInCgroup(cgroup, process.execPath, [RAW_TLS, host, f.host.ipv4, String(port), f.bothCas, 'half'], { input: JSON.stringify([raw]) });
    expect(r.stderr).toBe('');
    return r.stdout.trim();
  };
  /**
   * A GET and a POST under `prefix`, then the workload's close: both are
   * answered, each reaches the upstream once with the credential, and each
   * is an inject line.
   */
  const bothAnsweredAfterClose = async (prefix: string) => {
    const before = f.upstream.records.length;
    const from = (await audit()).length;
    const [first, second] = [`${prefix}-first`, `${prefix}-second`];
    expect(await halfClosed(cg.alice, request('GET', first) + request('POST', second, [], 'body'))).toBe('HTTP/1.1 200 OK | HTTP/1.1 200 OK');
    const recs = (await f.recordsSince(before)).filter((r) => r.url?.startsWith(prefix));
    expect(recs.map((r) => [r.url, r.authorization, r.bodyLength])).toEqual([[first, [f.expectedAuth], 0], [second, [f.expectedAuth], 4]]);
    const lines = (await audit()).slice(from).filter((l) => typeof l.path === 'string' && l.path.startsWith(prefix));
    expect(lines.map((l) => [l.path, l.decision, l.status, l.reason])).toEqual([[first, 'inject', 200, undefined], [second, 'inject', 200, undefined]]);
  };

  beforeAll(async () => {
    await f.setUp();
    raw = await startUpstream(f.host, f.pki.serverCert, f.pki.serverKey, RAW_PORT, RAW_UPSTREAM);
    f.onClose(() => raw.stop());
    cg = { alice: f.cgroup('alice'), keyed: f.cgroup('keyed'), rel: f.cgroup('rel') };
    writeFileSync(keyedFile(), `${keyedToken}\n`, { mode: 0o600 });
    f.writePolicy(policy());
    agent = await f.startAgent();
  });

  afterAll(async () => {
    for (const s of sessions) s.close();
    await f.close();
  });

  describe('desync: a fast-path request pipelined in one write with one Node\'s server must take', () => {
    /** [what, bytes of the request Node's server takes, its method, the status and codes expected, whether the connection carries on]. */
    const cases: [string, string, string, number, string[], boolean][] = [
      ['chunked body', request('POST', '/echo', ['Transfer-Encoding: chunked']) + chunked(planted), 'POST', 200, [], true],
      ['Expect: 100-continue', request('POST', '/echo', ['Expect: 100-continue'], planted), 'POST', 200, [], true],
      ['more than 100 headers', request('GET', '/many', Array.from({ length: 101 }, (_, i) => `X-H${i}: ${i}`)), 'GET', 200, [], true],
      ['obs-fold', request('POST', '/fold', ['X-A: b', ' c'], planted), 'POST', 400, ['malformed-request'], false],
      ['bare LF in a header line', request('POST', '/lf', ['X-A: b\nX-B: c'], planted), 'POST', 400, ['malformed-request'], false],
      ['bare LF line ends', request('POST', '/lf2', [], planted).replace(/\r\n/g, '\n'), 'POST', 400, ['malformed-request'], false],
      ['duplicate Content-Length', request('POST', '/dup', [`Content-Length: ${planted.length}`], planted), 'POST', 400, ['malformed-request', 'ambiguous-length'], false],
      ['Content-Length and Transfer-Encoding', request('POST', '/clte', ['Transfer-Encoding: chunked', `Content-Length: ${chunked(planted).length}`]) + chunked(planted),
        'POST', 400, ['malformed-request', 'ambiguous-length'], false],
      ['Transfer-Encoding other than chunked', request('POST', '/te', ['Transfer-Encoding: gzip, chunked']) + chunked(planted), 'POST', 400, ['bad-transfer-encoding'], false],
      ['space before the colon', request('POST', '/space', [`Content-Length : ${planted.length}`], planted), 'POST', 400, ['malformed-request'], false],
      ['an unknown method', request('TRACK', '/track', [], planted), 'TRACK', 400, ['malformed-request'], false],
      ['a head over 16 KiB', request('POST', '/big', [`X-Big: ${'a'.repeat(17 * 1024)}`], planted), 'POST', 400, ['malformed-request'], false],
      ['Connection naming Authorization', request('POST', '/listed', ['Connection: keep-alive, authorization', 'Authorization: Bearer mine'], planted), 'POST', 400, ['connection-names-protected'], false],
      ['"_" in a header name', request('POST', '/underscore', ['Transfer_Encoding: chunked'], planted), 'POST', 400, ['bad-header-name'], false],
    ];
    it.each(cases)('%s: responses in order, the refused one refused, nothing of the workload\'s framing upstream on its own', async (what, middle, method, status, codes, carriesOn) => {
      const tag = randomBytes(4).toString('hex');
      const middlePath = middle.split(' ')[1] as string;
      const before = f.upstream.records.length;
      const s = open(cg.alice);
      s.send(request('GET', `/d/${tag}/first`) + middle + request('GET', `/d/${tag}/last`));
      const first = await s.read();
      expect(first.status, what).toBe(200);
      expect(JSON.parse(first.body as string)).toMatchObject({ path: `/d/${tag}/first` });
      const second = await s.read(method);
      expect(second.status, `${what}: ${second.error ?? ''}`).toBe(status);
      if (codes.length) expect(codes).toContain(header(second, 'x-wirekey-error'));
      else expect(header(second, 'x-wirekey-error')).toBeUndefined();
      const got = [first, second];
      if (carriesOn) {
        const last = await s.read();
        expect(last.status).toBe(200);
        expect(JSON.parse(last.body as string)).toMatchObject({ path: `/d/${tag}/last` });
        got.push(last);
        if (method === 'POST') expect(second.body).toBe(planted);
      } else {
        const end = await s.eof();
        expect(end.closed).toBe(true);
        expect(end.rest).toBe('');
      }
      // This case's requests only (the tag), and what it planted.
      const recs = (await f.recordsSince(before)).filter((r) => r.url.startsWith(`/d/${tag}/`) || r.url === middlePath || r.url === '/planted');
      const urls = recs.map((r) => r.url);
      expect(urls[0]).toBe(`/d/${tag}/first`);
      // Node's server forwards pipelined requests side by side: the upstream may finish them in another order.
      if (carriesOn) expect([...urls].sort()).toEqual([`/d/${tag}/first`, `/d/${tag}/last`, middlePath].sort());
      // A request Node's server refused never goes upstream, nor one it parsed after it (the connection closes
      // with the refusal, and that request would never be answered).
      else expect(urls).toEqual([`/d/${tag}/first`]);
      expect(urls).not.toContain('/planted');
      // The credential went with each request, once, and only to the bound upstream; the workload's own never did.
      for (const r of recs) expect(r.authorization).toEqual([f.expectedAuth]);
      expect(leaks(JSON.stringify(got))).toEqual([]);
      s.close();
    });
  });

  it('a request the fast path refuses closes the connection: what was pipelined after it, and its body, never go upstream', async () => {
    const cases: [string, string, number, string][] = [
      [request('TRACE', '/trace', [], planted), 'TRACE', 405, 'method-not-allowed'],
      [request('CONNECT', '/connect', [], planted), 'CONNECT', 405, 'method-not-allowed'],
      [request('POST', '/override', ['X-HTTP-Method-Override: TRACE'], planted), 'POST', 405, 'method-not-allowed'],
      [request('POST', '/elsewhere', [], planted).replace(`Host: ${HOST}`, `Host: ${OTHER}`), 'POST', 421, 'host-mismatch'],
      [request('POST', '/port', [], planted).replace(`Host: ${HOST}`, `Host: ${HOST}:8443`), 'POST', 421, 'host-mismatch'],
    ];
    for (const [bytes, method, status, code] of cases) {
      const before = f.upstream.records.length;
      const s = open(cg.alice);
      s.send(request('GET', '/refusal/first') + bytes + request('GET', '/refusal/last'));
      expect((await s.read()).status).toBe(200);
      const r = await s.read(method);
      expect(r.status, code).toBe(status);
      expect(header(r, 'x-wirekey-error')).toBe(code);
      expect(await s.eof()).toEqual({ closed: true, rest: '' });
      // Only this case's (a request Node's server took in an earlier test may land late; see above).
      const urls = (await f.recordsSince(before)).map((x) => x.url).filter((u) => u.startsWith('/refusal/') || u === bytes.split(' ')[1] || u === '/planted');
      expect(urls, code).toEqual(['/refusal/first']);
      s.close();
    }
  });

  it('fifty requests in one write, with bodies: fifty responses in order, fifty requests upstream, on one upstream connection', async () => {
    const before = f.upstream.records.length;
    const s = open(cg.alice);
    let bytes = '';
    for (let i = 0; i < 50; i++) bytes += i % 2 ? request('GET', `/many/${i}`) : request('POST', '/echo', [], `${i}:${planted}`);
    s.send(bytes);
    for (let i = 0; i < 50; i++) {
      const r = await s.read(i % 2 ? 'GET' : 'POST');
      expect(r.status).toBe(200);
      if (i % 2) expect(JSON.parse(r.body as string)).toMatchObject({ path: `/many/${i}` });
      else expect(r.body).toBe(`${i}:${planted}`);
    }
    const recs = await f.recordsSince(before);
    expect(recs.map((x) => x.url)).toEqual(Array.from({ length: 50 }, (_, i) => (i % 2 ? `/many/${i}` : '/echo')));
    expect(new Set(recs.map((x) => x.remotePort)).size).toBe(1);
  });

  describe('request bodies by Content-Length', () => {
    it('a body cut into many writes arrives whole, and the connection carries on', async () => {
      const before = f.upstream.records.length;
      const body = randomBytes(24 * 1024).toString('base64');
      const s = open(cg.alice);
      const bytes = request('POST', '/echo', [], body);
      // Cut across the head, its end and the body: 41 writes.
      for (let i = 0; i < bytes.length; i += Math.ceil(bytes.length / 41)) s.send(bytes.slice(i, i + Math.ceil(bytes.length / 41)));
      const r = await s.read('POST');
      expect(r.status).toBe(200);
      expect(r.body).toBe(body);
      s.send(request('GET', '/after-split'));
      expect((await s.read()).status).toBe(200);
      const recs = await f.recordsSince(before);
      expect(recs.map((x) => [x.url, x.bodyLength])).toEqual([['/echo', body.length], ['/after-split', 0]]);
      expect(recs[0]?.bodySha256).toBe(sha256(body));
    });

    it('a body followed in the same write by the next request: the next one is a request, the body only a body; also cut at odd places', async () => {
      for (const step of [0, 1, 7, 13]) {
        const before = f.upstream.records.length;
        const s = open(cg.alice);
        const bytes = request('POST', '/echo', [], planted) + request('POST', '/echo', [], 'x') + request('GET', `/next/${step}`);
        if (step === 0) s.send(bytes);
        else for (let i = 0; i < bytes.length; i += step) s.send(bytes.slice(i, i + step));
        const a = await s.read('POST');
        expect(a.status).toBe(200);
        expect(a.body).toBe(planted);
        const b = await s.read('POST');
        expect(b.body).toBe('x');
        const c = await s.read();
        expect(JSON.parse(c.body as string)).toMatchObject({ path: `/next/${step}` });
        const recs = await f.recordsSince(before);
        expect(recs.map((x) => x.url), `step ${step}`).toEqual(['/echo', '/echo', `/next/${step}`]);
        for (const r of recs) expect(r.authorization).toEqual([f.expectedAuth]);
        s.close();
      }
    });

    it('a body larger than what is read ahead, followed by the next request, both ways large: backpressure loses and adds nothing', async () => {
      const before = f.upstream.records.length;
      const body = randomBytes(600 * 1024).toString('base64');
      const s = open(cg.alice);
      s.send(request('POST', '/echo', [], body) + request('GET', '/bytes/3000000') + request('GET', '/after-large'));
      const echoed = await s.read('POST');
      expect(echoed.body?.length).toBe(body.length);
      expect(echoed.body === body).toBe(true);
      const bytes = await s.read();
      expect(bytes.status).toBe(200);
      expect(createHash('sha256').update(Buffer.from(bytes.body as string, 'latin1')).digest('hex')).toBe(header(bytes, 'x-body-sha256'));
      expect((await s.read()).status).toBe(200);
      expect((await f.recordsSince(before)).map((x) => [x.url, x.bodyLength])).toEqual([['/echo', body.length], ['/bytes/3000000', 0], ['/after-large', 0]]);
    });

    it('a workload that goes away while its response streams: that upstream connection is not given the next request', async () => {
      const before = f.upstream.records.length;
      const streaming = await abandonWhileStreaming('/bytes/50000000');
      const next = open(cg.alice);
      next.send(request('GET', '/after-abort'));
      expect((await next.read()).status).toBe(200);
      const after = (await f.recordsSince(before)).find((r) => r.url === '/after-abort') as UpstreamRecord;
      expect(after.remotePort).not.toBe(streaming.remotePort);
      // The credential was used; the workload left before the response was whole (its head may not have come yet).
      const line = await eventually(async () => (await audit()).find((e) => e.path === '/bytes/50000000'), 10_000, 'the inject line of the abandoned response');
      expect(line).toMatchObject({ decision: 'inject', reason: 'workload-closed', workload: 'alice', credential: 'api-token' });
    });

    it('a workload that closes mid-body: that upstream connection is closed, never given the next request', async () => {
      const before = raw.records.length;
      const s = openRaw();
      s.send(rawRequest('GET', '/mid/first'));
      expect((await s.read()).status).toBe(200);
      s.send(rawRequest('POST', '/mid/partial', ['Content-Length: 1000']) + 'a'.repeat(10));
      await waitFor(() => (raw.records.slice(before) as RawRecord[]).some((r) => r.event === 'partial' && r.url === '/mid/partial'), 'the partial request upstream');
      const partial = (raw.records.slice(before) as RawRecord[]).find((r) => r.event === 'partial') as RawRecord;
      s.close();
      await waitFor(() => (raw.records.slice(before) as RawRecord[]).some((r) => r.event === 'closed' && r.conn === partial.conn), 'the upstream connection closed');
      const next = openRaw();
      next.send(rawRequest('POST', '/mid/next', [], 'whole'));
      const r = await next.read('POST');
      expect(r.status).toBe(200);
      const recs = await rawRequests(before);
      expect(recs.map((x) => x.url)).toEqual(['/mid/first', '/mid/next']);
      expect(recs[1]?.conn).not.toBe(partial.conn);
      expect(recs[1]?.bodyLength).toBe(5);
      expect(recs.some((x) => x.unreadable)).toBe(false);
    });

    it('a workload that closes its side (TLS close_notify, then FIN) right after its requests gets every response, then the close', async () => {
      await bothAnsweredAfterClose('/half/fast');
    });

    it('a workload that closes its side before its request body is whole: no response to it, and its upstream connection is closed', async () => {
      const before = raw.records.length;
      // The first request leaves a connected upstream connection for the second to go out on at once.
      const out = await halfClosed(cg.alice, rawRequest('GET', '/half/whole') + rawRequest('POST', '/half/cut', ['Content-Length: 1000']) + 'a'.repeat(10), OTHER, RAW_PORT);
      expect(out).toBe('HTTP/1.1 200 OK');
      await waitFor(() => (raw.records.slice(before) as RawRecord[]).some((r) => r.event === 'partial' && r.url === '/half/cut'), 'the partial request upstream');
      const partial = (raw.records.slice(before) as RawRecord[]).find((r) => r.event === 'partial') as RawRecord;
      await waitFor(() => (raw.records.slice(before) as RawRecord[]).some((r) => r.event === 'closed' && r.conn === partial.conn), 'its upstream connection closed');
      expect((await rawRequests(before)).map((r) => r.url)).toEqual(['/half/whole']);
      const line = await eventually(async () => (await audit()).find((e) => e.path === '/half/cut'), 10_000, 'the inject line of the cut request');
      expect(line).toMatchObject({ decision: 'inject', reason: 'workload-closed', workload: 'alice', credential: 'api-token' });
    });
  });

  describe('an upstream that breaks HTTP/1.1 framing', () => {
    /** Refused before any head went out: 502 upstream-failed, the workload's connection closed. */
    const refused = ['te-cl', 'te-gzip', 'switch', 'bare-lf', 'bare-lf-status', 'obs-fold', 'big-head', 'double-length', 'list-length', 'signed-length'];
    it.each(refused)('%s: 502 upstream-failed, then a new connection works on a new upstream connection', async (name) => {
      const before = raw.records.length;
      const s = openRaw();
      s.send(rawRequest('GET', `/raw/${name}`));
      const r = await s.read();
      expect(r.status, r.error).toBe(502);
      expect(header(r, 'x-wirekey-error')).toBe('upstream-failed');
      expect(r.body).not.toContain('evil');
      expect((await s.eof())).toEqual({ closed: true, rest: '' });
      const next = openRaw();
      next.send(rawRequest('GET', `/after/${name}`));
      const n = await next.read();
      expect(n.status).toBe(200);
      const recs = await rawRequests(before);
      expect(recs.map((x) => x.url)).toEqual([`/raw/${name}`, `/after/${name}`]);
      expect(recs[1]?.conn).not.toBe(recs[0]?.conn);
      expect(JSON.parse(n.body as string)).toEqual({ path: `/after/${name}`, conn: recs[1]?.conn });
      expect((await raw.sync(), (raw.records.slice(before) as RawRecord[]).some((x) => x.event === 'closed' && x.conn === recs[0]?.conn))).toBe(true);
      // The request had gone out on a verified connection, credential and all: an inject line, with what the workload got.
      expect((await audit()).filter((e) => e.path === `/raw/${name}`)).toEqual([
        expect.objectContaining({ decision: 'inject', status: 502, reason: 'upstream-failed', workload: 'alice', service: 'raw', credential: 'api-token' }),
      ]);
    });

    /** The head went out, then the body broke or was cut: the workload's connection is cut. */
    it.each(['bad-chunk', 'chunk-no-crlf', 'cut'])('%s: the response is cut, nothing after the break reaches the workload, the next connection works', async (name) => {
      const before = raw.records.length;
      const s = openRaw();
      s.send(rawRequest('GET', `/raw/${name}`));
      const r = await s.read();
      expect(r.status, JSON.stringify(r)).toBeUndefined();
      expect(r.error).toBeDefined();
      expect(JSON.stringify(r)).not.toContain('evil');
      const next = openRaw();
      next.send(rawRequest('GET', `/after/${name}`));
      expect((await next.read()).status).toBe(200);
      const recs = await rawRequests(before);
      expect(recs.map((x) => x.url)).toEqual([`/raw/${name}`, `/after/${name}`]);
      expect(recs[1]?.conn).not.toBe(recs[0]?.conn);
      // The credential was used: the line says so, and that the response was cut.
      expect((await audit()).filter((e) => e.path === `/raw/${name}`)).toEqual([
        expect.objectContaining({ decision: 'inject', status: 200, reason: 'response-cut', workload: 'alice', service: 'raw', credential: 'api-token' }),
      ]);
    });

    it('a GET with a body ends its upstream connection: an upstream that reads no body on GET cannot take the body for a request that swallows the next', async () => {
      await cl0('fast');
    });

    it('extra bytes after a Content-Length body are not the next response: the next request gets its own, on a new upstream connection', async () => {
      const before = raw.records.length;
      const s = openRaw();
      s.send(rawRequest('GET', '/raw/extra'));
      const r = await s.read();
      expect(r).toMatchObject({ status: 200, body: 'ok' });
      s.send(rawRequest('GET', '/after/extra'));
      const n = await s.read();
      expect(n.status).toBe(200);
      expect(n.body).not.toContain('evil');
      const recs = await rawRequests(before);
      expect(recs.map((x) => x.url)).toEqual(['/raw/extra', '/after/extra']);
      expect(recs[1]?.conn).not.toBe(recs[0]?.conn);
      expect(JSON.parse(n.body as string)).toEqual({ path: '/after/extra', conn: recs[1]?.conn });
    });

    it.each(['close', 'http10'])('%s: a response delimited by the close reaches the workload whole, and its connection then closes', async (name) => {
      const s = openRaw();
      s.send(rawRequest('GET', `/raw/${name}`) + rawRequest('GET', '/after-close-delimited'));
      const r = await s.read();
      expect(r.status).toBe(200);
      expect(r.body).toBe(name === 'close' ? `${'close-delimited body '.repeat(500)}end` : 'http/1.0 body');
      expect(header(r, 'connection')).toBe('close');
      expect(await s.eof()).toEqual({ closed: true, rest: '' });
    });

    it('interim 100 heads, a chunked body with a trailer in small writes, HEAD with a length, 204: framed right, and the connection and its upstream one carry on', async () => {
      const before = raw.records.length;
      const s = openRaw();
      s.send(rawRequest('GET', '/raw/interim'));
      expect(await s.read()).toMatchObject({ status: 200, body: 'after interim' });
      s.send(rawRequest('GET', '/raw/chunked'));
      const c = await s.read();
      expect(c).toMatchObject({ status: 200, body: 'abcdefg' });
      expect(header(c, 'transfer-encoding')).toBe('chunked');
      s.send(rawRequest('HEAD', '/raw/head'));
      const h = await s.read('HEAD');
      expect(h).toMatchObject({ status: 200, body: '' });
      expect(header(h, 'content-length')).toBe('5');
      s.send(rawRequest('GET', '/raw/no-content'));
      expect(await s.read()).toMatchObject({ status: 204, body: '' });
      s.send(rawRequest('GET', '/last'));
      const last = await s.read();
      expect(last.status).toBe(200);
      const recs = await rawRequests(before);
      expect(recs.map((x) => x.url)).toEqual(['/raw/interim', '/raw/chunked', '/raw/head', '/raw/no-content', '/last']);
      // Each response ended where it should: the one upstream connection served them all.
      expect(new Set(recs.map((x) => x.conn)).size).toBe(1);
    });

    it('a body the upstream sends to HEAD is not the next response: the next request gets its own, on a new upstream connection', async () => {
      const before = raw.records.length;
      const s = openRaw();
      s.send(rawRequest('HEAD', '/raw/head-body'));
      expect(await s.read('HEAD')).toMatchObject({ status: 200, body: '' });
      s.send(rawRequest('GET', '/after/head-body'));
      const n = await s.read();
      expect(n.status).toBe(200);
      const recs = await rawRequests(before);
      expect(recs.map((x) => x.url)).toEqual(['/raw/head-body', '/after/head-body']);
      expect(recs[1]?.conn).not.toBe(recs[0]?.conn);
      expect(JSON.parse(n.body as string)).toEqual({ path: '/after/head-body', conn: recs[1]?.conn });
    });

    it('an upstream that closes after a whole response without saying so: the workload\'s connection carries on, its next request on a new upstream connection', async () => {
      const before = raw.records.length;
      const s = openRaw();
      s.send(rawRequest('GET', '/raw/fin'));
      expect(await s.read()).toMatchObject({ status: 200, body: 'fin' });
      const fin = (await rawRequests(before))[0] as RawRecord;
      await waitFor(() => (raw.records.slice(before) as RawRecord[]).some((r) => r.event === 'closed' && r.conn === fin.conn), 'the upstream connection closed');
      s.send(rawRequest('GET', '/after/fin'));
      const n = await s.read();
      expect(n.status).toBe(200);
      const recs = await rawRequests(before);
      expect(recs.map((x) => x.url)).toEqual(['/raw/fin', '/after/fin']);
      expect(recs[1]?.conn).not.toBe(fin.conn);
    });

    // The upstream's end may arrive just after the response that the pipelined request waited for: that
    // request may then be written to the connection the upstream is closing (which reads it and never
    // answers), and, as a GET whose connection failed before any answer, it goes once more on a new one.
    it('the same, with the next request pipelined behind the first: answered on a new upstream connection', async () => {
      const before = raw.records.length;
      const s = openRaw();
      s.send(rawRequest('GET', '/raw/fin') + rawRequest('GET', '/after/fin-pipelined'));
      expect(await s.read()).toMatchObject({ status: 200, body: 'fin' });
      const n = await s.read();
      expect(n.status, `${header(n, 'x-wirekey-error') ?? ''} ${n.body ?? n.error ?? ''}`).toBe(200);
      const recs = await rawRequests(before);
      const fin = recs[0] as RawRecord;
      expect(fin.url).toBe('/raw/fin');
      expect(recs.slice(1).every((r) => r.url === '/after/fin-pipelined')).toBe(true);
      // Whoever answered it was a connection other than the one that closed.
      expect(JSON.parse(n.body as string)).toMatchObject({ path: '/after/fin-pipelined' });
      expect(JSON.parse(n.body as string).conn).not.toBe(fin.conn);
    });

    it('an answer before the request body has all gone: forwarded, then both connections close (neither is mid-request again)', async () => {
      const before = raw.records.length;
      const s = openRaw();
      s.send(rawRequest('POST', '/raw/early', ['Content-Length: 100000']) + 'a'.repeat(100));
      expect(await s.read('POST')).toMatchObject({ status: 413, body: 'big!' });
      // What the workload sends after that is not the next request, and the connection closes.
      s.send('a'.repeat(100) + rawRequest('GET', '/after/early-same'));
      expect((await s.eof()).closed).toBe(true);
      const partial = (await rawRecords(before)).find((r) => r.event === 'partial' && r.url === '/raw/early') as RawRecord;
      expect(partial).toBeDefined();
      await waitFor(() => (raw.records.slice(before) as RawRecord[]).some((r) => r.event === 'closed' && r.conn === partial.conn), 'the upstream connection closed');
      const next = openRaw();
      next.send(rawRequest('GET', '/after/early'));
      expect((await next.read()).status).toBe(200);
      const recs = await rawRequests(before);
      expect(recs.map((x) => x.url)).toEqual(['/after/early']);
      expect(recs[0]?.conn).not.toBe(partial.conn);
    });

    it('an upstream whose certificate does not name the service: 502 upstream-failed, no request (and no credential) reaches it', async () => {
      const before = raw.records.length;
      const s = new TlsSession(cg.alice, MISNAMED, f.host.ipv4, RAW_PORT, f.bothCas);
      sessions.push(s);
      s.send(request('GET', '/misnamed', [], '', `${MISNAMED}:${RAW_PORT}`));
      const r = await s.read();
      expect(r.status).toBe(502);
      expect(header(r, 'x-wirekey-error')).toBe('upstream-failed');
      expect(await rawRequests(before)).toEqual([]);
      // Nothing was sent: a deny line.
      expect((await audit()).filter((e) => e.path === '/misnamed')).toEqual([
        expect.objectContaining({ decision: 'deny', status: 502, reason: 'upstream-failed', workload: 'alice', service: 'misnamed' }),
      ]);
    });

    it('hop-by-hop response headers, and those the upstream\'s Connection names, do not reach the workload', async () => {
      const s = openRaw();
      s.send(rawRequest('GET', '/raw/hop'));
      const r = await s.read();
      expect(r).toMatchObject({ status: 200, body: 'ok' });
      const names = (r.headers ?? []).map(([n]) => n.toLowerCase());
      for (const h of ['x-hop', 'keep-alive', 'proxy-connection', 'upgrade']) expect(names).not.toContain(h);
      expect(header(r, 'x-end')).toBe('kept');
    });
  });

  describe('credentials and connection options', () => {
    it('the workload\'s own Authorization and injected header never reach the upstream, in any spelling', async () => {
      const before = f.upstream.records.length;
      const own = ['Authorization: Bearer mine', 'authorization: Basic bWluZQ==', 'AUTHORIZATION: x', 'X-Api-Key: mine', 'x-api-key: mine2'];
      const alice = open(cg.alice);
      alice.send(request('GET', '/own/alice', own) + request('POST', '/own/alice-body', own, 'b'));
      expect((await alice.read()).status).toBe(200);
      expect((await alice.read('POST')).status).toBe(200);
      const keyed = open(cg.keyed);
      keyed.send(request('GET', '/own/keyed', own));
      expect((await keyed.read()).status).toBe(200);
      const recs = await f.recordsSince(before);
      expect(recs.map((r) => r.url)).toEqual(['/own/alice', '/own/alice-body', '/own/keyed']);
      for (const r of recs.slice(0, 2)) expect(r.authorization).toEqual([f.expectedAuth]);
      expect(recs[2]?.apiKey).toEqual([sha256(keyedToken)]);
      expect(recs[2]?.authorization).toEqual([]);
      // Each is audited as an injection, as on Node's server path (the audit log is written after the response).
      const ownLines = async () => (await audit()).filter((e) => e.decision === 'inject' && typeof e.path === 'string' && e.path.startsWith('/own/'));
      const lines = await eventually(async () => ((await ownLines()).length >= 3 ? ownLines() : undefined), 10_000, 'the three inject lines');
      expect(lines.map((e) => [e.workload, e.path, e.status, e.credential])).toEqual([
        ['alice', '/own/alice', 200, 'api-token'], ['alice', '/own/alice-body', 200, 'api-token'], ['keyed', '/own/keyed', 200, 'keyed-token']]);
    });

    it('Connection: close from the workload: the response, then the close; a request pipelined after it never goes upstream', async () => {
      for (const value of ['close', 'keep-alive, close', 'CLOSE']) {
        const before = f.upstream.records.length;
        const s = open(cg.alice);
        s.send(request('GET', '/closing', [`Connection: ${value}`]) + request('GET', '/after-closing'));
        const r = await s.read();
        expect(r.status).toBe(200);
        // The response says so (RFC 9112 9.6), as Node's server path's does.
        expect(header(r, 'connection')).toBe('close');
        expect(await s.eof()).toEqual({ closed: true, rest: '' });
        expect((await f.recordsSince(before)).map((x) => x.url), value).toEqual(['/closing']);
      }
    });
  });

  it('upstream connections are per partition: two workloads with the same credential never share one', async () => {
    const before = f.upstream.records.length;
    const a = open(cg.alice);
    const r = open(cg.rel);
    for (let i = 0; i < 3; i++) {
      a.send(request('GET', `/part/alice/${i}`));
      expect((await a.read()).status).toBe(200);
      r.send(request('GET', `/part/rel/${i}`));
      expect((await r.read()).status).toBe(200);
    }
    const recs = await f.recordsSince(before);
    const ports = (w: string) => new Set(recs.filter((x) => x.url.startsWith(`/part/${w}/`)).map((x) => x.remotePort));
    expect(ports('alice').size).toBe(1);
    expect(ports('rel').size).toBe(1);
    for (const p of ports('alice')) expect(ports('rel').has(p)).toBe(false);
    for (const x of recs) expect(x.authorization).toEqual([f.expectedAuth]);
  });

  describe('policy changes under an open fast-path connection', () => {
    it('a reload that removes the binding refuses the next request on it (binding-changed), and closes it', async () => {
      const s = open(cg.rel);
      s.send(request('GET', '/rel/before'));
      expect((await s.read()).status).toBe(200);
      const before = f.upstream.records.length;
      f.writePolicy(policy({ relBound: false }));
      expect(await agent.reload()).toBe('reloaded');
      let r: SessionResponse;
      try {
        s.send(request('POST', '/rel/after', [], planted));
        r = await s.read('POST');
      } finally {
        f.writePolicy(policy());
        expect(await agent.reload()).toBe('reloaded');
      }
      expect(r.status).toBe(403);
      expect(header(r, 'x-wirekey-error')).toBe('binding-changed');
      expect(await s.eof()).toEqual({ closed: true, rest: '' });
      expect((await f.recordsSince(before)).map((x) => x.url)).toEqual([]);
      expect((await audit()).some((e) => e.decision === 'deny' && e.reason === 'binding-changed' && e.workload === 'rel' && e.path === '/rel/after')).toBe(true);
    });

    it('a rotated credential goes on a new upstream connection, on the same workload connection', async () => {
      const before = f.upstream.records.length;
      const s = open(cg.keyed);
      s.send(request('GET', '/rot/0'));
      expect((await s.read()).status).toBe(200);
      const rotated = `wk-canary-keyed2-${randomBytes(12).toString('hex')}`;
      writeFileSync(keyedFile(), `${rotated}\n`, { mode: 0o600 });
      f.onClose(() => writeFileSync(keyedFile(), `${keyedToken}\n`, { mode: 0o600 }));
      // One request per look: the file source notices the change on its own schedule (a stat at most once a second).
      let i = 0;
      const found = await eventually(async () => {
        s.send(request('GET', `/rot/${++i}`));
        expect((await s.read()).status).toBe(200);
        return (await f.recordsSince(before)).find((x) => x.apiKey[0] === sha256(rotated));
      }, 20_000, 'a request with the rotated credential');
      expect(found).toBeDefined();
      const recs = await f.recordsSince(before);
      const oldPorts = new Set(recs.filter((x) => x.apiKey[0] === sha256(keyedToken)).map((x) => x.remotePort));
      expect(oldPorts.size).toBeGreaterThan(0);
      expect(oldPorts.has(found.remotePort)).toBe(false);
      // Never both, never the old one after the new one.
      for (const x of recs) expect(x.apiKey).toHaveLength(1);
      const firstNew = recs.findIndex((x) => x.apiKey[0] === sha256(rotated));
      expect(recs.slice(firstNew).every((x) => x.apiKey[0] === sha256(rotated))).toBe(true);
      writeFileSync(keyedFile(), `${keyedToken}\n`, { mode: 0o600 });
    });

    it('a credential file made unusable is refused from its next check on (503, nothing upstream), and served again once fixed', async () => {
      const before = f.upstream.records.length;
      const s = open(cg.keyed);
      s.send(request('GET', '/unusable/0'));
      expect((await s.read()).status).toBe(200);
      s.close();
      f.onClose(() => chmodSync(keyedFile(), 0o600));
      chmodSync(keyedFile(), 0o644);
      // The refusal closes the connection: each look is a request on a new one.
      let i = 0;
      const refused = await eventually(async () => {
        const t = open(cg.keyed);
        t.send(request('GET', `/unusable/${++i}`));
        const r = await t.read();
        t.close();
        return r.status === 503 ? r : undefined;
      }, 20_000, 'a refusal once the file source notices the mode');
      expect(header(refused, 'x-wirekey-error')).toBe('credential-unavailable');
      expect((await f.recordsSince(before)).map((x) => x.url)).not.toContain(`/unusable/${i}`);
      chmodSync(keyedFile(), 0o600);
      const served = await eventually(async () => {
        const t = open(cg.keyed);
        t.send(request('GET', `/unusable/fixed/${++i}`));
        const r = await t.read();
        t.close();
        return r.status === 200 ? r : undefined;
      }, 20_000, 'the credential served again once the mode is fixed');
      expect(served.status).toBe(200);
      const recs = await f.recordsSince(before);
      expect(recs.at(-1)?.apiKey).toEqual([sha256(keyedToken)]);
    });
  });

  it('no credential in the agent\'s log or audit log, and nothing failed inside the proxy', async () => {
    await f.settled();
    const logs = agent.output() + readFileSync(f.auditPath, 'utf8');
    expect(leaks(logs)).toEqual([]);
    expect(agent.output()).not.toMatch(/inside the proxy/);
  });

  // Last: the agent is restarted without the fast path.
  describe('Node\'s server path (--no-h1-fast-path): the same answers and audit lines', () => {
    beforeAll(async () => {
      await agent.stop();
      agent = await f.startAgent({ extraArgs: ['--no-h1-fast-path'] });
    });
    /** Lines about `p` written since `from` lines were in the log (the fast path's tests used the same paths). */
    const lines = async (p: string, from: number) => (await audit()).slice(from).filter((e) => e.path === p);

    it('an upstream that answers with a broken head: 502 upstream-failed, and an inject line (the request had gone out)', async () => {
      const from = (await audit()).length;
      const s = openRaw();
      s.send(rawRequest('GET', '/raw/bare-lf'));
      expect((await s.read()).status).toBe(502);
      expect(await lines('/raw/bare-lf', from)).toContainEqual(expect.objectContaining({ decision: 'inject', status: 502, reason: 'upstream-failed', credential: 'api-token' }));
    });

    it('a response cut after its head: an inject line with the upstream\'s status, response-cut', async () => {
      const from = (await audit()).length;
      const s = openRaw();
      s.send(rawRequest('GET', '/raw/cut'));
      expect((await s.read()).error).toBeDefined();
      const line = await eventually(async () => (await lines('/raw/cut', from)).find((e) => e.reason === 'response-cut'), 10_000, 'the inject line of the cut response');
      expect(line).toMatchObject({ decision: 'inject', status: 200, credential: 'api-token' });
    });

    it('a GET with a body ends its upstream connection (undici): the body cannot swallow the next request', async () => {
      await cl0('node');
    });

    it('an upstream that answers before the body has all come: its connection is never reused for the next request', async () => {
      const before = raw.records.length;
      const target = '/raw/early-chunked';
      const head = `POST ${target} HTTP/1.1\r\nHost: ${OTHER}:${RAW_PORT}\r\nTransfer-Encoding: chunked\r\n\r\n`;
      const s = openRaw();
      // The head and a first chunk; the upstream answers at once.
      s.send(`${head}5\r\nhello\r\n`);
      const first = await s.read('POST');
      expect(first.status).toBe(200);
      const { conn } = JSON.parse(first.body as string) as { conn: number };
      // The rest of the body: once the proxy has passed it on, or closed that connection, the next request.
      s.send('5\r\nworld\r\n0\r\n\r\n');
      await eventually(async () => (await rawRecords(before)).some((r) => r.conn === conn && (r.event === 'closed' || (r.url === target && r.event === undefined))),
        10_000, 'the first upload passed on or its connection closed');
      s.send(`${head}2\r\nok\r\n0\r\n\r\n`);
      const second = await s.read('POST');
      expect(second.status).toBe(200);
      expect((JSON.parse(second.body as string) as { conn: number }).conn).not.toBe(conn);
      // The first connection was closed, not left open half-used.
      await eventually(async () => (await rawRecords(before)).some((r) => r.conn === conn && r.event === 'closed'), 10_000, 'the first connection closed');
      s.close();
    });

    it('a workload that closes its side right after its requests gets every response, then the close', async () => {
      await bothAnsweredAfterClose('/half/node');
    });

    it('an upstream whose certificate does not verify: a deny line (nothing was sent)', async () => {
      const s = new TlsSession(cg.alice, MISNAMED, f.host.ipv4, RAW_PORT, f.bothCas);
      sessions.push(s);
      s.send(request('GET', '/misnamed-node', [], '', `${MISNAMED}:${RAW_PORT}`));
      expect((await s.read()).status).toBe(502);
      expect(await lines('/misnamed-node', 0)).toEqual([expect.objectContaining({ decision: 'deny', status: 502, reason: 'upstream-failed' })]);
    });

    it('a workload that goes away while its response streams: an inject line, workload-closed', async () => {
      await abandonWhileStreaming('/bytes/50000001');
      const line = await eventually(async () => (await lines('/bytes/50000001', 0)).find((e) => e.reason === 'workload-closed'), 10_000, 'the inject line of the abandoned response');
      expect(line).toMatchObject({ decision: 'inject', credential: 'api-token' });
    });

    it('no credential in the agent\'s log or the audit log, these inject lines included', async () => {
      await f.settled();
      expect(leaks(agent.output() + readFileSync(f.auditPath, 'utf8'))).toEqual([]);
    });
  });
});
