/**
 * The proxy's egress decisions with real sockets on loopback: a real
 * ProxyServer, real TLS and HTTP upstreams on 127.0.0.2-5, real TLS and
 * raw clients. Two parts stand in for the kernel and DNS:
 *  - MockRedirects plays the kernel's record of a redirected connection
 *    (who connected, where it was going): the client connects to the proxy
 *    directly, one connection at a time, and the proxy is told the
 *    original destination the kernel would have recorded.
 *  - a resolver from a fixed table plays DNS (the proxy's `resolve`
 *    option), and `isLocalAddress` counts only 127.0.0.1 and ::1 as this
 *    host, so that 127.0.0.2-5 can play remote upstreams. The real
 *    isLocalAddress is tested on its own below.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import net from 'node:net';
import tls from 'node:tls';
import http from 'node:http';
import https from 'node:https';
import { mkdtempSync, mkdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { ProxyServer } from '../../controller/proxy/proxy-server.js';
import { RouteTable } from '../../controller/proxy/routes.js';
import { createUpstreamAgent } from '../../controller/proxy/upstream.js';
import { decideConnection, isLocalAddress, pickAddress } from '../../controller/proxy/egress-decision.js';
import { boundedResolver } from '../../controller/proxy/name-resolver.js';
import { AuditLog } from '../../controller/audit/audit-log.js';
import { AgentMetrics } from '../../controller/metrics/agent-metrics.js';
import { ByteBudget } from '../../controller/inject/byte-budget.js';
import { createLogger } from '../../controller/log.js';
import type { OrigDst } from '../../controller/datapath/datapath.js';
import type { Plan, PlanBinding, PlanEgress, PlanEgressRule, PlanProxyService, PlanWorkload } from '../../controller/policy/types.js';
import { Secret } from '../../controller/credentials/secret.js';
import { createTestPki, type TestPki } from '../support/test-pki.js';
import { sniExtension, syntheticHello, toRecords } from '../support/client-hello.js';
import { waitFor } from '../support/wait.js';

const at = { file: 'policy.yaml', line: 1, column: 1 };
const REAL = '127.0.0.3';
const DECOY = '127.0.0.2';
const ADDRESSED = '127.0.0.4';
const RECORDER = '127.0.0.5';

/** Stands in for the kernel's record of redirected connections: the next accepted connection gets the next record. */
class MockRedirects {
  readonly #queue: OrigDst[] = [];
  push(o: Partial<OrigDst> & Pick<OrigDst, 'address' | 'port' | 'workloadId'>): void {
    this.#queue.push({ family: 'ipv4', pid: 4242, uid: 1000, cgroupId: 1n, ...o });
  }
  take(): OrigDst | null {
    return this.#queue.shift() ?? null;
  }
}

const rule = (id: number, r: Partial<PlanEgressRule>): PlanEgressRule => ({
  id, label: `allow[${id}]`, source: at, cidrs: [], hosts: [], ports: [[443, 443]], protocol: 'tcp', tls: true, ...r,
});

function plan(workloads: PlanWorkload[], services: PlanProxyService[] = [], bindings: PlanBinding[] = []): Plan {
  return {
    vaultConnections: new Map(), credentials: new Map(), services: new Map(services.map((sv) => [sv.name, sv])), bindings,
    workloads: new Map(workloads.map((w) => [w.name, w])),
  };
}

async function listen(server: net.Server, host: string, port = 0): Promise<number> {
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen({ host, port }, resolve);
  });
  return (server.address() as net.AddressInfo).port;
}

interface Answer { server?: string; status?: number; body?: string; error?: string }

