/**
 * Benchmark: small keep-alive GETs on each datapath, in one run, with the
 * arms interleaved round by round and reported as ratios:
 *
 *   direct        plain HTTP to the upstream, from a cgroup no workload
 *                 selects: the baseline.
 *   kernel        the same client and upstream, from a cgroup bound to a
 *                 plaintext Service on the kernel datapath: sk_msg adds the
 *                 bearer header on the client's own connection.
 *   proxy         HTTPS through wirekey's TLS-terminating proxy, from a
 *                 cgroup bound to a TLS Service.
 *   direct-https  HTTPS to the upstream with no agent in the path: the
 *                 proxy's own baseline.
 *
 * Every measurement is checked against what the upstream saw: the same
 * number of requests, the bearer on every kernel and proxy request and on
 * no direct one, and, on the plain arms, connections that came from the
 * client's own sockets (no proxy hop). A failed check fails the bench: a
 * figure for a path that was not taken means nothing.
 *
 * usage: npm run bench -- datapaths [--seconds 5] [--rounds 3] [--connections 8]
 *                                   [--arms direct,kernel,proxy,direct-https] [--kernel-audit request|connection]
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { parseArgs } from 'node:util';
import { createTestHost, type TestHost } from '../test/support/netns.js';
import { createTestPki } from '../test/support/test-pki.js';
import { createCgroup, removeCgroupTree, runInCgroup } from '../test/support/cgroup.js';
import { freePort, startAgent, wirekeyBin, type RunningAgent } from '../test/support/agent.js';
import { kernelSkipReason } from '../test/support/requirements.js';
import { repoRoot } from '../test/support/paths.js';
import { must } from '../test/support/shell.js';
import { findCgroup2Root } from '../controller/cgroup.js';
import { interruption } from './bound-bench.js';

const ARMS = ['direct', 'kernel', 'proxy', 'direct-https'] as const;
type ArmName = (typeof ARMS)[number];

interface Sample {
  requests: number;
  seconds: number;
  rps: number;
  p50Ms: number;
  p99Ms: number;
  /** Plain HTTP client only: the local ports of the sockets it used. */
  localPorts?: number[];
}

/** What one listener of bench/clients/http-upstream.mjs saw since the last stats. */
interface ListenerCounts {
  requests: number;
  withAuthorization: number;
  authorizationSha256: Record<string, number>;
  remotePorts: number[];
}

interface UpstreamCounts {
  http: ListenerCounts;
  https: ListenerCounts;
}

interface BenchUpstream {
  /** The counts since the previous call; the upstream starts again at zero. */
  stats(): Promise<UpstreamCounts>;
  stop(): Promise<void>;
}

interface Arm {
  name: ArmName;
  measure(seconds: string): Promise<Sample>;
  /** Throws when the upstream's counts show this arm did not take its path. */
  check(sample: Sample, counts: UpstreamCounts): void;
}

const HOST = 'api.wirekey.bench';
const TOKEN = 'bench-token';
const sha256 = (s: string) => createHash('sha256').update(s).digest('hex');
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] as number;

/** Starts bench/clients/http-upstream.mjs inside the test host (HTTP on 80, HTTPS on 443). */
async function startBenchUpstream(host: TestHost, cert: string, key: string): Promise<BenchUpstream> {
  const script = path.join(repoRoot, 'bench/clients/http-upstream.mjs');
  const child: ChildProcess = spawn('ip', ['netns', 'exec', host.ns, process.execPath, script, '--cert', cert, '--key', key],
    { stdio: ['pipe', 'pipe', 'inherit'] });
  const waiting: Array<{ resolve: (c: UpstreamCounts) => void; reject: (e: Error) => void }> = [];
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  let listening!: () => void;
  const ready = new Promise<void>((resolve, reject) => {
    listening = resolve;
    child.once('error', reject);
    void exited.then(() => reject(new Error(`bench upstream exited early (${child.exitCode})`)));
  });
  void exited.then(() => {
    for (const w of waiting.splice(0)) w.reject(new Error('bench upstream exited'));
  });
  createInterface({ input: child.stdout! }).on('line', (line) => {
    const msg = JSON.parse(line) as { listening?: boolean } & Partial<UpstreamCounts>;
    if (msg.listening) listening();
    else waiting.shift()?.resolve(msg as UpstreamCounts);
  });
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
    await exited;
  };
  try {
    await ready;
  } catch (err) {
    await stop();
    throw err;
  }
  return {
    stats: () =>
      new Promise<UpstreamCounts>((resolve, reject) => {
        waiting.push({ resolve, reject });
        child.stdin!.write('stats\n');
      }),
    stop,
  };
}

