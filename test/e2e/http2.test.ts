/**
 * HTTP/2 through the proxy, end to end: curl --http2, Node's http2 and
 * Python's httpx[http2] in a bound cgroup, against an HTTP/2-only upstream
 * (h2-upstream-server.mjs on port 8443) and an HTTP/1.1-only one
 * (upstream-server.mjs on 443), each compared with the same client going
 * direct. What the upstream received (the injected credential, never the
 * workload's, its other headers) and what the client got.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { E2eFixture, HOST, OTHER, sha256 } from '../support/e2e-fixture.js';
import { kernelSkipReason } from '../support/requirements.js';
import { H2_UPSTREAM, startUpstream, type Upstream } from '../support/upstream.js';
import { h2Venv, hostsFile, NodeH2Client, runWithHosts } from '../support/h2-clients.js';
import { repoRoot } from '../support/paths.js';
import { waitFor } from '../support/wait.js';

const skip = kernelSkipReason();
const H2_PORT = 8443;
/** A name the upstream's certificate does not carry. */
const MISNAMED = 'misnamed.wirekey.test';

describe.skipIf(skip)(`HTTP/2 through the proxy${skip ? ` (skipped: ${skip})` : ''}`, () => {
  const f = new E2eFixture();
  let bound: string;
  let keyed: string;
  let unbound: string;
  let h2: Upstream;
  let venv: string;
  let hosts: string;
  const clients: NodeH2Client[] = [];
  const H2_ORIGIN = `https://${OTHER}:${H2_PORT}`;
  const H1_ORIGIN = `https://${HOST}`;

  beforeAll(async () => {
    venv = await h2Venv();
    await f.setUp();
    h2 = await startUpstream(f.host, f.pki.serverCert, f.pki.serverKey, H2_PORT, H2_UPSTREAM);
    f.onClose(() => h2.stop());
    unbound = f.cgroup('unbound');
    keyed = f.cgroup('keyed');
    bound = f.writeBoundPolicy(`apiVersion: wirekey.dev/v1alpha1
kind: Service
metadata: {name: h2api}
spec: {hosts: [${OTHER}], port: ${H2_PORT}, tls: true}
---
apiVersion: wirekey.dev/v1alpha1
kind: Binding
metadata: {name: app-h2}
spec: {workload: app, service: h2api, inject: {bearer: {credential: api-token}}}
---
apiVersion: wirekey.dev/v1alpha1
kind: Service
metadata: {name: misnamed}
spec: {hosts: [${MISNAMED}], port: ${H2_PORT}, tls: true}
---
apiVersion: wirekey.dev/v1alpha1
kind: Binding
metadata: {name: app-misnamed}
spec: {workload: app, service: misnamed, inject: {bearer: {credential: api-token}}}
---
apiVersion: wirekey.dev/v1alpha1
kind: Workload
metadata: {name: keyed}
spec: {selector: {cgroup: ${f.cgBase}/keyed}}
---
apiVersion: wirekey.dev/v1alpha1
kind: Binding
metadata: {name: keyed-h2}
spec: {workload: keyed, service: h2api, inject: {header: {credential: api-token, name: X-Api-Key, format: "Key {secret}"}}}
`);
    hosts = hostsFile(f.dir, f.host.ipv4, [HOST, OTHER]);
    await f.startAgent();
  });

  afterAll(async () => {
    for (const c of clients) c.close();
    await f.close();
  });

  const curl = (cg: string, args: string[]) =>
    f.curl(cg, ['--resolve', `${OTHER}:${H2_PORT}:${f.host.ipv4}`, '--resolve', `${MISNAMED}:${H2_PORT}:${f.host.ipv4}`, '-w', '\n%{http_version}', ...args]);
  const h2Records = async (before: number) => {
    await h2.sync();
    return h2.records.slice(before);
  };
  const audit = () => readFileSync(f.auditPath, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>);

  it('curl --http2 to an HTTP/2 upstream: h2 on both legs, the bearer injected, the workload\'s own dropped; direct gets the same answer and no credential', async () => {
    const before = h2.records.length;
    const r = await curl(bound, ['--http2', '--cacert', f.wirekeyCa, '-H', 'Authorization: Bearer mine', '-H', 'X-Custom: kept', `${H2_ORIGIN}/v1/models?x=1`]);
    expect(r.stderr).toBe('');
    const [body, version] = r.stdout.split('\n');
    expect(version).toBe('2');
    expect(JSON.parse(body as string)).toMatchObject({ ok: true, path: '/v1/models?x=1', protocol: 'h2' });
    const [rec] = await h2Records(before);
    expect(rec).toMatchObject({ protocol: 'h2', method: 'GET', host: `${OTHER}:${H2_PORT}`, servername: OTHER, custom: 'kept' });
    expect(rec?.authorization).toEqual([f.expectedAuth]);
    expect(rec?.hostHeader).toBeUndefined();

    const direct = await curl(unbound, ['--http2', '--cacert', f.pki.caCert, '-H', 'X-Custom: kept', `${H2_ORIGIN}/v1/models?x=1`]);
    expect(direct.stderr).toBe('');
    expect(direct.stdout.split('\n')[1]).toBe('2');
    expect(JSON.parse(direct.stdout.split('\n')[0] as string)).toMatchObject({ ok: true, path: '/v1/models?x=1', protocol: 'h2' });
    const [d] = await h2Records(before + 1);
    expect(d?.authorization).toEqual([]);
    // The same headers reach the upstream through wirekey as direct, plus the credential.
    expect(rec?.headerNames.filter((h) => h !== 'authorization').sort()).toEqual(d?.headerNames.sort());
    const line = audit().find((e) => e.decision === 'inject' && e.path === '/v1/models');
    expect(line).toMatchObject({ workload: 'app', service: 'h2api', method: 'GET', status: 200, credential: 'api-token' });
  });

  it('curl --http2 to an HTTP/1.1-only upstream: h2 to the workload, HTTP/1.1 upstream, and back', async () => {
    const before = f.upstream.records.length;
    const r = await curl(bound, ['--http2', '--cacert', f.wirekeyCa, '-H', 'Authorization: Bearer mine', `${H1_ORIGIN}/h1-upstream`]);
    expect(r.stderr).toBe('');
    const [body, version] = r.stdout.split('\n');
    expect(version).toBe('2');
    expect(JSON.parse(body as string)).toMatchObject({ ok: true, path: '/h1-upstream' });
    const [rec] = await f.recordsSince(before);
    expect(rec?.authorization).toEqual([f.expectedAuth]);
    expect(rec?.host).toBe(HOST);
  });

  it('a header injection over h2: the named header in its format, the workload\'s copy dropped', async () => {
    const before = h2.records.length;
    const r = await curl(keyed, ['--http2', '--cacert', f.wirekeyCa, '-H', 'X-Api-Key: mine', '-H', 'Authorization: Bearer mine', `${H2_ORIGIN}/keyed`]);
    expect(r.stderr).toBe('');
    const [rec] = await h2Records(before);
    expect(rec?.apiKey).toEqual([sha256(`Key ${f.token}`)]);
    expect(rec?.authorization).toEqual([]);
  });

  it('bodies stream both ways over h2 on both upstreams: a 24 MiB download and a 3 MiB upload', async () => {
    const upload = path.join(f.dir, 'h2-upload.bin');
    writeFileSync(upload, randomBytes(3 * 1024 * 1024 + 17));
    const uploadHash = createHash('sha256').update(readFileSync(upload)).digest('hex');
    for (const [origin, upstream] of [[H2_ORIGIN, h2], [H1_ORIGIN, f.upstream]] as const) {
      const out = path.join(f.dir, 'h2-download.bin');
      const r = await curl(bound, ['--http2', '--cacert', f.wirekeyCa, '-D', '-', '-o', out, `${origin}/bytes/${24 * 1024 * 1024}`]);
      expect(r.stderr, origin).toBe('');
      const want = /x-body-sha256: ([0-9a-f]+)/i.exec(r.stdout)?.[1];
      expect(createHash('sha256').update(readFileSync(out)).digest('hex'), origin).toBe(want);
      const before = upstream.records.length;
      const u = await curl(bound, ['--http2', '--cacert', f.wirekeyCa, '--data-binary', `@${upload}`, `${origin}/upload`]);
      expect(u.stderr, origin).toBe('');
      await upstream.sync();
      const rec = upstream.records.slice(before).find((x) => x.url === '/upload');
      expect(rec, origin).toMatchObject({ method: 'POST', bodyLength: 3 * 1024 * 1024 + 17, bodySha256: uploadHash });
      expect(rec?.authorization).toEqual([f.expectedAuth]);
    }
  });

  it("Node's http2: concurrent streams on one session, a POST body, trailers, to both upstreams", async () => {
    for (const origin of [H2_ORIGIN, H1_ORIGIN]) {
      const c = new NodeH2Client(bound, hosts, origin, f.wirekeyCa);
      clients.push(c);
      const h1Before = f.upstream.records.length;
      const h2Before = h2.records.length;
      for (const id of ['a', 'b', 'c']) c.request(id, 'GET', `/node/${id}`);
      c.request('p', 'POST', '/echo', 100_000);
      const results = await Promise.all(['a', 'b', 'c', 'p'].map((id) => c.result(id)));
      for (const r of results.slice(0, 3)) expect(r.status, origin).toBe(200);
      expect(results[3]).toMatchObject({ status: 200, bodyLength: 100_000 });
      const recs = origin === H2_ORIGIN ? await h2Records(h2Before) : await f.recordsSince(h1Before);
      expect(recs.map((x) => x.url).sort()).toEqual(['/echo', '/node/a', '/node/b', '/node/c']);
      for (const rec of recs) expect(rec.authorization, origin).toEqual([f.expectedAuth]);
      if (origin === H2_ORIGIN) {
        c.request('t', 'GET', '/trailers');
        const t = await c.result('t');
        expect(t).toMatchObject({ status: 200, body: 'body before trailers\n', trailers: { 'x-checksum': 'abc123', 'grpc-status': '0' } });
      }
      c.close();
    }
  });

  it('RST_STREAM from the workload cancels the upstream stream', async () => {
    const c = new NodeH2Client(bound, hosts, H2_ORIGIN, f.wirekeyCa);
    clients.push(c);
    c.request('x', 'GET', '/hold/cancel-me');
    await waitFor(() => h2.records.some((r) => r.url === '/hold/cancel-me'), 'the held request upstream');
    c.cancel('x');
    await waitFor(() => h2.events.some((e) => e.cancelled === '/hold/cancel-me'), 'the upstream stream cancelled');
    c.close();
  });

  it('GOAWAY from the upstream fails only the streams it names: the earlier stream completes', async () => {
    const c = new NodeH2Client(bound, hosts, H2_ORIGIN, f.wirekeyCa);
    clients.push(c);
    c.request('held', 'GET', '/hold/before-goaway');
    await waitFor(() => h2.records.some((r) => r.url === '/hold/before-goaway'), 'the held request upstream');
    c.request('g', 'GET', '/goaway');
    const refused = await c.result('g');
    // REFUSED_STREAM: the upstream never processed it; the client may retry.
    expect(refused.rstCode).toBe(7);
    h2.command('release before-goaway');
    expect(await c.result('held')).toMatchObject({ status: 200, body: 'released before-goaway\n' });
    // The next request gets a new upstream session.
    c.request('after', 'GET', '/after-goaway');
    expect(await c.result('after')).toMatchObject({ status: 200 });
    c.close();
  });

  it('Python httpx[http2] to both upstreams: HTTP/2 to the workload, the credential injected', async () => {
    const script = path.join(repoRoot, 'test/support/clients/httpx-h2.py');
    for (const [origin, upstream] of [[H2_ORIGIN, h2], [H1_ORIGIN, f.upstream]] as const) {
      const before = upstream.records.length;
      const r = await runWithHosts(bound, hosts, path.join(venv, 'bin/python'), [script, f.wirekeyCa, `${origin}/httpx/1`, `${origin}/httpx/2`]);
      expect(r.code, r.stderr).toBe(0);
      const lines = r.stdout.trim().split('\n').map((l) => JSON.parse(l) as { status: number; version: string; same?: boolean });
      expect(lines.map((l) => [l.status, l.version])).toEqual([[200, 'HTTP/2'], [200, 'HTTP/2'], [200, 'HTTP/2']]);
      expect(lines[2]?.same).toBe(true);
      await upstream.sync();
      const recs = upstream.records.slice(before);
      expect(recs.map((x) => x.url)).toEqual(['/httpx/1', '/httpx/2', '/echo']);
      for (const rec of recs) expect(rec.authorization).toEqual([f.expectedAuth]);
      // Direct, for comparison: the same answers, no credential.
      const d = await runWithHosts(unbound, hosts, path.join(venv, 'bin/python'), [script, f.pki.caCert, `${origin}/httpx/1`]);
      expect(d.code, d.stderr).toBe(0);
      expect(d.stdout.trim().split('\n').map((l) => (JSON.parse(l) as { status: number }).status)).toEqual([200, 200]);
    }
  });

  it('an HTTP/2 upstream whose certificate does not name the service host gets nothing: 502 upstream-failed', async () => {
    const before = h2.records.length;
    const r = await curl(bound, ['--http2', '--cacert', f.wirekeyCa, '-D', '-', `https://${MISNAMED}:${H2_PORT}/misnamed`]);
    expect(r.stdout).toMatch(/^HTTP\/2 502/);
    expect(r.stdout).toMatch(/x-wirekey-error: upstream-failed/);
    await h2.sync();
    expect(h2.records.slice(before)).toEqual([]);
  });

  it('an HTTP/2 upstream that resets a stream it received: 502 upstream-failed, and an inject line (the credential went out)', async () => {
    const before = h2.records.length;
    const r = await curl(bound, ['--http2', '--cacert', f.wirekeyCa, '-D', '-', `${H2_ORIGIN}/reset`]);
    expect(r.stdout).toMatch(/^HTTP\/2 502/);
    expect(r.stdout).toMatch(/x-wirekey-error: upstream-failed/);
    await h2.sync();
    expect(h2.records.slice(before).map((x) => [x.url, x.authorization])).toEqual([['/reset', [f.expectedAuth]]]);
    await f.settled();
    expect(audit().filter((l) => l.path === '/reset')).toEqual([
      expect.objectContaining({ decision: 'inject', status: 502, reason: 'upstream-failed', credential: 'api-token' }),
    ]);
  });

  it('no credential in the agent\'s log or the audit log', () => {
    expect(f.agent?.output()).not.toContain(f.token);
    expect(readFileSync(f.auditPath, 'utf8')).not.toContain(f.token);
  });

  it('with --no-http2 the proxy offers HTTP/1.1 only: curl --http2 falls back to HTTP/1.1 and still gets its credential', async () => {
    await f.agent?.stop();
    await f.startAgent({ extraArgs: ['--no-http2'] });
    const before = f.upstream.records.length;
    const h1 = await curl(bound, ['--http2', '--cacert', f.wirekeyCa, `${H1_ORIGIN}/no-http2`]);
    expect(h1.stderr).toBe('');
    expect(h1.stdout.split('\n')[1]).toBe('1.1');
    const [rec] = await f.recordsSince(before);
    expect(rec?.authorization).toEqual([f.expectedAuth]);
    expect(JSON.parse(h1.stdout.split('\n')[0] as string)).toMatchObject({ ok: true, path: '/no-http2' });
  });
});
