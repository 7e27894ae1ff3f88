/**
 * Benchmark: small keep-alive HTTPS GETs, direct to the upstream vs through
 * wirekey (bound cgroup, TLS terminated and re-originated, bearer injected),
 * measured in one run with the two interleaved, reported as ratios.
 *
 * usage: npm run bench -- https [--seconds 5 --rounds 3 --connections 8]
 */
import path from 'node:path';
import { parseArgs } from 'node:util';
import { runInCgroup } from '../test/support/cgroup.js';
import { repoRoot } from '../test/support/paths.js';
import { reportRates, runBench, withBoundBench, type RateSample } from './bound-bench.js';

const HOST = 'api.wirekey.bench';

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: { seconds: { type: 'string', default: '5' }, rounds: { type: 'string', default: '3' }, connections: { type: 'string', default: '8' } },
  });
  await withBoundBench('https', HOST, undefined, async (b) => {
    const client = path.join(repoRoot, 'bench/clients/load.mjs');
    await reportRates(b, Number(values.rounds), `small keep-alive HTTPS GETs, ${values.connections} connections, ${values.rounds} rounds of ${values.seconds}s`, async (cg, ca) => {
      const r = await runInCgroup(cg, process.execPath, [client, 'https', HOST, b.host.ipv4, ca, values.seconds!, values.connections!], { timeoutMs: 120_000 });
      if (r.code !== 0) throw new Error(`load client failed: ${r.stderr}`);
      return JSON.parse(r.stdout) as RateSample;
    });
  });
}

runBench(main);