describe('proxy: egress by process identity (loopback)', () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'wirekey-egress-'));
  const auditPath = path.join(dir, 'audit.log');
  const redirects = new MockRedirects();
  const servers: net.Server[] = [];
  /** Connections each upstream accepted, and what the raw recorder received. */
  const accepted: Record<string, number> = { real: 0, decoy: 0, addressed: 0, recorder: 0, plainReal: 0, plainDecoy: 0 };
  let recorded = Buffer.alloc(0);
  const plainRequests: { server: string; host: string | undefined; url: string | undefined; headers: string[]; body: string }[] = [];
  let pki: TestPki;
  let P = 0; // the TLS port
  let Q = 0; // the plaintext port
  let proxy: ProxyServer;
  let metrics: AgentMetrics;
  let table: RouteTable;
  const resolver: Record<string, string[]> = {};
  let egressOf: (mode: 'enforce' | 'audit') => PlanEgress;

  const audit = () => readFileSync(auditPath, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>);
  const lastAudit = () => audit().at(-1);

  /** A TLS client "in" workload `workloadId` whose connection to `orig`:P the kernel redirected. */
  async function tlsGet(workloadId: number, orig: string, servername: string | undefined, ca = pki.caCert): Promise<Answer> {
    redirects.push({ address: orig, port: P, workloadId });
    return new Promise<Answer>((resolve) => {
      const s = tls.connect({ host: '127.0.0.1', port: proxy.port as number, servername, ca: readFileSync(ca) });
      let data = '';
      s.on('secureConnect', () => s.write(`GET /via-tls HTTP/1.1\r\nHost: ${servername ?? 'x'}\r\nConnection: close\r\n\r\n`));
      s.on('data', (d: Buffer) => (data += d.toString()));
      s.on('error', (err) => resolve({ error: err.message }));
      s.on('close', () => {
        if (!data) return resolve({ error: 'closed' });
        const body = data.slice(data.indexOf('\r\n\r\n') + 4);
        let server: string | undefined;
        try {
          server = (JSON.parse(body) as { server: string }).server;
        } catch {
          // Not an upstream's answer: a refusal's text.
        }
        resolve({ status: Number(data.split(' ')[1]), body, server });
      });
    });
  }

  /** Raw bytes from workload `workloadId`, redirected from `orig`:`port`; resolves with what came back once the proxy closes. */
  async function rawExchange(workloadId: number, orig: string, port: number, chunks: Buffer[], opts: { end?: boolean } = {}): Promise<string> {
    redirects.push({ address: orig, port, workloadId });
    return new Promise<string>((resolve) => {
      const s = net.connect({ host: '127.0.0.1', port: proxy.port as number });
      let out = '';
      s.on('connect', () => {
        for (const c of chunks) s.write(c);
        if (opts.end) s.end();
      });
      s.on('data', (d: Buffer) => (out += d.toString('latin1')));
      s.on('error', () => {});
      s.on('close', () => resolve(out));
    });
  }

  beforeAll(async () => {
    pki = await createTestPki(dir, ['api.allowed.test', 'www.denied.test', 'x.wild.test', 'raw.wild.test', 'gone.wild.test', 'bound.test']);
    const decoyDir = path.join(dir, 'decoy');
    mkdirSync(decoyDir);
    const decoyPki = await createTestPki(decoyDir, ['api.allowed.test']);

    const tlsServer = (name: string, p: TestPki) => {
      const s = https.createServer({ cert: readFileSync(p.serverCert), key: readFileSync(p.serverKey) }, (req, res) => {
        res.setHeader('content-type', 'application/json');
        res.end(JSON.stringify({ server: name, url: req.url }));
      });
      s.on('connection', () => accepted[name]!++);
      servers.push(s);
      return s;
    };
    P = await listen(tlsServer('real', pki), REAL);
    await listen(tlsServer('decoy', decoyPki), DECOY, P);
    await listen(tlsServer('addressed', pki), ADDRESSED, P);
    const rec = net.createServer((sock) => {
      accepted.recorder!++;
      sock.on('data', (d: Buffer) => (recorded = Buffer.concat([recorded, d])));
      sock.on('error', () => {});
    });
    servers.push(rec);
    await listen(rec, RECORDER, P);

    const plainServer = (name: string) => {
      const s = http.createServer((req, res) => {
        let body = '';
        req.on('data', (d: Buffer) => (body += d.toString()));
        req.on('end', () => {
          plainRequests.push({ server: name, host: req.headers.host, url: req.url, headers: req.rawHeaders, body });
          res.setHeader('content-type', 'application/json');
          res.end(JSON.stringify({ server: name, url: req.url }));
        });
      });
      s.on('connection', () => accepted[name === 'real' ? 'plainReal' : 'plainDecoy']!++);
      servers.push(s);
      return s;
    };
    Q = await listen(plainServer('real'), REAL);
    await listen(plainServer('decoy'), DECOY, Q);

    Object.assign(resolver, {
      'api.allowed.test': [REAL],
      'x.wild.test': ['192.0.2.1', REAL],
      'raw.wild.test': [RECORDER],
      'gone.wild.test': [],
      'loop.wild.test': ['127.0.0.1', '::1'],
      'plain.allowed.test': [REAL],
      'bound.test': [REAL],
      'nowhere.test': [],
    });
    egressOf = (mode) => ({
      mode,
      rules: [
        rule(1, { hosts: ['api.allowed.test', '*.wild.test'], ports: [[P, P]] }),
        rule(2, { hosts: ['plain.allowed.test'], ports: [[Q, Q]], tls: false }),
        rule(3, { cidrs: [`${ADDRESSED}/32`], ports: [[P, P]] }),
        // As compile() adds for a binding: its service's hosts, at its port.
        rule(4, { label: 'binding bound', service: 'bound', hosts: ['bound.test'], ports: [[P, P]] }),
        rule(5, { label: 'binding nowhere', service: 'nowhere', hosts: ['nowhere.test'], ports: [[P, P]] }),
      ],
    });
    const bound: PlanProxyService = { name: 'bound', datapath: 'proxy', hosts: ['bound.test'], port: P, tls: true };
    const nowhere: PlanProxyService = { name: 'nowhere', datapath: 'proxy', hosts: ['nowhere.test'], port: P, tls: true };
    const bearer = { kind: 'bearer', credential: 'tok' } as const;
    table = new RouteTable(plan([
      { name: 'agent', id: 1, selector: { cgroup: '/agent' }, egress: egressOf('enforce') },
      { name: 'rollout', id: 2, selector: { cgroup: '/rollout' }, egress: egressOf('audit') },
      { name: 'free', id: 3, selector: { cgroup: '/free' } },
    ], [bound, nowhere], [
      { name: 'agent-bound', workload: 'agent', service: 'bound', inject: bearer },
      { name: 'agent-nowhere', workload: 'agent', service: 'nowhere', inject: bearer },
      { name: 'rollout-bound', workload: 'rollout', service: 'bound', inject: bearer },
    ]));
    metrics = new AgentMetrics({
      ready: () => true, proxy: () => undefined, datapath: () => undefined, kernelHttp: () => undefined,
      credentials: () => [], vaultConnections: () => [],
    }, { processMetrics: false });
    proxy = new ProxyServer({
      identify: () => redirects.take(),
      routes: () => table,
      // The test PKI's certificate (it names bound.test) stands in for one the local CA would mint.
      secureContextFor: async () => tls.createSecureContext({ cert: readFileSync(pki.serverCert), key: readFileSync(pki.serverKey) }),
      credential: async (name) => ({ name, secret: new Secret('bound-token'), fields: new Map() }),
      upstreamAgent: createUpstreamAgent({ caFile: pki.caCert }),
      sigv4BodyLimit: 1024,
      sigv4BodyBudget: new ByteBudget(1024),
      audit: new AuditLog(auditPath),
      log: createLogger('error'),
      observer: metrics,
      resolve: async (name) => {
        const answers = resolver[name];
        if (!answers) throw Object.assign(new Error(`getaddrinfo ENOTFOUND ${name}`), { code: 'ENOTFOUND' });
        return answers.map((address) => ({ address, family: address.includes(':') ? 6 : 4 }));
      },
      isLocalAddress: (a) => a === '127.0.0.1' || a === '::1',
    });
    await proxy.listen(0);
  });

  afterAll(async () => {
    await proxy?.close();
    await Promise.all(servers.map((s) => new Promise<void>((r) => {
      (s as http.Server).closeAllConnections?.();
      s.close(() => r());
    })));
    rmSync(dir, { recursive: true, force: true });
  });

  it('routes: a restricted workload\'s name ports are redirected; unrestricted workloads add nothing', () => {
    const ports = table.portBindings().map((b) => `${b.workloadId}:${b.port}`).sort();
    expect(ports).toEqual([`1:${P}`, `1:${Q}`, `2:${P}`, `2:${Q}`].sort());
  });

  it('an allowed SNI is relayed untouched to the address the name resolves to: the client verifies the upstream\'s own certificate', async () => {
    const before = accepted.real!;
    const r = await tlsGet(1, REAL, 'api.allowed.test');
    expect(r).toMatchObject({ status: 200, server: 'real' });
    expect(accepted.real).toBe(before + 1);
    expect(lastAudit()).toMatchObject({ decision: 'allow', workload: 'agent', pid: 4242, uid: 1000, rule: 'allow[1]', host: 'api.allowed.test', address: REAL, port: P });
    expect(lastAudit()?.dialled).toBeUndefined();
  });

  it('an allowed SNI sent to another address goes to the resolved address, never where the workload pointed it', async () => {
    const decoys = accepted.decoy!;
    const r = await tlsGet(1, DECOY, 'api.allowed.test');
    expect(r).toMatchObject({ status: 200, server: 'real' });
    expect(accepted.decoy).toBe(decoys);
    expect(lastAudit()).toMatchObject({ decision: 'allow', rule: 'allow[1]', address: REAL, dialled: DECOY });
  });

  it('the dialled address is kept when it is among the answers; a wildcard rule and an upper-case SNI match', async () => {
    const r = await tlsGet(1, REAL, 'X.Wild.TEST');
    expect(r).toMatchObject({ status: 200, server: 'real' });
    expect(lastAudit()).toMatchObject({ decision: 'allow', rule: 'allow[1]', host: 'x.wild.test', address: REAL });
  });

  it('a denied SNI is closed before a byte reaches anyone, with a deny line; the metric counts it', async () => {
    const seen = { ...accepted };
    const r = await tlsGet(1, REAL, 'www.denied.test');
    expect(r.error).toBeDefined();
    expect(accepted).toEqual(seen);
    expect(lastAudit()).toMatchObject({ decision: 'deny', workload: 'agent', host: 'www.denied.test', address: REAL, port: P, reason: 'egress-name-not-allowed' });
    const text = (await metrics.render()).body;
    expect(text).toContain('wirekey_egress_decisions_total{datapath="proxy",workload="agent",rule="none",decision="deny"}');
    expect(text).toMatch(/wirekey_egress_decisions_total\{datapath="proxy",workload="agent",rule="allow\[1\]",decision="allow"\} [1-9]/);
  });

  it('no SNI, an IP literal, a trailing dot or a huge name: no name to allow, so egress-not-allowed (and nothing reaches the upstream)', async () => {
    const noSni = await tlsGet(1, RECORDER, undefined);
    expect(noSni.error).toBeDefined();
    expect(lastAudit()).toMatchObject({ decision: 'deny', reason: 'egress-not-allowed', address: RECORDER });
    for (const name of ['127.0.0.3', 'api.allowed.test.', `${'a'.repeat(60)}.`.repeat(5) + 'wild.test', '[::1]']) {
      const out = await rawExchange(1, RECORDER, P, [toRecords(syntheticHello([sniExtension(name)]))]);
      expect(out).toBe('');
      expect(lastAudit()).toMatchObject({ decision: 'deny', reason: 'egress-not-allowed' });
    }
    expect(accepted.recorder).toBe(0);
  });

  it('a ClientHello split into hundreds of records: decided on its SNI, and relayed byte for byte', async () => {
    const hello = syntheticHello([sniExtension('raw.wild.test')]);
    const records = toRecords(hello, Array(hello.length).fill(1));
    // One TCP write per record: the reader sees the hello arrive in pieces.
    const chunks: Buffer[] = [];
    for (let off = 0; off < records.length; off += 6) chunks.push(records.subarray(off, off + 6));
    const denied = toRecords(syntheticHello([sniExtension('raw.denied.test')]), Array(300).fill(1));
    expect(await rawExchange(1, RECORDER, P, [denied])).toBe('');
    expect(accepted.recorder).toBe(0);
    void rawExchange(1, DECOY, P, chunks);
    await waitFor(() => recorded.length >= records.length, 'the recorder to receive the whole hello');
    expect(recorded.equals(records)).toBe(true);
    expect(audit().find((e) => e.host === 'raw.wild.test')).toMatchObject({ decision: 'allow', address: RECORDER, dialled: DECOY });
  });

  it('an address rule allows the dialled address whatever the SNI: relayed there, audited with that rule', async () => {
    const r = await tlsGet(1, ADDRESSED, 'www.denied.test');
    expect(r).toMatchObject({ status: 200, server: 'addressed' });
    expect(lastAudit()).toMatchObject({ decision: 'allow', rule: 'allow[3]', host: 'www.denied.test', address: ADDRESSED });
  });

  it('an allowed name that resolves to nothing, or only to this host, is refused egress-name-unresolved', async () => {
    for (const name of ['gone.wild.test', 'loop.wild.test', 'unknown.wild.test']) {
      const seen = { ...accepted };
      const r = await tlsGet(1, REAL, name);
      expect(r.error).toBeDefined();
      expect(accepted).toEqual(seen);
      expect(lastAudit()).toMatchObject({ decision: 'deny', host: name, reason: 'egress-name-unresolved' });
    }
  });

  it('audit mode: what enforce refuses is relayed where it was going, logged would-refuse', async () => {
    const r = await tlsGet(2, REAL, 'www.denied.test');
    expect(r).toMatchObject({ status: 200, server: 'real' });
    expect(lastAudit()).toMatchObject({ decision: 'would-refuse', workload: 'rollout', host: 'www.denied.test', address: REAL, reason: 'egress-name-not-allowed' });
    const allowed = await tlsGet(2, DECOY, 'api.allowed.test');
    expect(allowed).toMatchObject({ status: 200, server: 'real' });
    expect(lastAudit()).toMatchObject({ decision: 'allow', workload: 'rollout', rule: 'allow[1]', address: REAL, dialled: DECOY });
    expect((await metrics.render()).body).toContain('wirekey_egress_decisions_total{datapath="proxy",workload="rollout",rule="none",decision="would-refuse"} 1');
    const unresolved = await tlsGet(2, REAL, 'gone.wild.test');
    expect(unresolved).toMatchObject({ status: 200, server: 'real' });
    expect(lastAudit()).toMatchObject({ decision: 'would-refuse', host: 'gone.wild.test', address: REAL, reason: 'egress-name-unresolved' });
  });

  it('an unrestricted workload is relayed as before: to the dialled address, a pass line', async () => {
    const r = await tlsGet(3, REAL, 'www.denied.test');
    expect(r).toMatchObject({ status: 200, server: 'real' });
    expect(lastAudit()).toMatchObject({ decision: 'pass', workload: 'free', host: 'www.denied.test', reason: 'server name not bound' });
  });

  const get = (host: string, url = '/p', extra = '') => `GET ${url} HTTP/1.1\r\nHost: ${host}\r\n${extra}\r\n`;

  it('plaintext: every request\'s Host is judged; a pipelined request naming another host is refused 403 and nothing after it goes upstream', async () => {
    const before = plainRequests.length;
    const out = await rawExchange(1, DECOY, Q, [Buffer.from(
      get(`plain.allowed.test:${Q}`, '/first') + get('evil.test', '/second') + get('plain.allowed.test', '/third'),
    )]);
    const statuses = [...out.matchAll(/HTTP\/1\.1 (\d+)/g)].map((m) => m[1]);
    expect(statuses).toEqual(['200', '403']);
    expect(out).toContain('x-wirekey-error: egress-name-not-allowed');
    expect(out).toContain('"server":"real"');
    const sent = plainRequests.slice(before);
    expect(sent.map((r) => [r.server, r.url, r.host])).toEqual([['real', '/first', `plain.allowed.test:${Q}`]]);
    expect(accepted.plainDecoy).toBe(0);
    const lines = audit().slice(-2);
    expect(lines.map((l) => l.decision).sort()).toEqual(['allow', 'deny']);
    expect(lines.find((l) => l.decision === 'deny')).toMatchObject({ workload: 'agent', host: 'evil.test', path: '/second', status: 403, reason: 'egress-name-not-allowed' });
    await waitFor(() => audit().some((l) => l.decision === 'allow' && l.path === '/first'), 'the allow line of /first');
    expect(audit().find((l) => l.path === '/first')).toMatchObject({ rule: 'allow[2]', address: REAL, dialled: DECOY, status: 200 });
  });

  it('plaintext: the proxy sets Host and framing, drops hop-by-hop headers and routing hints, and applies the request checks', async () => {
    const before = plainRequests.length;
    const body = '5\r\nhello\r\n0\r\n\r\n';
    const out = await rawExchange(1, REAL, Q, [Buffer.from(
      `POST /up HTTP/1.1\r\nHost: PLAIN.allowed.test.\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive, X-Custom\r\nX-Custom: 1\r\nX-Forwarded-Host: evil.test\r\n\r\n${body}` +
      get('plain.allowed.test', '/trace').replace('GET', 'TRACE'),
    )]);
    expect([...out.matchAll(/HTTP\/1\.1 (\d+)/g)].map((m) => m[1])).toEqual(['200', '405']);
    expect(out).toContain('x-wirekey-error: method-not-allowed');
    const [up] = plainRequests.slice(before);
    expect(up).toMatchObject({ server: 'real', url: '/up', host: 'plain.allowed.test', body: 'hello' });
    const names = (up?.headers ?? []).filter((_, i) => i % 2 === 0).map((h) => h.toLowerCase());
    expect(names).toContain('transfer-encoding');
    expect(names).not.toContain('x-custom');
    expect(names).not.toContain('x-forwarded-host');
    expect(plainRequests.length).toBe(before + 1);

    const ip = await rawExchange(1, REAL, Q, [Buffer.from(get(REAL))]);
    expect(ip).toContain('x-wirekey-error: egress-name-not-allowed');
    const dup = await rawExchange(1, REAL, Q, [Buffer.from('GET / HTTP/1.1\r\nHost: plain.allowed.test\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n')]);
    expect(dup).toContain('x-wirekey-error: malformed-request');
    expect(plainRequests.length).toBe(before + 1);
  });

  it('plaintext: a reload that removes the allow rule refuses the next request on an open connection', async () => {
    redirects.push({ address: REAL, port: Q, workloadId: 1 });
    const s = net.connect({ host: '127.0.0.1', port: proxy.port as number });
    let out = '';
    s.on('data', (d: Buffer) => (out += d.toString()));
    const closed = new Promise<void>((r) => s.on('close', () => r()));
    s.write(get('plain.allowed.test', '/before'));
    await waitFor(() => out.includes('"url":"/before"'), 'the first response');
    const previous = table;
    try {
      const narrowed: PlanEgress = { mode: 'enforce', rules: [egressOf('enforce').rules[0] as PlanEgressRule] };
      table = new RouteTable(plan([{ name: 'agent', id: 7, selector: { cgroup: '/agent' }, egress: narrowed }]));
      s.write(get('plain.allowed.test', '/after'));
      await closed;
    } finally {
      table = previous;
    }
    expect([...out.matchAll(/HTTP\/1\.1 (\d+)/g)].map((m) => m[1])).toEqual(['200', '403']);
    expect(plainRequests.some((r) => r.url === '/after')).toBe(false);
  });

  it('plaintext in audit mode: a host enforce would refuse goes where it was going, logged would-refuse', async () => {
    const before = plainRequests.length;
    const out = await rawExchange(2, DECOY, Q, [Buffer.from(get('evil.test', '/audited', 'Connection: close\r\n'))]);
    expect(out).toContain('"server":"decoy"');
    expect(plainRequests.slice(before).map((r) => [r.server, r.host])).toEqual([['decoy', 'evil.test']]);
    expect(audit().find((l) => l.path === '/audited')).toMatchObject({ decision: 'would-refuse', workload: 'rollout', reason: 'egress-name-not-allowed' });
  });

  it('plaintext on a port where only TLS names are allowed, and TLS on the plaintext port: refused', async () => {
    const recorderBefore = accepted.recorder;
    expect(await rawExchange(1, RECORDER, P, [Buffer.from(get('api.allowed.test'))])).toBe('');
    expect(lastAudit()).toMatchObject({ decision: 'deny', reason: 'egress-not-allowed', port: P });
    expect(await rawExchange(1, REAL, Q, [toRecords(syntheticHello([sniExtension('plain.allowed.test')]))])).toBe('');
    expect(lastAudit()).toMatchObject({ decision: 'deny', reason: 'egress-name-not-allowed', port: Q, host: 'plain.allowed.test' });
    expect(accepted.recorder).toBe(recorderBefore);
  });

  it('a bound name dialled to an address it resolves to, or one an address rule allows: terminated and injected', async () => {
    const before = { ...accepted };
    expect(await tlsGet(1, REAL, 'bound.test')).toMatchObject({ status: 200, server: 'real' });
    expect(await tlsGet(1, ADDRESSED, 'bound.test')).toMatchObject({ status: 200, server: 'addressed' });
    expect([accepted.real! - before.real!, accepted.addressed! - before.addressed!]).toEqual([1, 1]);
    expect(audit().slice(-2)).toMatchObject([
      { decision: 'inject', workload: 'agent', service: 'bound', host: 'bound.test', status: 200 },
      { decision: 'inject', workload: 'agent', service: 'bound', host: 'bound.test', status: 200 },
    ]);
  });

  it('a reload that changes a restricted workload\'s egress rules refuses the next request on its open bound connection; one that only relabels them does not', async () => {
    redirects.push({ address: ADDRESSED, port: P, workloadId: 1 });
    const s = tls.connect({ host: '127.0.0.1', port: proxy.port as number, servername: 'bound.test', ca: readFileSync(pki.caCert) });
    let out = '';
    s.on('data', (d: Buffer) => (out += d.toString()));
    s.on('error', () => {});
    const closed = new Promise<void>((r) => s.on('close', () => r()));
    const get = async (p: string, n: number) => {
      s.write(`GET ${p} HTTP/1.1\r\nHost: bound.test\r\n\r\n`);
      await waitFor(() => [...out.matchAll(/HTTP\/1\.1 \d+/g)].length >= n, `response ${n}`);
    };
    const previous = table;
    const relabelled = (rules: PlanEgressRule[]) => rules.map((r) => ({ ...r, id: r.id + 10, label: `moved ${r.label}`, source: { ...at, line: at.line + 7 } }));
    const withEgress = (egress: PlanEgress) => new RouteTable(plan([{ name: 'agent', id: 1, selector: { cgroup: '/agent' }, egress }],
      [{ name: 'bound', datapath: 'proxy', hosts: ['bound.test'], port: P, tls: true }],
      [{ name: 'agent-bound', workload: 'agent', service: 'bound', inject: { kind: 'bearer', credential: 'tok' } }]));
    const addressedBefore = accepted.addressed!;
    try {
      await get('/bound-before', 1);
      table = withEgress({ mode: 'enforce', rules: relabelled(egressOf('enforce').rules) });
      await get('/bound-relabelled', 2);
      // The address rule that let this connection go to ADDRESSED is gone.
      table = withEgress({ mode: 'enforce', rules: egressOf('enforce').rules.filter((r) => r.cidrs.length === 0) });
      await get('/bound-narrowed', 3);
      expect([...out.matchAll(/HTTP\/1\.1 (\d+)/g)].map((m) => m[1])).toEqual(['200', '200', '403']);
      await closed;
    } finally {
      table = previous;
      s.destroy();
    }
    expect(out).toContain('x-wirekey-error: binding-changed');
    expect(accepted.addressed!).toBeGreaterThan(addressedBefore);
    const lines = audit().filter((l) => ['/bound-before', '/bound-relabelled', '/bound-narrowed'].includes(l.path as string));
    expect(lines.map((l) => [l.path, l.decision, l.reason])).toEqual([
      ['/bound-before', 'inject', undefined], ['/bound-relabelled', 'inject', undefined], ['/bound-narrowed', 'deny', 'binding-changed'],
    ]);
  });

  it('a bound name dialled to any other address: its requests go to an address the name resolves to, never to the dialled one', async () => {
    const before = { ...accepted };
    expect(await tlsGet(1, DECOY, 'bound.test')).toMatchObject({ status: 200, server: 'real' });
    expect(await tlsGet(1, RECORDER, 'bound.test')).toMatchObject({ status: 200, server: 'real' });
    expect(accepted.decoy).toBe(before.decoy);
    expect(accepted.recorder).toBe(before.recorder);
    expect(accepted.real).toBe(before.real! + 2);
    expect(audit().slice(-2)).toMatchObject([
      { decision: 'inject', workload: 'agent', service: 'bound', host: 'bound.test', status: 200 },
      { decision: 'inject', workload: 'agent', service: 'bound', host: 'bound.test', status: 200 },
    ]);
  });

  it('a bound name that resolves to nothing usable, dialled to an address no rule allows: closed before TLS, nothing reaches that address, a deny line', async () => {
    const refusedBefore = proxy.stats().refused['egress-not-allowed'] ?? 0;
    const before = accepted.recorder;
    expect(await tlsGet(1, RECORDER, 'nowhere.test')).toHaveProperty('error');
    expect(accepted.recorder).toBe(before);
    expect(lastAudit()).toMatchObject({ decision: 'deny', workload: 'agent', host: 'nowhere.test', address: RECORDER, port: P, reason: 'egress-not-allowed' });
    expect(proxy.stats().refused['egress-not-allowed']).toBe(refusedBefore + 1);
  });

  it('audit mode: a bound name dialled to another address is terminated as before, logged would-refuse', async () => {
    const before = accepted.decoy!;
    // The decoy's certificate is not the bound name's: the request fails upstream, after going there as before.
    expect(await tlsGet(2, DECOY, 'bound.test')).toMatchObject({ status: 502, body: 'wirekey: upstream bound.test\'s certificate did not verify for bound.test\n' });
    expect(accepted.decoy).toBe(before + 1);
    expect(audit().find((l) => l.workload === 'rollout' && l.host === 'bound.test' && l.decision === 'would-refuse')).toMatchObject({
      address: DECOY, port: P, reason: 'egress-not-allowed',
    });
  });
});

