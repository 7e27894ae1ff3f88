/**
 * Egress by process identity through the proxy, end to end: the real agent
 * (its kernel programs redirect a restricted workload's connections on the
 * ports its name rules use), curl and a raw pipelining client in cgroups,
 * TLS and plaintext upstreams in network namespaces of their own.
 *
 * The agent resolves names with its host's resolver; it runs in a mount
 * namespace of its own with a hosts file bind-mounted on /etc/hosts, so the
 * machine's own /etc/hosts is never touched and no name used here is ever
 * asked of a DNS server.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import http from 'node:http';
import { E2eFixture, HOST, OTHER } from '../support/e2e-fixture.js';
import { createTestHost, type TestHost } from '../support/netns.js';
import { createTestPki } from '../support/test-pki.js';
import { startUpstream, type Upstream } from '../support/upstream.js';
import { PlainUpstream } from '../support/plain-upstream.js';
import { runInCgroup } from '../support/cgroup.js';
import { freePort } from '../support/agent.js';
import { kernelSkipReason } from '../support/requirements.js';
import { waitFor } from '../support/wait.js';

const skip = kernelSkipReason();

const ALLOWED = 'allowed.wirekey.test';
const DENIED = 'denied.wirekey.test';
const PLAIN = 'plain.wirekey.test';

/** A client that pipelines every request given (argv: address, port, then one Host per request) on one connection and prints what came back. */
const PIPELINE = `
import socket, sys
addr, port, hosts = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
s = socket.create_connection((addr, port), timeout=10)
s.sendall(b"".join(("GET /pipe/%d HTTP/1.1\\r\\nHost: %s\\r\\n\\r\\n" % (i, h)).encode() for i, h in enumerate(hosts)))
out = b""
while True:
    try:
        d = s.recv(65536)
    except socket.timeout:
        break
    if not d:
        break
    out += d
sys.stdout.write(out.decode("latin1"))
`;