/** The policy of the brief: one credential, a plaintext Service on the kernel datapath and a TLS Service. */
function policyText(tag: string, token: string, upstreamIpv4: string, withKernel: boolean): string {
  const doc = (kind: string, name: string, spec: string) =>
    ['apiVersion: wirekey.dev/v1alpha1', `kind: ${kind}`, `metadata: {name: ${name}}`, `spec: ${spec}`].join('\n');
  const docs = [
    doc('CredentialSource', 't', `{file: {path: ${token}}}`),
    withKernel && doc('Service', 'plain', `{addresses: [${upstreamIpv4}], port: 80, tls: false, datapath: kernel}`),
    doc('Service', 's', `{hosts: [${HOST}], port: 443, tls: true}`),
    withKernel && doc('Workload', 'wk', `{selector: {cgroup: /wirekey-bench-${tag}/kernel}}`),
    doc('Workload', 'wp', `{selector: {cgroup: /wirekey-bench-${tag}/proxy}}`),
    withKernel && doc('Binding', 'bk', '{workload: wk, service: plain, inject: {bearer: {credential: t}}}'),
    doc('Binding', 'bp', '{workload: wp, service: s, inject: {bearer: {credential: t}}}'),
  ];
  return `${docs.filter((d): d is string => typeof d === 'string').join('\n---\n')}\n`;
}

/** Checks one listener's counts against a measurement: every request seen, bearer on all or none. */
function checkListener(arm: ArmName, c: ListenerCounts, sample: Sample, bearer: boolean): void {
  const fail = (why: string) => {
    throw new Error(`${arm} arm: ${why}; the figure would not measure that path`);
  };
  if (c.requests !== sample.requests) fail(`the client completed ${sample.requests} requests but the upstream saw ${c.requests}`);
  if (!bearer) {
    if (c.withAuthorization !== 0) fail(`${c.withAuthorization} of ${c.requests} requests reached the upstream with an Authorization header`);
    return;
  }
  const expected = sha256(`Bearer ${TOKEN}`);
  const withBearer = c.authorizationSha256[expected] ?? 0;
  if (withBearer !== c.requests || c.withAuthorization !== c.requests) {
    fail(`only ${withBearer} of ${c.requests} requests reached the upstream with the bound bearer ` +
      `(${c.withAuthorization} with any Authorization header)`);
  }
}

/** Plain arms: the upstream's peers must be the client's own sockets, so no proxy was in between. */
function checkNoHop(arm: ArmName, c: ListenerCounts, sample: Sample): void {
  const ours = [...(sample.localPorts ?? [])].sort((a, b) => a - b).join(',');
  const seen = [...c.remotePorts].sort((a, b) => a - b).join(',');
  if (ours !== seen) {
    throw new Error(`${arm} arm: the upstream's connections (ports ${seen}) are not the client's sockets (ports ${ours}): ` +
      'something relayed them');
  }
}

