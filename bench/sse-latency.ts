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
import path from 'node:path';
import { parseArgs } from 'node:util';
import { runInCgroup } from '../test/support/cgroup.js';
import { repoRoot } from '../test/support/paths.js';
import { runBench, withBoundBench } from './bound-bench.js';

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
  await withBoundBench('sse', HOST, undefined, async (b) => {
    const client = path.join(repoRoot, 'bench/clients/sse-latency.mjs');
    const measure = async (cg: string, ca: string): Promise<Sample> => {
      const r = await runInCgroup(cg, process.execPath, [client, HOST, b.host.ipv4, ca, values.streams!, values.events!, values.gap!], { timeoutMs: 300_000 });
      if (r.code !== 0) throw new Error(`SSE client failed: ${r.stderr}`);
      return JSON.parse(r.stdout) as Sample;
    };
    await measure(b.direct, b.upstreamCa); // warm-up
    await measure(b.bound, b.wirekeyCa);
    const all = { direct: { ttfbMs: [] as number[], eventMs: [] as number[] }, wirekey: { ttfbMs: [] as number[], eventMs: [] as number[] } };
    for (let i = 0; i < Number(values.rounds); i++) {
      for (const [name, cg, ca] of [['direct', b.direct, b.upstreamCa], ['wirekey', b.bound, b.wirekeyCa]] as const) {
        const s = await measure(cg, ca);
        all[name].ttfbMs.push(...s.ttfbMs);
        all[name].eventMs.push(...s.eventMs);
      }
      b.upstream.records.length = 0; // the upstream's log is not part of the measurement
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
  });
}

runBench(main);
