/**
 * Benchmark: what the identity and connect() programs cost the rest of the
 * host. Connection setup (connect + close on loopback, from a process in a
 * selected cgroup, to a port no binding names: every hook runs, nothing is
 * redirected) and exec rate (fork + exec of /bin/true), each measured with
 * the agent loaded and without it, interleaved in one run, as ratios.
 *
 * usage: npm run bench -- identity [--rounds 3] [--connects 20000] [--execs 2000]
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, realpathSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { createCgroup, removeCgroupTree, runInCgroup } from '../test/support/cgroup.js';
import { freePort, startAgent } from '../test/support/agent.js';
import { kernelSkipReason } from '../test/support/requirements.js';
import { repoRoot } from '../test/support/paths.js';
import { findCgroup2Root } from '../controller/cgroup.js';

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] as number;

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: { rounds: { type: 'string', default: '3' }, connects: { type: 'string', default: '20000' }, execs: { type: 'string', default: '2000' } },
  });
  const unmet = kernelSkipReason();
  if (unmet) throw new Error(`the benchmark ${unmet}`);
  const tag = randomBytes(2).toString('hex');
  const work = mkdtempSync(path.join(tmpdir(), 'wirekey-bench-'));
  const cgRoot = findCgroup2Root();
  const base = `/wirekey-bench-${tag}`;
  try {
    const cg = createCgroup(cgRoot, `${base}/app`);
    const python = realpathSync('/usr/bin/python3');
    const token = path.join(work, 'token');
    writeFileSync(token, 'bench\n', { mode: 0o600 });
    const policy = path.join(work, 'policy.yaml');
    writeFileSync(policy, [
      'apiVersion: wirekey.dev/v1alpha1', 'kind: CredentialSource', 'metadata: {name: t}', `spec: {file: {path: ${token}}}`, '---',
      'apiVersion: wirekey.dev/v1alpha1', 'kind: Service', 'metadata: {name: s}', 'spec: {hosts: [api.wirekey.bench], port: 443, tls: true}', '---',
      'apiVersion: wirekey.dev/v1alpha1', 'kind: Workload', 'metadata: {name: w}', `spec: {selector: {cgroup: ${base}/app, executable: ${python}, uid: 0}}`, '---',
      'apiVersion: wirekey.dev/v1alpha1', 'kind: Binding', 'metadata: {name: b}', 'spec: {workload: w, service: s, inject: {bearer: {credential: t}}}', '',
    ].join('\n'));

    const connects = async () => {
      const r = await runInCgroup(cg, python, [path.join(repoRoot, 'bench/clients/connect-loop.py'), values.connects!], { timeoutMs: 300_000 });
      if (r.code !== 0) throw new Error(`connect loop failed: ${r.stderr}`);
      const { ops, seconds } = JSON.parse(r.stdout) as { ops: number; seconds: number };
      return ops / seconds;
    };
    const execs = async () => {
      const n = Number(values.execs);
      const t0 = performance.now();
      const r = await runInCgroup(cg, '/bin/sh', ['-c', `i=0; while [ $i -lt ${n} ]; do /bin/true; i=$((i+1)); done`], { timeoutMs: 300_000 });
      if (r.code !== 0) throw new Error(`exec loop failed: ${r.stderr}`);
      return n / ((performance.now() - t0) / 1000);
    };

    const samples = { connect: { off: [] as number[], on: [] as number[] }, exec: { off: [] as number[], on: [] as number[] } };
    await connects(); // warm-up
    for (let i = 0; i < Number(values.rounds); i++) {
      samples.connect.off.push(await connects());
      samples.exec.off.push(await execs());
      const agent = await startAgent({ policy, stateDir: path.join(work, 'state'), pinDir: `/sys/fs/bpf/wirekey-bench-${tag}`,
        proxyPort: await freePort(), audit: path.join(work, 'audit.log'), logLevel: 'info' });
      try {
        samples.connect.on.push(await connects());
        samples.exec.on.push(await execs());
      } finally {
        await agent.stop();
      }
    }
    const fmt = (n: number) => n.toFixed(0);
    process.stdout.write(`identity and connect() programs, ${values.rounds} rounds, medians\n`);
    for (const [name, s] of Object.entries(samples)) {
      const off = median(s.off);
      const on = median(s.on);
      process.stdout.write(`  ${`${name}/s`.padEnd(10)} without agent ${fmt(off).padStart(8)}   with agent ${fmt(on).padStart(8)}   ratio ${(on / off).toFixed(3)}\n`);
    }
  } finally {
    removeCgroupTree(cgRoot, path.join(cgRoot, base));
    rmSync(work, { recursive: true, force: true });
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`bench failed: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exitCode = 1;
});