function parseArms(list: string): ArmName[] {
  const arms = list.split(',').map((s) => s.trim()).filter(Boolean);
  for (const a of arms) if (!(ARMS as readonly string[]).includes(a)) throw new Error(`unknown arm ${a} (arms: ${ARMS.join(', ')})`);
  if (!arms.length) throw new Error('no arms to measure');
  return ARMS.filter((a) => arms.includes(a));
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      seconds: { type: 'string', default: '5' },
      rounds: { type: 'string', default: '3' },
      connections: { type: 'string', default: '8' },
      arms: { type: 'string', default: ARMS.join(',') },
      'kernel-audit': { type: 'string' },
    },
  });
  const seconds = values.seconds!;
  const connections = values.connections!;
  const rounds = Number(values.rounds);
  if (!(Number(seconds) > 0) || !(Number(connections) >= 1) || !(rounds >= 1)) throw new Error('--seconds, --rounds and --connections must be positive');
  const wanted = parseArms(values.arms!);
  const unmet = kernelSkipReason();
  if (unmet) throw new Error(`the benchmark ${unmet}`);

  const tag = randomBytes(2).toString('hex');
  const work = mkdtempSync(path.join(tmpdir(), 'wirekey-bench-'));
  const cgRoot = findCgroup2Root();
  const cgBench = path.join(cgRoot, `wirekey-bench-${tag}`);
  const pinDir = `/sys/fs/bpf/wirekey-bench-${tag}`;
  const interrupted = interruption();
  let host: TestHost | undefined;
  let upstream: BenchUpstream | undefined;
  let agent: RunningAgent | undefined;
  const step = <T>(p: Promise<T>): Promise<T> => Promise.race([p, interrupted.promise]);
  try {
    host = await step(createTestHost('b'));
    const ip = host.ipv4;
    const pki = await step(createTestPki(work, [HOST]));
    upstream = await step(startBenchUpstream(host, pki.serverCert, pki.serverKey));
    const token = path.join(work, 'token');
    writeFileSync(token, `${TOKEN}\n`, { mode: 0o600 });
    const policy = path.join(work, 'policy.yaml');
    writeFileSync(policy, policyText(tag, token, ip, wanted.includes('kernel')));
    const stateDir = path.join(work, 'state');
    agent = await step(startAgent({ policy, stateDir, pinDir, proxyPort: await freePort(), extraArgs: values['kernel-audit'] ? ['--kernel-audit', values['kernel-audit']] : [],
      audit: path.join(work, 'audit.log'), upstreamCa: pki.caCert, logLevel: 'info' }));
    const wirekeyCa = path.join(work, 'wirekey-ca.pem');
    writeFileSync(wirekeyCa, await step(must(process.execPath, [wirekeyBin, 'ca', 'cert', '--create', '--state-dir', stateDir])));

    const client = path.join(repoRoot, 'bench/clients/load.mjs');
    const load = async (cg: string, args: string[], secs: string): Promise<Sample> => {
      const r = await step(runInCgroup(cg, process.execPath, args, { timeoutMs: Number(secs) * 1000 + 60_000 }));
      if (r.code !== 0) throw new Error(`load client in ${path.basename(cg)} failed (${r.code ?? r.signal}): ${r.stderr.trim()}`);
      return JSON.parse(r.stdout) as Sample;
    };
    const plainArm = (name: ArmName, bearer: boolean): Arm => {
      const cgroup = createCgroup(cgRoot, `wirekey-bench-${tag}/${name}`);
      return {
        name,
        measure: (secs) => load(cgroup, [client, 'http', ip, '80', secs, connections], secs),
        check: (sample, counts) => {
          checkListener(name, counts.http, sample, bearer);
          checkNoHop(name, counts.http, sample);
          if (counts.https.requests) throw new Error(`${name} arm: ${counts.https.requests} requests reached the HTTPS listener`);
        },
      };
    };
    const tlsArm = (name: ArmName, ca: string, bearer: boolean): Arm => {
      const cgroup = createCgroup(cgRoot, `wirekey-bench-${tag}/${name}`);
      return {
        name,
        measure: (secs) => load(cgroup, [client, 'https', HOST, ip, ca, secs, connections], secs),
        check: (sample, counts) => {
          checkListener(name, counts.https, sample, bearer);
          if (counts.http.requests) throw new Error(`${name} arm: ${counts.http.requests} requests reached the plain HTTP listener`);
        },
      };
    };
    const all: Record<ArmName, () => Arm> = {
      direct: () => plainArm('direct', false),
      kernel: () => plainArm('kernel', true),
      proxy: () => tlsArm('proxy', wirekeyCa, true),
      'direct-https': () => tlsArm('direct-https', pki.caCert, false),
    };
    const arms = wanted.map((name) => all[name]());

    const measured = async (arm: Arm, secs: string): Promise<Sample> => {
      const sample = await arm.measure(secs);
      arm.check(sample, await step(upstream!.stats()));
      return sample;
    };
    await step(upstream.stats()); // whatever reached the upstream before the first arm is not counted
    for (const arm of arms) await measured(arm, String(Math.min(Number(seconds), 1))); // warm-up, and a first check
    const samples = new Map<ArmName, Sample[]>(arms.map((a) => [a.name, []]));
    for (let round = 0; round < rounds; round++) {
      // Each round starts with a different arm, so that no arm always follows the same one.
      for (let i = 0; i < arms.length; i++) {
        const arm = arms[(round + i) % arms.length]!;
        samples.get(arm.name)!.push(await measured(arm, seconds));
      }
    }
    report(samples, { seconds, rounds, connections });
  } finally {
    interrupted.dispose();
    const attempt = async (what: string, f: () => unknown) => {
      try {
        await f();
      } catch (err) {
        process.stderr.write(`bench cleanup: ${what}: ${err instanceof Error ? err.message : String(err)}\n`);
      }
    };
    await attempt('agent', () => agent?.stop());
    await attempt('upstream', () => upstream?.stop());
    await attempt('network namespace', () => host?.destroy());
    await attempt('cgroups', () => removeCgroupTree(cgRoot, cgBench));
    await attempt('BPF pins', () => rmSync(pinDir, { recursive: true, force: true }));
    await attempt('temporary files', () => rmSync(work, { recursive: true, force: true }));
  }
}

