/**
 * The kernel datapath's audit at its default grain, through a real `wirekey
 * run`: one `inject` line per connection and credential version, one `deny`
 * line per refusal, and `usage` lines that count every injected request
 * exactly (from the kernel's per-CPU counters, no event per request),
 * written before a reload (under the names in force until then, also when
 * the reload renumbers the workloads) and at stop. The request metric
 * counts every request too, at the scrape right after them.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { E2eFixture } from '../support/e2e-fixture.js';
import { PlainUpstream } from '../support/plain-upstream.js';
import { kernelHttpSkipReason } from '../support/requirements.js';
import { runInCgroup } from '../support/cgroup.js';
import { run } from '../support/shell.js';

const skip = kernelHttpSkipReason();

type Line = Record<string, unknown>;

describe.skipIf(skip)(`kernel datapath usage audit${skip ? ` (skipped: ${skip})` : ''}`, () => {
  const f = new E2eFixture();
  let plain: PlainUpstream;
  let bound: string;

  /** `extra` workload first in name order renumbers `app` (ids follow precedence, then name). */
  const policy = (extra: boolean) => `apiVersion: wirekey.dev/v1alpha1
kind: Service
metadata: {name: plain}
spec: {addresses: [${f.host.ipv4}], port: 80, tls: false, datapath: kernel}
---
apiVersion: wirekey.dev/v1alpha1
kind: Workload
metadata: {name: app}
spec: {selector: {cgroup: ${f.cgBase}/bound}}
---
${extra ? `apiVersion: wirekey.dev/v1alpha1
kind: Workload
metadata: {name: aaa-first}
spec: {selector: {cgroup: ${f.cgBase}/other}}
---
` : ''}apiVersion: wirekey.dev/v1alpha1
kind: Binding
metadata: {name: app-plain}
spec: {workload: app, service: plain, inject: {bearer: {credential: api-token}}}
`;

  const lines = (): Line[] => readFileSync(f.auditPath, 'utf8').trim().split('\n').filter(Boolean)
    .map((l) => JSON.parse(l) as Line).filter((l) => l.datapath === 'kernel');
  const usage = (from: number) => lines().slice(from).filter((l) => l.decision === 'usage');
  const requestsIn = (ls: Line[]) => ls.reduce((n, l) => n + (l.requests as number), 0);

  /** Python http.client in the bound cgroup: `perConnection[i]` GETs on connection i, one after the other. */
  const keepAlive = async (perConnection: number[]) => {
    const script = `
import http.client, json, os, sys
ports = []
for n in json.loads(sys.argv[2]):
    c = http.client.HTTPConnection(sys.argv[1], 80, timeout=20)
    for i in range(n):
        c.request('GET', '/usage/%d' % i)
        r = c.getresponse()
        r.read()
        assert r.status == 200, r.status
    ports.append(c.sock.getsockname()[1])
    c.close()
print(json.dumps({'pid': os.getpid(), 'ports': ports}))
`;
    const r = await runInCgroup(bound, 'python3', ['-c', script, f.host.ipv4, JSON.stringify(perConnection)], { timeoutMs: 120_000 });
    expect(r.stderr).toBe('');
    return JSON.parse(r.stdout) as { pid: number; ports: number[] };
  };

  const metric = async (series: string) => {
    const sock = path.join(f.stateDir, 'agent.sock');
    const r = await run('curl', ['-sS', '--unix-socket', sock, 'http://wirekey/metrics']);
    const line = r.stdout.split('\n').find((l) => l.startsWith(`${series} `));
    return line === undefined ? 0 : Number(line.slice(series.length + 1));
  };
  const injectedMetric = 'wirekey_requests_injected_total{datapath="kernel",workload="app",service="plain"}';

  beforeAll(async () => {
    await f.setUp({ upstream: false });
    bound = f.cgroup('bound');
    f.cgroup('other');
    plain = await PlainUpstream.start(f.host);
    f.onClose(() => plain?.stop());
    f.writePolicy(policy(false));
    await f.startAgent();
  });

  afterAll(() => f.close());

  it('by default, one inject line per connection; the request metric counts every request at the next scrape', async () => {
    const before = lines().length;
    const metricBefore = await metric(injectedMetric);
    const started = Date.now();
    const c = await keepAlive([5, 7, 11]);
    // Every request, at once: the scrape reads the kernel's counters first.
    expect(await metric(injectedMetric)).toBe(metricBefore + 23);
    // The inject lines arrive by the event drain (at most 100 ms late).
    await expect.poll(() => lines().slice(before).filter((l) => l.decision === 'inject' && l.pid === c.pid).length, { timeout: 10_000 }).toBe(3);
    const injected = lines().slice(before).filter((l) => l.decision === 'inject' && l.pid === c.pid);
    expect(new Set(injected.map((l) => l.connection)).size).toBe(3);
    expect(injected[0]).toMatchObject({ workload: 'app', service: 'plain', credential: 'api-token', address: f.host.ipv4, port: 80 });
    // Each line says when the kernel saw the connection's first request, by the kernel's clock: not before the client
    // started (give or take the millisecond the wall clock is read in) and not after the line was written.
    for (const l of injected) {
      expect(new Date(l.seen as string).toISOString()).toBe(l.seen);
      expect(Date.parse(l.seen as string)).toBeGreaterThanOrEqual(started - 1);
      expect(Date.parse(l.seen as string)).toBeLessThanOrEqual(Date.parse(l.time as string));
    }
    // The connections were opened one after the other, and their lines come in the kernel's order.
    const seen = injected.map((l) => Date.parse(l.seen as string));
    expect(seen).toEqual([...seen].sort((x, y) => x - y));
  });

  it('every refusal is its own deny line', async () => {
    const before = lines().length;
    for (let i = 0; i < 3; i++) {
      const r = await runInCgroup(bound, 'curl', ['-sS', '--max-time', '10', '-X', 'TRACE', '-o', '/dev/null', `http://${f.host.ipv4}/trace-${i}`]);
      expect(r.code).not.toBe(0);
    }
    await expect.poll(() => lines().slice(before).filter((l) => l.decision === 'deny').length, { timeout: 10_000 }).toBe(3);
    expect(lines().slice(before).filter((l) => l.decision === 'deny').map((l) => l.reason)).toEqual(['method-not-allowed', 'method-not-allowed', 'method-not-allowed']);
  });

  it('a reload first writes usage lines: requests since the last, exact, under the names in force', async () => {
    const before = lines().length;
    await keepAlive([4, 6]);
    expect(await f.agent?.reload()).toBe('reloaded');
    const u = usage(before);
    expect(u.length).toBeGreaterThanOrEqual(1);
    for (const l of u) {
      expect(l).toMatchObject({ workload: 'app', service: 'plain', credential: 'api-token' });
      expect(Date.parse(l.firstSeen as string)).toBeLessThanOrEqual(Date.parse(l.lastSeen as string));
      expect(Date.parse(l.lastSeen as string)).toBeLessThanOrEqual(Date.now());
    }
    // The first usage lines since start: the 23 requests of the first test and these 10.
    expect(requestsIn(usage(0))).toBe(33);
    expect(requestsIn(u)).toBe(33);
  });

  it('a reload that renumbers the workloads: what was counted before it keeps its names; nothing is lost or counted twice', async () => {
    const before = lines().length;
    await keepAlive([8]);
    f.writePolicy(policy(true));
    expect(await f.agent?.reload()).toBe('reloaded');
    expect(f.agent?.output()).toMatch(/workload ids changed/);
    const u = usage(before);
    expect(u.every((l) => l.workload === 'app' && l.service === 'plain')).toBe(true);
    expect(requestsIn(u)).toBe(8);
    // Under the new numbering, new connections are counted under the same names.
    await keepAlive([3, 2]);
    expect(await f.agent?.reload()).toBe('reloaded');
    const after = usage(before);
    expect(after.every((l) => l.workload === 'app' && l.service === 'plain')).toBe(true);
    expect(requestsIn(after)).toBe(13);
  });

  it('the agent writes the last usage lines when it stops', async () => {
    const before = lines().length;
    await keepAlive([9]);
    expect(await f.agent?.stop()).toBe(0);
    f.agentStopped = true;
    const u = usage(before);
    expect(u.every((l) => l.workload === 'app')).toBe(true);
    expect(requestsIn(u)).toBe(9);
    expect(requestsIn(usage(0))).toBe(33 + 13 + 9);
    expect(readFileSync(f.auditPath, 'utf8')).not.toContain(f.token);
  });
});
