/**
 * The agent's metrics registry: what the proxy, kernel events, Vault calls
 * and reloads count, what the collect() callbacks read at scrape time (and
 * how often), and that no secret or workload-chosen text ends up in the
 * exposition.
 */
import { describe, expect, it } from 'vitest';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { AgentMetrics, type MapUsage, type MetricsSources } from '../../controller/metrics/agent-metrics.js';
import { FileCredentialSource } from '../../controller/credentials/file-source.js';
import { AuditLog } from '../../controller/audit/audit-log.js';
import type { CredentialState } from '../../controller/credentials/credential.js';
import { WK_HTTP_STATS, type HttpStatName } from '../../controller/datapath/layout.js';
import type { ReloadResult } from '../../controller/agent/agent.js';
import { failedAfterSwitch, kernelNotRestored, reloadMetricResult, reloadThrew } from '../../controller/agent/reload-outcome.js';

/** The value of the sample `name{labels}` (labels as written, in prom-client's order), or undefined. */
function sample(text: string, series: string): number | undefined {
  const line = text.split('\n').find((l) => l.startsWith(`${series} `));
  return line === undefined ? undefined : Number(line.slice(series.length + 1));
}

function kernelStats(values: Partial<Record<HttpStatName, bigint>>): Record<HttpStatName, bigint> {
  return Object.fromEntries(WK_HTTP_STATS.map((n) => [n, values[n] ?? 0n])) as Record<HttpStatName, bigint>;
}

function fakeSources(over: Partial<MetricsSources> = {}): MetricsSources {
  return {
    ready: () => true,
    proxy: () => undefined,
    datapath: () => undefined,
    kernelHttp: () => undefined,
    credentials: () => [],
    vaultConnections: () => [],
    ...over,
  };
}

