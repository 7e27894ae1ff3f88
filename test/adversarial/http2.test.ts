/**
 * The proxy's HTTP/2 front under attack: a bound workload that controls
 * every frame it sends tries to get its credential sent to a host it is
 * not bound to (:authority, host), to smuggle connection-specific headers,
 * or to exhaust the agent (rapid reset, CONTINUATION floods, HPACK bombs,
 * more streams than allowed). Each attack asserts what the workload got
 * back, that nothing reached the upstream, the audit line where the proxy
 * saw the request, and that another workload is served meanwhile and
 * after.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { E2eFixture, HOST, OTHER, sha256 } from '../support/e2e-fixture.js';
import { kernelSkipReason } from '../support/requirements.js';
import { H2_UPSTREAM, startUpstream, type Upstream } from '../support/upstream.js';
import { h2Venv, hostsFile, NodeH2Client } from '../support/h2-clients.js';
import { runInCgroup } from '../support/cgroup.js';
import { repoRoot, type RunningAgent } from '../support/agent.js';
import { waitFor } from '../support/wait.js';

const skip = kernelSkipReason();
const H2_PORT = 8443;
const MAX_RESETS = 50;

interface AttackResult {
  responses: Record<string, { headers?: Record<string, string>; body?: string; ended?: boolean }>;
  resets: Record<string, number>;
  goaway: number | null;
  closed: boolean;
  sent?: number;
  encodedBytes?: number;
  opened?: number;
  pingAcks: number;
  settingsAcks: number;
}

describe.skipIf(skip)(`adversarial: HTTP/2${skip ? ` (skipped: ${skip})` : ''}`, () => {
  const f = new E2eFixture();
  const bobToken = `wk-canary-bob-${randomBytes(12).toString('hex')}`;
  const bobFile = () => path.join(f.dir, 'bob-token');
  let cg: { alice: string; bob: string };
  let agent: RunningAgent;
  let h2: Upstream;
  let venv: string;
  let hosts: string;
  const clients: NodeH2Client[] = [];

  const policy = (aliceBound = true) => `apiVersion: wirekey.dev/v1alpha1
kind: CredentialSource
metadata: {name: bob-token}
spec: {file: {path: ${bobFile()}}}
---
apiVersion: wirekey.dev/v1alpha1
kind: Service
metadata: {name: h2api}
spec: {hosts: [${OTHER}], port: ${H2_PORT}, tls: true}
---
${['alice', 'bob'].map((w) => `apiVersion: wirekey.dev/v1alpha1
kind: Workload
metadata: {name: ${w}}
spec: {selector: {cgroup: ${f.cgBase}/${w}}}
---
`).join('')}${aliceBound ? `apiVersion: wirekey.dev/v1alpha1
kind: Binding
metadata: {name: alice-api}
spec: {workload: alice, service: api, inject: {bearer: {credential: api-token}}}
---
apiVersion: wirekey.dev/v1alpha1
kind: Binding
metadata: {name: alice-h2}
spec: {workload: alice, service: h2api, inject: {bearer: {credential: api-token}}}
---
` : ''}apiVersion: wirekey.dev/v1alpha1
kind: Binding
metadata: {name: bob-api}
spec: {workload: bob, service: api, inject: {bearer: {credential: bob-token}}}
---
apiVersion: wirekey.dev/v1alpha1
kind: Binding
metadata: {name: bob-h2}
spec: {workload: bob, service: h2api, inject: {bearer: {credential: bob-token}}}
`;

  beforeAll(async () => {
    venv = await h2Venv();
    await f.setUp();
    h2 = await startUpstream(f.host, f.pki.serverCert, f.pki.serverKey, H2_PORT, H2_UPSTREAM);
    f.onClose(() => h2.stop());
    cg = { alice: f.cgroup('alice'), bob: f.cgroup('bob') };
    writeFileSync(bobFile(), `${bobToken}\n`, { mode: 0o600 });
    f.writePolicy(policy());
    hosts = hostsFile(f.dir, f.host.ipv4, [HOST, OTHER]);
    agent = await f.startAgent({ extraArgs: ['--h2-max-resets', String(MAX_RESETS)] });
  });

  afterAll(async () => {
    for (const c of clients) c.close();
    await f.close();
  });

  const audit = () => readFileSync(f.auditPath, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>);
  const denials = (reason: string) => audit().filter((e) => e.decision === 'deny' && e.reason === reason);
  const attack = async (mode: string, arg: string, workload = cg.alice): Promise<AttackResult> => {
    const script = path.join(repoRoot, 'test/support/clients/h2-attack.py');
    const r = await runInCgroup(workload, path.join(venv, 'bin/python'), [script, mode, HOST, f.host.ipv4, '443', f.bothCas, arg], { timeoutMs: 120_000 });
    expect(r.code, `${mode}: ${r.stderr}`).toBe(0);
    return JSON.parse(r.stdout) as AttackResult;
  };
  const base = (authority = HOST, urlPath = '/') => [[':method', 'GET'], [':scheme', 'https'], [':authority', authority], [':path', urlPath]];
  /** bob, over HTTP/2, while or after alice attacks: served, with his own credential. */
  const bobServed = async (tag: string) => {
    const before = f.upstream.records.length;
    const r = await f.curl(cg.bob, ['--http2', '--cacert', f.wirekeyCa, '-w', '\n%{http_version}', `https://${HOST}/bob/${tag}`]);
    expect(r.stderr, tag).toBe('');
    expect(r.stdout.split('\n')[1]).toBe('2');
    await f.upstream.sync();
    const rec = f.upstream.records.slice(before).find((x) => x.url === `/bob/${tag}`);
    expect(rec?.authorization).toEqual([sha256(`Bearer ${bobToken}`)]);
  };
  const nothingUpstream = async (before: number, prefix: string) => {
    await f.upstream.sync();
    expect(f.upstream.records.slice(before).filter((x) => x.url.startsWith(prefix))).toEqual([]);
  };

  it(':authority naming another host than the SNI, and a host header disagreeing with :authority, are refused (421 host-mismatch)', async () => {
    const before = f.upstream.records.length;
    const cases: [string, string[][]][] = [
      ['/authority-other', base(OTHER, '/authority-other')],
      ['/authority-port', base(`${HOST}:8443`, '/authority-port')],
      ['/host-disagrees', [...base(HOST, '/host-disagrees'), ['host', OTHER]]],
      ['/host-only-other', [[':method', 'GET'], [':scheme', 'https'], [':path', '/host-only-other'], ['host', OTHER]]],
    ];
    for (const [p, headers] of cases) {
      const r = await attack('headers', JSON.stringify(headers));
      const res = r.responses['1'];
      expect(res?.headers?.[':status'], p).toBe('421');
      expect(res?.headers?.['x-wirekey-error'], p).toBe('host-mismatch');
      expect(denials('host-mismatch').some((e) => e.path === p && e.workload === 'alice'), p).toBe(true);
    }
    await nothingUpstream(before, '/');
  });

  it('connection-specific headers, a te other than trailers, bad pseudo-headers and CONNECT are refused: a 4xx or RST_STREAM, never forwarded', async () => {
    const before = f.upstream.records.length;
    const cases: [string, string[][]][] = [
      ['connection', [...base(HOST, '/c1'), ['connection', 'keep-alive']]],
      ['keep-alive', [...base(HOST, '/c2'), ['keep-alive', 'timeout=5']]],
      ['proxy-connection', [...base(HOST, '/c3'), ['proxy-connection', 'keep-alive']]],
      ['transfer-encoding', [...base(HOST, '/c4'), ['transfer-encoding', 'chunked']]],
      ['upgrade', [...base(HOST, '/c5'), ['upgrade', 'websocket']]],
      ['te gzip', [...base(HOST, '/c6'), ['te', 'gzip']]],
      ['upper-case name', [...base(HOST, '/c7'), ['X-Upper', 'x']]],
      ['underscore name', [...base(HOST, '/c8'), ['x_forwarded_host', OTHER]]],
      [':scheme http', [[':method', 'GET'], [':scheme', 'http'], [':authority', HOST], [':path', '/c9']]],
      [':path absolute', base(HOST, `https://${OTHER}/c10`)],
      ['unknown pseudo', [...base(HOST, '/c11'), [':protocol', 'websocket']]],
      ['duplicate :path', [...base(HOST, '/c12'), [':path', '/c12b']]],
      ['pseudo after regular', [[':method', 'GET'], [':scheme', 'https'], ['x-a', 'b'], [':authority', HOST], [':path', '/c13']]],
      ['CONNECT', [[':method', 'CONNECT'], [':authority', `${HOST}:443`]]],
      ['TRACE', [[':method', 'TRACE'], [':scheme', 'https'], [':authority', HOST], [':path', '/c15']]],
      // Checked as spelt, sent upper-cased by an HTTP/1.1 client: refused.
      ['trace', [[':method', 'trace'], [':scheme', 'https'], [':authority', HOST], [':path', '/c16']]],
      ['get', [[':method', 'get'], [':scheme', 'https'], [':authority', HOST], [':path', '/c17']]],
    ];
    for (const [what, headers] of cases) {
      const r = await attack('headers', JSON.stringify(headers));
      const res = r.responses['1'];
      if (res?.headers) {
        expect(Number(res.headers[':status']), what).toBeGreaterThanOrEqual(400);
        expect(Number(res.headers[':status']), what).toBeLessThan(500);
        expect(res.headers['x-wirekey-error'], what).toMatch(/^(malformed-request|bad-target|bad-header-name|method-not-allowed)$/);
      } else {
        // Node's HTTP/2 layer refused it before wirekey saw it: PROTOCOL_ERROR.
        expect(r.resets['1'] ?? r.goaway, what).toBe(1);
      }
    }
    await nothingUpstream(before, '/');
    await bobServed('after-headers');
  });

  it('rapid reset: streams opened and reset at once get GOAWAY (ENHANCE_YOUR_CALM) past --h2-max-resets, audited; bob is served meanwhile', async () => {
    const [r] = await Promise.all([attack('rapid-reset', '5000'), bobServed('during-rapid-reset')]);
    // GOAWAY ENHANCE_YOUR_CALM; a client still writing may see the close (a reset) before it reads the GOAWAY.
    expect(r.goaway === 11 || (r.goaway === null && r.closed), JSON.stringify({ ...r, responses: undefined })).toBe(true);
    expect(denials('too-many-resets').some((e) => e.workload === 'alice')).toBe(true);
    await bobServed('after-rapid-reset');
  });

  it('a CONTINUATION flood (a header block that never ends) ends the connection; nothing goes upstream', async () => {
    const before = f.upstream.records.length;
    const [r] = await Promise.all([attack('continuation', '20000'), bobServed('during-continuation')]);
    expect(r.goaway !== null || r.closed).toBe(true);
    // The block was never accepted: no response, and the flood was cut off before it was all sent or read.
    expect(r.responses).toEqual({});
    await nothingUpstream(before, '/continuation');
    await bobServed('after-continuation');
  });

  it('an HPACK bomb (4 MB of headers in a few KB) is refused by the header list limit; nothing goes upstream', async () => {
    const before = f.upstream.records.length;
    const [r] = await Promise.all([attack('hpack-bomb', '1000'), bobServed('during-bomb')]);
    expect(r.encodedBytes).toBeLessThan(16 * 1024);
    const status = r.responses['1']?.headers?.[':status'];
    // A reset stream, a GOAWAY, or 431: never a forwarded request.
    expect(r.resets['1'] !== undefined || r.goaway !== null || r.closed || status === '431', JSON.stringify(r)).toBe(true);
    await nothingUpstream(before, '/bomb');
    await bobServed('after-bomb');
  });

  it('more streams than --h2-max-streams (100) at once: the excess is refused with REFUSED_STREAM', async () => {
    const [r] = await Promise.all([attack('streams', '150'), bobServed('during-streams')]);
    const codes = Object.values(r.resets);
    expect(codes.length).toBe(50);
    expect(new Set(codes)).toEqual(new Set([7]));
    await bobServed('after-streams');
  });

  it('floods of PING and SETTINGS frames sent before reading their acknowledgements, and of empty DATA frames: bounded work per frame (each answered, or the connection ended), the agent stays up, bob is served throughout', async () => {
    for (const [mode, acks] of [['ping-flood', 'pingAcks'], ['settings-flood', 'settingsAcks']] as const) {
      const [r] = await Promise.all([attack(mode, '200000'), bobServed(`during-${mode}`)]);
      const what = `${mode}: ${JSON.stringify({ ...r, responses: undefined })}`;
      expect(r.sent, what).toBe(200000);
      expect(r.goaway !== null || r.closed || r[acks] >= 200000, what).toBe(true);
      await bobServed(`after-${mode}`);
    }
    const before = f.upstream.records.length;
    const [r] = await Promise.all([attack('empty-data', '200000'), bobServed('during-empty-data')]);
    const what = `empty-data: ${JSON.stringify({ ...r, responses: undefined })}`;
    // The request, with its empty body, answered; or the connection ended.
    expect(r.responses['1']?.headers?.[':status'] === '200' || r.goaway !== null || r.closed, what).toBe(true);
    if (r.responses['1']?.headers?.[':status'] === '200') {
      await waitFor(() => f.upstream.records.slice(before).some((x) => x.url === '/empty-data'), 'the request upstream');
    }
    await bobServed('after-empty-data');
  });

  it('upstream HTTP/2 sessions are never shared across workloads; one workload\'s streams share one', async () => {
    const before = h2.records.length;
    for (const w of ['alice', 'bob'] as const) {
      const c = new NodeH2Client(cg[w], hosts, `https://${OTHER}:${H2_PORT}`, f.wirekeyCa);
      clients.push(c);
      for (const i of [0, 1, 2]) c.request(`${w}${i}`, 'GET', `/${w}/${i}`);
      for (const i of [0, 1, 2]) expect(await c.result(`${w}${i}`)).toMatchObject({ status: 200 });
      c.close();
    }
    await h2.sync();
    const recs = h2.records.slice(before);
    const ports = (w: string) => new Set(recs.filter((r) => r.url.startsWith(`/${w}/`)).map((r) => r.remotePort));
    expect(ports('alice').size).toBe(1);
    expect(ports('bob').size).toBe(1);
    for (const p of ports('alice')) expect(ports('bob').has(p)).toBe(false);
    for (const r of recs.filter((x) => x.url.startsWith('/alice/'))) expect(r.authorization).toEqual([f.expectedAuth]);
    for (const r of recs.filter((x) => x.url.startsWith('/bob/'))) expect(r.authorization).toEqual([sha256(`Bearer ${bobToken}`)]);
  });

  it('a binding removed by a reload refuses the next stream on an open HTTP/2 connection (403 binding-changed) and sends GOAWAY', async () => {
    const c = new NodeH2Client(cg.alice, hosts, `https://${OTHER}:${H2_PORT}`, f.wirekeyCa);
    clients.push(c);
    c.request('before', 'GET', '/before-reload');
    expect(await c.result('before')).toMatchObject({ status: 200 });
    const before = h2.records.length;
    f.writePolicy(policy(false));
    expect(await agent.reload()).toBe('reloaded');
    c.request('after', 'GET', '/after-reload');
    const r = await c.result('after').finally(async () => {
      f.writePolicy(policy());
      await agent.reload();
    });
    expect(r).toMatchObject({ status: 403 });
    expect((r.headers as Record<string, string>)['x-wirekey-error']).toBe('binding-changed');
    expect((await c.next((o) => o.goaway !== undefined)).goaway).toBe(0);
    await h2.sync();
    expect(h2.records.slice(before).map((x) => x.url)).not.toContain('/after-reload');
    c.close();
  });

  it('the agent is up, said nothing went wrong inside the proxy, and logged no credential', () => {
    const logs = agent.output() + readFileSync(f.auditPath, 'utf8');
    expect(logs).not.toMatch(/inside the proxy/);
    expect(logs).not.toContain(f.token);
    expect(logs).not.toContain(bobToken);
  });
});
