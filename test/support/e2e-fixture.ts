/**
 * The shared stage of the end-to-end tests: a TLS upstream in a network
 * namespace of its own, a token in a root-only file, a cgroup tree for the
 * test's workloads, and (once the test has written its policy) a running
 * agent. close() removes all of it, also after a failure.
 */
import { createHash, randomBytes } from 'node:crypto';
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createTestHost, type TestHost } from './netns.js';
import { createTestPki, type TestPki } from './test-pki.js';
import { startUpstream, type Upstream, type UpstreamRecord } from './upstream.js';
import { createCgroup, removeCgroupTree, runInCgroup } from './cgroup.js';
import { freePort, startAgent, wirekeyBin, type RunningAgent } from './agent.js';
import { must, run, type RunResult } from './shell.js';
import { findCgroup2Root } from '../../controller/cgroup.js';

export const HOST = 'api.wirekey.test';
export const OTHER = 'other.wirekey.test';
export const sha256 = (s: string) => createHash('sha256').update(s).digest('hex');

/** Workload `app` (cgroup `<cgBase>/bound`) with a bearer binding to the api service. */
export const BOUND_APP = (cgBase: string) => `apiVersion: wirekey.dev/v1alpha1
kind: Workload
metadata: {name: app}
spec: {selector: {cgroup: ${cgBase}/bound}}
---
apiVersion: wirekey.dev/v1alpha1
kind: Binding
metadata: {name: app-api}
spec: {workload: app, service: api, inject: {bearer: {credential: api-token}}}
`;

export class E2eFixture {
  readonly tag = randomBytes(3).toString('hex');
  readonly token = `wk-canary-${randomBytes(16).toString('hex')}`;
  readonly expectedAuth = sha256(`Bearer ${this.token}`);
  readonly dir = mkdtempSync(path.join(tmpdir(), 'wirekey-e2e-'));
  readonly cgRoot = findCgroup2Root();
  /** Relative to the cgroup v2 root: the parent of every cgroup this test makes. */
  readonly cgBase = `/wirekey-test-${this.tag}`;
  readonly pinDir = `/sys/fs/bpf/wirekey-test-${this.tag}`;
  readonly policyDir = path.join(this.dir, 'policy');
  readonly stateDir = path.join(this.dir, 'state');
  readonly auditPath = path.join(this.dir, 'audit.log');
  readonly tokenFile = path.join(this.dir, 'token');
  /** World-readable: for workloads that run as other users. */
  readonly shared = path.join(this.dir, 'shared');
  host!: TestHost;
  pki!: TestPki;
  upstream!: Upstream;
  agent: RunningAgent | undefined;
  agentStopped = false;
  proxyPort = 0;
  /** wirekey's CA, and a bundle of it with the upstream's own CA (world-readable copies). */
  wirekeyCa = '';
  bothCas = '';
  readonly #cleanups: (() => void | Promise<void>)[] = [];

  /**
   * Everything but the agent. `hosts` names the certificate's hosts; with
   * `upstream: false` the test runs its own server on the test host's 443.
   */
  async setUp(opts: { hosts?: string[]; upstream?: boolean } = {}): Promise<void> {
    chmodSync(this.dir, 0o755);
    mkdirSync(this.shared, { mode: 0o755 });
    mkdirSync(this.policyDir);
    createCgroup(this.cgRoot, this.cgBase);
    this.host = await createTestHost(this.tag.slice(0, 4));
    this.pki = await createTestPki(this.dir, opts.hosts ?? [HOST, OTHER]);
    chmodSync(this.pki.caCert, 0o644);
    if (opts.upstream !== false) this.upstream = await startUpstream(this.host, this.pki.serverCert, this.pki.serverKey);
    writeFileSync(this.tokenFile, `${this.token}\n`, { mode: 0o600 });
    // The local CA exists before the agent starts (as after `wirekey ca cert`),
    // so processes started before the agent can trust it too.
    this.wirekeyCa = path.join(this.shared, 'wirekey-ca.pem');
    writeFileSync(this.wirekeyCa, await must(process.execPath, [wirekeyBin, 'ca', 'cert', '--create', '--state-dir', this.stateDir]));
    this.bothCas = path.join(this.shared, 'both-cas.pem');
    const pem = (file: string) => `${readFileSync(file, 'utf8').trim()}\n`;
    writeFileSync(this.bothCas, pem(this.wirekeyCa) + pem(this.pki.caCert));
  }