describe('agent metrics', () => {
  it('counts proxy requests, refusals, latency and connection refusals under the policy\'s names', async () => {
    const m = new AgentMetrics(fakeSources(), { processMetrics: false });
    m.injected('billing', 'openai');
    m.injected('billing', 'openai');
    m.refused('billing', 'openai', 'method-not-allowed');
    m.refused('billing', 'openai', 'method-not-allowed');
    m.refused('billing', 's3', 'sigv4-scope');
    m.upstreamLatency('billing', 'openai', 0.03);
    m.upstreamLatency('billing', 'openai', 2);
    m.connectionRefused('billing', 'too-many-connections');
    m.unidentified();
    const { body, contentType } = await m.render();
    expect(contentType).toMatch(/^text\/plain; version=0\.0\.4/);
    expect(sample(body, 'wirekey_requests_injected_total{datapath="proxy",workload="billing",service="openai"}')).toBe(2);
    expect(sample(body, 'wirekey_requests_refused_total{datapath="proxy",workload="billing",service="openai",reason="method-not-allowed"}')).toBe(2);
    expect(sample(body, 'wirekey_requests_refused_total{datapath="proxy",workload="billing",service="s3",reason="sigv4-scope"}')).toBe(1);
    expect(sample(body, 'wirekey_proxy_upstream_latency_seconds_bucket{le="0.05",workload="billing",service="openai"}')).toBe(1);
    expect(sample(body, 'wirekey_proxy_upstream_latency_seconds_count{workload="billing",service="openai"}')).toBe(2);
    expect(sample(body, 'wirekey_proxy_connections_refused_total{workload="billing",reason="too-many-connections"}')).toBe(1);
    expect(sample(body, 'wirekey_proxy_connections_unidentified_total')).toBe(1);
    // The proxy's injected count is added at a scrape: counted once, whatever the scrapes.
    m.injected('billing', 'openai');
    const again = (await m.render()).body;
    expect(sample(again, 'wirekey_requests_injected_total{datapath="proxy",workload="billing",service="openai"}')).toBe(3);
    expect(sample((await m.render()).body, 'wirekey_requests_injected_total{datapath="proxy",workload="billing",service="openai"}')).toBe(3);
    // Every name has the prefix, a HELP and a TYPE.
    for (const name of new Set(body.split('\n').filter((l) => l && !l.startsWith('#')).map((l) => /^[a-z_]+/.exec(l)?.[0]))) {
      expect(name).toMatch(/^wirekey_/);
    }
  });

  it('counts kernel events per workload and service, and reads the kernel\'s own counters at scrape time', async () => {
    let stats = kernelStats({ injected: 5n, refusedMethod: 2n, eventsLost: 1n, sockhashFull: 3n });
    let reads = 0;
    const m = new AgentMetrics(fakeSources({
      kernelHttp: () => ({ stats: () => (reads++, stats), mapUsage: () => [] }),
      datapath: () => ({ mapUsage: () => [], stats: () => ({ tasksFull: 4n, storageFailures: 6n, proxyPortBinds: 2n }) }),
    }), { processMetrics: false });
    // Injections are counted from the kernel's usage counters, not from events (one stands for a connection).
    m.kernelEvent({ decision: 'inject', workload: 'app', service: 'plain' });
    m.kernelInjected('app', 'plain', 1);
    m.kernelEvent({ decision: 'deny', workload: 'app', service: 'plain', reason: 'method-not-allowed' });
    m.kernelEvent({ decision: 'deny', workload: '#7', service: '#3', reason: 'agent-gone' });
    let body = (await m.render()).body;
    expect(sample(body, 'wirekey_requests_injected_total{datapath="kernel",workload="app",service="plain"}')).toBe(1);
    expect(sample(body, 'wirekey_requests_refused_total{datapath="kernel",workload="app",service="plain",reason="method-not-allowed"}')).toBe(1);
    expect(sample(body, 'wirekey_requests_refused_total{datapath="kernel",workload="#7",service="#3",reason="agent-gone"}')).toBe(1);
    expect(sample(body, 'wirekey_kernel_requests_injected_total')).toBe(5);
    expect(sample(body, 'wirekey_kernel_requests_refused_total{reason="method-not-allowed"}')).toBe(2);
    expect(sample(body, 'wirekey_kernel_requests_refused_total{reason="agent-gone"}')).toBe(0);
    expect(sample(body, 'wirekey_kernel_events_lost_total')).toBe(1);
    expect(sample(body, 'wirekey_kernel_connections_uninjected_total')).toBe(3);
    expect(sample(body, 'wirekey_kernel_tasks_unrecorded_total')).toBe(4);
    expect(sample(body, 'wirekey_kernel_redirects_refused_total{reason="no-socket-storage"}')).toBe(6);
    expect(sample(body, 'wirekey_kernel_proxy_port_binds_refused_total')).toBe(2);
    // One read of the kernel's counters per scrape, however many metrics use them.
    expect(reads).toBe(1);
    stats = kernelStats({ injected: 9n });
    await new Promise((r) => setTimeout(r, 120));
    body = (await m.render()).body;
    expect(sample(body, 'wirekey_kernel_requests_injected_total')).toBe(9);
  });

  it('reads map fill lazily, at most once per interval, and the sockhash as kernel connections open', async () => {
    let walks = 0;
    let socks = 2;
    const usage = (): MapUsage[] => {
      walks++;
      return [{ name: 'wk_task_exe', entries: 120, capacity: 65536 }, { name: 'wk_http_socks', entries: socks, capacity: 65536 }];
    };
    const m = new AgentMetrics(fakeSources({
      datapath: () => ({ mapUsage: usage, stats: () => ({ tasksFull: 0n, storageFailures: 0n, proxyPortBinds: 0n }) }),
      kernelHttp: () => ({ stats: () => kernelStats({}), mapUsage: () => [{ name: 'wk_http_hdr', entries: 1, capacity: 256 }] }),
      proxy: () => ({ handshakes: 3, connections: { billing: 4, '#9': 1 } }),
    }), { processMetrics: false, mapUsageIntervalMs: 60_000 });
    expect(walks).toBe(0);
    let body = (await m.render()).body;
    expect(walks).toBe(1);
    expect(sample(body, 'wirekey_kernel_map_entries{map="wk_task_exe"}')).toBe(120);
    expect(sample(body, 'wirekey_kernel_map_capacity{map="wk_task_exe"}')).toBe(65536);
    expect(sample(body, 'wirekey_kernel_map_entries{map="wk_http_hdr"}')).toBe(1);
    expect(sample(body, 'wirekey_kernel_connections_open')).toBe(2);
    expect(sample(body, 'wirekey_proxy_connections_open{workload="billing"}')).toBe(4);
    expect(sample(body, 'wirekey_proxy_connections_open{workload="#9"}')).toBe(1);
    expect(sample(body, 'wirekey_proxy_handshakes_in_progress')).toBe(3);
    socks = 5;
    body = (await m.render()).body;
    expect(walks).toBe(1);
    expect(sample(body, 'wirekey_kernel_connections_open')).toBe(2);
  });

  it('credential age, version, TTL and availability, and Vault token TTL, per name; levels of removed credentials go away', async () => {
    const now = Date.now();
    let creds: { name: string; state?(): CredentialState }[] = [
      { name: 'openai-key', state: () => ({ available: true, createdAt: now - 3600_000, version: 7, degraded: false }) },
      { name: 'aws-billing', state: () => ({ available: true, createdAt: now - 60_000, expiresAt: now + 600_000, degraded: true }) },
      { name: 'gone', state: () => ({ available: false, degraded: true }) },
      { name: 'stateless' },
    ];
    const m = new AgentMetrics(fakeSources({
      credentials: () => creds,
      vaultConnections: () => [
        { name: 'main', status: () => ({ tokenExpiresAt: now + 1800_000, degraded: false }) },
        { name: 'root-token', status: () => ({ tokenExpiresAt: undefined, degraded: true }) },
      ],
    }), { processMetrics: false });
    const body = (await m.render()).body;
    expect(sample(body, 'wirekey_credential_age_seconds{credential="openai-key"}')).toBeGreaterThanOrEqual(3600);
    expect(sample(body, 'wirekey_credential_age_seconds{credential="openai-key"}')).toBeLessThan(3610);
    expect(sample(body, 'wirekey_credential_version{credential="openai-key"}')).toBe(7);
    expect(sample(body, 'wirekey_credential_version{credential="aws-billing"}')).toBeUndefined();
    expect(sample(body, 'wirekey_credential_ttl_seconds{credential="aws-billing"}')).toBeGreaterThan(590);
    expect(sample(body, 'wirekey_credential_ttl_seconds{credential="openai-key"}')).toBeUndefined();
    expect(sample(body, 'wirekey_credential_available{credential="gone"}')).toBe(0);
    expect(sample(body, 'wirekey_credential_degraded{credential="aws-billing"}')).toBe(1);
    expect(sample(body, 'wirekey_credential_age_seconds{credential="gone"}')).toBeUndefined();
    expect(body).not.toContain('stateless');
    expect(sample(body, 'wirekey_vault_token_ttl_seconds{connection="main"}')).toBeGreaterThan(1790);
    expect(sample(body, 'wirekey_vault_token_ttl_seconds{connection="root-token"}')).toBeUndefined();
    expect(sample(body, 'wirekey_vault_connection_degraded{connection="root-token"}')).toBe(1);
    creds = creds.slice(0, 1);
    const after = (await m.render()).body;
    expect(after).not.toContain('aws-billing');
  });

  it('Vault calls by connection and operation; reloads by result; the policy hash as an info gauge; readiness', async () => {
    let ready = false;
    const m = new AgentMetrics(fakeSources({ ready: () => ready }), { processMetrics: false });
    let body = (await m.render()).body;
    expect(sample(body, 'wirekey_policy_reloads_total{result="applied"}')).toBe(0);
    expect(sample(body, 'wirekey_policy_reloads_total{result="refused"}')).toBe(0);
    expect(sample(body, 'wirekey_policy_reloads_total{result="failed"}')).toBe(0);
    expect(sample(body, 'wirekey_policy_last_reload_successful')).toBe(1);
    expect(sample(body, 'wirekey_ready')).toBe(0);
    m.vaultRequest({ connection: 'main', operation: 'login', seconds: 0.02 });
    m.vaultRequest({ connection: 'main', operation: 'read', seconds: 0.004 });
    m.vaultRequest({ connection: 'main', operation: 'read', seconds: 10.5, error: 'unreachable' });
    m.vaultRequest({ connection: 'main', operation: 'read', seconds: 0.01, error: '403' });
    m.policyApplied('aaaaaaaaaaaa');
    m.reloaded('refused');
    m.policyApplied('bbbbbbbbbbbb');
    m.reloaded('applied');
    m.reloaded('refused');
    ready = true;
    body = (await m.render()).body;
    expect(sample(body, 'wirekey_vault_request_duration_seconds_count{connection="main",operation="read"}')).toBe(3);
    expect(sample(body, 'wirekey_vault_request_duration_seconds_bucket{le="+Inf",connection="main",operation="login"}')).toBe(1);
    expect(sample(body, 'wirekey_vault_request_errors_total{connection="main",operation="read",status="unreachable"}')).toBe(1);
    expect(sample(body, 'wirekey_vault_request_errors_total{connection="main",operation="read",status="403"}')).toBe(1);
    expect(sample(body, 'wirekey_policy_reloads_total{result="applied"}')).toBe(1);
    expect(sample(body, 'wirekey_policy_reloads_total{result="refused"}')).toBe(2);
    expect(sample(body, 'wirekey_policy_reloads_total{result="failed"}')).toBe(0);
    expect(sample(body, 'wirekey_policy_last_reload_successful')).toBe(0);
    expect(sample(body, 'wirekey_policy_info{hash="bbbbbbbbbbbb"}')).toBe(1);
    expect(body).not.toContain('aaaaaaaaaaaa');
    expect(sample(body, 'wirekey_ready')).toBe(1);
  });

  it('a reload that failed once the switch had begun counts as failed, not applied, and makes the last reload unsuccessful', async () => {
    const m = new AgentMetrics(fakeSources(), { processMetrics: false });
    const outcomes: [string, ReloadResult][] = [
      // The new policy is in force, but a step after the switch failed.
      ['failedAfterSwitch', failedAfterSwitch('bbbbbbbbbbbb', 'policy aaaaaaaaaaaa -> bbbbbbbbbbbb', [
        { step: 'writing the runtime state', message: 'ENOSPC', consequence: 'wirekey status and explain show the previous policy' },
      ])],
      ['kernelNotRestored', kernelNotRestored('aaaaaaaaaaaa', 'bbbbbbbbbbbb', 'E2BIG', ['egress rules: ENOMEM'])],
      ['reloadThrew', reloadThrew('aaaaaaaaaaaa', new Error('ENOMEM'))],
    ];
    for (const [what, result] of outcomes) {
      expect(reloadMetricResult(result), what).toBe('failed');
      m.reloaded('applied');
      m.reloaded(reloadMetricResult(result));
      expect(sample((await m.render()).body, 'wirekey_policy_last_reload_successful'), what).toBe(0);
    }
    expect(reloadMetricResult({ applied: true, problems: [], policy: 'bbbbbbbbbbbb', change: 'policy aaaaaaaaaaaa -> bbbbbbbbbbbb' })).toBe('applied');
    expect(reloadMetricResult({ applied: false, problems: ['p.yaml:1:1: bad'], policy: 'aaaaaaaaaaaa' })).toBe('refused');
    const body = (await m.render()).body;
    expect(sample(body, 'wirekey_policy_reloads_total{result="failed"}')).toBe(3);
    expect(sample(body, 'wirekey_policy_reloads_total{result="applied"}')).toBe(3);
    expect(sample(body, 'wirekey_policy_reloads_total{result="refused"}')).toBe(0);
  });

  it('build info; the kernel datapath loaded or not; when the policy in force was applied, by the clock it is given', async () => {
    let kernel: ReturnType<MetricsSources['kernelHttp']> = undefined;
    let now = 1_700_000_000_000;
    const m = new AgentMetrics(fakeSources({ kernelHttp: () => kernel }), {
      processMetrics: false, build: { version: '0.1.0', node: 'v20.18.1', libbpf: '1.1.2' }, now: () => now,
    });
    let body = (await m.render()).body;
    expect(sample(body, 'wirekey_build_info{version="0.1.0",node="v20.18.1",libbpf="1.1.2"}')).toBe(1);
    // Starting (no datapath yet), then refused by the kernel (null), then loaded.
    expect(sample(body, 'wirekey_kernel_datapath_loaded')).toBe(0);
    kernel = null;
    expect(sample((await m.render()).body, 'wirekey_kernel_datapath_loaded')).toBe(0);
    kernel = { stats: () => kernelStats({}), mapUsage: () => [] };
    expect(sample((await m.render()).body, 'wirekey_kernel_datapath_loaded')).toBe(1);
    // No policy applied yet: no timestamp. Applied at start, then by a reload; a refused reload leaves it.
    expect(sample(body, 'wirekey_policy_last_applied_timestamp_seconds')).toBe(0);
    m.policyApplied('aaaaaaaaaaaa');
    expect(sample((await m.render()).body, 'wirekey_policy_last_applied_timestamp_seconds')).toBe(1_700_000_000);
    now += 90_500;
    m.reloaded('refused');
    expect(sample((await m.render()).body, 'wirekey_policy_last_applied_timestamp_seconds')).toBe(1_700_000_000);
    m.policyApplied('bbbbbbbbbbbb');
    m.reloaded('applied');
    expect(sample((await m.render()).body, 'wirekey_policy_last_applied_timestamp_seconds')).toBe(1_700_000_090.5);
  });

  it('the audit log writable: 0 once a write failed, 1 again once one succeeds; 0 before there is one', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'wirekey-metrics-'));
    // Writes to /dev/full fail (ENOSPC), as on a full disk. Reached through a linked directory: the audit file itself may not be a link.
    const logs = path.join(dir, 'logs');
    symlinkSync('/dev', logs);
    const target = path.join(logs, 'full');
    let audit: AuditLog | undefined;
    const failures: string[] = [];
    const m = new AgentMetrics(fakeSources({ auditWritable: () => audit?.writable }), { processMetrics: false });
    try {
      expect(sample((await m.render()).body, 'wirekey_audit_log_writable')).toBe(0);
      audit = new AuditLog(target, (err) => failures.push((err as NodeJS.ErrnoException).code ?? err.message));
      expect(sample((await m.render()).body, 'wirekey_audit_log_writable')).toBe(1);
      audit.record({ decision: 'pass', workload: 'app' });
      expect(failures).toEqual(['ENOSPC']);
      expect(sample((await m.render()).body, 'wirekey_audit_log_writable')).toBe(0);
      // Room again (a new file by the same path, reopened as after logrotate): the next write succeeds.
      rmSync(logs);
      mkdirSync(logs);
      writeFileSync(target, '', { mode: 0o600 });
      audit.reopen();
      expect(sample((await m.render()).body, 'wirekey_audit_log_writable')).toBe(0);
      audit.record({ decision: 'pass', workload: 'app' });
      expect(sample((await m.render()).body, 'wirekey_audit_log_writable')).toBe(1);
      expect(readFileSync(target, 'utf8')).toContain('"workload":"app"');
    } finally {
      audit?.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('a file credential: its mtime is its age; its value and path never appear', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'wirekey-metrics-'));
    const file = path.join(dir, 'token');
    const secret = 'wk-canary-metrics-0123456789abcdef';
    writeFileSync(file, `${secret}\n`, { mode: 0o600 });
    const mtime = new Date(Date.now() - 86_400_000);
    utimesSync(file, mtime, mtime);
    const source = new FileCredentialSource({ name: 'api-token', path: file });
    const m = new AgentMetrics(fakeSources({ credentials: () => [source] }));
    let body = (await m.render()).body;
    expect(sample(body, 'wirekey_credential_available{credential="api-token"}')).toBe(0);
    await source.get();
    body = (await m.render()).body;
    expect(sample(body, 'wirekey_credential_available{credential="api-token"}')).toBe(1);
    const age = sample(body, 'wirekey_credential_age_seconds{credential="api-token"}') as number;
    expect(Math.abs(age - 86_400)).toBeLessThan(5);
    // With prom-client's process metrics too: nothing of the secret, its file or the environment.
    expect(body).toContain('wirekey_process_cpu_seconds_total');
    expect(body).not.toContain(secret);
    expect(body).not.toContain(dir);
  });
});