describe('egress decisions (pure)', () => {
  const egress: PlanEgress = {
    mode: 'enforce',
    rules: [
      rule(1, { hosts: ['api.example.com'] }),
      rule(2, { cidrs: ['127.0.0.7/32'], ports: [[443, 443]] }),
      rule(3, { cidrs: ['10.9.0.0/16'], ports: [[1, 65535]] }),
    ],
  };

  it('isLocalAddress: loopback, unspecified, link-local and other cloud metadata addresses, IPv4-mapped forms and the host\'s interfaces', () => {
    for (const a of ['127.0.0.1', '127.8.9.10', '::1', '::ffff:127.0.0.1', '0.0.0.0', '::', '169.254.169.254', '::ffff:169.254.169.254', 'fe80::1',
      'fd00:ec2::254', 'fd00:ec2:0:0:0:0:0:254', 'fd20:ce::254', '100.100.100.200', '::ffff:100.100.100.200']) {
      expect(isLocalAddress(a, () => new Set()), a).toBe(true);
    }
    expect(isLocalAddress('192.0.2.1', () => new Set(['192.0.2.1']))).toBe(true);
    expect(isLocalAddress('::ffff:192.0.2.1', () => new Set(['192.0.2.1']))).toBe(true);
    expect(isLocalAddress('198.51.100.7', () => new Set())).toBe(false);
    expect(isLocalAddress('not an address')).toBe(false);
  });

  it('pickAddress: dialled if answered or allowed by address, else the first usable answer; this host only by an address rule', () => {
    const o = { egress, port: 443, proxyPort: 15001 };
    expect(pickAddress(['198.51.100.1', '198.51.100.2'], { ...o, dialled: '198.51.100.2' })).toBe('198.51.100.2');
    expect(pickAddress(['198.51.100.1'], { ...o, dialled: '::ffff:198.51.100.1' })).toBe('198.51.100.1');
    expect(pickAddress(['198.51.100.1'], { ...o, dialled: '203.0.113.9' })).toBe('198.51.100.1');
    expect(pickAddress(['198.51.100.1'], { ...o, dialled: '10.9.1.1' })).toBe('10.9.1.1');
    expect(pickAddress(['127.0.0.1', '198.51.100.1'], { ...o, dialled: '127.0.0.1' })).toBe('198.51.100.1');
    expect(pickAddress(['127.0.0.1', '::1'], { ...o, dialled: '203.0.113.9' })).toBeUndefined();
    expect(pickAddress(['127.0.0.7'], { ...o, dialled: '203.0.113.9' })).toBe('127.0.0.7');
    expect(pickAddress(['127.0.0.7'], { ...o, port: 15001, dialled: '203.0.113.9' })).toBeUndefined();
    expect(pickAddress([], { ...o, dialled: '203.0.113.9' })).toBeUndefined();
  });

  it('decideConnection: name, then address, then plaintext, else refuse with the right code', () => {
    const plain = { ...egress, rules: [...egress.rules, rule(4, { hosts: ['h.example.com'], ports: [[80, 80]], tls: false })] };
    expect(decideConnection(plain, { address: '203.0.113.9', port: 443, tls: true, serverName: 'api.example.com' })).toMatchObject({ action: 'relay-name' });
    expect(decideConnection(plain, { address: '10.9.0.1', port: 443, tls: true, serverName: 'other.example.com' })).toMatchObject({ action: 'relay-address', rule: { id: 3 } });
    expect(decideConnection(plain, { address: '203.0.113.9', port: 443, tls: true, serverName: 'other.example.com' })).toEqual({ action: 'refuse', code: 'egress-name-not-allowed' });
    expect(decideConnection(plain, { address: '203.0.113.9', port: 443, tls: true })).toEqual({ action: 'refuse', code: 'egress-not-allowed' });
    expect(decideConnection(plain, { address: '203.0.113.9', port: 80, tls: false })).toEqual({ action: 'plaintext' });
    expect(decideConnection(plain, { address: '10.9.0.1', port: 80, tls: false })).toMatchObject({ action: 'relay-address' });
    expect(decideConnection(plain, { address: '203.0.113.9', port: 443, tls: false })).toEqual({ action: 'refuse', code: 'egress-not-allowed' });
  });
});