  /** Creates `<cgBase>/<name>` and returns its absolute directory. */
  cgroup(name: string): string {
    return createCgroup(this.cgRoot, `${this.cgBase}/${name}`);
  }

  /** Writes policy.yaml: the api service and its credential (from `tokenFile`), plus `docs` (YAML documents). */
  writePolicy(docs: string, tokenFile = this.tokenFile): void {
    this.writeRawPolicy(`apiVersion: wirekey.dev/v1alpha1
kind: CredentialSource
metadata: {name: api-token}
spec: {file: {path: ${tokenFile}}}
---
apiVersion: wirekey.dev/v1alpha1
kind: Service
metadata: {name: api}
spec: {hosts: [${HOST}], port: 443, tls: true}
---
${docs}`);
  }

  /**
   * The policy most tests start from: workload `app` (the cgroup
   * `<cgBase>/bound`) bound to the api service with a bearer token, plus
   * `docs`. Returns the bound cgroup's directory (made here).
   */
  writeBoundPolicy(docs = ''): string {
    const bound = this.cgroup('bound');
    this.writePolicy(`${BOUND_APP(this.cgBase)}${docs ? `---\n${docs}` : ''}`);
    return bound;
  }

  /** Writes policy.yaml exactly as given. */
  writeRawPolicy(yaml: string): void {
    writeFileSync(path.join(this.policyDir, 'policy.yaml'), yaml);
  }

  /** Starts `wirekey run`; with `cgroup`, the agent itself runs in that cgroup. */
  async startAgent(opts: { cgroup?: string; extraArgs?: string[]; wrapper?: string[]; env?: NodeJS.ProcessEnv } = {}): Promise<RunningAgent> {
    this.proxyPort = await freePort();
    this.agent = await startAgent({
      policy: this.policyDir,
      stateDir: this.stateDir,
      pinDir: this.pinDir,
      proxyPort: this.proxyPort,
      audit: this.auditPath,
      upstreamCa: this.pki.caCert,
      cgroup: opts.cgroup,
      extraArgs: opts.extraArgs,
      wrapper: opts.wrapper,
      env: opts.env,
    });
    return this.agent;
  }

  /** curl in cgroup `cg`, with the test hosts resolved to the upstream. */
  curl(cg: string, args: string[], opts: { uid?: number; binary?: string } = {}): Promise<RunResult> {
    const curlArgs = ['-sS', '--max-time', '10', '--resolve', `${HOST}:443:${this.host.ipv4}`, '--resolve', `${OTHER}:443:${this.host.ipv4}`, ...args];
    const binary = opts.binary ?? 'curl';
    if (opts.uid === undefined) return runInCgroup(cg, binary, curlArgs);
    return runInCgroup(cg, 'setpriv', [`--reuid=${opts.uid}`, `--regid=${opts.uid}`, '--clear-groups', binary, ...curlArgs]);
  }

  /**
   * The upstream's records after `before`, including every request the
   * upstream has answered by now: call it once the client has its response
   * (or its refusal).
   */
  async recordsSince(before: number): Promise<UpstreamRecord[]> {
    await this.upstream.sync();
    return this.upstream.records.slice(before);
  }

  /**
   * Once the agent has written what its proxy worker threads recorded so far
   * (WIREKEY_TEST_PROXY_WORKERS): a scrape of /metrics has every worker send
   * it first. With the proxy in the agent's thread, lines are written before
   * the answer, and this returns at once.
   */
  async settled(): Promise<void> {
    if (!process.env.WIREKEY_TEST_PROXY_WORKERS) return;
    await run('curl', ['-sS', '-o', '/dev/null', '--unix-socket', path.join(this.stateDir, 'agent.sock'), 'http://wirekey/metrics']);
  }

  /** Runs `fn` at close, before the built-in clean-up. */
  onClose(fn: () => void | Promise<void>): void {
    this.#cleanups.push(fn);
  }

  async close(): Promise<void> {
    for (const fn of this.#cleanups.reverse()) await fn();
    if (this.agent && !this.agentStopped) await this.agent.stop();
    await this.upstream?.stop();
    await this.host?.destroy();
    removeCgroupTree(this.cgRoot, path.join(this.cgRoot, this.cgBase));
    rmSync(this.pinDir, { recursive: true, force: true });
    // Kernel-path connections of an agent that was killed or stopped with them open.
    rmSync(`${this.pinDir}-draining`, { recursive: true, force: true });
    rmSync(this.dir, { recursive: true, force: true });
  }
}
