/**
 * What the proxy benchmarks share: a test host with a TLS upstream for one
 * name, a `bound` cgroup whose workload the running agent binds to it
 * (bearer), a `direct` cgroup it leaves alone, and the CAs each arm trusts;
 * all removed afterwards, whatever happened. Also the request-rate report.
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createTestHost, type TestHost } from '../test/support/netns.js';
import { createTestPki } from '../test/support/test-pki.js';
import { startUpstream, type Upstream } from '../test/support/upstream.js';
import { createCgroup, removeCgroupTree } from '../test/support/cgroup.js';
import { freePort, startAgent, wirekeyBin, type RunningAgent } from '../test/support/agent.js';
import { kernelSkipReason } from '../test/support/requirements.js';
import { must } from '../test/support/shell.js';
import { findCgroup2Root } from '../controller/cgroup.js';

export interface BoundBench {
  host: TestHost;
  upstream: Upstream;
  /** The upstream's CA: what the direct arm trusts. */
  upstreamCa: string;
  /** wirekey's local CA: what the bound arm trusts. */
  wirekeyCa: string;
  /** cgroup directories: processes in `bound` get the credential, those in `direct` go straight to the upstream. */
  bound: string;
  direct: string;
}

/**
 * Sets a bound bench up for `hostName` (the upstream runs `server`, a
 * test/support upstream script; default the HTTP/1.1 one), runs `body`,
 * and tears everything down.
 */
export async function withBoundBench(name: string, hostName: string, server: string | undefined, body: (b: BoundBench) => Promise<void>): Promise<void> {
  const unmet = kernelSkipReason();
  if (unmet) throw new Error(`the benchmark ${unmet}`);
  const base = `wirekey-bench-${name}-${randomBytes(2).toString('hex')}`;
  const work = mkdtempSync(path.join(tmpdir(), 'wirekey-bench-'));
  const cgRoot = findCgroup2Root();
  let host: TestHost | undefined;
  let upstream: Upstream | undefined;
  let agent: RunningAgent | undefined;
  try {
    host = await createTestHost('b');
    const pki = await createTestPki(work, [hostName]);
    upstream = await startUpstream(host, pki.serverCert, pki.serverKey, 443, server);
    const bound = createCgroup(cgRoot, `${base}/bound`);
    const direct = createCgroup(cgRoot, `${base}/direct`);
    const token = path.join(work, 'token');
    writeFileSync(token, 'bench-token\n', { mode: 0o600 });
    const policy = path.join(work, 'policy.yaml');
    writeFileSync(policy, [
      'apiVersion: wirekey.dev/v1alpha1', 'kind: CredentialSource', 'metadata: {name: t}', `spec: {file: {path: ${token}}}`, '---',
      'apiVersion: wirekey.dev/v1alpha1', 'kind: Service', 'metadata: {name: s}', `spec: {hosts: [${hostName}], port: 443, tls: true}`, '---',
      'apiVersion: wirekey.dev/v1alpha1', 'kind: Workload', 'metadata: {name: w}', `spec: {selector: {cgroup: /${base}/bound}}`, '---',
      'apiVersion: wirekey.dev/v1alpha1', 'kind: Binding', 'metadata: {name: b}', 'spec: {workload: w, service: s, inject: {bearer: {credential: t}}}', '',
    ].join('\n'));
    const stateDir = path.join(work, 'state');
    agent = await startAgent({ policy, stateDir, pinDir: `/sys/fs/bpf/${base}`, proxyPort: await freePort(),
      audit: path.join(work, 'audit.log'), upstreamCa: pki.caCert, logLevel: 'info' });
    const wirekeyCa = path.join(work, 'wirekey-ca.pem');
    writeFileSync(wirekeyCa, await must(process.execPath, [wirekeyBin, 'ca', 'cert', '--create', '--state-dir', stateDir]));
    await body({ host, upstream, upstreamCa: pki.caCert, wirekeyCa, bound, direct });
  } finally {
    await agent?.stop();
    await upstream?.stop();
    await host?.destroy();
    removeCgroupTree(cgRoot, path.join(cgRoot, base));
    rmSync(work, { recursive: true, force: true });
  }
}

/** One round of a request-rate load client. */
export interface RateSample {
  requests: number;
  seconds: number;
  rps: number;
  p50Ms: number;
  p99Ms: number;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] as number;

/**
 * Measures `rounds` rounds of direct then wirekey (after one warm-up of
 * each), and prints medians and the wirekey/direct ratios under `title`.
 */
export async function reportRates(b: BoundBench, rounds: number, title: string, measure: (cg: string, ca: string) => Promise<RateSample>): Promise<void> {
  b.upstream.records.length = 0;
  const samples: { direct: RateSample[]; wirekey: RateSample[] } = { direct: [], wirekey: [] };
  await measure(b.direct, b.upstreamCa); // warm-up
  await measure(b.bound, b.wirekeyCa);
  for (let i = 0; i < rounds; i++) {
    samples.direct.push(await measure(b.direct, b.upstreamCa));
    samples.wirekey.push(await measure(b.bound, b.wirekeyCa));
    b.upstream.records.length = 0; // the upstream's log is not part of the measurement
  }
  const row = (name: string, s: RateSample[]) => ({
    name, rps: median(s.map((x) => x.rps)), p50Ms: median(s.map((x) => x.p50Ms)), p99Ms: median(s.map((x) => x.p99Ms)),
  });
  const d = row('direct', samples.direct);
  const w = row('wirekey', samples.wirekey);
  const fmt = (n: number) => n.toFixed(2);
  process.stdout.write(`${title}, medians\n`);
  process.stdout.write(`  ${'path'.padEnd(8)} ${'req/s'.padStart(9)} ${'p50 ms'.padStart(8)} ${'p99 ms'.padStart(8)}\n`);
  for (const r of [d, w]) process.stdout.write(`  ${r.name.padEnd(8)} ${fmt(r.rps).padStart(9)} ${fmt(r.p50Ms).padStart(8)} ${fmt(r.p99Ms).padStart(8)}\n`);
  process.stdout.write(`  ratio wirekey/direct: req/s ${fmt(w.rps / d.rps)}, p50 ${fmt(w.p50Ms / d.p50Ms)}, p99 ${fmt(w.p99Ms / d.p99Ms)}\n`);
}

/** Runs a bench's main(), turning a failure into one line and exit code 1. */
export function runBench(main: () => Promise<void>): void {
  main().catch((err: unknown) => {
    process.stderr.write(`bench failed: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exitCode = 1;
  });
}

/** Rejects on SIGINT or SIGTERM, so that an interrupted bench still cleans up. */
export function interruption(): { promise: Promise<never>; dispose(): void } {
  let onSignal!: (sig: NodeJS.Signals) => void;
  const promise = new Promise<never>((_, reject) => {
    onSignal = (sig) => reject(new Error(`interrupted (${sig})`));
    process.once('SIGINT', onSignal);
    process.once('SIGTERM', onSignal);
  });
  promise.catch(() => {});
  return {
    promise,
    dispose: () => {
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
    },
  };
}