interface Row {
  name: ArmName;
  rps: number;
  minRps: number;
  maxRps: number;
  p50Ms: number;
  p99Ms: number;
}

function report(samples: Map<ArmName, Sample[]>, opts: { seconds: string; rounds: number; connections: string }): void {
  const rows = new Map<ArmName, Row>();
  for (const [name, s] of samples) {
    const rps = s.map((x) => x.rps);
    rows.set(name, { name, rps: median(rps), minRps: Math.min(...rps), maxRps: Math.max(...rps),
      p50Ms: median(s.map((x) => x.p50Ms)), p99Ms: median(s.map((x) => x.p99Ms)) });
  }
  const out = (line: string) => process.stdout.write(`${line}\n`);
  const f2 = (n: number) => n.toFixed(2);
  const f0 = (n: number) => n.toFixed(0);
  out(`small keep-alive GETs, ${opts.connections} connections, ${opts.rounds} rounds of ${opts.seconds}s, arms interleaved; medians over rounds`);
  out(`  ${'arm'.padEnd(13)} ${'req/s'.padStart(9)} ${'p50 ms'.padStart(7)} ${'p99 ms'.padStart(7)}   req/s min..max`);
  for (const r of rows.values()) {
    out(`  ${r.name.padEnd(13)} ${f0(r.rps).padStart(9)} ${f2(r.p50Ms).padStart(7)} ${f2(r.p99Ms).padStart(7)}   ${f0(r.minRps)}..${f0(r.maxRps)}`);
  }
  // Ratios of the medians; then, as a measure of the noise, the same req/s
  // ratio within each round (the two arms ran within seconds of each other).
  const ratio = (label: string, a: ArmName, b: ArmName) => {
    const x = rows.get(a);
    const y = rows.get(b);
    const xs = samples.get(a);
    const ys = samples.get(b);
    if (!x || !y || !xs || !ys) return;
    const perRound = xs.map((s, i) => f2(s.rps / (ys[i] as Sample).rps)).join(' ');
    out(`  ${label.padEnd(20)} req/s ${f2(x.rps / y.rps)}, p50 ${f2(x.p50Ms / y.p50Ms)}, p99 ${f2(x.p99Ms / y.p99Ms)}` +
      `   (req/s per round: ${perRound})`);
  };
  ratio('kernel/direct', 'kernel', 'direct');
  ratio('proxy/direct', 'proxy', 'direct');
  ratio('proxy/direct-https', 'proxy', 'direct-https');
  const checked = [...rows.keys()].map((n) => `${n} ${n === 'kernel' || n === 'proxy' ? 'had the bearer on every request' : 'had none'}`);
  out(`  checked on every run against the upstream: ${checked.join(', ')}` +
    `${rows.has('direct') || rows.has('kernel') ? '; plain arms reached it on their own sockets' : ''}`);
}

main().then(
  () => process.exit(),
  (err: unknown) => {
    process.stderr.write(`bench failed: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(1);
  },
);
