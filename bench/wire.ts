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
 * Throughput (curl, one large download per arm and round, MB/s):
 *   bulk-https-direct, bulk-proxy, bulk-nginx-same-job, bulk-node-tls-relay,
 *   bulk-plain-direct, bulk-kernel (`--arms bulk` names all six).
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
 *                          --arms https-direct,proxy,nginx-same-job,node-tls-relay,node-head-relay,plain-direct,kernel,kernel-passthrough,bulk
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

const RATE_ARMS = ['https-direct', 'proxy', 'nginx-same-job', 'node-tls-relay', 'node-head-relay', 'plain-direct', 'kernel', 'kernel-passthrough'] as const;
const BULK_ARMS = ['bulk-https-direct', 'bulk-proxy', 'bulk-nginx-same-job', 'bulk-node-tls-relay', 'bulk-plain-direct', 'bulk-kernel'] as const;
type RateName = (typeof RATE_ARMS)[number];
type BulkName = (typeof BULK_ARMS)[number];
type ArmName = RateName | BulkName;

/** Each arm's baseline, for the table's ratio column. */
const BASELINE: Partial<Record<ArmName, ArmName>> = {
  proxy: 'https-direct', 'nginx-same-job': 'https-direct', 'node-tls-relay': 'https-direct', 'node-head-relay': 'https-direct', kernel: 'plain-direct', 'kernel-passthrough': 'plain-direct',
  'bulk-proxy': 'bulk-https-direct', 'bulk-nginx-same-job': 'bulk-https-direct', 'bulk-node-tls-relay': 'bulk-https-direct', 'bulk-kernel': 'bulk-plain-direct',
};

const HOST = 'api.wirekey.bench';
const TOKEN = 'bench-token';
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
  /** Runs through the pass-through sk_msg program. */
  passthrough: boolean;
  /** For wrk: the URL (before the tag) and the hosts file; for curl: its options. */
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
  /** Bulk: bytes received and MB/s. */
  bytes: number;
  mbps: number;
  /** Messages the pass-through program saw during the run. */
  passMsgs: bigint;
  /** Arms served by a process of their own (proxy, nginx-same-job, node-tls-relay): its CPU time per request, µs. */
  cpuUsPerRequest?: number;
  /** Plain wrk arms: the local ports of the client's sockets, read while it ran. */
  localPorts?: number[];
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] as number;

