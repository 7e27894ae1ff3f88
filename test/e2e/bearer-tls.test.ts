/**
 * The core promise, end to end on the real kernel: a process in a bound
 * cgroup calls an HTTPS API with no key anywhere, and the API receives
 * `Authorization: Bearer <token>`. Everything else is left alone.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import type { TestHost } from '../support/netns.js';
import type { TestPki } from '../support/test-pki.js';
import type { Upstream } from '../support/upstream.js';
import { runInCgroup } from '../support/cgroup.js';
import { repoRoot, type RunningAgent } from '../support/agent.js';
import { kernelHttpSkipReason, kernelSkipReason, pushWatchSkipReason } from '../support/requirements.js';
import { must, run } from '../support/shell.js';
import { E2eFixture, HOST, OTHER, sha256 } from '../support/e2e-fixture.js';
import { eventually } from '../support/wait.js';

const skip = kernelSkipReason();

describe.skipIf(skip)(`bearer injection over TLS${skip ? ` (skipped: ${skip})` : ''}`, () => {
  const f = new E2eFixture();
  const { token, expectedAuth, pinDir, dir, policyDir, cgRoot } = f;
  const auditPath = () => f.auditPath;
  let bound: string;
  let unbound: string;
  let host: TestHost;
  let pki: TestPki;
  let upstream: Upstream;
  let agent: RunningAgent;
  let proxyPort: number;
  let wirekeyCa: string;
  const writePolicy = (tokenFile: string) =>
    f.writePolicy(
      `apiVersion: wirekey.dev/v1alpha1
kind: Workload
metadata: {name: app}
spec: {selector: {cgroup: ${f.cgBase}/bound}}
---
apiVersion: wirekey.dev/v1alpha1
kind: Binding
metadata: {name: app-api}
spec: {workload: app, service: api, inject: {bearer: {credential: api-token}}}
---
apiVersion: wirekey.dev/v1alpha1
kind: Workload
metadata: {name: keyed}
spec: {selector: {cgroup: ${f.cgBase}/keyed}}
---
apiVersion: wirekey.dev/v1alpha1
kind: Binding
metadata: {name: keyed-api}
spec: {workload: keyed, service: api, inject: {header: {credential: api-token, name: X-Api-Key, format: "Key {secret}"}}}
---
apiVersion: wirekey.dev/v1alpha1
kind: Workload
metadata: {name: basic}
spec: {selector: {cgroup: ${f.cgBase}/basic}}
---
apiVersion: wirekey.dev/v1alpha1
kind: Binding
metadata: {name: basic-api}
spec: {workload: basic, service: api, inject: {basic: {credential: api-token, username: svc}}}
`,
      tokenFile,
    );
  const curl = (cg: string, args: string[]) => f.curl(cg, args);
  const newRecords = (before: number) => f.recordsSince(before);

  beforeAll(async () => {
    await f.setUp();
    bound = f.cgroup('bound');
    unbound = f.cgroup('unbound');
    f.cgroup('keyed');
    f.cgroup('basic');
    ({ host, pki, upstream } = f);
    writePolicy(f.tokenFile);
    // The agent runs in the bound cgroup itself: its own upstream connections
    // must never be redirected (they would loop back into the proxy).
    agent = await f.startAgent({ cgroup: bound });
    ({ wirekeyCa, proxyPort } = f);
  });

  afterAll(() => f.close());

  it('curl in the bound cgroup gets the bearer token injected, with no key anywhere', async () => {
    const before = upstream.records.length;
    const r = await curl(bound, ['--cacert', wirekeyCa, `https://${HOST}/v1/models?api_key=nothing`]);
    expect(r.stderr).toBe('');
    expect(JSON.parse(r.stdout)).toMatchObject({ ok: true, path: '/v1/models?api_key=nothing' });
    const [rec] = await newRecords(before);
    expect(rec?.authorization).toEqual([expectedAuth]);
    expect(rec?.servername).toBe(HOST);
    expect(rec?.host).toBe(HOST);
  });

  it('header and basic injections: the named header in its format (the client\'s own copy dropped), and HTTP basic', async () => {
    const before = upstream.records.length;
    const keyed = await curl(path.join(f.cgRoot, f.cgBase, 'keyed'), ['--cacert', wirekeyCa, '-H', 'X-Api-Key: mine', '-H', 'Authorization: Bearer mine', `https://${HOST}/keyed`]);
    expect(keyed.stderr).toBe('');
    const basic = await curl(path.join(f.cgRoot, f.cgBase, 'basic'), ['--cacert', wirekeyCa, `https://${HOST}/basic`]);
    expect(basic.stderr).toBe('');
    const [k, b] = await newRecords(before);
    expect(k?.apiKey).toEqual([sha256(`Key ${f.token}`)]);
    expect(k?.authorization).toEqual([]);
    expect(b?.authorization).toEqual([sha256(`Basic ${Buffer.from(`svc:${f.token}`).toString('base64')}`)]);
  });

  it('every request on a keep-alive connection carries the header', async () => {
    const before = upstream.records.length;
    const urls = ['/a', '/b', '/c'].map((p) => `https://${HOST}${p}`);
    const r = await curl(bound, ['--cacert', wirekeyCa, '-w', ' connects=%{num_connects}\n', ...urls]);
    expect(r.stderr).toBe('');
    // One TCP connection from curl for all three requests.
    expect(r.stdout.match(/connects=(\d)/g)).toEqual(['connects=1', 'connects=0', 'connects=0']);
    const recs = await newRecords(before);
    expect(recs.map((x) => x.url)).toEqual(['/a', '/b', '/c']);
    for (const rec of recs) expect(rec.authorization).toEqual([expectedAuth]);
  });

  it("Node's fetch in the bound cgroup gets the header on each request", async () => {
    const before = upstream.records.length;
    const hosts = path.join(dir, 'hosts');
    writeFileSync(hosts, `127.0.0.1 localhost\n${host.ipv4} ${HOST}\n`);
    const script = path.join(repoRoot, 'test/support/clients/node-fetch.mjs');
    // A private mount namespace gives this process its own /etc/hosts; cgroup and network stay the host's.
    const r = await runInCgroup(bound, 'unshare', ['-m', 'sh', '-c', 'mount --bind "$0" /etc/hosts && exec "$@"', hosts,
      process.execPath, script, `https://${HOST}/one`, `https://${HOST}/two`], { env: { ...process.env, NODE_EXTRA_CA_CERTS: wirekeyCa } });
    expect(r.stderr).toBe('');
    expect(r.stdout.split('\n').filter(Boolean).map((l) => l.split(' ')[0])).toEqual(['200', '200']);
    const recs = await newRecords(before);
    expect(recs.map((x) => x.url)).toEqual(['/one', '/two']);
    for (const rec of recs) expect(rec.authorization).toEqual([expectedAuth]);
  });

  it('Python sees the original peer through getpeername, over IPv4, IPv6 and IPv4-mapped IPv6', async () => {
    const script = path.join(repoRoot, 'test/support/clients/peername.py');
    const cases: [string, string, string][] = [
      [host.ipv4, '4', host.ipv4],
      [host.ipv6, '6', host.ipv6],
      [`::ffff:${host.ipv4}`, '6', `::ffff:${host.ipv4}`],
    ];
    for (const [ip, family, peer] of cases) {
      const before = upstream.records.length;
      const r = await runInCgroup(bound, 'python3', [script, HOST, ip, family, wirekeyCa]);
      expect(r.stderr).toBe('');
      expect(r.stdout).toContain(`peer ${peer} 443\n`);
      expect(r.stdout).toContain('status 200');
      const [rec] = await newRecords(before);
      expect(rec?.url).toBe('/python');
      expect(rec?.authorization).toEqual([expectedAuth]);
    }
  });

  it('request and response bodies stream through intact over HTTP/1.1 and HTTP/2: a 24 MiB download, and uploads with Content-Length (with and without Expect: 100-continue) and chunked', async () => {
    const upload = path.join(dir, 'upload.bin');
    writeFileSync(upload, randomBytes(3 * 1024 * 1024 + 17));
    const uploadHash = createHash('sha256').update(readFileSync(upload)).digest('hex');
    // curl asks HTTP/1.1 uploads this large to wait for a 100 (https.request upstream); `Expect:` sends at once (undici).
    for (const protocol of ['--http1.1', '--http2']) {
      const out = path.join(dir, 'download.bin');
      const r = await curl(bound, [protocol, '--cacert', wirekeyCa, '-D', '-', '-o', out, `https://${HOST}/bytes/${24 * 1024 * 1024}`]);
      expect(r.stderr).toBe('');
      const want = /x-body-sha256: ([0-9a-f]+)/i.exec(r.stdout)?.[1];
      expect(createHash('sha256').update(readFileSync(out)).digest('hex'), protocol).toBe(want);

      for (const extra of [[], ['-H', 'Expect:'], ['-H', 'Transfer-Encoding: chunked']]) {
        const before = upstream.records.length;
        const u = await curl(bound, [protocol, '--cacert', wirekeyCa, ...extra, '--data-binary', `@${upload}`, `https://${HOST}/upload`]);
        expect(u.stderr).toBe('');
        const [rec] = await newRecords(before);
        expect(rec, `${protocol} ${extra.join(' ')}`).toMatchObject({ method: 'POST', url: '/upload', bodyLength: 3 * 1024 * 1024 + 17, bodySha256: uploadHash });
        expect(rec?.authorization).toEqual([expectedAuth]);
      }
    }
  });

  it('responses the upstream ends by closing its connection reach a workload slower than the upstream whole, and the agent carries on', async () => {
    // The proxy pauses its reads from the upstream while the workload is
    // behind: never on a response's last bytes before the upstream's close.
    for (const close of ['length', 'eof']) {
      const out = path.join(dir, `close-${close}.bin`);
      const r = await curl(bound, ['--http1.1', '--cacert', wirekeyCa, '--limit-rate', '8M', '-D', '-', '-o', out, `https://${HOST}/bytes/${6 * 1024 * 1024}?close=${close}`]);
      expect(r.stderr).toBe('');
      if (close === 'length') expect(r.stdout).toMatch(new RegExp(`content-length: ${6 * 1024 * 1024}\r`, 'i'));
      const want = /x-body-sha256: ([0-9a-f]+)/i.exec(r.stdout)?.[1];
      expect(createHash('sha256').update(readFileSync(out)).digest('hex')).toBe(want);
    }
    const after = await curl(bound, ['--http1.1', '--cacert', wirekeyCa, '-o', '/dev/null', '-w', '%{http_code}', `https://${HOST}/after-close`]);
    expect(after.stdout).toBe('200');
  });

  it('a credential sent by the workload is replaced, never forwarded', async () => {
    const before = upstream.records.length;
    const r = await curl(bound, ['--cacert', wirekeyCa, '-H', 'Authorization: Bearer workload-supplied', `https://${HOST}/replace`]);
    expect(r.stderr).toBe('');
    const [rec] = await newRecords(before);
    expect(rec?.authorization).toEqual([expectedAuth]);
  });

  it('a process outside the bound cgroup is not redirected and gets no token', async () => {
    const before = upstream.records.length;
    // It trusts only the upstream's own CA: an intercepted connection would fail verification.
    const r = await curl(unbound, ['--cacert', pki.caCert, `https://${HOST}/unbound`]);
    expect(r.stderr).toBe('');
    expect(JSON.parse(r.stdout)).toMatchObject({ ok: true });
    const [rec] = await newRecords(before);
    expect(rec?.authorization).toEqual([]);
  });

  it('only the host network namespace is redirected', async () => {
    const before = upstream.records.length;
    // A bound process inside another network namespace (the test host's own).
    const r = await runInCgroup(bound, 'ip', ['netns', 'exec', host.ns, 'curl', '-sS', '--max-time', '10', '--resolve',
      `${HOST}:443:${host.ipv4}`, '--cacert', pki.caCert, `https://${HOST}/other-netns`]);
    expect(r.stderr).toBe('');
    expect(JSON.parse(r.stdout)).toMatchObject({ ok: true, path: '/other-netns' });
    const [rec] = await newRecords(before);
    expect(rec?.authorization).toEqual([]);
  });

  it('a Host header naming another host is refused and nothing is sent upstream', async () => {
    const before = upstream.records.length;
    const r = await curl(bound, ['--cacert', wirekeyCa, '-H', `Host: ${OTHER}`, '-w', '%{http_code}', '-o', '/dev/null', `https://${HOST}/wrong-host`]);
    expect(r.stdout).toBe('421');
    expect(await newRecords(before)).toEqual([]);
  });

  it('an unbound SNI is relayed untouched: the upstream certificate, no token', async () => {
    const before = upstream.records.length;
    const r = await curl(bound, ['--cacert', pki.caCert, `https://${OTHER}/relayed`]);
    expect(r.stderr).toBe('');
    expect(JSON.parse(r.stdout)).toMatchObject({ ok: true, path: '/relayed' });
    const [rec] = await newRecords(before);
    expect(rec?.servername).toBe(OTHER);
    expect(rec?.authorization).toEqual([]);
  });

  it('malformed or ambiguous requests are refused and nothing reaches the upstream', async () => {
    const before = upstream.records.length;
    const h = `Host: ${HOST}\r\n`;
    const requests = [
      `POST /dup-cl HTTP/1.1\r\n${h}Content-Length: 1\r\nContent-Length: 1\r\n\r\nA`,
      `POST /cl-te HTTP/1.1\r\n${h}Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n`,
      `GET /obs-fold HTTP/1.1\r\n${h}X-Folded: a\r\n  b\r\n\r\n`,
      `GET /bare-lf HTTP/1.1\n${h}\r\n`,
      `GET /bare-cr HTTP/1.1\r\n${h}X-A: a\rb\r\n\r\n`,
      `GET /two-hosts HTTP/1.1\r\n${h}${h}\r\n`,
      `GET https://${OTHER}/absolute HTTP/1.1\r\n${h}\r\n`,
      // The upstream would echo the injected credential back to the workload.
      `TRACE /trace HTTP/1.1\r\n${h}\r\n`,
    ];
    const script = path.join(repoRoot, 'test/support/clients/raw-tls.mjs');
    const r = await runInCgroup(bound, process.execPath, [script, HOST, host.ipv4, '443', wirekeyCa], { input: JSON.stringify(requests) });
    expect(r.stderr).toBe('');
    const lines = r.stdout.trim().split('\n');
    expect(lines).toHaveLength(requests.length);
    for (const line of lines) expect(line).toMatch(/^HTTP\/1\.1 4(00|21|05) /);
    expect(await newRecords(before)).toEqual([]);
  });

  it('a connection made straight to the proxy port gets nothing', async () => {
    const before = upstream.records.length;
    for (const target of [`https://127.0.0.1:${proxyPort}/direct`, `https://[::1]:${proxyPort}/direct`]) {
      const r = await runInCgroup(unbound, 'curl', ['-sS', '--max-time', '5', '-k', '-H', `Host: ${HOST}`, target]);
      expect(r.code).not.toBe(0);
    }
    // The same from the bound cgroup: the proxy's port is not a bound service port.
    const r = await runInCgroup(bound, 'curl', ['-sS', '--max-time', '5', '-k', '-H', `Host: ${HOST}`, `https://127.0.0.1:${proxyPort}/direct`]);
    expect(r.code).not.toBe(0);
    expect(await newRecords(before)).toEqual([]);
  });

  it('audit lines record each decision without the secret or the query string', () => {
    const lines = readFileSync(auditPath(), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
    const inject = lines.find((l) => l.path === '/v1/models');
    expect(inject).toMatchObject({ decision: 'inject', workload: 'app', service: 'api', method: 'GET', status: 200, credential: 'api-token' });
    expect(typeof inject?.pid).toBe('number');
    expect(typeof inject?.time).toBe('string');
    expect(lines.find((l) => l.path === '/wrong-host')).toMatchObject({ decision: 'deny', status: 421 });
    expect(lines.find((l) => l.decision === 'pass')).toMatchObject({ host: OTHER, workload: 'app' });
    expect(lines.some((l) => l.reason?.toString().startsWith('malformed-request'))).toBe(true);
  });

  it('the token appears in no workload environment or argv, audit line or agent log', async () => {
    const r = await runInCgroup(bound, 'sh', ['-c', 'tr "\\0" "\\n" < /proc/$$/environ; tr "\\0" " " < /proc/$$/cmdline']);
    expect(r.code).toBe(0);
    expect(r.stdout).not.toContain(token);
    expect(readFileSync(auditPath(), 'utf8')).not.toContain(token);
    expect(agent.output()).not.toContain(token);
    expect(agent.output()).toContain('ready');
  });

  it('SIGHUP applies a valid policy whole, and a bad one leaves the running policy in force', async () => {
    const bad = path.join(policyDir, 'zz-bad.yaml');
    writeFileSync(bad, 'apiVersion: wirekey.dev/v1alpha1\nkind: Binding\nmetadata: {name: broken}\nspec: {workload: nobody}\n');
    expect(await agent.reload()).toBe('failed');
    expect(agent.output()).toMatch(new RegExp(`${bad}:\\d+:\\d+: `));
    let before = upstream.records.length;
    expect((await curl(bound, ['--cacert', wirekeyCa, `https://${HOST}/after-bad-reload`])).stderr).toBe('');
    expect((await newRecords(before))[0]?.authorization).toEqual([expectedAuth]);

    rmSync(bad);
    const rotated = `wk-canary-${randomBytes(16).toString('hex')}`;
    const rotatedFile = path.join(dir, 'token-2');
    writeFileSync(rotatedFile, rotated, { mode: 0o600 });
    writePolicy(rotatedFile);
    try {
      expect(await agent.reload()).toBe('reloaded');
      before = upstream.records.length;
      expect((await curl(bound, ['--cacert', wirekeyCa, `https://${HOST}/after-reload`])).stderr).toBe('');
      expect((await newRecords(before))[0]?.authorization).toEqual([sha256(`Bearer ${rotated}`)]);
      expect(agent.output()).not.toContain(rotated);
    } finally {
      writePolicy(f.tokenFile);
      expect(await agent.reload()).toBe('reloaded');
    }
  });

  it('after wirekey run exits, no program stays attached and no pin remains', async () => {
    expect(existsSync(pinDir)).toBe(true);
    const code = await agent.stop();
    f.agentStopped = true;
    expect(code).toBe(0);
    expect(existsSync(pinDir)).toBe(false);
    // identity (3 tracepoints, 2 iterators), redirect (connect4/6,
    // getpeername4/6, sockops, bind4/6), egress (sendmsg4/6, sock_create,
    // setsockopt, cgroup_skb egress) and, where the probes find what it needs, the kernel HTTP
    // datapath (4, the socket-memory watch, and the failed-push watch where
    // the kernel has BPF trampolines)
    const kernelHttp = kernelHttpSkipReason() ? 0 : 5 + (pushWatchSkipReason() ? 0 : 1);
    expect(agent.programIds).toHaveLength(17 + kernelHttp);
    // Tracing programs are freed after an RCU grace period: wait for each to go.
    for (const id of agent.programIds) {
      await eventually(async () => (await run('bpftool', ['prog', 'show', 'id', String(id)])).code !== 0, 30_000, `program ${id} to be unloaded`);
    }
    // bpftool prints nothing at all when no program is attached.
    const cgJson = (await must('bpftool', ['-j', 'cgroup', 'show', cgRoot])).trim();
    const cg = (cgJson ? JSON.parse(cgJson) : []) as { id: number }[];
    expect(cg.filter((p) => agent.programIds.includes(p.id))).toEqual([]);
    // And the bound workload now goes straight to the upstream, with no token.
    const before = upstream.records.length;
    const after = await curl(bound, ['--cacert', pki.caCert, `https://${HOST}/after`]);
    expect(after.stderr).toBe('');
    const [rec] = await newRecords(before);
    expect(rec?.authorization).toEqual([]);
    expect(agent.output()).not.toContain(token);
  });
});
