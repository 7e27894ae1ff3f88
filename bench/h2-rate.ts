/**
 * Benchmark: the HTTP/2 request rate, small GETs multiplexed on a few
 * sessions, direct to an HTTP/2 upstream vs through wirekey (h2 to the
 * proxy, h2 upstream, bearer injected), measured in one run with the two
 * interleaved, reported as ratios.
 *
 * usage: npm run bench -- h2 [--seconds 5 --rounds 3 --sessions 2 --streams 16]
 */
import path from 'node:path';
import { parseArgs } from 'node:util';
import { H2_UPSTREAM } from '../test/support/upstream.js';
import { runInCgroup } from '../test/support/cgroup.js';
import { repoRoot } from '../test/support/paths.js';
import { reportRates, runBench, withBoundBench, type RateSample } from './bound-bench.js';

const HOST = 'h2.wirekey.bench';

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      seconds: { type: 'string', default: '5' }, rounds: { type: 'string', default: '3' },
      sessions: { type: 'string', default: '2' }, streams: { type: 'string', default: '16' },
    },
  });
  await withBoundBench('h2', HOST, H2_UPSTREAM, async (b) => {
    const client = path.join(repoRoot, 'bench/clients/h2-load.mjs');
    const title = `small HTTP/2 GETs, ${values.sessions} sessions x ${values.streams} streams in flight, ${values.rounds} rounds of ${values.seconds}s`;
    await reportRates(b, Number(values.rounds), title, async (cg, ca) => {
      const r = await runInCgroup(cg, process.execPath, [client, HOST, b.host.ipv4, '443', ca, values.seconds!, values.sessions!, values.streams!], { timeoutMs: 120_000 });
      if (r.code !== 0) throw new Error(`load client failed: ${r.stderr}`);
      return JSON.parse(r.stdout) as RateSample;
    });
  });
}

runBench(main);
