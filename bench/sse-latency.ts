/**
 * Benchmark: server-sent events over HTTPS, direct to the upstream vs
 * through wirekey (bound cgroup, TLS terminated and re-originated, bearer
 * injected), interleaved in one run: time to first byte of each stream, and
 * each event's latency from the upstream's write to the client's read,
 * reported as percentiles and ratios. What buffering would ruin (time to
 * first token of an LLM stream) is what this measures.
 *
 * usage: npm run bench -- sse [--rounds 3 --streams 20 --events 50 --gap 2]
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { createTestHost, type TestHost } from '../test/support/netns.js';
import { createTestPki } from '../test/support/test-pki.js';
import { startUpstream, type Upstream } from '../test/support/upstream.js';
import { createCgroup, removeCgroupTree, runInCgroup } from '../test/support/cgroup.js';
import { freePort, startAgent, wirekeyBin, type RunningAgent } from '../test/support/agent.js';
import { kernelSkipReason } from '../test/support/requirements.js';
import { repoRoot } from '../test/support/paths.js';
import { must } from '../test/support/shell.js';
import { findCgroup2Root } from '../controller/datapath/cgroup.js';

interface Sample {
  ttfbMs: number[];
  eventMs: number[];
}

const HOST = 'api.wirekey.bench';
const pct = (xs: number[], p: number) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(xs.length * p))] as number;

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      rounds: { type: 'string', default: '3' }, streams: { type: 'string', default: '20' },
      events: { type: 'string', default: '50' }, gap: { type: 'string', default: '2' },
    },
  });
  const unmet = kernelSkipReason();
  if (unmet) throw new Error(`the benchmark ${unmet}`);
  const tag = randomBytes(2).toString('hex');
  const work = mkdtempSync(path.join(tmpdir(), 'wirekey-bench-sse-'));
  const cgRoot = findCgroup2Root();
  const cgBench = path.join(cgRoot, `wirekey-bench-sse-${tag}`);
  let host: TestHost | undefined;
  let upstream: Upstream | undefined;
  let agent: RunningAgent | undefined;
  try {
    host = await createTestHost('b');
    const pki = await createTestPki(work, [HOST]);
    upstream = await startUpstream(host, pki.serverCert, pki.serverKey);
    const bound = createCgroup(cgRoot, `wirekey-bench-sse-${tag}/bound`);
    const direct = createCgroup(cgRoot, `wirekey-bench-sse-${tag}/direct`);
    const token = path.join(work, 'token');
    writeFileSync(token, 'bench-token\n', { mode: 0o600 });
    const policy = path.join(work, 'policy.yaml');
    writeFileSync(policy, [
      'apiVersion: wirekey.dev/v1alpha1', 'kind: CredentialSource', 'metadata: {name: t}', `spec: {file: {path: ${token}}}`, '---',
      'apiVersion: wirekey.dev/v1alpha1', 'kind: Service', 'metadata: {name: s}', `spec: {hosts: [${HOST}], port: 443, tls: true}`, '---',
      'apiVersion: wirekey.dev/v1alpha1', 'kind: Workload', 'metadata: {name: w}', `spec: {selector: {cgroup: /wirekey-bench-sse-${tag}/bound}}`, '---',
      'apiVersion: wirekey.dev/v1alpha1', 'kind: Binding', 'metadata: {name: b}', 'spec: {workload: w, service: s, inject: {bearer: {credential: t}}}', '',
    ].join('\n'));
    const stateDir = path.join(work, 'state');
    agent = await startAgent({ policy, stateDir, pinDir: `/sys/fs/bpf/wirekey-bench-sse-${tag}`, proxyPort: await freePort(),
      audit: path.join(work, 'audit.log'), upstreamCa: pki.caCert, logLevel: 'info' });
    const wirekeyCa = path.join(work, 'wirekey-ca.pem');
    writeFileSync(wirekeyCa, await must(process.execPath, [wirekeyBin, 'ca', 'cert', '--create', '--state-dir', stateDir]));

    const client = path.join(repoRoot, 'bench/clients/sse-latency.mjs');
    const measure = async (cg: string, ca: string): Promise<Sample> => {
      const r = await runInCgroup(cg, process.execPath, [client, HOST, host!.ipv4, ca, values.streams!, values.events!, values.gap!], { timeoutMs: 300_000 });
      if (r.code !== 0) throw new Error(`SSE client failed: ${r.stderr}`);
      return JSON.parse(r.stdout) as Sample;
    };
    await measure(direct, pki.caCert); // warm-up
    await measure(bound, wirekeyCa);
    const all = { direct: { ttfbMs: [] as number[], eventMs: [] as number[] }, wirekey: { ttfbMs: [] as number[], eventMs: [] as number[] } };
    for (let i = 0; i < Number(values.rounds); i++) {
      for (const [name, cg, ca] of [['direct', direct, pki.caCert], ['wirekey', bound, wirekeyCa]] as const) {
        const s = await measure(cg, ca);
        all[name].ttfbMs.push(...s.ttfbMs);
        all[name].eventMs.push(...s.eventMs);
      }
      upstream.records.length = 0; // the upstream's log is not part of the measurement
    }
    const fmt = (n: number) => n.toFixed(3);
    const rows = (['direct', 'wirekey'] as const).map((name) => ({
      name,
      ttfb50: pct(all[name].ttfbMs, 0.5), ttfb99: pct(all[name].ttfbMs, 0.99),
      ev50: pct(all[name].eventMs, 0.5), ev99: pct(all[name].eventMs, 0.99),
    }));
    process.stdout.write(`server-sent events over HTTPS: ${values.rounds} rounds of ${values.streams} streams x ${values.events} events ${values.gap} ms apart\n`);
    process.stdout.write('  time to first byte: request sent -> first event; event latency: upstream write -> client read (same clock)\n');
    process.stdout.write(`  ${'path'.padEnd(8)} ${'ttfb p50'.padStart(10)} ${'ttfb p99'.padStart(10)} ${'event p50'.padStart(10)} ${'event p99'.padStart(10)}  (ms)\n`);
    for (const r of rows) {
      process.stdout.write(`  ${r.name.padEnd(8)} ${fmt(r.ttfb50).padStart(10)} ${fmt(r.ttfb99).padStart(10)} ${fmt(r.ev50).padStart(10)} ${fmt(r.ev99).padStart(10)}\n`);
    }
    const [d, w] = rows as [typeof rows[0], typeof rows[0]];
    process.stdout.write(`  ratio wirekey/direct: ttfb p50 ${(w.ttfb50 / d.ttfb50).toFixed(2)}, p99 ${(w.ttfb99 / d.ttfb99).toFixed(2)}; ` +
      `event p50 ${(w.ev50 / d.ev50).toFixed(2)}, p99 ${(w.ev99 / d.ev99).toFixed(2)}\n`);
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
