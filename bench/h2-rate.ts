/**
 * Benchmark: the HTTP/2 request rate, small GETs multiplexed on a few
 * sessions, direct to an HTTP/2 upstream vs through wirekey (h2 to the
 * proxy, h2 upstream, bearer injected), measured in one run with the two
 * interleaved, reported as ratios.
 *
 * usage: npm run bench -- h2 [--seconds 5 --rounds 3 --sessions 2 --streams 16]
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { createTestHost, type TestHost } from '../test/support/netns.js';
import { createTestPki } from '../test/support/test-pki.js';
import { H2_UPSTREAM, startUpstream, type Upstream } from '../test/support/upstream.js';
import { createCgroup, removeCgroupTree, runInCgroup } from '../test/support/cgroup.js';
import { freePort, startAgent, wirekeyBin, type RunningAgent } from '../test/support/agent.js';
import { kernelSkipReason } from '../test/support/requirements.js';
import { repoRoot } from '../test/support/paths.js';
import { must } from '../test/support/shell.js';
import { findCgroup2Root } from '../controller/datapath/cgroup.js';

interface Sample {
  requests: number;
  seconds: number;
  rps: number;
  p50Ms: number;
  p99Ms: number;
}

const HOST = 'h2.wirekey.bench';
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] as number;

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      seconds: { type: 'string', default: '5' }, rounds: { type: 'string', default: '3' },
      sessions: { type: 'string', default: '2' }, streams: { type: 'string', default: '16' },
    },
  });
  const unmet = kernelSkipReason();
  if (unmet) throw new Error(`the benchmark ${unmet}`);
  const tag = randomBytes(2).toString('hex');
  const work = mkdtempSync(path.join(tmpdir(), 'wirekey-bench-'));
  const cgRoot = findCgroup2Root();
  const cgBench = path.join(cgRoot, `wirekey-bench-${tag}`);
  let host: TestHost | undefined;
  let upstream: Upstream | undefined;
  let agent: RunningAgent | undefined;
  try {
    host = await createTestHost('b');
    const pki = await createTestPki(work, [HOST]);
    upstream = await startUpstream(host, pki.serverCert, pki.serverKey, 443, H2_UPSTREAM);
    const bound = createCgroup(cgRoot, `wirekey-bench-${tag}/bound`);
    const direct = createCgroup(cgRoot, `wirekey-bench-${tag}/direct`);
    const token = path.join(work, 'token');
    writeFileSync(token, 'bench-token\n', { mode: 0o600 });
    const policy = path.join(work, 'policy.yaml');
    writeFileSync(policy, [
      'apiVersion: wirekey.dev/v1alpha1', 'kind: CredentialSource', 'metadata: {name: t}', `spec: {file: {path: ${token}}}`, '---',
      'apiVersion: wirekey.dev/v1alpha1', 'kind: Service', 'metadata: {name: s}', `spec: {hosts: [${HOST}], port: 443, tls: true}`, '---',
      'apiVersion: wirekey.dev/v1alpha1', 'kind: Workload', 'metadata: {name: w}', `spec: {selector: {cgroup: /wirekey-bench-${tag}/bound}}`, '---',
      'apiVersion: wirekey.dev/v1alpha1', 'kind: Binding', 'metadata: {name: b}', 'spec: {workload: w, service: s, inject: {bearer: {credential: t}}}', '',
    ].join('\n'));
    const stateDir = path.join(work, 'state');
    agent = await startAgent({ policy, stateDir, pinDir: `/sys/fs/bpf/wirekey-bench-${tag}`, proxyPort: await freePort(),
      audit: path.join(work, 'audit.log'), upstreamCa: pki.caCert, logLevel: 'info' });
    const wirekeyCa = path.join(work, 'wirekey-ca.pem');
    writeFileSync(wirekeyCa, await must(process.execPath, [wirekeyBin, 'ca', 'cert', '--create', '--state-dir', stateDir]));

    const client = path.join(repoRoot, 'bench/clients/h2-load.mjs');
    const measure = async (cg: string, ca: string): Promise<Sample> => {
      const r = await runInCgroup(cg, process.execPath, [client, HOST, host!.ipv4, '443', ca, values.seconds!, values.sessions!, values.streams!], { timeoutMs: 120_000 });
      if (r.code !== 0) throw new Error(`load client failed: ${r.stderr}`);
      return JSON.parse(r.stdout) as Sample;
    };
    upstream.records.length = 0;
    const samples: { direct: Sample[]; wirekey: Sample[] } = { direct: [], wirekey: [] };
    await measure(direct, pki.caCert); // warm-up
    await measure(bound, wirekeyCa);
    for (let i = 0; i < Number(values.rounds); i++) {
      samples.direct.push(await measure(direct, pki.caCert));
      samples.wirekey.push(await measure(bound, wirekeyCa));
      upstream.records.length = 0; // the upstream's log is not part of the measurement
    }
    const row = (name: string, s: Sample[]) => ({
      name, rps: median(s.map((x) => x.rps)), p50Ms: median(s.map((x) => x.p50Ms)), p99Ms: median(s.map((x) => x.p99Ms)),
    });
    const d = row('direct', samples.direct);
    const w = row('wirekey', samples.wirekey);
    const fmt = (n: number) => n.toFixed(2);
    process.stdout.write(`small HTTP/2 GETs, ${values.sessions} sessions x ${values.streams} streams in flight, ${values.rounds} rounds of ${values.seconds}s, medians\n`);
    process.stdout.write(`  ${'path'.padEnd(8)} ${'req/s'.padStart(9)} ${'p50 ms'.padStart(8)} ${'p99 ms'.padStart(8)}\n`);
    for (const r of [d, w]) process.stdout.write(`  ${r.name.padEnd(8)} ${fmt(r.rps).padStart(9)} ${fmt(r.p50Ms).padStart(8)} ${fmt(r.p99Ms).padStart(8)}\n`);
    process.stdout.write(`  ratio wirekey/direct: req/s ${fmt(w.rps / d.rps)}, p50 ${fmt(w.p50Ms / d.p50Ms)}, p99 ${fmt(w.p99Ms / d.p99Ms)}\n`);
  } finally {
    await agent?.stop();
    await upstream?.stop();
    await host?.destroy();
    removeCgroupTree(cgRoot, cgBench);
    rmSync(work, { recursive: true, force: true });
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`bench failed: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exitCode = 1;
});
