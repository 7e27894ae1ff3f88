/**
 * The proxy datapath under attack: bound workloads that control every byte
 * they send try to get a credential sent somewhere it is not bound, read
 * back a credential they did not get legitimately (their own, or another
 * workload's), keep using a revoked binding, or stop the agent for
 * everyone. The upstream gives bodies back (POST /echo, GET /stored), the
 * realistic worst case for a credential that ends up in a body.
 *
 * Each attack asserts what the workload got back, what the upstream
 * received, and the audit line of every refusal.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { E2eFixture, HOST, OTHER, sha256 } from '../support/e2e-fixture.js';
import { kernelSkipReason } from '../support/requirements.js';
import { spawn } from 'node:child_process';
import { TlsSession } from '../support/tls-session.js';
import { createTestHost } from '../support/netns.js';
import { runInCgroup } from '../support/cgroup.js';
import { repoRoot, wirekeyBin, type RunningAgent } from '../support/agent.js';
import { eventually, waitFor } from '../support/wait.js';
import { run } from '../support/shell.js';

const skip = kernelSkipReason();

/** What `wirekey run` is started with here: short deadlines and small caps, so each bound is reached quickly. */
const LIMITS = ['--handshake-timeout', '3s', '--max-handshakes', '3', '--max-connections-per-workload', '6', '--idle-timeout', '6s'];