describe.skipIf(skip)(`egress through the proxy${skip ? ` (skipped: ${skip})` : ''}`, () => {
  const f = new E2eFixture();
  let restricted: string;
  let rollout: string;
  let decoyHost: TestHost;
  let decoy: Upstream;
  let plain: PlainUpstream;
  let metricsPort: number;
  const audit = () => readFileSync(f.auditPath, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>);
  const lines = (pred: (l: Record<string, unknown>) => boolean) => audit().filter(pred);

  const egress = (mode: string) => `
  egress:
    mode: ${mode}
    allow:
      - {hosts: [${ALLOWED}], ports: [443]}
      - {host: ${PLAIN}, ports: [8080], tls: false}`;

  beforeAll(async () => {
    await f.setUp({ hosts: [HOST, OTHER, ALLOWED, DENIED] });
    restricted = f.cgroup('restricted');
    rollout = f.cgroup('rollout');
    f.onClose(async () => {
      await plain?.stop();
      await decoy?.stop();
      await decoyHost?.destroy();
    });
    // A second test host with a TLS server that claims the allowed name under another CA: a decoy the workload may dial.
    decoyHost = await createTestHost(`${f.tag.slice(0, 3)}d`);
    const decoyDir = path.join(f.dir, 'decoy');
    mkdirSync(decoyDir);
    const decoyPki = await createTestPki(decoyDir, [ALLOWED]);
    decoy = await startUpstream(decoyHost, decoyPki.serverCert, decoyPki.serverKey);
    plain = await PlainUpstream.start(f.host);

    f.writePolicy(`apiVersion: wirekey.dev/v1alpha1
kind: Workload
metadata: {name: agent}
spec:
  selector: {cgroup: ${f.cgBase}/restricted}${egress('enforce')}
---
apiVersion: wirekey.dev/v1alpha1
kind: Binding
metadata: {name: agent-api}
spec: {workload: agent, service: api, inject: {bearer: {credential: api-token}}}
---
apiVersion: wirekey.dev/v1alpha1
kind: Workload
metadata: {name: rollout}
spec:
  selector: {cgroup: ${f.cgBase}/rollout}${egress('audit')}
`);
    const hosts = path.join(f.dir, 'hosts');
    // The bound service's name too: a restricted workload's bound connections go only to an address it resolves to.
    writeFileSync(hosts, `127.0.0.1 localhost\n::1 localhost\n${f.host.ipv4} ${ALLOWED} ${PLAIN} ${HOST}\n`, { mode: 0o644 });
    // A mount namespace of the agent's own: its /etc/hosts is this file; cgroup and network stay the host's.
    metricsPort = await freePort();
    await f.startAgent({ extraArgs: ['--metrics-listen', `127.0.0.1:${metricsPort}`], wrapper: ['unshare', '--mount', 'sh', '-c', 'mount --bind "$0" /etc/hosts && exec "$@"', hosts] });
  });

  afterAll(() => f.close());

  const tlsCurl = (cg: string, name: string, ip: string, ca: string, urlPath = '/') =>
    f.curl(cg, ['--resolve', `${name}:443:${ip}`, '--cacert', ca, `https://${name}${urlPath}`]);

  it('an allowed SNI is relayed untouched: curl verifies the upstream\'s own certificate, and nothing is injected', async () => {
    const before = f.upstream.records.length;
    const r = await tlsCurl(restricted, ALLOWED, f.host.ipv4, f.pki.caCert, '/allowed');
    expect(r.stderr).toBe('');
    expect(JSON.parse(r.stdout)).toMatchObject({ ok: true, path: '/allowed' });
    const [rec] = await f.recordsSince(before);
    expect(rec).toMatchObject({ servername: ALLOWED, url: '/allowed' });
    expect(rec?.authorization).toEqual([]);
    expect(lines((l) => l.decision === 'allow' && l.host === ALLOWED).at(-1)).toMatchObject({
      workload: 'agent', rule: 'allow[1]', address: f.host.ipv4, port: 443,
    });
  });

  it('a denied SNI is closed before any byte is relayed, with a deny line', async () => {
    const before = f.upstream.records.length;
    const r = await tlsCurl(restricted, DENIED, f.host.ipv4, f.bothCas);
    expect(r.code).not.toBe(0);
    expect(await f.recordsSince(before)).toEqual([]);
    expect(lines((l) => l.host === DENIED).at(-1)).toMatchObject({
      decision: 'deny', workload: 'agent', reason: 'egress-name-not-allowed', address: f.host.ipv4, port: 443,
    });
  });

  it('the bound service is still terminated and injected', async () => {
    const before = f.upstream.records.length;
    const r = await tlsCurl(restricted, HOST, f.host.ipv4, f.wirekeyCa, '/bound');
    expect(r.stderr).toBe('');
    const [rec] = await f.recordsSince(before);
    expect(rec?.authorization).toEqual([f.expectedAuth]);
  });

  it('the bound name dialled to another address: its requests go, injected, to the address the name resolves to, never to the dialled one', async () => {
    const decoyBefore = decoy.records.length;
    const before = f.upstream.records.length;
    const r = await tlsCurl(restricted, HOST, decoyHost.ipv4, f.wirekeyCa, '/bound-elsewhere');
    expect(r.stderr).toBe('');
    const recs = await f.recordsSince(before);
    expect(recs.map((x) => [x.url, x.authorization])).toEqual([['/bound-elsewhere', [f.expectedAuth]]]);
    await decoy.sync();
    expect(decoy.records.length).toBe(decoyBefore);
  });

  it('an allowed SNI sent to another address goes to the address the name resolves to', async () => {
    const decoyBefore = decoy.records.length;
    const before = f.upstream.records.length;
    // curl trusts only the real upstream's CA: the decoy's certificate would fail.
    const r = await tlsCurl(restricted, ALLOWED, decoyHost.ipv4, f.pki.caCert, '/redirected');
    expect(r.stderr).toBe('');
    expect(JSON.parse(r.stdout)).toMatchObject({ ok: true, path: '/redirected' });
    expect((await f.recordsSince(before)).map((x) => x.url)).toEqual(['/redirected']);
    await decoy.sync();
    expect(decoy.records.length).toBe(decoyBefore);
    expect(lines((l) => l.decision === 'allow' && l.host === ALLOWED).at(-1)).toMatchObject({ address: f.host.ipv4, dialled: decoyHost.ipv4 });

    // Over IPv6 to an address the name does not resolve to (the hosts file gives IPv4 only): relayed to the IPv4 answer.
    const v6 = await f.curl(restricted, ['--resolve', `${ALLOWED}:443:[${f.host.ipv6}]`, '--cacert', f.pki.caCert, `https://${ALLOWED}/over-v6`]);
    expect(v6.stderr).toBe('');
    expect(lines((l) => l.decision === 'allow' && l.host === ALLOWED).at(-1)).toMatchObject({ address: f.host.ipv4, dialled: f.host.ipv6 });
  });

  it('plaintext: an allowed Host is forwarded, a denied one refused 403, and a pipelined request naming a denied host never reaches the upstream', async () => {
    const allowed = await f.curl(restricted, ['-i', '--resolve', `${PLAIN}:8080:${f.host.ipv4}`, `http://${PLAIN}:8080/plain`]);
    expect(allowed.stdout).toMatch(/^HTTP\/1\.1 200/);
    const denied = await f.curl(restricted, ['-i', '-H', 'Host: elsewhere.wirekey.test', `http://${f.host.ipv4}:8080/denied`]);
    expect(denied.stdout).toMatch(/^HTTP\/1\.1 403/);
    expect(denied.stdout.toLowerCase()).toContain('x-wirekey-error: egress-name-not-allowed');

    const before = plain.requests.length;
    const piped = await runInCgroup(restricted, 'python3', ['-c', PIPELINE, f.host.ipv4, '8080', PLAIN, 'elsewhere.wirekey.test', PLAIN]);
    expect([...piped.stdout.matchAll(/HTTP\/1\.1 (\d+)/g)].map((m) => m[1])).toEqual(['200', '403']);
    await plain.sync();
    const got = plain.requests.slice(before) as (typeof plain.requests[number] & { host?: string })[];
    expect(got.map((x) => [x.target, x.host])).toEqual([['/pipe/0', PLAIN]]);
    expect(lines((l) => l.path === '/pipe/1').at(-1)).toMatchObject({ decision: 'deny', host: 'elsewhere.wirekey.test', status: 403, reason: 'egress-name-not-allowed' });
    await waitFor(() => lines((l) => l.path === '/pipe/0' && l.decision === 'allow').length > 0, 'the allow line of /pipe/0');
  });

  it('audit mode relays what enforce refuses, and logs would-refuse', async () => {
    const before = f.upstream.records.length;
    const r = await tlsCurl(rollout, DENIED, f.host.ipv4, f.pki.caCert, '/rollout');
    expect(r.stderr).toBe('');
    expect((await f.recordsSince(before)).map((x) => [x.url, x.servername])).toEqual([['/rollout', DENIED]]);
    expect(lines((l) => l.workload === 'rollout' && l.host === DENIED).at(-1)).toMatchObject({ decision: 'would-refuse', reason: 'egress-name-not-allowed' });
    const p = await f.curl(rollout, ['-i', '-H', 'Host: elsewhere.wirekey.test', `http://${f.host.ipv4}:8080/rollout-plain`]);
    expect(p.stdout).toMatch(/^HTTP\/1\.1 200/);
    expect(lines((l) => l.path === '/rollout-plain').at(-1)).toMatchObject({ decision: 'would-refuse', reason: 'egress-name-not-allowed' });
  });

  it('a reload that removes the rule refuses the workload\'s next connection; restoring it allows it again', async () => {
    const agent = f.agent;
    if (!agent) throw new Error('no agent');
    const policyFile = path.join(f.policyDir, 'policy.yaml');
    const original = readFileSync(policyFile, 'utf8');
    try {
      writeFileSync(policyFile, original.replace(`- {hosts: [${ALLOWED}], ports: [443]}`, `- {hosts: [${DENIED}], ports: [443]}`));
      expect(await agent.reload()).toBe('reloaded');
      const refused = await tlsCurl(restricted, ALLOWED, f.host.ipv4, f.pki.caCert, '/after-reload');
      expect(refused.code).not.toBe(0);
      expect(lines((l) => l.host === ALLOWED).at(-1)).toMatchObject({ decision: 'deny', reason: 'egress-name-not-allowed' });
    } finally {
      writeFileSync(policyFile, original);
      expect(await agent.reload()).toBe('reloaded');
    }
    const again = await tlsCurl(restricted, ALLOWED, f.host.ipv4, f.pki.caCert, '/restored');
    expect(again.stderr).toBe('');
  });

  it('wirekey_egress_decisions_total counts the decisions by workload, rule and decision', async () => {
    const body = await new Promise<string>((resolve, reject) => {
      http.get({ host: '127.0.0.1', port: metricsPort, path: '/metrics' }, (res) => {
        let text = '';
        res.on('data', (d: Buffer) => (text += d.toString()));
        res.on('end', () => resolve(text));
      }).on('error', reject);
    });
    const sample = (series: string) => Number(new RegExp(`^${series.replace(/[{}[\]"]/g, '\\$&')} (\\S+)$`, 'm').exec(body)?.[1] ?? NaN);
    expect(sample('wirekey_egress_decisions_total{datapath="proxy",workload="agent",rule="allow[1]",decision="allow"}')).toBe(4);
    expect(sample('wirekey_egress_decisions_total{datapath="proxy",workload="agent",rule="allow[2]",decision="allow"}')).toBe(2);
    expect(sample('wirekey_egress_decisions_total{datapath="proxy",workload="agent",rule="none",decision="deny"}')).toBe(4);
    expect(sample('wirekey_egress_decisions_total{datapath="proxy",workload="rollout",rule="none",decision="would-refuse"}')).toBe(2);
  });
});
