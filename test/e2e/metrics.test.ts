/**
 * Metrics through a real `wirekey run`: an injected and a refused request on
 * each datapath, then /metrics read over the control socket and over
 * --metrics-listen, which serves metrics and health only. The counters
 * carry the policy's names and refusal codes; the secret, the paths the
 * workload asked for and the host names never appear.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import path from 'node:path';
import { E2eFixture, HOST } from '../support/e2e-fixture.js';
import { PlainUpstream } from '../support/plain-upstream.js';
import { kernelHttpSkipReason, kernelSkipReason } from '../support/requirements.js';
import { freePort } from '../support/agent.js';
import { runInCgroup } from '../support/cgroup.js';
import { run } from '../support/shell.js';

const skip = kernelSkipReason();
const kernelSkip = kernelHttpSkipReason();

/** The value of `series` (exactly as prom-client writes it) in `text`. */
function sample(text: string, series: string): number | undefined {
  const line = text.split('\n').find((l) => l.startsWith(`${series} `));
  return line === undefined ? undefined : Number(line.slice(series.length + 1));
}

describe.skipIf(skip)(`metrics through the agent${skip ? ` (skipped: ${skip})` : ''}`, () => {
  const f = new E2eFixture();
  let bound: string;
  let plain: PlainUpstream | undefined;
  let metricsPort = 0;
  let sock = '';

  const overSocket = async (route: string) => run('curl', ['-sS', '--unix-socket', sock, '-w', '\n%{http_code}', `http://wirekey${route}`]);
  const overTcp = async (route: string, method = 'GET') =>
    run('curl', ['-sS', '-X', method, '-w', '\n%{http_code}', `http://127.0.0.1:${metricsPort}${route}`]);
  const split = (r: { stdout: string }) => {
    const i = r.stdout.lastIndexOf('\n');
    return { body: r.stdout.slice(0, i), status: Number(r.stdout.slice(i + 1)) };
  };

  beforeAll(async () => {
    await f.setUp();
    bound = f.cgroup('bound');
    if (!kernelSkip) plain = await PlainUpstream.start(f.host);
    f.onClose(() => plain?.stop());
    f.writePolicy(`apiVersion: wirekey.dev/v1alpha1
kind: Workload
metadata: {name: app}
spec: {selector: {cgroup: ${f.cgBase}/bound}}
---
apiVersion: wirekey.dev/v1alpha1
kind: Binding
metadata: {name: app-api}
spec: {workload: app, service: api, inject: {bearer: {credential: api-token}}}
${plain ? `---
apiVersion: wirekey.dev/v1alpha1
kind: Service
metadata: {name: plain}
spec: {addresses: [${f.host.ipv4}], port: 80, tls: false, datapath: kernel}
---
apiVersion: wirekey.dev/v1alpha1
kind: Binding
metadata: {name: app-plain}
spec: {workload: app, service: plain, inject: {bearer: {credential: api-token}}}
` : ''}`);
    metricsPort = await freePort();
    await f.startAgent({ extraArgs: ['--metrics-listen', `127.0.0.1:${metricsPort}`] });
    sock = path.join(f.stateDir, 'agent.sock');
  });
  afterAll(() => f.close());

  it('proxy: an injected and a refused request are counted by workload, service and reason, with the upstream latency', async () => {
    const ok = await f.curl(bound, ['--cacert', f.wirekeyCa, '-o', '/dev/null', '-w', '%{http_code}', `https://${HOST}/metrics-e2e-injected`]);
    expect(ok.stdout).toBe('200');
    const refused = await f.curl(bound, ['--cacert', f.wirekeyCa, '-X', 'TRACE', '-o', '/dev/null', '-w', '%{http_code}', `https://${HOST}/metrics-e2e-refused`]);
    expect(refused.stdout).toBe('405');
    const { body, status } = split(await overSocket('/metrics'));
    expect(status).toBe(200);
    expect(sample(body, 'wirekey_requests_injected_total{datapath="proxy",workload="app",service="api"}')).toBe(1);
    expect(sample(body, 'wirekey_requests_refused_total{datapath="proxy",workload="app",service="api",reason="method-not-allowed"}')).toBe(1);
    expect(sample(body, 'wirekey_proxy_upstream_latency_seconds_count{workload="app",service="api"}')).toBe(1);
    expect(sample(body, 'wirekey_proxy_handshakes_in_progress')).toBe(0);
    expect(sample(body, 'wirekey_credential_available{credential="api-token"}')).toBe(1);
    expect(sample(body, 'wirekey_credential_age_seconds{credential="api-token"}')).toBeGreaterThanOrEqual(0);
    expect(sample(body, 'wirekey_ready')).toBe(1);
    expect(sample(body, 'wirekey_kernel_map_capacity{map="wk_task_exe"}')).toBeGreaterThan(0);
    expect(sample(body, 'wirekey_kernel_map_entries{map="wk_task_exe"}')).toBeGreaterThan(0);
    expect(body).toMatch(/^wirekey_nodejs_eventloop_lag_seconds /m);
  });

  it.skipIf(kernelSkip)(`kernel datapath: an injected and a refused request, per workload and service from its events, and the kernel's counters${kernelSkip ? ` (skipped: ${kernelSkip})` : ''}`, async () => {
    const ok = await runInCgroup(bound, 'curl', ['-sS', '--max-time', '10', '-o', '/dev/null', '-w', '%{http_code}', `http://${f.host.ipv4}/metrics-e2e-kernel`]);
    expect(ok.stdout).toBe('200');
    // An injection does not wake the agent's reader; the scrape itself
    // collects the waiting events, so the count is there at once.
    const first = split(await overSocket('/metrics')).body;
    expect(sample(first, 'wirekey_requests_injected_total{datapath="kernel",workload="app",service="plain"}')).toBe(1);
    // The kernel refuses the write (EACCES): curl fails to send.
    const refused = await runInCgroup(bound, 'curl', ['-sS', '--max-time', '10', '-X', 'TRACE', '-o', '/dev/null', `http://${f.host.ipv4}/metrics-e2e-kernel-refused`]);
    expect(refused.code).not.toBe(0);
    const { body } = split(await overSocket('/metrics'));
    expect(sample(body, 'wirekey_requests_refused_total{datapath="kernel",workload="app",service="plain",reason="method-not-allowed"}')).toBe(1);
    expect(sample(body, 'wirekey_requests_injected_total{datapath="kernel",workload="app",service="plain"}')).toBe(1);
    expect(sample(body, 'wirekey_kernel_requests_injected_total')).toBe(1);
    expect(sample(body, 'wirekey_kernel_requests_refused_total{reason="method-not-allowed"}')).toBe(1);
    expect(sample(body, 'wirekey_kernel_events_lost_total')).toBe(0);
    expect(sample(body, 'wirekey_kernel_map_capacity{map="wk_http_socks"}')).toBeGreaterThan(0);
    expect(sample(body, 'wirekey_kernel_map_entries{map="wk_http_hdr"}')).toBe(1);
  });

  it('--metrics-listen serves the same metrics, and health, and nothing else', async () => {
    const tcp = split(await overTcp('/metrics'));
    expect(tcp.status).toBe(200);
    expect(sample(tcp.body, 'wirekey_requests_injected_total{datapath="proxy",workload="app",service="api"}')).toBe(1);
    expect(split(await overTcp('/healthz'))).toEqual({ body: 'ok\n', status: 200 });
    expect(split(await overTcp('/readyz'))).toEqual({ body: 'ready\n', status: 200 });
    for (const [method, route] of [['POST', '/metrics'], ['POST', '/reload'], ['GET', '/reload'], ['GET', '/'], ['DELETE', '/healthz']] as const) {
      expect(split(await overTcp(route, method)).status).toBe(404);
    }
  });

  it('a reload is counted, and the policy hash follows it', async () => {
    const agent = f.agent;
    if (!agent) throw new Error('no agent');
    const before = /info policy ([0-9a-f]{12}): /.exec(agent.output())?.[1];
    expect(sample(split(await overSocket('/metrics')).body, `wirekey_policy_info{hash="${before}"}`)).toBe(1);
    expect(await agent.reload()).toBe('reloaded');
    const body = split(await overSocket('/metrics')).body;
    expect(sample(body, 'wirekey_policy_reloads_total{result="applied"}')).toBe(1);
    expect(sample(body, 'wirekey_policy_reloads_total{result="refused"}')).toBe(0);
    expect(sample(body, 'wirekey_policy_last_reload_successful')).toBe(1);
    expect(body.match(/^wirekey_policy_info\{/gm)).toHaveLength(1);
  });

  it('no secret, no path or host a workload asked for, in either exposition', async () => {
    for (const { body } of [split(await overSocket('/metrics')), split(await overTcp('/metrics'))]) {
      if (process.env.DUMP) (await import('node:fs')).writeFileSync(process.env.DUMP, body);
      expect(body.length).toBeGreaterThan(1000);
      expect(body).not.toContain(f.token);
      expect(body).not.toContain(f.tokenFile);
      expect(body).not.toContain('metrics-e2e');
      expect(body).not.toContain(HOST);
      expect(body).not.toContain(f.host.ipv4);
    }
  });
});