describe.skipIf(skip)(`adversarial: the proxy datapath${skip ? ` (skipped: ${skip})` : ''}`, () => {
  const f = new E2eFixture();
  const tokens = {
    alice: f.token,
    bob: `wk-canary-bob-${randomBytes(12).toString('hex')}`,
    keyed: `wk-canary-keyed-${randomBytes(12).toString('hex')}`,
  };
  const file = (name: string) => path.join(f.dir, `${name}-token`);
  let cg: { alice: string; bob: string; keyed: string; crowd: string; broken: string };
  let agent: RunningAgent;

  const policy = (opts: { aliceBound?: boolean } = {}) => `apiVersion: wirekey.dev/v1alpha1
kind: CredentialSource
metadata: {name: bob-token}
spec: {file: {path: ${file('bob')}}}
---
apiVersion: wirekey.dev/v1alpha1
kind: CredentialSource
metadata: {name: keyed-token}
spec: {file: {path: ${file('keyed')}}}
---
apiVersion: wirekey.dev/v1alpha1
kind: CredentialSource
metadata: {name: broken-token}
spec: {file: {path: ${file('broken')}}}
---
${['alice', 'bob', 'keyed', 'crowd', 'broken'].map((w) => `apiVersion: wirekey.dev/v1alpha1
kind: Workload
metadata: {name: ${w}}
spec: {selector: {cgroup: ${f.cgBase}/${w}}}
---
`).join('')}${opts.aliceBound === false ? '' : `apiVersion: wirekey.dev/v1alpha1
kind: Binding
metadata: {name: alice-api}
spec: {workload: alice, service: api, inject: {bearer: {credential: api-token}}}
---
`}apiVersion: wirekey.dev/v1alpha1
kind: Binding
metadata: {name: bob-api}
spec: {workload: bob, service: api, inject: {bearer: {credential: bob-token}}}
---
apiVersion: wirekey.dev/v1alpha1
kind: Binding
metadata: {name: keyed-api}
spec: {workload: keyed, service: api, inject: {header: {credential: keyed-token, name: X-Api-Key}}}
---
apiVersion: wirekey.dev/v1alpha1
kind: Binding
metadata: {name: crowd-api}
spec: {workload: crowd, service: api, inject: {bearer: {credential: bob-token}}}
---
apiVersion: wirekey.dev/v1alpha1
kind: Binding
metadata: {name: broken-api}
spec: {workload: broken, service: api, inject: {bearer: {credential: broken-token}}}
`;

  const sessions: TlsSession[] = [];
  const open = (cgroup: string, host = HOST) => {
    const s = new TlsSession(cgroup, host, f.host.ipv4, 443, f.bothCas);
    sessions.push(s);
    return s;
  };
  /** Every token that appears in `text`. */
  const leaked = (text: string) => Object.entries(tokens).filter(([, t]) => text.includes(t)).map(([w]) => w);
  const audit = () => readFileSync(f.auditPath, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>);
  /** The deny lines of `reason`, once the agent has written every line recorded so far. */
  const denials = async (reason: string) => {
    await f.settled();
    return audit().filter((e) => e.decision === 'deny' && e.reason === reason);
  };
  const request = (method: string, target: string, headers: string[] = [], body = '') =>
    `${method} ${target} HTTP/1.1\r\nHost: ${HOST}\r\n${headers.map((h) => `${h}\r\n`).join('')}` +
    `${body ? `Content-Length: ${Buffer.byteLength(body, 'latin1')}\r\n` : ''}\r\n${body}`;
  /** A complete request, as a body: what a smuggling attempt wants the upstream to take as a request of its own. */
  const planted = request('POST', '/echo', [], '').replace('\r\n\r\n', '\r\nContent-Length: 300\r\n\r\n');

  beforeAll(async () => {
    await f.setUp();
    cg = { alice: f.cgroup('alice'), bob: f.cgroup('bob'), keyed: f.cgroup('keyed'), crowd: f.cgroup('crowd'), broken: f.cgroup('broken') };
    writeFileSync(file('bob'), `${tokens.bob}\n`, { mode: 0o600 });
    writeFileSync(file('keyed'), `${tokens.keyed}\n`, { mode: 0o600 });
    // A value no header can carry: the binding that uses it is withheld, nothing else is affected.
    writeFileSync(file('broken'), 'first-line\nInjected: header\n', { mode: 0o600 });
    f.writePolicy(policy());
    agent = await f.startAgent({ extraArgs: LIMITS });
  });

  afterAll(async () => {
    for (const s of sessions) s.close();
    await f.close();
  });

  it('a Connection header that lists a header wirekey checks or sets is refused, and nothing goes upstream', async () => {
    const before = f.upstream.records.length;
    for (const [cgroup, token] of [[cg.alice, 'content-length'], [cg.alice, 'host'], [cg.alice, 'authorization'], [cg.alice, 'transfer-encoding'],
      [cg.alice, 'te'], [cg.keyed, 'x-api-key'], [cg.alice, 'Content-Length, keep-alive']] as const) {
      const s = open(cgroup);
      s.send(request('POST', '/echo', [`Connection: ${token}`], planted));
      const r = await s.read('POST');
      expect(r.status, token).toBe(400);
      expect(r.headers).toContainEqual(['x-wirekey-error', 'connection-names-protected']);
      expect((await s.eof()).closed).toBe(true);
      s.close();
    }
    expect(f.upstream.records.length).toBe(before);
    expect((await denials('connection-names-protected')).length).toBeGreaterThanOrEqual(7);
  });

  it('framing the proxy cannot be sure of is refused: TE other than chunked, "_" in names, CL+TE, duplicate CL', async () => {
    const before = f.upstream.records.length;
    const chunkedPlant = `${planted.length.toString(16)}\r\n${planted}\r\n0\r\n\r\n`;
    const cases: [string, number, string | string[]][] = [
      [request('POST', '/echo', ['Transfer-Encoding: gzip, chunked']) + chunkedPlant, 400, 'bad-transfer-encoding'],
      [request('POST', '/echo', ['Transfer-Encoding: chunked', 'Transfer-Encoding: chunked']) + chunkedPlant, 400, ['malformed-request', 'bad-transfer-encoding']],
      [request('POST', '/echo', ['Transfer_Encoding: chunked'], planted), 400, 'bad-header-name'],
      [request('POST', '/echo', ['Content_Length: 3'], planted), 400, 'bad-header-name'],
      [request('POST', '/echo', ['Transfer-Encoding: chunked'], '').replace('\r\n\r\n', `\r\nContent-Length: ${chunkedPlant.length}\r\n\r\n`) + chunkedPlant, 400, ['malformed-request', 'ambiguous-length']],
      [request('POST', '/echo', [`Content-Length: ${planted.length}`], planted), 400, ['malformed-request', 'ambiguous-length']],
    ];
    for (const [raw, status, code] of cases) {
      const s = open(cg.alice);
      s.send(raw);
      const r = await s.read('POST');
      expect(r.status, raw.split('\r\n').slice(0, 4).join(' | ')).toBe(status);
      const got = r.headers?.find(([name]) => name === 'x-wirekey-error')?.[1];
      expect([code].flat()).toContain(got);
      s.close();
    }
    expect(f.upstream.records.length).toBe(before);
  });

  it('echo: a body holding a whole request comes back as that body and nothing more; bob\'s credential never reaches alice', async () => {
    const alice = open(cg.alice);
    alice.send(request('POST', '/echo', [], planted));
    const echoed = await alice.read('POST');
    expect(echoed.status).toBe(200);
    expect(echoed.body).toBe(planted);
    // Another workload uses the same service now, with its own credential.
    const bob = open(cg.bob);
    bob.send(request('GET', '/after-plant'));
    expect((await bob.read()).status).toBe(200);
    bob.send(request('POST', '/echo', [], 'bob-body'));
    expect((await bob.read('POST')).body).toBe('bob-body');
    // Whatever alice can read back holds no credential.
    alice.send(request('GET', '/stored'));
    const stored = await alice.read();
    expect(stored.status).toBe(200);
    expect(leaked(JSON.stringify([echoed, stored]))).toEqual([]);
  });

  it('upstream connections are never shared across workloads, or across credential versions', async () => {
    const before = f.upstream.records.length;
    for (let i = 0; i < 3; i++) {
      for (const w of ['alice', 'bob'] as const) {
        const s = open(cg[w]);
        s.send(request('GET', `/${w}/${i}`, ['Connection: close']));
        expect((await s.read()).status).toBe(200);
        s.close();
      }
    }
    await waitFor(() => f.upstream.records.length >= before + 6, 'six upstream records');
    const recs = f.upstream.records.slice(before);
    const ports = (w: string) => new Set(recs.filter((r) => r.url.startsWith(`/${w}/`)).map((r) => r.remotePort));
    for (const p of ports('alice')) expect(ports('bob').has(p)).toBe(false);
    // Connections are reused within a partition (keep-alive still works).
    expect(ports('alice').size).toBeLessThan(3);
    for (const r of recs.filter((x) => x.url.startsWith('/alice/'))) expect(r.authorization).toEqual([sha256(`Bearer ${tokens.alice}`)]);
    for (const r of recs.filter((x) => x.url.startsWith('/bob/'))) expect(r.authorization).toEqual([sha256(`Bearer ${tokens.bob}`)]);

    // bob and crowd share a credential but not a binding: separate connections too.
    const crowd = open(cg.crowd);
    crowd.send(request('GET', '/crowd/0'));
    expect((await crowd.read()).status).toBe(200);
    await waitFor(() => f.upstream.records.some((r) => r.url === '/crowd/0'), 'the crowd request upstream');
    const crowdPort = f.upstream.records.find((r) => r.url === '/crowd/0')?.remotePort;
    expect(ports('bob').has(crowdPort as number)).toBe(false);

    // A rotated credential starts a new upstream connection.
    const rotated = `wk-canary-bob2-${randomBytes(12).toString('hex')}`;
    writeFileSync(file('bob'), `${rotated}\n`, { mode: 0o600 });
    f.onClose(() => writeFileSync(file('bob'), `${tokens.bob}\n`, { mode: 0o600 }));
    let rotatedRecord: (typeof recs)[number] | undefined;
    for (let i = 0; !rotatedRecord && i < 100; i++) {
      const s = open(cg.bob);
      s.send(request('GET', `/bob/rotated/${i}`, ['Connection: close']));
      expect((await s.read()).status).toBe(200);
      s.close();
      await waitFor(() => f.upstream.records.some((r) => r.url === `/bob/rotated/${i}`), 'the rotated request upstream');
      rotatedRecord = f.upstream.records.find((r) => r.url === `/bob/rotated/${i}` && r.authorization[0] === sha256(`Bearer ${rotated}`));
    }
    expect(rotatedRecord).toBeDefined();
    expect(ports('bob').has(rotatedRecord?.remotePort as number)).toBe(false);
    writeFileSync(file('bob'), `${tokens.bob}\n`, { mode: 0o600 });
  });

  it('a binding removed by a reload refuses the next request on an open keep-alive connection, and closes it', async () => {
    const s = open(cg.alice);
    s.send(request('GET', '/before-reload'));
    expect((await s.read()).status).toBe(200);
    const before = f.upstream.records.length;
    f.writePolicy(policy({ aliceBound: false }));
    expect(await agent.reload()).toBe('reloaded');
    s.send(request('GET', '/after-reload'));
    const r = await s.read().finally(async () => {
      f.writePolicy(policy());
      await agent.reload();
    });
    expect(r.status).toBe(403);
    expect(r.headers).toContainEqual(['x-wirekey-error', 'binding-changed']);
    expect((await s.eof()).closed).toBe(true);
    expect(f.upstream.records.slice(before).map((x) => x.url)).not.toContain('/after-reload');
    expect((await denials('binding-changed')).some((e) => e.workload === 'alice' && e.path === '/after-reload')).toBe(true);

    // A workload whose binding did not change keeps its open connection across a reload.
    const bob = open(cg.bob);
    bob.send(request('GET', '/bob-before'));
    expect((await bob.read()).status).toBe(200);
    f.writePolicy(policy({ aliceBound: false }));
    expect(await agent.reload()).toBe('reloaded');
    f.writePolicy(policy());
    expect(await agent.reload()).toBe('reloaded');
    bob.send(request('GET', '/bob-after'));
    expect((await bob.read()).status).toBe(200);
  });

  it('a credential that cannot be a header value is withheld with a reason; the agent and every other binding carry on', async () => {
    const s = open(cg.broken);
    s.send(request('GET', '/broken'));
    const r = await s.read();
    expect(r.status).toBe(503);
    expect(r.headers).toContainEqual(['x-wirekey-error', 'credential-unavailable']);
    // The workload learns which credential, never where it lives.
    expect(r.body).toContain('broken-token');
    expect(r.body).not.toContain(f.dir);
    expect(agent.output()).toMatch(/binding broken-api withholds its credential: credential "broken-token": cannot be sent in the Authorization header: it holds a control character/);
    expect(audit().filter((e) => e.decision === 'withhold' && e.binding === 'broken-api')).not.toEqual([]);
    const bob = open(cg.bob);
    bob.send(request('GET', '/still-up'));
    expect((await bob.read()).status).toBe(200);
  });

  it('WebSocket upgrades are judged like requests: a withheld credential, a Connection listing Authorization, h2c; nothing goes upstream', async () => {
    const ws = ['Upgrade: websocket', 'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==', 'Sec-WebSocket-Version: 13'];
    const before = f.upstream.records.length;
    const cases: [string, string, string[], number, string][] = [
      [cg.broken, '/ws/broken', ['Connection: Upgrade', ...ws], 503, 'credential-unavailable'],
      [cg.alice, '/ws/listed', ['Connection: Upgrade, Authorization', ...ws, 'Authorization: Bearer mine'], 400, 'connection-names-protected'],
      [cg.alice, '/ws/h2c', ['Connection: Upgrade, HTTP2-Settings', 'Upgrade: h2c', 'HTTP2-Settings: AAMAAABkAAQAAP__'], 501, 'upgrade-unsupported'],
    ];
    for (const [cgroup, target, headers, status, code] of cases) {
      const s = open(cgroup);
      s.send(request('GET', target, headers));
      const r = await s.read();
      expect(r.status, target).toBe(status);
      expect(r.headers, target).toContainEqual(['x-wirekey-error', code]);
      expect((await denials(code)).some((e) => e.path === target), target).toBe(true);
      s.close();
    }
    expect(await f.recordsSince(before)).toEqual([]);
  });

  it('reflection: an upstream that echoes the request gives the credential back masked, in its head, in a body cut inside it, chunked, and over HTTP/2', async () => {
    const alice = open(cg.alice);
    const keyed = open(cg.keyed);
    const stars = (t: string) => '*'.repeat(t.length);
    const cases: Array<[TlsSession, string, string, string]> = [
      [alice, 'GET', request('GET', '/reflect'), tokens.alice],
      [alice, 'GET', request('GET', '/reflect?split=mid'), tokens.alice],
      // A coded body could not be scanned: the upstream is asked for identity.
      [alice, 'GET', request('GET', '/reflect?split=mid', ['Accept-Encoding: gzip']), tokens.alice],
      // A chunked upload takes Node's server path and undici.
      [alice, 'POST', `${request('POST', '/reflect?split=mid', ['Transfer-Encoding: chunked'])}3\r\nabc\r\n0\r\n\r\n`, tokens.alice],
      [keyed, 'GET', request('GET', '/reflect?split=mid'), tokens.keyed],
    ];
    for (const [session, method, bytes, token] of cases) {
      session.send(bytes);
      const r = await session.read(method);
      expect(r.status, bytes).toBe(200);
      expect(leaked(JSON.stringify(r)), bytes).toEqual([]);
      expect(r.body, bytes).toContain(stars(token));
      expect(r.headers?.find(([n]) => n.toLowerCase() === 'x-reflected')?.[1], bytes).toContain(stars(token));
      expect(r.headers?.some(([n]) => n.toLowerCase() === 'content-encoding'), bytes).toBe(false);
      if (bytes.includes('gzip')) expect(r.body, bytes).toContain('"Accept-Encoding","identity"');
    }
    const h2 = await runInCgroup(cg.alice, 'curl', ['-sS', '--http2', '-D', '-', '--cacert', f.bothCas, '--resolve', `${HOST}:443:${f.host.ipv4}`, `https://${HOST}/reflect?split=mid`]);
    expect(h2.stdout).toContain('HTTP/2 200');
    expect(leaked(h2.stdout + h2.stderr)).toEqual([]);
    expect(h2.stdout).toContain(stars(tokens.alice));
    // Each response says in its audit line that it was masked: the head's X-Reflected and the body.
    await f.settled();
    const lines = audit().filter((e) => e.decision === 'inject' && e.path === '/reflect');
    expect(lines).toHaveLength(cases.length + 1);
    for (const l of lines) expect(l.masked).toBeGreaterThanOrEqual(2);
    const metrics = await run('curl', ['-sS', '--unix-socket', path.join(f.stateDir, 'agent.sock'), 'http://wirekey/metrics']);
    const counted = (w: string) => Number(metrics.stdout.split('\n')
      .find((l) => l.startsWith('wirekey_proxy_credential_reflections_total{') && l.includes(`workload="${w}"`))?.split(' ').at(-1) ?? 0);
    const masked = (w: string) => lines.filter((l) => l.workload === w).reduce((n, l) => n + (l.masked as number), 0);
    expect(counted('alice')).toBe(masked('alice'));
    expect(counted('keyed')).toBe(masked('keyed'));
  });

  it('methods that echo and routing hints: TRACE, TRACK and overrides naming them refused; Forwarded and X-Forwarded-* never reach the upstream', async () => {
    const before = f.upstream.records.length;
    // TRACK is not a method Node's parser knows: refused as malformed before any check.
    for (const [raw, status, code] of [[request('TRACK', '/'), 400, 'malformed-request'], [request('TRACE', '/'), 405, 'method-not-allowed'],
      [request('POST', '/echo', ['X-HTTP-Method-Override: TRACE'], 'x'), 405, 'method-not-allowed']] as const) {
      const s = open(cg.alice);
      s.send(raw);
      const r = await s.read();
      expect(r.status).toBe(status);
      expect(r.headers).toContainEqual(['x-wirekey-error', code]);
    }
    expect(f.upstream.records.length).toBe(before);
    const s = open(cg.alice);
    s.send(request('GET', '/hints', ['Forwarded: host=evil.example', 'X-Forwarded-Host: evil.example', 'X-Forwarded-For: 203.0.113.9',
      'X-Original-URL: /admin', 'X-Rewrite-URL: /admin', 'X-Custom: kept']));
    expect((await s.read()).status).toBe(200);
    await waitFor(() => f.upstream.records.length > before, 'the hinted request upstream');
    const rec = f.upstream.records.slice(before).find((x) => x.url === '/hints');
    expect(rec?.headerNames).toContain('x-custom');
    for (const h of ['forwarded', 'x-forwarded-host', 'x-forwarded-for', 'x-original-url', 'x-rewrite-url']) expect(rec?.headerNames).not.toContain(h);
  });

  it('previously defeated: Host and absolute targets naming another host, and direct connections to the proxy port', async () => {
    for (const raw of [
      request('GET', '/').replace(`Host: ${HOST}`, `Host: ${OTHER}`),
      request('GET', `https://${OTHER}/`),
      request('GET', '/').replace(`Host: ${HOST}`, `Host: ${HOST}:8443`),
    ]) {
      const s = open(cg.alice);
      s.send(raw);
      const r = await s.read();
      expect(r.status).toBe(421);
      expect(r.headers).toContainEqual(['x-wirekey-error', 'host-mismatch']);
    }
    // An absolute target the check accepts (its host normalised: percent-decoded, a trailing dot dropped)
    // goes upstream in origin-form, so no front there can route by a spelling the check did not read.
    const before = f.upstream.records.length;
    for (const target of [`https://${HOST.replaceAll('.', '%2E')}/abs/1?q=1`, `https://${HOST}.:443/abs/2`]) {
      const s = open(cg.alice);
      s.send(request('GET', target));
      expect((await s.read()).status, target).toBe(200);
      // Closed: the workload's connections are capped (LIMITS), and later tests open their own.
      s.close();
    }
    await waitFor(() => f.upstream.records.length >= before + 2, 'the two absolute-form requests upstream');
    expect(f.upstream.records.slice(before).map((x) => x.url)).toEqual(['/abs/1?q=1', '/abs/2']);
    // Straight to the proxy port, from a bound workload: the kernel did not redirect it, so it gets nothing.
    const direct = await runInCgroup(cg.alice, 'curl', ['-sS', '-k', '--max-time', '5', '--resolve', `${HOST}:${f.proxyPort}:127.0.0.1`, `https://${HOST}:${f.proxyPort}/`]);
    expect(direct.code).not.toBe(0);
    expect(leaked(direct.stdout + direct.stderr)).toEqual([]);
  });

  it('a ClientHello cut into 1-byte records is read whole; one that stalls is closed at the handshake deadline', async () => {
    const script = path.join(repoRoot, 'test/support/clients/tls-hello.py');
    const split = await runInCgroup(cg.alice, 'python3', [script, 'split', HOST, f.host.ipv4, '443', f.bothCas]);
    expect(JSON.parse(split.stdout)).toEqual({ status: 200 });
    const before = (await denials('handshake-timeout')).length;
    const stall = await runInCgroup(cg.alice, 'python3', [script, 'stall', HOST, f.host.ipv4, '443', f.bothCas]);
    expect(stall.stdout.trim().split('\n').map((l) => JSON.parse(l))).toEqual([{ sent: true }, { closed: true }]);
    expect((await denials('handshake-timeout')).length).toBe(before + 1);
  });

  it('handshakes and connections per workload are capped: the one over the cap is closed and audited; no workload takes every handshake slot', async () => {
    const script = path.join(repoRoot, 'test/support/clients/tls-hello.py');
    const stall = (where: string) => {
      const child = spawn('sh', ['-c', 'echo $$ > "$0/cgroup.procs" && exec "$@"', where, 'python3', script, 'stall', HOST, f.host.ipv4, '443', f.bothCas],
        { stdio: ['ignore', 'pipe', 'inherit'] });
      const sent = new Promise<void>((resolve) => child.stdout.once('data', () => resolve()));
      const done = new Promise<void>((resolve) => child.once('exit', () => resolve()));
      return { child, sent, done };
    };
    // --max-handshakes 3: one workload may hold one of them (half, rounded
    // down), so of two stalled handshakes of alice's, one is closed at once.
    const alice = [stall(cg.alice), stall(cg.alice)];
    await Promise.race(alice.map((x) => x.done));
    expect((await denials('too-many-handshakes')).some((e) => e.workload === 'alice')).toBe(true);
    // Stalled handshakes of three workloads fill all three: the next connection is closed at once.
    const others = [stall(cg.keyed), stall(cg.crowd)];
    await Promise.all([...alice, ...others].map((x) => x.sent));
    const probe = open(cg.bob);
    expect((await probe.hello()).error).toBeDefined();
    expect((await denials('too-many-handshakes')).some((e) => e.workload === 'bob')).toBe(true);
    await Promise.all([...alice, ...others].map((x) => x.done));

    // Six open connections of one workload fill --max-connections-per-workload 6.
    // One at a time: together they would be more handshakes than --max-handshakes 3.
    const held: TlsSession[] = [];
    for (let i = 0; i < 6; i++) {
      const s = open(cg.keyed);
      expect(await s.hello()).toEqual({ connected: true });
      held.push(s);
    }
    const seventh = open(cg.keyed);
    expect((await seventh.hello()).error).toBeDefined();
    expect((await denials('too-many-connections')).some((e) => e.workload === 'keyed')).toBe(true);
    // Another workload is not affected.
    const bob = open(cg.bob);
    bob.send(request('GET', '/other-workload'));
    expect((await bob.read()).status).toBe(200);
    for (const s of held) s.close();
  });

  it('idle connections are closed: terminated, and relayed (a server name no binding names)', async () => {
    const terminated = open(cg.alice);
    expect(await terminated.hello()).toEqual({ connected: true });
    expect((await terminated.eof()).closed).toBe(true);
    const relayed = open(cg.alice, OTHER);
    expect(await relayed.hello()).toEqual({ connected: true });
    expect((await relayed.eof()).closed).toBe(true);
  });

  it('an idle WebSocket is closed at --idle-timeout, and its close audited', async () => {
    const client = path.join(repoRoot, 'test/support/clients/ws-client.mjs');
    // It sends one message, then waits on its stdin (never written): idle both ways.
    const child = spawn('sh', ['-c', 'echo $$ > "$0/cgroup.procs" && exec "$@"', cg.alice, process.execPath, client,
      HOST, f.host.ipv4, f.wirekeyCa, '/ws/idle', 'text:3', 'pause'], { stdio: ['pipe', 'pipe', 'inherit'] });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    try {
      await exited;
      const result = JSON.parse(out.split('\n').filter(Boolean).at(-1)!) as { status: number; messages: unknown[]; closeCode: number };
      expect(result).toMatchObject({ status: 101, closeCode: 1006 });
      expect(result.messages).toHaveLength(1);
      const close = await eventually(async () => audit().find((e) => e.decision === 'close' && e.path === '/ws/idle'), 10_000, 'the close line');
      expect(close).toMatchObject({ workload: 'alice', reason: 'idle', status: 101 });
    } finally {
      child.kill('SIGKILL');
      await exited;
    }
  });

  it('fuzz: random requests and random ClientHellos never stop the agent, and nothing sent back holds a credential', async () => {
    const script = path.join(repoRoot, 'test/support/clients/fuzz-proxy.py');
    const seed = Number.parseInt(randomBytes(4).toString('hex'), 16);
    for (const [mode, n] of [['requests', 150], ['hellos', 150]] as const) {
      const r = await runInCgroup(cg.alice, 'python3', [script, mode, String(seed), String(n), HOST, f.host.ipv4, '443', f.bothCas], { timeoutMs: 300_000 });
      expect(r.code, `${mode} seed ${seed}: ${r.stderr}`).toBe(0);
      const out = JSON.parse(r.stdout) as { cases: number; received: string };
      expect(out.cases).toBe(n);
      expect(leaked(out.received), `${mode} seed ${seed}`).toEqual([]);
    }
    // Still up, still injecting.
    const bob = open(cg.bob);
    bob.send(request('GET', '/after-fuzz'));
    expect((await bob.read()).status).toBe(200);
    expect(agent.output()).not.toMatch(/inside the proxy/);
  });

  it('an upstream that refuses or resets the connection is one answer: no errno, address or port to scan with', async () => {
    const other = await createTestHost(`${f.tag.slice(0, 3)}x`);
    f.onClose(() => other.destroy());
    // On the namespace's IPv6 address only: a listener on 443 that resets every connection it accepts.
    const resetter = spawn('ip', ['netns', 'exec', other.ns, 'python3', '-c', `
import socket, struct, sys
s = socket.socket(socket.AF_INET6)
s.bind(('${other.ipv6}', 443))
s.listen(16)
print('ready', flush=True)
while True:
    c, _ = s.accept()
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))
    c.close()
`], { stdio: ['ignore', 'pipe', 'inherit'] });
    f.onClose(() => void resetter.kill());
    await new Promise<void>((resolve) => resetter.stdout.once('data', () => resolve()));
    const get = (address: string) => runInCgroup(cg.alice, 'curl', ['-sS', '--max-time', '10', '--resolve', `${HOST}:443:${address}`, '--cacert', f.bothCas,
      '-w', '\n%{http_code}', `https://${HOST}/oracle`]);
    const refused = await get(other.ipv4);
    const reset = await get(`[${other.ipv6}]`);
    expect(refused.stdout).toBe(`wirekey: upstream ${HOST} could not be reached\n\n502`);
    expect(reset.stdout).toBe(refused.stdout);
    expect(await denials('upstream-failed')).toEqual(expect.arrayContaining([expect.objectContaining({ workload: 'alice', reason: 'upstream-failed' })]));
  });

  it('previously defeated: a redirect to another host is followed without the credential', async () => {
    const before = f.upstream.records.length;
    const r = await f.curl(cg.alice, ['-L', '--cacert', f.bothCas, `https://${HOST}/redirect/${OTHER}`]);
    expect(r.code, r.stderr).toBe(0);
    await waitFor(() => f.upstream.records.some((x, i) => i >= before && x.url === '/landed'), 'the redirected request');
    const recs = f.upstream.records.slice(before);
    expect(recs.find((x) => x.url === `/redirect/${OTHER}`)?.authorization).toEqual([sha256(`Bearer ${tokens.alice}`)]);
    const landed = recs.find((x) => x.url === '/landed');
    expect(landed?.servername).toBe(OTHER);
    expect(landed?.authorization).toEqual([]);
  });

  it('previously defeated: a workload cannot forge audit lines through what it sends', async () => {
    await f.settled();
    const before = audit().length;
    const s = open(cg.alice);
    const forged = '/x?","decision":"inject","workload":"bob';
    s.send(request('GET', `/a","decision":"inject","workload":"bob","x":"`).replace(`Host: ${HOST}`, `Host: ${HOST}\r\nUser-Agent: "},{"decision":"inject"`));
    await s.read();
    s.send(request('GET', forged));
    await s.read();
    await waitFor(() => audit().length >= before + 2, 'two audit lines');
    const lines = audit().slice(before);
    expect(lines).toHaveLength(2);
    for (const l of lines) expect(l.workload).toBe('alice');
    expect(lines[0]?.path).toBe('/a","decision":"inject","workload":"bob","x":"');
  });

  it('previously defeated: no credential at rest in the state dir, the pins, or the agent\'s command line and environment', async () => {
    const files = (await run('sh', ['-c', `find ${f.stateDir} -type f -exec cat {} +`])).stdout;
    expect(leaked(files)).toEqual([]);
    for (const pin of (await run('sh', ['-c', `find ${f.pinDir} -type f`])).stdout.split('\n').filter(Boolean)) {
      const dump = await run('bpftool', ['map', 'dump', 'pinned', pin]);
      expect(leaked(dump.stdout + Buffer.from(dump.stdout.replace(/[^0-9a-f]/gi, ''), 'hex').toString('latin1')), pin).toEqual([]);
    }
    const pids = (await run('sh', ['-c', `pgrep -P ${agent.pid}; echo ${agent.pid}`])).stdout.split('\n').filter(Boolean);
    for (const pid of pids) {
      for (const what of ['cmdline', 'environ']) {
        const r = await run('cat', [`/proc/${pid}/${what}`]);
        expect(leaked(r.stdout), `${pid} ${what}`).toEqual([]);
      }
    }
  });

  it('wirekey status counts the proxy\'s refusals by code', async () => {
    const out = await eventually(async () => {
      const r = await run(process.execPath, [wirekeyBin, 'status', '--state-dir', f.stateDir]);
      return /proxy: .*refused: .*connection-names-protected \d+.*too-many-handshakes \d+/.test(r.stdout) && r.stdout;
    }, 20_000, 'status to show the refusals');
    expect(out).toMatch(/too-many-connections \d+/);
  });

  it('no credential in the agent\'s log or audit log', () => {
    const logs = agent.output() + readFileSync(f.auditPath, 'utf8');
    expect(leaked(logs)).toEqual([]);
    expect(logs).not.toContain('Injected: header');
  });
});