function parseArms(list: string): ArmName[] {
  const names = list.split(',').map((s) => s.trim()).filter(Boolean).flatMap((a) => (a === 'bulk' ? [...BULK_ARMS] : [a]));
  const all: readonly string[] = [...RATE_ARMS, ...BULK_ARMS];
  for (const a of names) if (!all.includes(a)) throw new Error(`unknown arm ${a} (arms: ${all.join(', ')}, bulk)`);
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

/** The pass-through sk_msg program, attached to one cgroup; detached and closed by close(). */
class Passthrough {
  #object: NativeObject;
  #link: NativeLink | undefined;
  #attachedToMap = false;

  constructor(cgroup: string) {
    this.#object = bpfCall(() => new (native().BpfObject)(PASSTHROUGH_OBJECT));
    try {
      bpfCall(() => this.#object.load());
      bpfCall(() => this.#object.attachToMap('pt_msg', 'pt_socks'));
      this.#attachedToMap = true;
      this.#link = bpfCall(() => this.#object.attachCgroup('pt_sockops', cgroup));
    } catch (err) {
      this.close();
      throw err;
    }
  }

  /** Messages the sk_msg program has passed so far. */
  messages(): bigint {
    const v = bpfCall(() => this.#object.map('pt_msgs').lookup(Buffer.alloc(4)));
    return v ? v.readBigUInt64LE(0) : 0n;
  }

  close(): void {
    this.#link?.destroy();
    this.#link = undefined;
    if (this.#attachedToMap) this.#object.detachFromMap('pt_msg', 'pt_socks');
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
function check(arm: ArmName, route: Route, s: Sample, c: TagCounts, o: { connections: number; bulkBytes: number; final: boolean; passthrough: boolean }): void {
  const fail = (why: string) => {
    throw new Error(`${arm} arm (${s.tag}): ${why}; the figure would not measure that path`);
  };
  if (c.requests < s.requests) fail(`the client completed ${s.requests} requests but the upstream saw ${c.requests}`);
  const inFlight = arm.startsWith('bulk-') ? 0 : o.connections;
  if (o.final && c.requests > s.requests + inFlight) fail(`the upstream saw ${c.requests} requests, more than the client's ${s.requests} and one in flight per connection`);
  const onListener = c.byPort.get(route.listener) ?? 0;
  if (onListener !== c.requests) fail(`${c.requests - onListener} of ${c.requests} requests reached a listener other than port ${route.listener}`);
  if (c.otherAuthorization) fail(`${c.otherAuthorization} requests reached the upstream with an Authorization header other than the bound bearer`);
  if (route.bearer && c.bearer !== c.requests) fail(`only ${c.bearer} of ${c.requests} requests reached the upstream with the bound bearer`);
  if (!route.bearer && c.bearer) fail(`${c.bearer} of ${c.requests} requests reached the upstream with the bearer`);
  if (arm.startsWith('bulk-') && (s.bytes !== o.bulkBytes || c.bodyBytes !== o.bulkBytes)) {
    fail(`the upstream sent ${c.bodyBytes} and the client received ${s.bytes} of ${o.bulkBytes} bytes`);
  }
  if (route.ownSockets && s.localPorts) {
    const ours = [...s.localPorts].sort((a, b) => a - b).join(',');
    const seen = [...c.remotePorts].sort((a, b) => a - b).join(',');
    if (ours !== seen) fail(`the upstream's connections (ports ${seen}) are not the client's sockets (ports ${ours}): something relayed them`);
  }
  if (o.passthrough) {
    // Against the client's completed requests (each passed the program before its answer came):
    // the upstream's count can grow after the program's counter was read.
    if (route.passthrough && s.passMsgs < BigInt(s.requests)) fail(`the pass-through program passed ${s.passMsgs} messages for the client's ${s.requests} completed requests`);
    if (!route.passthrough && s.passMsgs !== 0n) fail(`the pass-through program passed ${s.passMsgs} messages of an arm it is not attached to`);
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
  let passthrough: Passthrough | undefined;
  let log: AccessLog | undefined;
  const step = <T>(p: Promise<T>): Promise<T> => Promise.race([p, interrupted.promise]);
  try {
    host = await step(createTestHost('w'));
    const ip = host.ipv4;
    const pki = await step(createTestPki(work, [HOST]));
    const www = path.join(work, 'www');
    mkdirSync(www);
    // A sparse file: the download measures the datapath, not a disk.
    const big = openSync(path.join(www, 'big'), 'w');
    ftruncateSync(big, bulkBytes);
    closeSync(big);
    const serverPin = serverCpu === undefined ? [] : ['taskset', '-c', serverCpu];
    const proxyPin = proxyCpus === undefined ? [] : ['taskset', '-c', proxyCpus];
    const upDir = path.join(work, 'upstream');
    upstream = await step(startNginx(upDir, upstreamConfig(upDir, { ip, cert: pki.serverCert, key: pki.serverKey, bearer: BEARER, wwwRoot: www }),
      ['ip', 'netns', 'exec', host.ns, ...serverPin], { host: ip, port: 80 }));
    log = new AccessLog(path.join(upDir, 'access.log'));

    // Every cgroup exists before the agent starts, so that its workloads select them from the start.
    const cgroups = Object.fromEntries(['https-direct', 'proxy', 'nginx-same-job', 'node-tls-relay', 'node-head-relay', 'plain-direct', 'kernel', 'kernel-passthrough', 'nginx']
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
      'https-direct': { cgroup: cg('https-direct'), listener: 443, bearer: false, ownSockets: false, passthrough: false,
        url: `https://${HOST}/`, hosts: upstreamHosts, curl: ['--resolve', `${HOST}:443:${ip}`, '--cacert', pki.caCert, `https://${HOST}/big`] },
      proxy: { cgroup: cg('proxy'), listener: 443, bearer: true, ownSockets: false, passthrough: false,
        url: `https://${HOST}/`, hosts: upstreamHosts, curl: ['--resolve', `${HOST}:443:${ip}`, '--cacert', wirekeyCa, `https://${HOST}/big`] },
      'nginx-same-job': { cgroup: cg('nginx-same-job'), listener: 443, bearer: true, ownSockets: false, passthrough: false,
        url: `https://${HOST}:${sameJobPort}/`, hosts: hostsFile('same-job', '127.0.0.1'),
        curl: ['--resolve', `${HOST}:${sameJobPort}:127.0.0.1`, '--cacert', pki.caCert, `https://${HOST}:${sameJobPort}/big`] },
      'node-tls-relay': { cgroup: cg('node-tls-relay'), listener: 443, bearer: false, ownSockets: false, passthrough: false,
        url: `https://${HOST}:${relayPort}/`, hosts: hostsFile('relay', '127.0.0.1'),
        curl: ['--resolve', `${HOST}:${relayPort}:127.0.0.1`, '--cacert', pki.caCert, `https://${HOST}:${relayPort}/big`] },
      'node-head-relay': { cgroup: cg('node-head-relay'), listener: 443, bearer: true, ownSockets: false, passthrough: false,
        url: `https://${HOST}:${headRelayPort}/`, hosts: hostsFile('head-relay', '127.0.0.1'), curl: [] },
      'plain-direct': { cgroup: cg('plain-direct'), listener: 80, bearer: false, ownSockets: true, passthrough: false,
        url: `http://${ip}/`, curl: [`http://${ip}/big`] },
      kernel: { cgroup: cg('kernel'), listener: 80, bearer: true, ownSockets: true, passthrough: false,
        url: `http://${ip}/`, curl: [`http://${ip}/big`] },
      'kernel-passthrough': { cgroup: cg('kernel-passthrough'), listener: 80, bearer: false, ownSockets: true, passthrough: true,
        url: `http://${ip}/`, curl: [] },
    };
    // The process doing the arm's work between client and upstream, for its CPU time per request.
    const serverOf = (arm: ArmName): number | undefined => {
      const a = arm.startsWith('bulk-') ? arm.slice(5) : arm;
      return a === 'proxy' ? agent!.pid : a === 'nginx-same-job' ? sameJob?.pid : a === 'node-tls-relay' ? relay?.pid : a === 'node-head-relay' ? headRelay?.pid : undefined;
    };
    const routeOf = (arm: ArmName): Route => routes[(arm.startsWith('bulk-') ? arm.slice(5) : arm) as RateName];
    if (wanted.includes('kernel-passthrough')) passthrough = new Passthrough(routes['kernel-passthrough'].cgroup);

    const measure = async (arm: ArmName, secs: number, label: string): Promise<Sample> => {
      const route = routeOf(arm);
      const t = `${arm}.${label}`;
      const before = passthrough?.messages() ?? 0n;
      const server = serverOf(arm);
      const cpuBefore = server === undefined ? 0 : cpuSeconds(server);
      const client = { cgroup: route.cgroup, cpu: clientCpu, timeoutMs: secs * 1000 + 120_000, onChild: track };
      let sample: Sample;
      if (arm.startsWith('bulk-')) {
        const run = startClient(['curl', '-sS', '--fail', '-o', '/dev/null', '-w', '%{size_download} %{time_total}',
          ...route.curl.slice(0, -1), `${route.curl.at(-1)}?a=${t}`], client);
        const r = await step(run.done);
        if (r.code !== 0) throw new Error(`curl for ${arm} failed (${r.code ?? r.signal}): ${r.stderr.trim()}`);
        const [size, total] = r.stdout.trim().split(' ').map(Number) as [number, number];
        sample = { tag: t, requests: 1, rps: 0, p50Us: 0, p99Us: 0, bytes: size, mbps: size / total / 1e6, passMsgs: 0n };
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
        sample = { tag: t, ...w, bytes: 0, mbps: 0, passMsgs: 0n, localPorts };
      }
      sample.passMsgs = (passthrough?.messages() ?? 0n) - before;
      if (server !== undefined && !arm.startsWith('bulk-')) sample.cpuUsPerRequest = ((cpuSeconds(server) - cpuBefore) * 1e6) / sample.requests;
      check(arm, route, sample, log!.read(t), { connections, bulkBytes, final: false, passthrough: !!passthrough });
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
    // Requests still in flight when a client stopped have been logged by now: check every run again, with its upper bound.
    await step(sleep(200));
    log.read();
    for (const [arm, s] of measuredArms) {
      check(arm, routeOf(arm), s, log.get(s.tag), { connections, bulkBytes, final: true, passthrough: !!passthrough });
    }
    report(samples, { seconds, rounds, connections, bulkMib: Number(values['bulk-mib']), pinning, audit: audit ?? 'connection (the agent\'s default)', proxyWorkers });
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
    await attempt('pass-through program', () => passthrough?.close());
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

function report(samples: Map<ArmName, Sample[]>, o: ReportOptions): void {
  const out = (line: string) => process.stdout.write(`${line}\n`);
  const f2 = (n: number) => n.toFixed(2);
  const f0 = (n: number) => n.toFixed(0);
  const rate = [...samples].filter(([a]) => !a.startsWith('bulk-'));
  const bulk = [...samples].filter(([a]) => a.startsWith('bulk-'));
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
    const cpuArms = (['proxy', 'nginx-same-job', 'node-tls-relay', 'node-head-relay'] as const).filter((a) => has(a));
    if (cpuArms.length) {
      const cpu = (a: ArmName) => med(a, (s) => s.cpuUsPerRequest ?? NaN);
      const vsNginx = (a: ArmName) => (a !== 'nginx-same-job' && has('nginx-same-job') ? ` (${f2(cpu(a) / cpu('nginx-same-job'))}x nginx-same-job)` : '');
      out(`  CPU per request of the process in the middle (user + system, all threads and child processes, /proc): ${
        cpuArms.map((a) => `${a} ${f0(cpu(a))} us${vsNginx(a)}`).join(', ')}`);
    }
    for (const a of ['kernel', 'kernel-passthrough'] as const) {
      if (!has(a) || !has('plain-direct')) continue;
      const added = (f: (s: Sample) => number) => f0(med(a, f) - med('plain-direct', f));
      out(`  ${`${a} adds to plain-direct`.padEnd(40)} p50 ${added((s) => s.p50Us)} us, p99 ${added((s) => s.p99Us)} us`);
    }
  }
  if (bulk.length) {
    out(`one ${o.bulkMib} MiB download per arm and round (curl -o /dev/null), ${o.rounds} rounds, arms interleaved; medians over rounds`);
    out(`  ${'arm'.padEnd(19)} ${'MB/s'.padStart(8)}   ${'min..max'.padEnd(11)}   ${'vs'.padEnd(17)} ${'MB/s'.padStart(5)}   per round`);
    for (const [arm, s] of bulk) {
      const m = med(arm, (x) => x.mbps);
      const b = BASELINE[arm];
      const vs = b && has(b) ? `${b.padEnd(17)} ${f2(m / med(b, (x) => x.mbps)).padStart(5)}   ${perRound(arm, b, (x) => x.mbps)}` : (b ? `(${b} not run)` : '(baseline)');
      const range = `${f0(Math.min(...s.map((x) => x.mbps)))}..${f0(Math.max(...s.map((x) => x.mbps)))}`;
      out(`  ${arm.padEnd(19)} ${f0(m).padStart(8)}   ${range.padEnd(11)}   ${vs}`);
    }
    for (const [a, b] of [['bulk-proxy', 'bulk-nginx-same-job'], ['bulk-node-tls-relay', 'bulk-nginx-same-job']] as const) {
      if (!has(a) || !has(b)) continue;
      out(`  ${`${a} vs ${b}`.padEnd(40)} MB/s ${f2(med(a, (x) => x.mbps) / med(b, (x) => x.mbps))}   (per round: ${perRound(a, b, (x) => x.mbps)})`);
    }
  }
  const checks = [
    'every request the client completed reached the expected upstream listener',
    'with the bearer on proxy, nginx-same-job, node-head-relay and kernel and no Authorization header on the others',
  ];
  if ([...samples.keys()].some((a) => routeIsPlain(a))) checks.push('the plain arms\' connections were wrk\'s own sockets');
  if (has('kernel-passthrough')) checks.push('the pass-through program passed a message per request of its arm and none of the others');
  if (bulk.length) checks.push(`every download was ${o.bulkMib} MiB at both ends`);
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

const routeIsPlain = (a: ArmName) => ['plain-direct', 'kernel', 'kernel-passthrough'].includes(a);

main().then(
  () => process.exit(),
  (err: unknown) => {
    process.stderr.write(`bench failed: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(1);
  },
);
