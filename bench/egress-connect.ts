/**
 * Benchmark: what egress rules cost connect(). connect() + accept() +
 * close() on loopback from a process in a workload's cgroup, with the
 * workload unrestricted (the programs run, look the workload up, find no
 * policy) and restricted by 1, 100 and 1,000 address rules (the loopback
 * listener allowed by one of them, the others other prefixes of various
 * lengths). Arms interleaved round by round; medians as ratios to the
 * unrestricted arm.
 *
 * usage: npm run bench -- egress [--rounds 5] [--connects 20000]
 */
import { randomBytes } from 'node:crypto';
import { realpathSync } from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { createCgroup, removeCgroupTree, runInCgroup } from '../test/support/cgroup.js';
import { kernelSkipReason } from '../test/support/requirements.js';
import { repoRoot } from '../test/support/paths.js';
import { cgroupId, findCgroup2Root } from '../controller/cgroup.js';
import { Datapath } from '../controller/datapath/datapath.js';
import { parseAddressPrefix } from '../controller/addresses.js';
import type { PlanEgress, PlanEgressRule } from '../controller/policy/types.js';

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] as number;
const WORKLOAD = 1;

/** `n` rules: the listener's (127.0.0.1, every unprivileged port) and n - 1 others, /16 to /32 in 10.0.0.0/8 and 2001:db8::/32. */
function rules(n: number): PlanEgress {
  const rule = (id: number, cidr: string, ports: [number, number][], protocol: PlanEgressRule['protocol']): PlanEgressRule => ({
    id,
    label: `allow[${id}]`,
    source: { file: 'bench', line: id, column: 1 },
    cidrs: [cidr],
    hosts: [],
    ports,
    protocol,
    tls: false,
  });
  const out = [rule(1, '127.0.0.1/32', [[1024, 65535]], 'tcp')];
  for (let i = 1; i < n; i++) {
    const bits = 16 + (i % 17);
    const v6 = i % 4 === 3;
    const cidr = v6
      ? `2001:db8:${((i * 7919) % 65536).toString(16)}:${i.toString(16)}::/${32 + bits}`
      : `10.${(i * 37) % 256}.${(i * 101) % 256}.${i % 256}/${bits}`;
    out.push(rule(i + 1, canonical(cidr), [[443, 443], [8000 + (i % 100), 8100 + (i % 100)]], i % 3 === 0 ? 'any' : 'tcp'));
  }
  return { mode: 'enforce', rules: out };
}

/** Host bits cleared, as the policy compiler writes prefixes. */
function canonical(cidr: string): string {
  const p = parseAddressPrefix(cidr);
  if (!p) throw new Error(`bad prefix ${cidr}`);
  return p.text;
}

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { rounds: { type: 'string', default: '5' }, connects: { type: 'string', default: '20000' } } });
  const unmet = kernelSkipReason();
  if (unmet) throw new Error(`the benchmark ${unmet}`);
  const tag = randomBytes(2).toString('hex');
  const cgRoot = findCgroup2Root();
  const base = createCgroup(cgRoot, `wirekey-bench-egress-${tag}`);
  let dp: Datapath | undefined;
  try {
    const cg = createCgroup(base, 'app');
    dp = Datapath.open({ cgroupRoot: cgRoot, pinDir: `/sys/fs/bpf/wirekey-bench-egress-${tag}`, proxyPort: 1, kernelHttp: false });
    dp.setIdentity({ cgroups: new Map([[cgroupId(cg) as bigint, [WORKLOAD]]]), exes: [], uids: new Map(), any: { cgroup: [], exe: [WORKLOAD], uid: [WORKLOAD] } });
    dp.attachRedirect(base);

    const python = realpathSync('/usr/bin/python3');
    const connects = async () => {
      const r = await runInCgroup(cg, python, [path.join(repoRoot, 'bench/clients/connect-loop.py'), values.connects!], { timeoutMs: 300_000 });
      if (r.code !== 0) throw new Error(`connect loop failed: ${r.stderr}`);
      const { ops, seconds } = JSON.parse(r.stdout) as { ops: number; seconds: number };
      return ops / seconds;
    };
    const arms: { name: string; egress?: PlanEgress }[] = [
      { name: 'no rules' },
      { name: '1 rule', egress: rules(1) },
      { name: '100 rules', egress: rules(100) },
      { name: '1000 rules', egress: rules(1000) },
    ];
    const samples = new Map(arms.map((a) => [a.name, [] as number[]]));
    const entries = new Map<string, number>();
    const datapath = dp;
    const set = (egress?: PlanEgress) => datapath.setEgress([{ id: WORKLOAD, name: 'bench', egress }]);
    for (const arm of arms) {
      set(arm.egress);
      entries.set(arm.name, datapath.egressOf(WORKLOAD)?.entries.length ?? 0);
    }
    set(rules(1));
    await connects(); // warm-up
    for (let round = 0; round < Number(values.rounds); round++) {
      // Each round in another order, so no arm always follows the same one.
      const order = arms.map((_, i) => arms[(i + round) % arms.length] as (typeof arms)[number]);
      for (const arm of order) {
        set(arm.egress);
        samples.get(arm.name)?.push(await connects());
      }
    }
    const stats = dp.egressStats();
    if ((stats.workloads.get(WORKLOAD)?.refused ?? 0n) !== 0n) throw new Error('the listener was refused: the rules do not allow it');
    const off = median(samples.get('no rules') as number[]);
    process.stdout.write(`connect()+accept()+close() on loopback, ${values.connects} per sample, ${values.rounds} rounds, medians\n`);
    for (const arm of arms) {
      const on = median(samples.get(arm.name) as number[]);
      const kernel = arm.egress ? `${entries.get(arm.name)} prefix entries` : 'unrestricted';
      process.stdout.write(`  ${arm.name.padEnd(11)} ${kernel.padEnd(19)} ${on.toFixed(0).padStart(8)}/s   ratio to no rules ${(on / off).toFixed(3)}\n`);
    }
  } finally {
    dp?.close();
    removeCgroupTree(cgRoot, base);
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`bench failed: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exitCode = 1;
});
