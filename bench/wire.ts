/**
 * Benchmark (the default of `npm run bench`): what each datapath costs on
 * the wire, measured with native clients (wrk, curl) against an nginx
 * upstream in a test network namespace, every arm in one run, interleaved
 * round by round, reported as ratios to its baseline.
 *
 * Request rate and latency (wrk, small keep-alive GETs):
 *   https-direct        HTTPS straight to the upstream from an unbound
 *                       cgroup: the proxy's baseline.
 *   proxy               HTTPS from a cgroup bound to a TLS Service, through
 *                       wirekey's proxy (bearer injected).
 *   nginx-same-job      HTTPS to an nginx on loopback that does the proxy's
 *                       job: terminates TLS for the service's name, sets the
 *                       same Authorization header, re-originates TLS to the
 *                       upstream with its certificate verified, over
 *                       kept-alive upstream connections.
 *   node-tls-relay      HTTPS to a Node process that terminates TLS and
 *                       copies bytes to a verified upstream TLS connection,
 *                       with no HTTP parsing and no header
 *                       (bench/clients/tls-relay.mjs): the floor of any data
 *                       path on Node's TLS, for the proxy's figures.
 *   node-head-relay     the relay plus the least an injecting HTTP/1.1 path
 *                       must do (find each request head and set the header,
 *                       find each response's end), for requests without a
 *                       body only (bench/clients/h1-head-relay.mjs): what a
 *                       lean HTTP/1.1 path on Node would cost.
 *   plain-direct        plain HTTP straight to the upstream: the kernel
 *                       datapath's baseline.
 *   kernel              plain HTTP from a cgroup bound to a plaintext
 *                       Service on the kernel datapath (sk_msg injects on
 *                       the client's own connection).
 *   kernel-passthrough  the same connections through an sk_msg program
 *                       that passes every message unchanged
 *                       (bench/passthrough.bpf.c): the floor of the design.
 *   kernel-naive-insert the same connections through an sk_msg program
 *                       that only inserts the bearer's line after the
 *                       request line (push, pull, write; no parsing, no
 *                       lookups, no audit), which leaves each request in
 *                       three pieces: the simplest inserting program, for
 *                       scale.
 * For the kernel arms it also prints each sk_msg program's run time per
 * message, from a run of its own per arm after the rounds with
 * kernel.bpf_stats_enabled on (the rounds run with it as it was: the
 * stats put a clock read around every BPF program run, and the kernel arm
 * runs more programs than the others).
 * Throughput (curl over HTTP/1.1, one large transfer per arm and round, MB/s):
 *   downloads: bulk-https-direct, bulk-proxy, bulk-nginx-same-job,
 *   bulk-node-tls-relay, bulk-plain-direct, bulk-kernel (`--arms
 *   bulk-download` names all six); uploads (curl -T, a PUT to an endpoint
 *   that reads the body whole before it answers): bulk-upload-https-direct,
 *   bulk-upload-proxy, bulk-upload-nginx-same-job, bulk-upload-node-tls-relay
 *   (`--arms bulk-upload`). `--arms bulk` names all ten.
 *
 * Every arm is checked against the upstream's access log: every request the
 * client completed reached the upstream's expected listener, with the
 * bearer on the injected arms and without any Authorization header on the
 * others; the plain arms reached it on the client's own sockets (no relay);
 * the pass-through program saw the pass-through arm's messages and no
 * other arm's. A failed check fails the bench: a figure for a path that
 * was not taken means nothing.
 *
 * usage: npm run bench [-- --seconds 5 --rounds 3 --connections 16 --bulk-mib 256
 *                          --arms https-direct,proxy,nginx-same-job,node-tls-relay,node-head-relay,plain-direct,kernel,kernel-passthrough,kernel-naive-insert,bulk
 *                          --kernel-audit request|connection --proxy-workers 1]
 *
 * --proxy-workers N runs the agent with N proxy worker threads and the
 * same-job nginx with N worker processes; with N > 1 both may run on the
 * first N CPUs (and share them with the upstream and the clients).
 */
import { execFileSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { closeSync, mkdirSync, mkdtempSync, openSync, ftruncateSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { createTestHost, type TestHost } from '../test/support/netns.js';
import { createTestPki } from '../test/support/test-pki.js';
import { createCgroup, removeCgroupTree } from '../test/support/cgroup.js';
import { freePort, startAgent, wirekeyBin, type RunningAgent } from '../test/support/agent.js';
import { kernelSkipReason } from '../test/support/requirements.js';
import { repoRoot } from '../test/support/paths.js';
import { must } from '../test/support/shell.js';
import { sleep } from '../test/support/wait.js';
import { findCgroup2Root } from '../controller/cgroup.js';
import { bpfCall, native, type NativeLink, type NativeObject } from '../controller/datapath/native.js';
import { AccessLog, sameJobConfig, startNginx, startServer, upstreamConfig, type Nginx, type TagCounts } from './nginx.js';
import { parseWrk, startClient } from './wrk.js';
import { interruption } from './bound-bench.js';

const RATE_ARMS = ['https-direct', 'proxy', 'nginx-same-job', 'node-tls-relay', 'node-head-relay', 'plain-direct', 'kernel', 'kernel-passthrough', 'kernel-naive-insert'] as const;
const DOWNLOAD_ARMS = ['bulk-https-direct', 'bulk-proxy', 'bulk-nginx-same-job', 'bulk-node-tls-relay', 'bulk-plain-direct', 'bulk-kernel'] as const;
const UPLOAD_ARMS = ['bulk-upload-https-direct', 'bulk-upload-proxy', 'bulk-upload-nginx-same-job', 'bulk-upload-node-tls-relay'] as const;
const BULK_ARMS = [...DOWNLOAD_ARMS, ...UPLOAD_ARMS] as const;
/** Names that stand for several arms in --arms. */
const ARM_GROUPS: Record<string, readonly string[]> = { bulk: BULK_ARMS, 'bulk-download': DOWNLOAD_ARMS, 'bulk-upload': UPLOAD_ARMS };
type RateName = (typeof RATE_ARMS)[number];
/** The arms whose requests pass an sk_msg program. */
const KERNEL_ARMS: readonly ArmName[] = ['kernel', 'kernel-passthrough', 'kernel-naive-insert'];
type BulkName = (typeof BULK_ARMS)[number];
type ArmName = RateName | BulkName;

/** Each arm's baseline, for the table's ratio column. */
const BASELINE: Partial<Record<ArmName, ArmName>> = {
  proxy: 'https-direct', 'nginx-same-job': 'https-direct', 'node-tls-relay': 'https-direct', 'node-head-relay': 'https-direct', kernel: 'plain-direct', 'kernel-passthrough': 'plain-direct',
  'kernel-naive-insert': 'plain-direct',
  'bulk-proxy': 'bulk-https-direct', 'bulk-nginx-same-job': 'bulk-https-direct', 'bulk-node-tls-relay': 'bulk-https-direct', 'bulk-kernel': 'bulk-plain-direct',
  'bulk-upload-proxy': 'bulk-upload-https-direct', 'bulk-upload-nginx-same-job': 'bulk-upload-https-direct', 'bulk-upload-node-tls-relay': 'bulk-upload-https-direct',
};

const isUpload = (arm: ArmName) => arm.startsWith('bulk-upload-');

const HOST = 'api.wirekey.bench';
const TOKEN = 'bench-token';
/** bench/passthrough.bpf.c's naive insertion program inserts this same line (IN_LINE): the access log's bearer check catches a difference. */
const BEARER = `Bearer ${TOKEN}`;
const PASSTHROUGH_OBJECT = path.join(repoRoot, 'build/bench/passthrough.bpf.o');

/** How an arm's client reaches the upstream, and what the upstream must see. */
interface Route {
  /** The client's cgroup under the bench's. */
  cgroup: string;
  /** The upstream listener its requests must reach: 80 (plain) or 443 (TLS). */
  listener: 80 | 443;
  bearer: boolean;
  /** Plain arms: the upstream's connections must be the client's own sockets. */
  ownSockets: boolean;
  /** Runs through one of the reference sk_msg programs (bench/passthrough.bpf.c). */
  reference?: ReferenceKind;
  /** For wrk: the URL (before the tag) and the hosts file; for curl: its options, the download's URL last. */
  url: string;
  hosts?: string;
  curl: string[];
}

interface Sample {
  tag: string;
  /** Requests the client completed (wrk), or 1 (curl). */
  requests: number;
  rps: number;
  p50Us: number;
  p99Us: number;
  /** Bulk: bytes received (downloads) or sent (uploads) and MB/s. */
  bytes: number;
  mbps: number;
  /** Messages each loaded reference program handled during the run. */
  referenceMsgs: Map<ReferenceKind, bigint>;
  /** Arms served by a process of their own (proxy, nginx-same-job, node-tls-relay): its CPU time per request, µs. */
  cpuUsPerRequest?: number;
  /** The same for bulk arms: its CPU time per MiB moved, ms. */
  cpuMsPerMib?: number;
  /** Plain wrk arms: the local ports of the client's sockets, read while it ran. */
  localPorts?: number[];
  /** Kernel arms, in the run that times the program: the run time and runs of the arm's sk_msg program (kernel.bpf_stats_enabled). */
  program?: ProgramStats;
}

interface ProgramStats {
  runTimeNs: number;
  runs: number;
}

const BPF_STATS_SYSCTL = '/proc/sys/kernel/bpf_stats_enabled';
/** The length of the run that times a kernel arm's program, the only one with the stats on. */
const PROGRAM_TIME_SECONDS = 3;

/** A program's cumulative run time and run count (bpftool; counted while kernel.bpf_stats_enabled is 1). */
async function programStats(id: number): Promise<ProgramStats & { name: string }> {
  const p = JSON.parse(await must('bpftool', ['prog', 'show', 'id', String(id), '--json'])) as { name: string; run_time_ns?: number; run_cnt?: number };
  return { name: p.name, runTimeNs: p.run_time_ns ?? 0, runs: p.run_cnt ?? 0 };
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] as number;

function parseArms(list: string): ArmName[] {
  const names = list.split(',').map((s) => s.trim()).filter(Boolean).flatMap((a) => ARM_GROUPS[a] ?? [a]);
  const all: readonly string[] = [...RATE_ARMS, ...BULK_ARMS];
  for (const a of names) if (!all.includes(a)) throw new Error(`unknown arm ${a} (arms: ${all.join(', ')}, ${Object.keys(ARM_GROUPS).join(', ')})`);
  if (!names.length) throw new Error('no arms to measure');
  return (all as ArmName[]).filter((a) => names.includes(a));
}

/** The CPUs this process may run on (taskset's list, ranges expanded). */
async function allowedCpus(): Promise<number[]> {
  const out = await must('taskset', ['-pc', String(process.pid)]);
  const list = /list:\s*(\S+)/.exec(out)?.[1] ?? '';
  return list.split(',').flatMap((part) => {
    const [a, b] = part.split('-').map(Number);
    if (a === undefined || Number.isNaN(a)) return [];
    return Array.from({ length: (b ?? a) - a + 1 }, (_, i) => a + i);
  });
}

/** The policy: a plaintext Service on the kernel datapath and a TLS Service, each bound to one cgroup of the bench. */
function policyText(base: string, token: string, upstreamIpv4: string): string {
  const doc = (kind: string, name: string, spec: string) =>
    ['apiVersion: wirekey.dev/v1alpha1', `kind: ${kind}`, `metadata: {name: ${name}}`, `spec: ${spec}`].join('\n');
  return `${[
    doc('CredentialSource', 't', `{file: {path: ${token}}}`),
    doc('Service', 'plain', `{addresses: [${upstreamIpv4}], port: 80, tls: false, datapath: kernel}`),
    doc('Service', 's', `{hosts: [${HOST}], port: 443, tls: true}`),
    doc('Workload', 'wk', `{selector: {cgroup: /${base}/kernel}}`),
    doc('Workload', 'wp', `{selector: {cgroup: /${base}/proxy}}`),
    doc('Binding', 'bk', '{workload: wk, service: plain, inject: {bearer: {credential: t}}}'),
    doc('Binding', 'bp', '{workload: wp, service: s, inject: {bearer: {credential: t}}}'),
  ].join('\n---\n')}\n`;
}

/** The reference programs of bench/passthrough.bpf.c: `pass` lets every message through, `insert` inserts the bearer's line the simplest way. */
type ReferenceKind = 'pass' | 'insert';
/** Each reference program's programs and maps in the object, by its prefix. */
const REFERENCE_PREFIX: Record<ReferenceKind, string> = { pass: 'pt', insert: 'in' };
const REFERENCE_WHAT: Record<ReferenceKind, string> = { pass: 'the pass-through program passed', insert: 'the naive insertion program inserted a line into' };

/** One reference sk_msg program, attached to one cgroup; detached and closed by close(). */
class ReferenceProgram {
  readonly #prefix: string;
  #object: NativeObject;
  #link: NativeLink | undefined;
  #attachedToMap = false;

  constructor(kind: ReferenceKind, cgroup: string) {
    this.#prefix = REFERENCE_PREFIX[kind];
    this.#object = bpfCall(() => new (native().BpfObject)(PASSTHROUGH_OBJECT));
    try {
      bpfCall(() => this.#object.load());
      bpfCall(() => this.#object.attachToMap(`${this.#prefix}_msg`, `${this.#prefix}_socks`));
      this.#attachedToMap = true;
      this.#link = bpfCall(() => this.#object.attachCgroup(`${this.#prefix}_sockops`, cgroup));
    } catch (err) {
      this.close();
      throw err;
    }
  }

  /** The sk_msg program's kernel id. */
  get programId(): number | undefined {
    return this.#object.programs().find((p) => p.name === `${this.#prefix}_msg`)?.id;
  }

  /** Messages the sk_msg program has handled so far. */
  messages(): bigint {
    const v = bpfCall(() => this.#object.map(`${this.#prefix}_msgs`).lookup(Buffer.alloc(4)));
    return v ? v.readBigUInt64LE(0) : 0n;
  }

  close(): void {
    this.#link?.destroy();
    this.#link = undefined;
    if (this.#attachedToMap) this.#object.detachFromMap(`${this.#prefix}_msg`, `${this.#prefix}_socks`);
    this.#attachedToMap = false;
    this.#object.close();
  }
}

/** The local ports of `pid`'s established TCP connections to `ip`, as the kernel lists them. */
async function socketPorts(pid: number, ip: string): Promise<number[]> {
  const out = await must('ss', ['-tnpH', 'state', 'established', 'dst', ip]);
  const ports: number[] = [];
  for (const line of out.split('\n')) {
    const m = /\S+:(\d+)\s+\S+:\d+\s+users:.*pid=(\d+),/.exec(line);
    if (m && Number(m[2]) === pid) ports.push(Number(m[1]));
  }
  return ports;
}

/**
 * Throws when what the upstream saw for `s` shows that its arm did not take
 * its path. `final`: every request of the run has been logged by now, so
 * the count must also be at most one in flight per connection.
 */
function check(arm: ArmName, route: Route, s: Sample, c: TagCounts, o: { connections: number; bulkBytes: number; final: boolean }): void {
  const fail = (why: string) => {
    throw new Error(`${arm} arm (${s.tag}): ${why}; the figure would not measure that path`);
  };
  // Right after a run the upstream may not have logged its last request yet: then the run is checked once all are logged.
  if (!o.final && c.requests < s.requests) return;
  if (c.requests < s.requests) fail(`the client completed ${s.requests} requests but the upstream saw ${c.requests}`);
  const inFlight = arm.startsWith('bulk-') ? 0 : o.connections;
  if (o.final && c.requests > s.requests + inFlight) fail(`the upstream saw ${c.requests} requests, more than the client's ${s.requests} and one in flight per connection`);
  const onListener = c.byPort.get(route.listener) ?? 0;
  if (onListener !== c.requests) fail(`${c.requests - onListener} of ${c.requests} requests reached a listener other than port ${route.listener}`);
  if (c.otherAuthorization) fail(`${c.otherAuthorization} requests reached the upstream with an Authorization header other than the bound bearer`);
  if (route.bearer && c.bearer !== c.requests) fail(`only ${c.bearer} of ${c.requests} requests reached the upstream with the bound bearer`);
  if (!route.bearer && c.bearer) fail(`${c.bearer} of ${c.requests} requests reached the upstream with the bearer`);
  if (isUpload(arm)) {
    // The request line and headers come on top of the body.
    if (s.bytes !== o.bulkBytes || c.requestBytes < o.bulkBytes) fail(`the client sent ${s.bytes} and the upstream read ${c.requestBytes} bytes for a body of ${o.bulkBytes}`);
  } else if (arm.startsWith('bulk-') && (s.bytes !== o.bulkBytes || c.bodyBytes !== o.bulkBytes)) {
    fail(`the upstream sent ${c.bodyBytes} and the client received ${s.bytes} of ${o.bulkBytes} bytes`);
  }
  if (route.ownSockets && s.localPorts) {
    const ours = [...s.localPorts].sort((a, b) => a - b).join(',');
    const seen = [...c.remotePorts].sort((a, b) => a - b).join(',');
    if (ours !== seen) fail(`the upstream's connections (ports ${seen}) are not the client's sockets (ports ${ours}): something relayed them`);
  }
  for (const [kind, n] of s.referenceMsgs) {
    // Against the client's completed requests (each passed the program before its answer came):
    // the upstream's count can grow after the program's counter was read.
    if (route.reference === kind && n < BigInt(s.requests)) fail(`${REFERENCE_WHAT[kind]} ${n} messages for the client's ${s.requests} completed requests`);
    if (route.reference !== kind && n !== 0n) fail(`${REFERENCE_WHAT[kind]} ${n} messages of an arm it is not attached to`);
  }
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      seconds: { type: 'string', default: '5' },
      rounds: { type: 'string', default: '3' },
      connections: { type: 'string', default: '16' },
      'bulk-mib': { type: 'string', default: '256' },
      arms: { type: 'string', default: [...RATE_ARMS, 'bulk'].join(',') },
      'kernel-audit': { type: 'string' },
      'proxy-workers': { type: 'string', default: '1' },
    },
  });
  const seconds = Number(values.seconds);
  const rounds = Number(values.rounds);
  const connections = Number(values.connections);
  const bulkBytes = Number(values['bulk-mib']) * 1024 * 1024;
  for (const [name, v] of [['seconds', seconds], ['rounds', rounds], ['connections', connections], ['bulk-mib', bulkBytes]] as const) {
    if (!Number.isInteger(v) || v < 1) throw new Error(`--${name} must be a positive whole number`);
  }
  const proxyWorkers = Number(values['proxy-workers']);
  if (!Number.isInteger(proxyWorkers) || proxyWorkers < 1) throw new Error('--proxy-workers must be a positive whole number');
  const wanted = parseArms(values.arms!);
  const unmet = kernelSkipReason();
  if (unmet) throw new Error(`the benchmark ${unmet}`);

  const cpus = await allowedCpus();
  const serverCpu = cpus.length >= 2 ? String(cpus[0]) : undefined;
  const clientCpu = cpus.length >= 2 ? String(cpus[cpus.length - 1]) : undefined;
  // Several proxy workers (and as many same-job nginx workers) get as many CPUs.
  const proxyCpus = proxyWorkers > 1 && cpus.length >= 2 ? cpus.slice(0, proxyWorkers).join(',') : serverCpu;
  const pinning = serverCpu === undefined
    ? `no pinning (${cpus.length} CPU allowed)`
    : proxyCpus === serverCpu
      ? `wrk and curl on CPU ${clientCpu}; the upstream nginx, the same-job nginx and the agent on CPU ${serverCpu} (taskset)`
      : `wrk and curl on CPU ${clientCpu}; the upstream nginx on CPU ${serverCpu}; the same-job nginx and the agent on CPUs ${proxyCpus} (taskset)`;

  const tag = randomBytes(2).toString('hex');
  const base = `wirekey-bench-${tag}`;
  const work = mkdtempSync(path.join(tmpdir(), 'wirekey-bench-'));
  const cgRoot = findCgroup2Root();
  const cgBench = path.join(cgRoot, base);
  const pinDir = `/sys/fs/bpf/${base}`;
  const interrupted = interruption();
  // The load clients still running: killed outright on an interruption. nginx is not one of them: a
  // killed master leaves its worker behind, so each nginx is stopped by its own stop().
  const children = new Set<ChildProcess>();
  const track = (c: ChildProcess) => {
    children.add(c);
    c.once('close', () => children.delete(c));
  };
  let host: TestHost | undefined;
  let upstream: Nginx | undefined;
  let sameJob: Nginx | undefined;
  let relay: Nginx | undefined;
  let headRelay: Nginx | undefined;
  let agent: RunningAgent | undefined;
  const references = new Map<ReferenceKind, ReferenceProgram>();
  let log: AccessLog | undefined;
  /** kernel.bpf_stats_enabled as it was, put back at the end; undefined when the bench did not change it. */
  let bpfStatsBefore: string | undefined;
  const step = <T>(p: Promise<T>): Promise<T> => Promise.race([p, interrupted.promise]);
  try {
    host = await step(createTestHost('w'));
    const ip = host.ipv4;
    const pki = await step(createTestPki(work, [HOST]));
    const www = path.join(work, 'www');
    mkdirSync(www);
    // A sparse file: the download (and the upload, which sends it) measures the datapath, not a disk.
    const bigFile = path.join(www, 'big');
    const big = openSync(bigFile, 'w');
    ftruncateSync(big, bulkBytes);
    closeSync(big);
    const serverPin = serverCpu === undefined ? [] : ['taskset', '-c', serverCpu];
    const proxyPin = proxyCpus === undefined ? [] : ['taskset', '-c', proxyCpus];
    const upDir = path.join(work, 'upstream');
    upstream = await step(startNginx(upDir, upstreamConfig(upDir, { ip, cert: pki.serverCert, key: pki.serverKey, bearer: BEARER, wwwRoot: www }),
      ['ip', 'netns', 'exec', host.ns, ...serverPin], { host: ip, port: 80 }));
    log = new AccessLog(path.join(upDir, 'access.log'));

    // Every cgroup exists before the agent starts, so that its workloads select them from the start.
    const cgroups = Object.fromEntries(['https-direct', 'proxy', 'nginx-same-job', 'node-tls-relay', 'node-head-relay', 'plain-direct', 'kernel', 'kernel-passthrough', 'kernel-naive-insert', 'nginx']
      .map((name) => [name, createCgroup(cgRoot, `${base}/${name}`)]));
    const cg = (name: string) => cgroups[name] as string;
    const sameJobPort = await freePort();
    const sameJobDir = path.join(work, 'same-job');
    if (wanted.some((a) => a.endsWith('nginx-same-job'))) {
      sameJob = await step(startNginx(sameJobDir, sameJobConfig(sameJobDir, { port: sameJobPort, cert: pki.serverCert, key: pki.serverKey,
        authorization: BEARER, upstream: `${ip}:443`, serverName: HOST, upstreamCa: pki.caCert, workers: proxyWorkers }),
      ['sh', '-c', 'echo $$ > "$0/cgroup.procs" && exec "$@"', cg('nginx'), ...proxyPin], { host: '127.0.0.1', port: sameJobPort }));
    }

    const relayPort = await freePort();
    if (wanted.some((a) => a.endsWith('node-tls-relay'))) {
      relay = await step(startServer('the Node TLS relay', ['sh', '-c', 'echo $$ > "$0/cgroup.procs" && exec "$@"', cg('nginx'), ...serverPin,
        process.execPath, path.join(repoRoot, 'bench/clients/tls-relay.mjs'), String(relayPort), pki.serverCert, pki.serverKey, ip, '443', HOST, pki.caCert],
      { host: '127.0.0.1', port: relayPort }));
    }

    const headRelayPort = await freePort();
    if (wanted.includes('node-head-relay')) {
      headRelay = await step(startServer('the Node head relay', ['sh', '-c', 'echo $$ > "$0/cgroup.procs" && exec "$@"', cg('nginx'), ...serverPin,
        process.execPath, path.join(repoRoot, 'bench/clients/h1-head-relay.mjs'), String(headRelayPort), pki.serverCert, pki.serverKey, ip, '443', HOST,
        pki.caCert, BEARER], { host: '127.0.0.1', port: headRelayPort }));
    }

    const token = path.join(work, 'token');
    writeFileSync(token, `${TOKEN}\n`, { mode: 0o600 });
    const policy = path.join(work, 'policy.yaml');
    writeFileSync(policy, policyText(base, token, ip));
    const stateDir = path.join(work, 'state');
    const audit = values['kernel-audit'];
    agent = await step(startAgent({ policy, stateDir, pinDir, proxyPort: await freePort(), extraArgs: [...(audit ? ['--kernel-audit', audit] : []), '--proxy-workers', String(proxyWorkers)],
      audit: path.join(work, 'audit.log'), upstreamCa: pki.caCert, logLevel: 'info', wrapper: proxyPin.length ? proxyPin : undefined }));
    const wirekeyCa = path.join(work, 'wirekey-ca.pem');
    writeFileSync(wirekeyCa, await step(must(process.execPath, [wirekeyBin, 'ca', 'cert', '--create', '--state-dir', stateDir])));

    const hostsFile = (name: string, addr: string) => {
      const f = path.join(work, `hosts-${name}`);
      writeFileSync(f, `127.0.0.1 localhost\n${addr} ${HOST}\n`);
      return f;
    };
    const upstreamHosts = hostsFile('upstream', ip);
    const routes: Record<RateName, Route> = {
      'https-direct': { cgroup: cg('https-direct'), listener: 443, bearer: false, ownSockets: false,
        url: `https://${HOST}/`, hosts: upstreamHosts, curl: ['--resolve', `${HOST}:443:${ip}`, '--cacert', pki.caCert, `https://${HOST}/big`] },
      proxy: { cgroup: cg('proxy'), listener: 443, bearer: true, ownSockets: false,
        url: `https://${HOST}/`, hosts: upstreamHosts, curl: ['--resolve', `${HOST}:443:${ip}`, '--cacert', wirekeyCa, `https://${HOST}/big`] },
      'nginx-same-job': { cgroup: cg('nginx-same-job'), listener: 443, bearer: true, ownSockets: false,
        url: `https://${HOST}:${sameJobPort}/`, hosts: hostsFile('same-job', '127.0.0.1'),
        curl: ['--resolve', `${HOST}:${sameJobPort}:127.0.0.1`, '--cacert', pki.caCert, `https://${HOST}:${sameJobPort}/big`] },
      'node-tls-relay': { cgroup: cg('node-tls-relay'), listener: 443, bearer: false, ownSockets: false,
        url: `https://${HOST}:${relayPort}/`, hosts: hostsFile('relay', '127.0.0.1'),
        curl: ['--resolve', `${HOST}:${relayPort}:127.0.0.1`, '--cacert', pki.caCert, `https://${HOST}:${relayPort}/big`] },
      'node-head-relay': { cgroup: cg('node-head-relay'), listener: 443, bearer: true, ownSockets: false,
        url: `https://${HOST}:${headRelayPort}/`, hosts: hostsFile('head-relay', '127.0.0.1'), curl: [] },
      'plain-direct': { cgroup: cg('plain-direct'), listener: 80, bearer: false, ownSockets: true,
        url: `http://${ip}/`, curl: [`http://${ip}/big`] },
      kernel: { cgroup: cg('kernel'), listener: 80, bearer: true, ownSockets: true,
        url: `http://${ip}/`, curl: [`http://${ip}/big`] },
      'kernel-passthrough': { cgroup: cg('kernel-passthrough'), listener: 80, bearer: false, ownSockets: true, reference: 'pass',
        url: `http://${ip}/`, curl: [] },
      'kernel-naive-insert': { cgroup: cg('kernel-naive-insert'), listener: 80, bearer: true, ownSockets: true, reference: 'insert',
        url: `http://${ip}/`, curl: [] },
    };
    // The process doing the arm's work between client and upstream, for its CPU time per request or per MiB.
    const serverOf = (arm: ArmName): number | undefined => {
      const a = arm.replace(/^bulk-(upload-)?/, '');
      return a === 'proxy' ? agent!.pid : a === 'nginx-same-job' ? sameJob?.pid : a === 'node-tls-relay' ? relay?.pid : a === 'node-head-relay' ? headRelay?.pid : undefined;
    };
    const routeOf = (arm: ArmName): Route => routes[arm.replace(/^bulk-(upload-)?/, '') as RateName];
    for (const arm of ['kernel-passthrough', 'kernel-naive-insert'] as const) {
      const kind = routes[arm].reference!;
      if (wanted.includes(arm)) references.set(kind, new ReferenceProgram(kind, routes[arm].cgroup));
    }
    const referenceCounts = () => new Map([...references].map(([kind, p]) => [kind, p.messages()]));
    // Each kernel arm's sk_msg program, for its run time per message.
    const programOf = new Map<RateName, number>();
    if (wanted.some((a) => KERNEL_ARMS.includes(a))) {
      for (const id of agent.programIds) if ((await step(programStats(id))).name === 'wk_http_msg') programOf.set('kernel', id);
      for (const arm of ['kernel-passthrough', 'kernel-naive-insert'] as const) {
        const id = references.get(routes[arm].reference!)?.programId;
        if (id !== undefined) programOf.set(arm, id);
      }
      bpfStatsBefore = readFileSync(BPF_STATS_SYSCTL, 'utf8').trim();
    }

    const measure = async (arm: ArmName, secs: number, label: string, o: { timeProgram?: boolean } = {}): Promise<Sample> => {
      const route = routeOf(arm);
      const t = `${arm}.${label}`;
      const before = referenceCounts();
      const programId = o.timeProgram ? programOf.get(arm as RateName) : undefined;
      const programBefore = programId === undefined ? undefined : await step(programStats(programId));
      const server = serverOf(arm);
      const cpuBefore = server === undefined ? 0 : cpuSeconds(server);
      const client = { cgroup: route.cgroup, cpu: clientCpu, timeoutMs: secs * 1000 + 120_000, onChild: track };
      let sample: Sample;
      if (arm.startsWith('bulk-')) {
        // HTTP/1.1 everywhere: the same-job nginx offers no h2, and curl would take h2 from the proxy's ALPN.
        // An upload goes without Expect: 100-continue, which curl would add to a body this large.
        const url = route.curl.at(-1)!;
        const transfer = isUpload(arm)
          ? ['-T', bigFile, '-H', 'Expect:', '-w', '%{size_upload} %{time_total}', `${url.replace(/\/big$/, '/upload')}?a=${t}`]
          : ['-w', '%{size_download} %{time_total}', `${url}?a=${t}`];
        const run = startClient(['curl', '-sS', '--fail', '--http1.1', '-o', '/dev/null', ...route.curl.slice(0, -1), ...transfer], client);
        const r = await step(run.done);
        if (r.code !== 0) throw new Error(`curl for ${arm} failed (${r.code ?? r.signal}): ${r.stderr.trim()}`);
        const [size, total] = r.stdout.trim().split(' ').map(Number) as [number, number];
        sample = { tag: t, requests: 1, rps: 0, p50Us: 0, p99Us: 0, bytes: size, mbps: size / total / 1e6, referenceMsgs: new Map() };
      } else {
        const run = startClient(['wrk', '-t1', `-c${connections}`, `-d${secs}s`, '--latency', `${route.url}?a=${t}`], { ...client, hosts: route.hosts });
        let localPorts: number[] | undefined;
        if (route.ownSockets) {
          // wrk opens its connections at once and keeps them; read them half way through.
          await step(sleep(Math.min(1000, (secs * 1000) / 2)));
          localPorts = await step(socketPorts(run.pid, ip));
        }
        const r = await step(run.done);
        if (r.code !== 0) throw new Error(`wrk for ${arm} failed (${r.code ?? r.signal}): ${r.stderr.trim()}\n${r.stdout}`);
        const w = parseWrk(r.stdout);
        sample = { tag: t, ...w, bytes: 0, mbps: 0, referenceMsgs: new Map(), localPorts };
      }
      for (const [kind, n] of referenceCounts()) sample.referenceMsgs.set(kind, n - before.get(kind)!);
      if (programId !== undefined && programBefore) {
        const after = await step(programStats(programId));
        sample.program = { runTimeNs: after.runTimeNs - programBefore.runTimeNs, runs: after.runs - programBefore.runs };
      }
      if (server !== undefined && !arm.startsWith('bulk-')) sample.cpuUsPerRequest = ((cpuSeconds(server) - cpuBefore) * 1e6) / sample.requests;
      if (server !== undefined && arm.startsWith('bulk-')) sample.cpuMsPerMib = ((cpuSeconds(server) - cpuBefore) * 1e3) / (sample.bytes / 2 ** 20);
      check(arm, route, sample, log!.read(t), { connections, bulkBytes, final: false });
      return sample;
    };

    const rateArms = wanted.filter((a): a is RateName => !a.startsWith('bulk-'));
    const bulkArms = wanted.filter((a): a is BulkName => a.startsWith('bulk-'));
    const samples = new Map<ArmName, Sample[]>(wanted.map((a) => [a, []]));
    const measuredArms: Array<[ArmName, Sample]> = [];
    for (const arm of wanted) measuredArms.push([arm, await measure(arm, 1, 'warm-up')]); // warm-up, and a first check
    for (let round = 0; round < rounds; round++) {
      // Each round starts with a different arm, so that no arm always follows the same one.
      for (const list of [rateArms, bulkArms]) {
        for (let i = 0; i < list.length; i++) {
          const arm = list[(round + i) % list.length]!;
          const s = await measure(arm, seconds, String(round + 1));
          samples.get(arm)!.push(s);
          measuredArms.push([arm, s]);
        }
      }
    }
    // Each kernel arm's program timed in a run of its own, the only one with the stats on.
    const programTimes = new Map<ArmName, ProgramStats>();
    for (const arm of rateArms.filter((a) => programOf.has(a))) {
      writeFileSync(BPF_STATS_SYSCTL, '1');
      try {
        const s = await measure(arm, PROGRAM_TIME_SECONDS, 'program-time', { timeProgram: true });
        if (s.program) programTimes.set(arm, s.program);
        measuredArms.push([arm, s]);
      } finally {
        writeFileSync(BPF_STATS_SYSCTL, bpfStatsBefore!);
      }
    }
    // Requests still in flight when a client stopped have been logged by now: check every run again, with its upper bound.
    await step(sleep(200));
    log.read();
    for (const [arm, s] of measuredArms) {
      check(arm, routeOf(arm), s, log.get(s.tag), { connections, bulkBytes, final: true });
    }
    report(samples, programTimes, { seconds, rounds, connections, bulkMib: Number(values['bulk-mib']), pinning, audit: audit ?? 'connection (the agent\'s default)', proxyWorkers });
  } finally {
    interrupted.dispose();
    const attempt = async (what: string, f: () => unknown) => {
      try {
        await f();
      } catch (err) {
        process.stderr.write(`bench cleanup: ${what}: ${err instanceof Error ? err.message : String(err)}\n`);
      }
    };
    for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    log?.close();
    for (const [kind, p] of references) await attempt(`${kind} reference program`, () => p.close());
    if (bpfStatsBefore !== undefined) await attempt('kernel.bpf_stats_enabled', () => writeFileSync(BPF_STATS_SYSCTL, bpfStatsBefore!));
    await attempt('agent', () => agent?.stop());
    await attempt('same-job nginx', () => sameJob?.stop());
    await attempt('Node TLS relay', () => relay?.stop());
    await attempt('Node head relay', () => headRelay?.stop());
    await attempt('upstream nginx', () => upstream?.stop());
    await attempt('network namespace', () => host?.destroy());
    await attempt('cgroups', () => removeCgroupTree(cgRoot, cgBench));
    await attempt('BPF pins', () => rmSync(pinDir, { recursive: true, force: true }));
    await attempt('temporary files', () => rmSync(work, { recursive: true, force: true }));
  }
}

interface ReportOptions {
  seconds: number;
  rounds: number;
  connections: number;
  bulkMib: number;
  pinning: string;
  proxyWorkers: number;
  audit: string;
}

function report(samples: Map<ArmName, Sample[]>, programTimes: ReadonlyMap<ArmName, ProgramStats>, o: ReportOptions): void {
  const out = (line: string) => process.stdout.write(`${line}\n`);
  const f2 = (n: number) => n.toFixed(2);
  const f0 = (n: number) => n.toFixed(0);
  const rate = [...samples].filter(([a]) => !a.startsWith('bulk-'));
  const bulk = [...samples].filter(([a]) => a.startsWith('bulk-') && !isUpload(a));
  const uploads = [...samples].filter(([a]) => isUpload(a));
  const med = (a: ArmName, f: (s: Sample) => number) => median(samples.get(a)!.map(f));
  const has = (a: ArmName) => samples.has(a);
  // The req/s (or MB/s) ratio of two arms within each round: how much of a ratio is noise.
  const perRound = (a: ArmName, b: ArmName, f: (s: Sample) => number) =>
    samples.get(a)!.map((s, i) => f2(f(s) / f(samples.get(b)![i] as Sample))).join(' ');

  out(`pinning: ${o.pinning}; kernel audit: ${o.audit}; proxy workers: ${o.proxyWorkers} (same-job nginx worker processes: ${o.proxyWorkers})`);
  if (rate.length) {
    out(`small keep-alive GETs (wrk -t1 -c${o.connections} -d${o.seconds}s --latency), ${o.rounds} rounds, arms interleaved; medians over rounds`);
    out(`  ${'arm'.padEnd(19)} ${'req/s'.padStart(8)} ${'p50 us'.padStart(7)} ${'p99 us'.padStart(7)}   ${'vs'.padEnd(13)} ${'req/s'.padStart(5)} ${'p50'.padStart(5)} ${'p99'.padStart(5)}   req/s per round`);
    for (const [arm] of rate) {
      const rps = med(arm, (s) => s.rps);
      const p50 = med(arm, (s) => s.p50Us);
      const p99 = med(arm, (s) => s.p99Us);
      const b = BASELINE[arm];
      const vs = b && has(b)
        ? `${b.padEnd(13)} ${f2(rps / med(b, (s) => s.rps)).padStart(5)} ${f2(p50 / med(b, (s) => s.p50Us)).padStart(5)} ${f2(p99 / med(b, (s) => s.p99Us)).padStart(5)}   ${perRound(arm, b, (s) => s.rps)}`
        : (b ? `(${b} not run)` : '(baseline)');
      out(`  ${arm.padEnd(19)} ${f0(rps).padStart(8)} ${f0(p50).padStart(7)} ${f0(p99).padStart(7)}   ${vs}`);
    }
    const compare = (a: ArmName, b: ArmName) => {
      if (!has(a) || !has(b)) return;
      out(`  ${`${a} vs ${b}`.padEnd(40)} req/s ${f2(med(a, (s) => s.rps) / med(b, (s) => s.rps))}, p50 ${f2(med(a, (s) => s.p50Us) / med(b, (s) => s.p50Us))}, ` +
        `p99 ${f2(med(a, (s) => s.p99Us) / med(b, (s) => s.p99Us))}   (req/s per round: ${perRound(a, b, (s) => s.rps)})`);
    };
    compare('proxy', 'nginx-same-job');
    compare('node-tls-relay', 'nginx-same-job');
    compare('proxy', 'node-tls-relay');
    compare('node-head-relay', 'nginx-same-job');
    compare('kernel', 'kernel-passthrough');
    compare('kernel', 'kernel-naive-insert');
    compare('kernel-naive-insert', 'kernel-passthrough');
    const cpuArms = (['proxy', 'nginx-same-job', 'node-tls-relay', 'node-head-relay'] as const).filter((a) => has(a));
    if (cpuArms.length) {
      const cpu = (a: ArmName) => med(a, (s) => s.cpuUsPerRequest ?? NaN);
      const vsNginx = (a: ArmName) => (a !== 'nginx-same-job' && has('nginx-same-job') ? ` (${f2(cpu(a) / cpu('nginx-same-job'))}x nginx-same-job)` : '');
      out(`  CPU per request of the process in the middle (user + system, all threads and child processes, /proc): ${
        cpuArms.map((a) => `${a} ${f0(cpu(a))} us${vsNginx(a)}`).join(', ')}`);
    }
    if (programTimes.size) {
      out(`  sk_msg program run time per message (run_time_ns / run_cnt, in a ${PROGRAM_TIME_SECONDS} s run per arm after the rounds, the only one with kernel.bpf_stats_enabled on): ${
        KERNEL_ARMS.filter((a) => programTimes.has(a)).map((a) => {
          const p = programTimes.get(a)!;
          return `${a} ${f0(p.runTimeNs / Math.max(1, p.runs))} ns`;
        }).join(', ')}`);
    }
    for (const a of KERNEL_ARMS) {
      if (!has(a) || !has('plain-direct')) continue;
      const added = (f: (s: Sample) => number) => f0(med(a, f) - med('plain-direct', f));
      out(`  ${`${a} adds to plain-direct`.padEnd(40)} p50 ${added((s) => s.p50Us)} us, p99 ${added((s) => s.p99Us)} us`);
    }
  }
  const transfers = (arms: Array<[ArmName, Sample[]]>, pairs: ReadonlyArray<readonly [ArmName, ArmName]>) => {
    const w = Math.max(19, ...arms.map(([a]) => a.length));
    const bw = Math.max(17, ...arms.map(([a]) => BASELINE[a]?.length ?? 0));
    const cpu = (x: Sample) => x.cpuMsPerMib ?? NaN;
    out(`  ${'arm'.padEnd(w)} ${'MB/s'.padStart(8)}   ${'min..max'.padEnd(11)} ${'cpu ms/MiB'.padStart(10)}   ${'vs'.padEnd(bw)} ${'MB/s'.padStart(5)}   per round`);
    for (const [arm, s] of arms) {
      const m = med(arm, (x) => x.mbps);
      const b = BASELINE[arm];
      const vs = b && has(b) ? `${b.padEnd(bw)} ${f2(m / med(b, (x) => x.mbps)).padStart(5)}   ${perRound(arm, b, (x) => x.mbps)}` : (b ? `(${b} not run)` : '(baseline)');
      const range = `${f0(Math.min(...s.map((x) => x.mbps)))}..${f0(Math.max(...s.map((x) => x.mbps)))}`;
      const c = s[0]?.cpuMsPerMib === undefined ? '-' : med(arm, cpu).toFixed(2);
      out(`  ${arm.padEnd(w)} ${f0(m).padStart(8)}   ${range.padEnd(11)} ${c.padStart(10)}   ${vs}`);
    }
    for (const [a, b] of pairs) {
      if (!has(a) || !has(b)) continue;
      out(`  ${`${a} vs ${b}`.padEnd(40)} MB/s ${f2(med(a, (x) => x.mbps) / med(b, (x) => x.mbps))}   (per round: ${perRound(a, b, (x) => x.mbps)})` +
        `; CPU per MiB ${f2(med(a, cpu) / med(b, cpu))} (per round: ${perRound(a, b, cpu)})`);
    }
  };
  if (bulk.length) {
    out(`one ${o.bulkMib} MiB download per arm and round (curl --http1.1 -o /dev/null), ${o.rounds} rounds, arms interleaved; medians over rounds`);
    transfers(bulk, [['bulk-proxy', 'bulk-nginx-same-job'], ['bulk-node-tls-relay', 'bulk-nginx-same-job'], ['bulk-proxy', 'bulk-node-tls-relay']]);
  }
  if (uploads.length) {
    out(`one ${o.bulkMib} MiB upload per arm and round (curl --http1.1 -T, PUT, no Expect), ${o.rounds} rounds, arms interleaved; medians over rounds`);
    transfers(uploads, [['bulk-upload-proxy', 'bulk-upload-nginx-same-job'], ['bulk-upload-node-tls-relay', 'bulk-upload-nginx-same-job'],
      ['bulk-upload-proxy', 'bulk-upload-node-tls-relay']]);
  }
  const checks = [
    'every request the client completed reached the expected upstream listener',
    'with the bearer on proxy, nginx-same-job, node-head-relay, kernel and kernel-naive-insert and no Authorization header on the others',
  ];
  if ([...samples.keys()].some((a) => routeIsPlain(a))) checks.push('the plain arms\' connections were wrk\'s own sockets');
  if (has('kernel-passthrough')) checks.push('the pass-through program passed a message per request of its arm and none of the others');
  if (has('kernel-naive-insert')) checks.push('the naive insertion program inserted the bearer into a message per request of its arm and none of the others');
  if (bulk.length) checks.push(`every download was ${o.bulkMib} MiB at both ends`);
  if (uploads.length) checks.push(`every upload sent ${o.bulkMib} MiB and the upstream read it whole before answering`);
  out(`  checked on every run against the upstream's access log: ${checks.join('; ')}`);
  out('  wrk does not verify certificates; curl does (the upstream\'s CA, wirekey\'s CA for the proxy)');
  if (has('node-tls-relay') || has('bulk-node-tls-relay')) out('  node-tls-relay verifies the upstream\'s certificate and resumes its TLS session, like the proxy and nginx-same-job');
}

const CLOCK_TICKS = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;

/** User + system CPU seconds of process `pid` (all its threads) and of its child processes (nginx's workers). */
function cpuSeconds(pid: number): number {
  const ticks = (p: number | string) => {
    try {
      // Fields after the command's closing parenthesis: state is the 3rd field, utime the 14th, stime the 15th.
      const rest = readFileSync(`/proc/${p}/stat`, 'utf8').split(') ').at(-1)!.split(' ');
      return Number(rest[11]) + Number(rest[12]);
    } catch {
      return 0;
    }
  };
  let children: string[] = [];
  try {
    children = readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean);
  } catch {
    // gone: counts as none
  }
  return (ticks(pid) + children.reduce((sum, c) => sum + ticks(c), 0)) / CLOCK_TICKS;
}

const routeIsPlain = (a: ArmName) => a === 'plain-direct' || KERNEL_ARMS.includes(a);

main().then(
  () => process.exit(),
  (err: unknown) => {
    process.stderr.write(`bench failed: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(1);
  },
);