describe('boundedResolver', () => {
  it('runs at most maxInFlight lookups at once, in arrival order, and one per name at a time', async () => {
    // A resolver whose lookups finish when the test says: it stands in for slow DNS.
    const pending = new Map<string, () => void>();
    let running = 0;
    let peak = 0;
    const calls: string[] = [];
    const gated = async (name: string) => {
      calls.push(name);
      running++;
      peak = Math.max(peak, running);
      await new Promise<void>((r) => pending.set(name, r));
      running--;
      return [{ address: '192.0.2.1', family: 4 }];
    };
    const resolve = boundedResolver(gated, 2);
    const answers = ['a', 'b', 'a', 'c', 'd'].map((n) => resolve(n));
    await waitFor(() => pending.size === 2, 'two lookups running');
    expect(calls).toEqual(['a', 'b']);
    pending.get('a')?.();
    await waitFor(() => pending.has('c'), 'c to start once a is answered');
    pending.get('b')?.();
    await waitFor(() => pending.has('d'), 'd to start once b is answered');
    pending.get('c')?.();
    pending.get('d')?.();
    const all = await Promise.all(answers);
    expect(all.every((x) => x[0]?.address === '192.0.2.1')).toBe(true);
    expect(calls).toEqual(['a', 'b', 'c', 'd']);
    expect(peak).toBe(2);
  });

  it('a failed lookup fails its callers and frees its slot', async () => {
    const resolve = boundedResolver(async (name) => {
      if (name === 'bad') throw new Error('ENOTFOUND');
      return [{ address: '192.0.2.2', family: 4 }];
    }, 1);
    await expect(resolve('bad')).rejects.toThrow('ENOTFOUND');
    await expect(resolve('good')).resolves.toEqual([{ address: '192.0.2.2', family: 4 }]);
  });
});
