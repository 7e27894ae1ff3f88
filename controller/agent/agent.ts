/**
 * The running agent: policy, local CA, credentials, kernel datapath and
 * proxy, started in that order and stopped in reverse.
 */
import path from 'node:path';
import { existsSync, mkdirSync, renameSync, writeFileSync } from 'node:fs';
import type https from 'node:https';
import { loadPolicy } from '../policy/load.js';
import { compilePolicy } from '../policy/compile.js';
import type { Plan, PlanBinding } from '../policy/types.js';
import { createHash } from 'node:crypto';
import { LocalCa } from '../tls/local-ca.js';
import { CredentialSources } from '../credentials/sources.js';
import type { Credential } from '../credentials/credential.js';
import { Datapath, type DatapathStats, type OrigDst, type EgressEvent, type EgressWorkload, type IdentityTables } from '../datapath/datapath.js';
import { egressStatRefusal } from '../datapath/egress.js';
import type { AuditEvent } from '../audit/audit-log.js';
import { findCgroup2Root } from '../cgroup.js';
import { acquireInstanceLock, type InstanceLock } from '../datapath/instance-lock.js';
import { libbpfVersion } from '../datapath/native.js';
import { ControlServer, controlSocketPath } from './control-server.js';
import type { ServiceNotifications } from './service-notifier.js';
import { IdentityResolver, type ResolvedWorkload } from '../identity/resolver.js';
import { identityTables } from '../datapath/identity-tables.js';
import { discardRuntimeState, retireRuntimeState, runtimeStatePath, type RuntimeState } from '../host/runtime-state.js';
import { DEFAULT_PROXY_LIMITS, ProxyServer, type ProxyLimits } from '../proxy/proxy-server.js';
import { ProxyWorkers } from './proxy-workers.js';
import { failedAfterSwitch, firstLine, kernelNotRestored, reloadMetricResult, reloadThrew, type FailedStep } from './reload-outcome.js';
import { reusePortListener } from '../datapath/reuse-port.js';
import { createUpstreamAgent, upstreamSecureContext } from '../proxy/upstream.js';
import { UpstreamH2Pool } from '../proxy/upstream-h2.js';
import type { H2Limits } from '../proxy/h2.js';
import { ByteBudget } from '../inject/byte-budget.js';
import { credentialHeader } from '../inject/inject.js';
import { AuditLog } from '../audit/audit-log.js';
import { RouteTable } from '../proxy/routes.js';
import { KernelBindings } from './kernel-bindings.js';
import { KernelUsage } from './kernel-usage.js';
import { AgentMetrics } from '../metrics/agent-metrics.js';
import { CredentialError, NotSupportedError, PolicyError, WirekeyError } from '../errors.js';
import type { Logger } from '../log.js';

/** Rule sets whose workload names are kept for kernel egress events judged under them (a few reloads' worth). */
const EGRESS_SETS_REMEMBERED = 4 * 256;
/** IPPROTO_* numbers of kernel egress events, as audit lines name them. */
const PROTOCOL_NAMES: Record<number, string> = { 1: 'icmp', 6: 'tcp', 17: 'udp', 58: 'icmpv6', 132: 'sctp', 136: 'udplite', 255: 'raw' };
/** SOCK_* types of kernel egress socket() events, as audit lines name them. */
const SOCKET_TYPE_NAMES: Record<number, string> = { 1: 'stream', 2: 'datagram', 3: 'raw', 5: 'seqpacket' };

export interface AgentOptions {
  policyPath: string;
  /** Holds the local CA (ca/); root-only. */
  stateDir: string;
  /** bpffs directory for this agent's pins. */
  pinDir: string;
  proxyPort: number;
  /** Audit destination: a file, or '-' for stdout. */
  auditPath: string;
  upstreamCaFile?: string;
  /** Largest request body read into memory to compute a SigV4 payload hash (default 16 MiB). */
  sigv4BodyLimit?: number;
  /** Memory all SigV4 bodies being hashed may hold together (default 64 MiB). */
  sigv4BodyMemory?: number;
  /**
   * Proxy worker threads (default 1: the proxy runs in the agent's thread).
   * More: each serves connections on its own SO_REUSEPORT sockets; the
   * handshake and per-workload connection limits bound them together, and
   * each has 1/N of the SigV4 body memory.
   */
  proxyWorkers?: number;
  /** Bounds on the proxy's per-connection and per-workload work (defaults: DEFAULT_PROXY_LIMITS). */
  proxyLimits?: Partial<ProxyLimits>;
  /** Offer HTTP/2 to workloads (default true), and its bounds (defaults: DEFAULT_H2_LIMITS). */
  http2?: boolean;
  h2Limits?: Partial<H2Limits>;
  /** Serve HTTP/1.1 requests with a header injection on the proxy's fast path (default true): ProxyDeps.h1FastPath. */
  h1FastPath?: boolean;
  /** Load the kernel HTTP datapath (default true); without it plaintext services are refused. */
  kernelDatapath?: boolean;
  /** Kernel datapath injections in the audit log: per connection and credential version (default), or per request. Usage lines count every request either way. */
  kernelAuditGrain?: 'request' | 'connection';
  /** How often the kernel datapath's usage lines are written (default 10 s); also before a reload and at stop. */
  kernelUsageIntervalMs?: number;
  /** How long the kernel datapath goes on injecting after this process stops answering (default 5 s). */
  kernelAliveTimeoutMs?: number;
  /** How often cgroup selectors are resolved again (cgroups come and go). */
  resyncIntervalMs?: number;
  /** Also serve /metrics, /healthz and /readyz (only those) on this TCP address; the control socket always serves them. */
  metricsListen?: { host: string; port: number };
  log: Logger;
  /** wirekey's version, for wirekey_build_info (default "unknown"). */
  version?: string;
  /** Told when the agent is ready, reloads and what it runs (systemd's Type=notify); none outside systemd. */
  notifier?: ServiceNotifications;
}

/** What a reload did: what POST /reload answers and `wirekey reload` prints. */
export interface ReloadResult {
  /** Whether the policy read now is the one in force. */
  applied: boolean;
  /** Why it was refused: "file:line:column: message" per policy problem, or one line naming the cause. */
  problems: string[];
  /** The hash of the policy in force after the reload (the new one when applied, the previous one otherwise). */
  policy: string;
  /** What an applied reload changed: "policy a -> b; bindings added x; ...". */
  change?: string;
  /**
   * Set when the reload failed once the switch to the new policy had begun
   * (not a refusal): what failed, and which policy is in force, whole or
   * in part. `problems` then has one line per failure.
   */
  failed?: string;
}

interface LoadedPlan {
  plan: Plan;
  routes: RouteTable;
  credentials: CredentialSources;
}

export class Agent {
  readonly #opts: AgentOptions;
  readonly #log: Logger;
  #plan!: Plan;
  #routes!: RouteTable;
  #credentials = CredentialSources.empty();
  #cgroupRoot!: string;
  #datapath: Datapath | undefined;
  #proxy: ProxyServer | ProxyWorkers | undefined;
  #audit: AuditLog | undefined;
  #upstreamAgent: https.Agent | undefined;
  #resync: NodeJS.Timeout | undefined;
  #kernelBindings: KernelBindings | undefined;
  /** Kernel egress rule set id -> the workload it was written for (see #setEgress). */
  readonly #egressSets = new Map<number, string>();
  #kernelRefresh: NodeJS.Timeout | undefined;
  /** The kernel's per-request counters, read into metrics and usage audit lines. */
  #kernelUsage: KernelUsage | undefined;
  #kernelUsageTimer: NodeJS.Timeout | undefined;
  /** The kernel's audit event readers (drained before a metrics scrape). */
  #egressEvents: { drain(): number } | undefined;
  #kernelEvents: { drain(): number } | undefined;
  #refreshing = false;
  #resolver: IdentityResolver | undefined;
  #resolved: ResolvedWorkload[] = [];
  #reported = new Set<string>();
  #syncing = false;
  #lastStats: DatapathStats = { tasksFull: 0n, storageFailures: 0n, proxyPortBinds: 0n };
  #lastProxyStats: string | undefined;
  /** The last reload or stop asked for, ended or not: the next one runs after it. */
  #lifecycle: Promise<void> = Promise.resolve();
  #stopping = false;
  #lock: InstanceLock | undefined;
  #wroteRuntimeState = false;
  #control: ControlServer | undefined;
  /** Programs attached, policy applied, credentials checked: what /readyz answers. */
  #ready = false;
  /** The plan in force before the last reload, to say what it changed. */
  #lastPlan: Plan | undefined;
  /**
   * A reload is changing which id means which workload: the kernel's
   * records carry an id, not the numbering it was read under, so none is
   * trusted until the proxy's table and the kernel agree again.
   */
  #renumbering = false;
  readonly #metrics: AgentMetrics;
  /** --metrics-listen: metrics and health on TCP. */
  #metricsServer: ControlServer | undefined;

  private constructor(opts: AgentOptions) {
    this.#opts = opts;
    this.#log = opts.log;
    this.#metrics = new AgentMetrics({
      ready: () => this.#ready,
      proxy: () => this.#proxy?.stats(),
      datapath: () => this.#datapath,
      kernelHttp: () => this.#datapath?.kernelHttp,
      credentials: () => this.#credentials.values(),
      vaultConnections: () => this.#credentials.connections(),
      auditWritable: () => this.#audit?.writable,
      settle: async () => {
        this.#egressEvents?.drain();
        this.#kernelEvents?.drain();
        this.#collectKernelUsage();
        if (this.#proxy instanceof ProxyWorkers) await this.#proxy.settle();
      },
    }, { build: { version: opts.version ?? 'unknown', node: process.version, libbpf: libbpfVersion() } });
  }

  /**
   * Loads the policy and brings everything up.
   * @throws PolicyError, ProxyTlsError, BpfError, NotSupportedError, WirekeyError (listen);
   *   everything already started is stopped again first.
   */
  static async start(opts: AgentOptions): Promise<Agent> {
    const agent = new Agent(opts);
    try {
      await agent.#start();
    } catch (err) {
      await agent.stop();
      throw err;
    }
    return agent;
  }

  get datapath(): Datapath | undefined {
    return this.#datapath;
  }

  async #start(): Promise<void> {
    // One agent per state dir and per pin dir, before anything is touched.
    mkdirSync(this.#opts.stateDir, { recursive: true, mode: 0o700 });
    this.#lock = acquireInstanceLock(this.#opts.stateDir, this.#opts.pinDir);
    // Until this agent writes its own, status says "starting", not what a dead agent applied.
    retireRuntimeState(this.#opts.stateDir);
    if (this.#lock.previousPid && existsSync(this.#opts.pinDir)) {
      this.#log.warn('pins in %s were left by agent pid %d, which is not running: its programs stay attached until this agent\'s are, and its open kernel-path connections stay refused', this.#opts.pinDir, this.#lock.previousPid);
    }
    // Health answers from here on; readiness once everything is up.
    this.#control = new ControlServer(this.#log);
    this.#control.route('GET', '/healthz', (_req, res) => void res.writeHead(200, { 'content-type': 'text/plain' }).end('ok\n'));
    this.#control.route('GET', '/readyz', (_req, res) => {
      const state = this.#ready ? 'ready' : this.#stopping ? 'stopping' : 'starting';
      res.writeHead(this.#ready ? 200 : 503, { 'content-type': 'text/plain' }).end(`${state}\n`);
    });
    await this.#control.listen(controlSocketPath(this.#opts.stateDir));
    await this.#serveMetrics(this.#control);

    // `wirekey reload` (and systemd's ExecReload through it): the result of
    // the reload it asked for, once it has ended; 200 whether applied or refused.
    this.#control.route('POST', '/reload', async (_req, res) => {
      if (!this.#ready && !this.#stopping) {
        res.writeHead(503, { 'content-type': 'text/plain' }).end('starting: the policy is read once the agent has started\n');
        return;
      }
      const result = await this.reload();
      res.writeHead(200, { 'content-type': 'application/json' }).end(`${JSON.stringify(result)}\n`);
    });

    const next = await this.#loadPlan();
    this.#metrics.policyApplied(planHash(next.plan));
    this.#plan = next.plan;
    this.#routes = next.routes;
    this.#credentials = next.credentials;

    const ca = await LocalCa.loadOrCreate(path.join(this.#opts.stateDir, 'ca'));
    this.#audit = new AuditLog(this.#opts.auditPath, (err) =>
      this.#log.error('audit log %s cannot be written (%s): proxied requests are refused until it can', this.#opts.auditPath, err.message), {
      onRecreated: (err) => {
        if (err) this.#log.error('audit log %s was deleted while open and cannot be made anew (%s): lines go to the deleted file', this.#opts.auditPath, err.message);
        else this.#log.warn('audit log %s was deleted while open: writing a new file at its path', this.#opts.auditPath);
      },
    });
    await this.#checkCredentials();

    this.#cgroupRoot = findCgroup2Root();
    this.#upstreamAgent = createUpstreamAgent({ caFile: this.#opts.upstreamCaFile });
    const sigv4BodyLimit = this.#opts.sigv4BodyLimit ?? 16 * 1024 * 1024;
    const sigv4BodyMemory = this.#opts.sigv4BodyMemory ?? 64 * 1024 * 1024;
    const workers = this.#opts.proxyWorkers ?? 1;
    this.#proxy = workers > 1 ? new ProxyWorkers({
      workers,
      plan: this.#plan,
      identify: (address, port) => {
        const orig = this.#identify(address, port);
        // Named here, under the table in force with the kernel's numbering: a worker's may be older for a moment.
        return orig && { ...orig, workloadName: this.#routes.workload(orig.workloadId)?.name ?? `#${orig.workloadId}` };
      },
      credential: (name) => this.#credential(name),
      credentialExpiry: (name) => this.#credentials.get(name)?.state?.().expiresAt,
      leaf: (host) => ca.leafFor(host),
      listener: reusePortListener,
      audit: this.#audit,
      log: this.#log,
      observer: this.#metrics,
      limits: { ...DEFAULT_PROXY_LIMITS, ...this.#opts.proxyLimits },
      http2: this.#opts.http2 ?? true,
      h1FastPath: this.#opts.h1FastPath ?? true,
      ...(this.#opts.h2Limits ? { h2Limits: this.#opts.h2Limits } : {}),
      ...(this.#opts.upstreamCaFile ? { upstreamCaFile: this.#opts.upstreamCaFile } : {}),
      sigv4BodyLimit,
      sigv4BodyMemory,
    }) : new ProxyServer({
      identify: (address, port) => this.#identify(address, port),
      routes: () => this.#routes,
      secureContextFor: (host) => ca.secureContextFor(host),
      credential: (name) => this.#credential(name),
      heldCredential: (name) => this.#credentials.get(name)?.peek(),
      upstreamAgent: this.#upstreamAgent,
      sigv4BodyLimit,
      sigv4BodyBudget: new ByteBudget(sigv4BodyMemory),
      limits: this.#opts.proxyLimits,
      http2: this.#opts.http2 ?? true,
      h1FastPath: this.#opts.h1FastPath ?? true,
      h2Limits: this.#opts.h2Limits,
      upstreamH2: new UpstreamH2Pool({ secureContext: upstreamSecureContext({ caFile: this.#opts.upstreamCaFile }) }),
      audit: this.#audit,
      log: this.#log,
      observer: this.#metrics,
    });
    // Listen before attaching: a redirect must never point at a closed port.
    await this.#proxy.listen(this.#opts.proxyPort);

    this.#datapath = Datapath.open({
      cgroupRoot: this.#cgroupRoot,
      pinDir: this.#opts.pinDir,
      proxyPort: this.#opts.proxyPort,
      kernelHttp: this.#opts.kernelDatapath ?? true,
      kernelAliveTimeoutMs: this.#opts.kernelAliveTimeoutMs,
    });
    this.#reportPrevious();
    const datapath = this.#datapath;
    this.#resolver = new IdentityResolver(this.#cgroupRoot, () => datapath.openFileKeys());
    this.#datapath.setPortBindings(this.#routes.portBindings());
    // Before anything is attached: a restricted workload is never unrestricted while the agent runs.
    this.#setEgress(this.#datapath, this.#plan);
    // Strict here: a policy the maps cannot hold fails the start. The
    // periodic resync after it only logs.
    this.#resolved = await this.#resolver.resolve(this.#plan.workloads.values());
    this.#datapath.setIdentity(identityTables(this.#resolved));
    this.#reportProblems();
    // Twice: a process forked during the first pass by a parent the pass had
    // not reached yet is caught by the second; after that, every process's
    // parent is known and the fork program covers its children.
    const added = this.#datapath.backfill() + this.#datapath.backfill();
    this.#datapath.attachRedirect(this.#cgroupRoot);
    // Read on the event loop, like the kernel HTTP datapath's events.
    this.#egressEvents = this.#datapath.egressEvents((e) => {
      const event = this.#egressAuditEvent(e);
      this.#audit?.recordSoon(event);
      this.#metrics.egressDecision('kernel', event.workload, undefined, e.verdict === 'refused' ? 'deny' : 'would-refuse');
    }, {
      onError: (err) => this.#log.error('egress audit events: %s', (err as Error).message),
    });
    const kh = this.#datapath.kernelHttp;
    if (kh) {
      if (!kh.pushWatch) {
        this.#log.warn('kernel HTTP datapath: no failed-push watch (%s); ' +
          'memory pressure is still caught, a push failing for another reason before its first byte is not (see the README)', this.#datapath.pushWatchUnavailable);
      }
      kh.setAuditGrain(this.#opts.kernelAuditGrain ?? 'connection');
      const kernelBindings = new KernelBindings(kh, this.#log);
      this.#kernelBindings = kernelBindings;
      await kernelBindings.apply(this.#plan, this.#credentials);
      this.#kernelUsage = new KernelUsage(kh, {
        names: (u) => kernelBindings.usageNames(u),
        counted: (workload, service, n) => this.#metrics.kernelInjected(workload, service, n),
      });
      this.#kernelUsageTimer = setInterval(() => this.#summarizeKernelUsage(), this.#opts.kernelUsageIntervalMs ?? KERNEL_USAGE_MS);
      this.#kernelUsageTimer.unref();
      // Read on the event loop (a uv_poll on the ring buffer), never by blocking it.
      this.#kernelEvents = kh.events((e) => {
        const event = kernelBindings.auditEvent(e);
        this.#audit?.recordSoon(event);
        this.#metrics.kernelEvent(event);
      }, {
        onError: (err) => this.#log.error('kernel datapath audit events: %s', (err as Error).message),
      });
      // Rotation: file sources notice a change within a second, Vault ones on their refresh.
      this.#kernelRefresh = setInterval(() => void this.#refreshKernelBindings(), KERNEL_REFRESH_MS);
      this.#kernelRefresh.unref();
    } else {
      const bug = this.#datapath.kernelHttpError;
      if (bug) {
        // Not an old kernel: a program the verifier refused on a kernel that has every feature it uses.
        this.#log.error('kernel HTTP datapath refused by the kernel on a kernel that has every feature it uses; this is a wirekey bug, please report it with this log: %s\n%s',
          bug.message, bug.verifierLog ?? bug.libbpfLog ?? '(no verifier log)');
      }
      this.#requireKernelHttp(this.#plan);
      this.#log.warn('kernel HTTP datapath not loaded (plaintext services cannot be bound): %s', this.#datapath.kernelHttpUnavailable);
    }
    const released = this.#datapath.previousLinksReleased;
    if (released) {
      this.#log.info('took over from the previous agent: its %d program(s), attached while no agent ran (egress rules enforced, bound connections refused), are detached now that this agent\'s are attached', released);
    }
    this.#writeRuntimeState();
    discardRuntimeState(this.#opts.stateDir, { previousOnly: true });
    this.#sweepDraining();
    this.#resync = setInterval(() => void this.#syncIdentity(), this.#opts.resyncIntervalMs ?? 2000);
    this.#resync.unref();

    this.#log.info(
      'ready: proxy on 127.0.0.1:%d and [::1]:%d, programs %s attached to %s, %d running processes backfilled, pins in %s',
      this.#opts.proxyPort, this.#opts.proxyPort, this.#datapath.programIds().join(','), this.#cgroupRoot, added, this.#opts.pinDir,
    );
    this.#ready = true;
    this.#opts.notifier?.ready(this.#readyStatus());
  }

  /** The hash of the plan in force ("none" before one is). */
  #policyHash(): string {
    return this.#plan ? planHash(this.#plan) : 'none';
  }

  /** systemd's STATUS= line while the agent serves: "ready: 2 workloads, 3 bindings, policy 1a2b3c4d5e6f". */
  #readyStatus(): string {
    return `ready: ${this.#plan.workloads.size} workload(s), ${this.#plan.bindings.length} binding(s), policy ${planHash(this.#plan)}`;
  }

  /** The control socket, for routes other parts add (reload, metrics). */
  get control(): ControlServer | undefined {
    return this.#control;
  }

  /**
   * Metrics: GET /metrics on the control socket and, with metricsListen, a
   * TCP listener that serves /metrics, /healthz and /readyz only (the same
   * handlers; nothing that changes state is ever reachable over TCP).
   * @throws WirekeyError WK_METRICS_LISTEN
   */
  async #serveMetrics(control: ControlServer): Promise<void> {
    control.route('GET', '/metrics', async (_req, res) => {
      const { contentType, body } = await this.#metrics.render();
      res.writeHead(200, { 'content-type': contentType }).end(body);
    });
    const listen = this.#opts.metricsListen;
    if (!listen) return;
    const server = new ControlServer(this.#log, 'metrics');
    for (const route of ['/metrics', '/healthz', '/readyz']) {
      const handler = control.handler('GET', route);
      if (handler) server.route('GET', route, handler);
    }
    await server.listenTcp(listen.host, listen.port);
    this.#metricsServer = server;
    this.#log.info('metrics and health on http://%s:%d/metrics', listen.host.includes(':') ? `[${listen.host}]` : listen.host, listen.port);
  }

  /**
   * Loads the policy again and applies it whole, or not at all: a policy
   * that does not load, or that the kernel maps cannot hold, leaves the
   * running one in force. Returns whether the new policy was applied and,
   * when not, why (one line per problem). Reloads and stop() run one at a
   * time, in the order asked; a reload asked for once stop() has been
   * called does nothing and is refused. The service manager is told
   * RELOADING=1 before and READY=1 after, with a status line that says
   * which policy is in force.
   */
  reload(): Promise<ReloadResult> {
    if (this.#stopping) return Promise.resolve({ applied: false, problems: ['the agent is stopping'], policy: this.#policyHash() });
    return this.#serially(async () => {
      const notifier = this.#opts.notifier;
      notifier?.reloading('reloading the policy');
      let result: ReloadResult;
      try {
        result = await this.#reload();
      } catch (err) {
        result = reloadThrew(this.#policyHash(), err);
        this.#log.error('policy reload failed: %s', result.failed);
      }
      this.#metrics.reloaded(reloadMetricResult(result));
      if (result.failed) notifier?.ready(`reload failed: ${result.failed}`);
      else if (result.applied) notifier?.ready(this.#readyStatus());
      else notifier?.ready(`policy refused, previous in force: ${this.#readyStatus().replace(/^ready: /, '')}; ${result.problems[0] ?? ''}` +
        `${result.problems.length > 1 ? ` (and ${result.problems.length - 1} more problem(s))` : ''}`);
      return result;
    });
  }

  /** Stops everything that was started, in reverse order, after any reload in progress. Idempotent. */
  stop(): Promise<void> {
    this.#stopping = true;
    return this.#serially(() => this.#stop());
  }

  /** Runs `fn` after every reload and stop asked for before it has ended. */
  #serially<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.#lifecycle.then(fn, fn);
    this.#lifecycle = run.then(() => undefined, () => undefined);
    return run;
  }

  /** The kernel's record of a connection to the proxy, taken (each is read once). */
  #identify(address: string, port: number): OrigDst | null {
    const datapath = this.#datapath;
    if (!datapath) return null;
    if (this.#renumbering) {
      datapath.takeConnection(address, port);
      throw new WirekeyError('WK_RENUMBERING', 'a policy reload is renumbering the workloads; the connection cannot be attributed to one until it is done');
    }
    return datapath.takeConnection(address, port);
  }

  /**
   * The proxy's table and the kernel's identity maps number the workloads
   * alike again: records made before (under either numbering, not yet
   * taken) are dropped, so their connections are refused, and from here
   * on every record is read under the table in force.
   */
  #endRenumbering(datapath: Datapath): void {
    const dropped = datapath.dropConnections();
    this.#renumbering = false;
    if (dropped) this.#log.warn('policy reload renumbered the workloads: %d connection(s) redirected meanwhile are refused (their workload cannot be told)', dropped);
  }

  async #reload(): Promise<ReloadResult> {
    const refused = (problems: string[]): ReloadResult => ({ applied: false, problems, policy: this.#policyHash() });
    let next: LoadedPlan;
    try {
      next = await this.#loadPlan();
    } catch (err) {
      // One line per problem: the first names the outcome, each next one a file:line:column.
      const lines = err instanceof PolicyError ? err.diagnostics.map((d) => `${d.file}:${d.line}:${d.column}: ${d.message}`) : (err as Error).message.split('\n');
      this.#log.error('policy reload failed, keeping the running policy: %d problem(s)', lines.length);
      for (const line of lines) this.#log.error('policy: %s', line);
      return refused(lines);
    }
    const datapath = this.#datapath;
    if (!datapath || !this.#resolver) {
      await next.credentials.retire(this.#credentials);
      return refused(['the agent is not running']);
    }
    let resolved: ResolvedWorkload[];
    try {
      resolved = await this.#resolver.resolve(next.plan.workloads.values());
    } catch (err) {
      const problem = `cannot resolve the workloads' selectors: ${firstLine(err)}`;
      this.#log.error('policy reload failed, keeping the running policy: %s', problem);
      await next.credentials.retire(this.#credentials);
      return refused([problem]);
    }
    const previous = { ports: this.#routes.portBindings(), identity: identityTables(this.#resolved) };
    // A renumbering a failed reload left unfinished ends with this one, if it is applied.
    const unfinished = this.#renumbering;
    const renumbered = unfinished || numberingChanged(this.#plan, next.plan);
    // From the kernel's switch to the proxy's: connections are refused
    // (closed before TLS), never judged under the other plan's numbering.
    if (renumbered) this.#renumbering = true;
    // What the kernel counted under the names in force so far is written under them.
    this.#summarizeKernelUsage();
    try {
      this.#requireKernelHttp(next.plan);
      datapath.setPortBindings(next.routes.portBindings());
      this.#setEgress(datapath, next.plan);
      datapath.setIdentity(identityTables(resolved));
      await this.#kernelBindings?.apply(next.plan, next.credentials);
    } catch (err) {
      // Put the kernel back as it was; the proxy has not seen the new plan yet.
      const unrestored: string[] = [];
      const restore = async (what: string, fn: () => unknown) => {
        try {
          await fn();
        } catch (e) {
          unrestored.push(`${what}: ${firstLine(e)}`);
        }
      };
      await restore('port bindings', () => datapath.setPortBindings(previous.ports));
      await restore('egress rules', () => this.#setEgress(datapath, this.#plan));
      await restore('workload identity', () => datapath.setIdentity(previous.identity));
      await restore('kernel datapath bindings', () => this.#kernelBindings?.apply(this.#plan, this.#credentials));
      if (renumbered && !unfinished) await restore('connection records', () => this.#endRenumbering(datapath));
      await next.credentials.retire(this.#credentials);
      if (unrestored.length) {
        const result = kernelNotRestored(this.#policyHash(), planHash(next.plan), firstLine(err), unrestored);
        this.#log.error('policy reload failed: %s', result.failed);
        return result;
      }
      this.#log.error('policy reload failed, keeping the running policy: %s', (err as Error).message);
      return refused([(err as Error).message]);
    }
    const retired = this.#credentials;
    this.#lastPlan = this.#plan;
    this.#plan = next.plan;
    this.#routes = next.routes;
    this.#credentials = next.credentials;
    // From here the new policy is in force: a step that fails is reported, and the others still run.
    const failures: FailedStep[] = [];
    const step = async (what: string, consequence: string, fn: () => unknown): Promise<boolean> => {
      try {
        await fn();
        return true;
      } catch (err) {
        failures.push({ step: what, message: firstLine(err), consequence });
        return false;
      }
    };
    // Every worker serves the new routes before the kernel's records are trusted again, and before this reload says applied.
    const refusing = 'proxied connections are refused until a reload succeeds';
    const workersApplied = !(this.#proxy instanceof ProxyWorkers) ||
      await step('giving the proxy workers the new routes', refusing, () => (this.#proxy as ProxyWorkers).applyPlan(next.plan));
    if (!workersApplied) this.#renumbering = true;
    else if (renumbered) await step('dropping the connection records of the previous numbering', refusing, () => this.#endRenumbering(datapath));
    // Requests in flight hold their credential already; new ones use the new set.
    await step('closing the previous policy\'s credential sources', 'leases of credentials it no longer uses may not be revoked', () => retired.retire(next.credentials));
    this.#resolved = resolved;
    this.#reported.clear();
    this.#reportProblems();
    await step('writing the runtime state', 'wirekey status and explain show the previous policy', () => this.#writeRuntimeState());
    await step('checking the credentials', 'bindings whose credential cannot be used are not reported', () => this.#checkCredentials());
    const before = this.#lastPlan;
    this.#lastPlan = next.plan;
    const change = describeChange(before, next.plan);
    this.#metrics.policyApplied(planHash(next.plan));
    if (failures.length) {
      const result = failedAfterSwitch(planHash(next.plan), change, failures);
      this.#log.error('policy reloaded with failures: %s; %s', change, result.failed);
      return result;
    }
    this.#log.info('policy reloaded: %s', change);
    return { applied: true, problems: [], policy: planHash(next.plan), change };
  }

  /**
   * Opens the audit file again by its path (SIGUSR1, after logrotate moved
   * it). A file that cannot be opened leaves the old one in use, and says so.
   */
  reopenAudit(): void {
    try {
      this.#audit?.reopen();
      this.#log.info('audit log %s reopened', this.#opts.auditPath);
    } catch (err) {
      this.#log.error('audit log %s cannot be reopened, still writing the old one: %s', this.#opts.auditPath, (err as Error).message);
    }
  }

  /**
   * Makes the kernel enforce `plan`'s egress rules, whole or not at all
   * (EgressTooLargeError: nothing changed), and remembers which workload
   * each rule set belongs to, so that an event judged under a set names
   * its workload even after a reload renumbered the workloads.
   */
  #setEgress(datapath: Datapath, plan: Plan): void {
    const workloads: EgressWorkload[] = [...plan.workloads.values()].map((w) => ({ id: w.id, name: w.name, egress: w.egress }));
    datapath.setEgress(workloads);
    for (const w of workloads) {
      const setId = w.egress ? datapath.egressOf(w.id)?.setId : undefined;
      if (setId === undefined) continue;
      this.#egressSets.delete(setId);
      this.#egressSets.set(setId, w.name);
      // Sets of long-gone plans: events judged under them are long read.
      if (this.#egressSets.size > EGRESS_SETS_REMEMBERED) this.#egressSets.delete(this.#egressSets.keys().next().value as number);
    }
  }

  /** The audit line of a kernel egress event: a refusal (enforce) or what would have been refused (audit). */
  #egressAuditEvent(e: EgressEvent): AuditEvent {
    return {
      decision: e.verdict === 'refused' ? 'deny' : 'would-refuse',
      datapath: 'kernel',
      workload: this.#egressSets.get(e.setId) ?? `#${e.workloadId}`,
      pid: e.pid,
      uid: e.uid,
      address: e.address,
      port: e.port,
      protocol: PROTOCOL_NAMES[e.protocol] ?? String(e.protocol),
      hook: e.hook,
      socket: e.hook === 'socket' || e.hook === 'route' ? `${SOCKET_TYPE_NAMES[e.socketType] ?? String(e.socketType)} ${e.family}` : undefined,
      reason: egressStatRefusal(e.verdict === 'refused' ? 'refused' : 'wouldRefuse') ?? undefined,
      seen: e.time.toISOString(),
    };
  }

  async #stop(): Promise<void> {
    this.#ready = false;
    if (this.#resync) clearInterval(this.#resync);
    this.#resync = undefined;
    if (this.#kernelRefresh) clearInterval(this.#kernelRefresh);
    this.#kernelRefresh = undefined;
    if (this.#kernelUsageTimer) clearInterval(this.#kernelUsageTimer);
    this.#kernelUsageTimer = undefined;
    // Injection stops first, so that the last usage lines count every request injected.
    try {
      this.#datapath?.kernelHttp?.expire();
    } catch (err) {
      this.#log.error('kernel datapath: stopping: %s', (err as Error).message);
    }
    this.#summarizeKernelUsage();
    this.#kernelUsage = undefined;
    this.#kernelBindings = undefined;
    // Kernel injection stops first (open connections are refused from their
    // next request), then everything is detached, so no new connection is
    // sent to a proxy that is closing.
    const datapath = this.#datapath;
    this.#datapath = undefined;
    try {
      const draining = datapath?.close();
      if (draining) {
        this.#log.warn(
          'kernel datapath: %d connection(s) still open; each is refused from its next request, and their sockhash stays pinned at %s until they close (the next agent removes it then)',
          draining.connections, draining.dir,
        );
      }
    } catch (err) {
      this.#log.error('kernel datapath: stopping: %s', (err as Error).message);
    }
    this.#resolver?.close();
    this.#resolver = undefined;
    await this.#proxy?.close();
    this.#proxy = undefined;
    this.#upstreamAgent?.destroy();
    // Revokes what Vault leased to this agent.
    await this.#credentials.close();
    this.#credentials = CredentialSources.empty();
    this.#audit?.close();
    this.#audit = undefined;
    await this.#metricsServer?.close();
    this.#metricsServer = undefined;
    await this.#control?.close();
    this.#control = undefined;
    if (this.#lock && this.#wroteRuntimeState) {
      // Only this agent's own: an agent refused for want of the lock leaves the running one's state
      // alone, and one that failed to start leaves a dead predecessor's for status.
      try {
        discardRuntimeState(this.#opts.stateDir);
      } catch (err) {
        this.#log.warn('cannot remove the runtime state: %s', (err as Error).message);
      }
    }
    this.#lock?.release();
    this.#lock = undefined;
  }

  /**
   * Loads and compiles the policy. Credential sources whose definition did
   * not change are kept, with what they have cached.
   * @throws PolicyError
   */
  async #loadPlan(): Promise<LoadedPlan> {
    const { policy, files, warnings } = await loadPolicy(this.#opts.policyPath);
    for (const w of warnings) this.#log.warn('policy: %s:%d:%d: %s', w.file, w.line, w.column, w.message);
    const plan = compilePolicy(policy);
    const credentials = await CredentialSources.build(plan, this.#credentials, this.#log, { onRequest: (r) => this.#metrics.vaultRequest(r) });
    this.#log.info('policy %s: %d file(s), %d workload(s), %d service(s), %d binding(s)', planHash(plan), files.length,
      plan.workloads.size, plan.services.size, plan.bindings.length);
    return { plan, routes: new RouteTable(plan), credentials };
  }

  async #credential(name: string): Promise<Credential> {
    const source = this.#credentials.get(name);
    if (!source) throw new CredentialError(name, 'is not defined in the policy');
    return source.get();
  }

  /** @throws NotSupportedError when `plan` has plaintext services and this kernel refused the kernel HTTP programs. */
  #requireKernelHttp(plan: Plan): void {
    const reason = this.#datapath?.kernelHttpUnavailable;
    if (!reason) return;
    const kernel = [...plan.services.values()].filter((s) => s.datapath === 'kernel').map((s) => s.name);
    if (kernel.length) {
      throw new NotSupportedError('kernel HTTP datapath', `plaintext service(s) ${kernel.join(', ')} need the kernel HTTP datapath, which is not loaded: ${reason}`);
    }
  }

  /** Reads the kernel's usage counters into the request metrics. */
  #collectKernelUsage(): void {
    try {
      this.#kernelUsage?.collect();
    } catch (err) {
      this.#log.error('kernel datapath: cannot read usage counters: %s', (err as Error).message);
    }
  }

  /**
   * Writes a usage audit line per binding and credential version that
   * injected requests since its last one; the ring's waiting events first,
   * so that a connection's inject line comes before the usage line that
   * counts its request (on the timer, at a reload and at stop alike).
   */
  #summarizeKernelUsage(): void {
    this.#kernelEvents?.drain();
    try {
      for (const line of this.#kernelUsage?.summarize() ?? []) this.#audit?.record(line);
    } catch (err) {
      this.#log.error('kernel datapath: cannot read usage counters: %s', (err as Error).message);
    }
  }

  async #refreshKernelBindings(): Promise<void> {
    if (!this.#kernelBindings || this.#refreshing) return;
    this.#refreshing = true;
    try {
      await this.#kernelBindings.refresh(this.#plan, this.#credentials);
    } catch (err) {
      this.#log.error('kernel datapath: cannot update header lines: %s', (err as Error).message);
    } finally {
      this.#refreshing = false;
    }
  }

  /** Logs what the previous agent left open on the kernel datapath, and how it was dealt with. */
  #reportPrevious(): void {
    const p = this.#datapath?.previous;
    if (!p) return;
    const how = `${p.expired ? 'its heartbeat set to 0' : 'no heartbeat pin found (an older agent): refused once its own deadline passes'}, ${p.wiped} header line(s) wiped`;
    if (p.draining) {
      this.#log.warn('kernel datapath: the previous agent left %d connection(s) open: refused from their next request (%s); draining at %s',
        p.draining.connections, how, p.draining.dir);
    } else {
      this.#log.info('kernel datapath: the previous agent left no connection open (%s)', how);
    }
  }

  /** Removes draining sockhashes whose last connection has closed. */
  #sweepDraining(): void {
    for (const d of this.#datapath?.sweepDraining() ?? []) {
      this.#log.info('kernel datapath: swept %s: its last connection closed (%s request(s) refused without an agent)', d.dir, String(d.refusedAgent));
    }
  }

  /**
   * A credential that cannot be read now, or whose value cannot be sent the
   * way a binding injects it (a CR or LF in a token), is reported, not
   * fatal: that binding's requests are refused until it is fixed, and every
   * other binding carries on.
   */
  async #checkCredentials(): Promise<void> {
    // Read together: one slow source does not hold up the others.
    const unreadable = await this.#credentials.readAll();
    for (const [name, err] of unreadable) {
      const at = this.#plan.credentials.get(name)?.source;
      this.#log.warn('%s%s; requests that need it will fail until it can be read', err.message, at ? ` (${at.file}:${at.line})` : '');
    }
    for (const binding of this.#plan.bindings) {
      const inject = binding.inject;
      const source = this.#credentials.get(inject.credential);
      let reason: string | undefined;
      if (!source || unreadable.has(source.name)) reason = `credential "${inject.credential}" cannot be read now`;
      else if (inject.kind !== 'sigv4') {
        try {
          credentialHeader(inject, await source.get());
        } catch (err) {
          reason = (err as Error).message;
          this.#log.warn('binding %s withholds its credential: %s; its requests are refused until it is fixed', binding.name, reason);
        }
      }
      if (reason) {
        this.#audit?.record({ decision: 'withhold', binding: binding.name, workload: binding.workload, service: binding.service, credential: inject.credential, reason });
      }
    }
  }

  /** Resolves selectors again (cgroups, units, binaries, users change) and pushes changes into the kernel. */
  async #syncIdentity(): Promise<void> {
    if (!this.#datapath || !this.#resolver || this.#syncing) return;
    this.#syncing = true;
    try {
      const plan = this.#plan;
      const resolved = await this.#resolver.resolve(plan.workloads.values());
      if (plan !== this.#plan || !this.#datapath) return; // reloaded meanwhile: the reload applied its own
      if (tablesKey(identityTables(resolved)) !== tablesKey(identityTables(this.#resolved))) {
        this.#datapath.setIdentity(identityTables(resolved));
        this.#resolved = resolved;
        this.#writeRuntimeState();
        this.#log.debug('workload identity updated');
      }
      this.#resolved = resolved;
      this.#reportProblems();
      this.#reportStats();
      this.#sweepDraining();
      const proxyStats = JSON.stringify(this.#proxy?.stats());
      if (proxyStats !== this.#lastProxyStats) this.#writeRuntimeState();
    } catch (err) {
      this.#log.error('cannot update workload identity: %s', (err as Error).message);
    } finally {
      this.#syncing = false;
    }
  }

  /** Logs each selector problem once, until it goes away and comes back. */
  #reportProblems(): void {
    const now = new Set<string>();
    for (const w of this.#resolved) {
      for (const p of w.problems) {
        const line = `workload ${w.name}: ${p}`;
        now.add(line);
        if (!this.#reported.has(line)) this.#log.warn('%s', line);
      }
    }
    this.#reported = now;
  }

  #reportStats(): void {
    if (!this.#datapath) return;
    const stats = this.#datapath.stats();
    if (stats.tasksFull > this.#lastStats.tasksFull) {
      const { capacity } = this.#datapath.taskCount();
      this.#log.error(
        'wk_task_exe is full (%d entries): %d process(es) could not be identified; they match only workloads without an executable selector',
        capacity, Number(stats.tasksFull - this.#lastStats.tasksFull),
      );
    }
    if (stats.storageFailures > this.#lastStats.storageFailures) {
      this.#log.error('%d redirect(s) refused: socket storage could not be allocated', Number(stats.storageFailures - this.#lastStats.storageFailures));
    }
    if (stats.proxyPortBinds > this.#lastStats.proxyPortBinds) {
      this.#log.warn('%d bind(s) to the proxy port %d refused: only uid 0 may take it', Number(stats.proxyPortBinds - this.#lastStats.proxyPortBinds), this.#opts.proxyPort);
    }
    this.#lastStats = stats;
  }

  /** What `wirekey explain` and `wirekey status` read: the plan as applied, with resolved selectors. Root-only. */
  #writeRuntimeState(): void {
    this.#wroteRuntimeState = true;
    const state: RuntimeState = {
      pid: process.pid,
      policyPath: this.#opts.policyPath,
      pinDir: this.#opts.pinDir,
      cgroupRoot: this.#cgroupRoot,
      workloads: this.#resolved.map((r) => ({
        id: r.id,
        name: r.name,
        selector: this.#plan.workloads.get(r.name)?.selector ?? {},
        cgroupPath: r.cgroupPath,
        cgroupId: r.cgroupId === undefined || r.cgroupId === null ? r.cgroupId : r.cgroupId.toString(),
        exe: r.exe ? { dev: r.exe.dev, ino: r.exe.ino.toString() } : r.exe,
        uid: r.uid,
        problems: r.problems,
        egress: this.#plan.workloads.get(r.name)?.egress,
      })),
      bindings: this.#plan.bindings.map((b) => {
        const service = this.#plan.services.get(b.service);
        return {
          name: b.name, workload: b.workload, service: b.service, datapath: service?.datapath ?? 'proxy',
          hosts: service?.datapath === 'proxy' ? service.hosts : [], addresses: service?.datapath === 'kernel' ? service.addresses : [],
          port: service?.port ?? 0, inject: b.inject,
        };
      }),
    };
    const proxy = this.#proxy?.stats();
    if (proxy) {
      state.proxy = proxy as Required<RuntimeState>['proxy'];
      this.#lastProxyStats = JSON.stringify(proxy);
    }
    writeFileAtomic(runtimeStatePath(this.#opts.stateDir), `${JSON.stringify(state, null, 2)}\n`);
  }
}

/** A short, stable digest of what a plan applies (the same policy gives the same hash on every host). */
export function planHash(plan: Plan): string {
  const sorted = (m: Map<string, unknown>) => [...m].sort(([a], [b]) => (a < b ? -1 : 1));
  const text = JSON.stringify({
    vault: sorted(plan.vaultConnections), credentials: sorted(plan.credentials), services: sorted(plan.services),
    workloads: sorted(plan.workloads), bindings: [...plan.bindings].sort((a, b) => (a.name < b.name ? -1 : 1)),
  });
  return createHash('sha256').update(text).digest('hex').slice(0, 12);
}

/** What a reload changed, binding by binding: "policy 1a2b.. -> 3c4d..; bindings added a; removed b; changed c". */
function describeChange(before: Plan | undefined, after: Plan): string {
  const key = (plan: Plan, b: PlanBinding) =>
    JSON.stringify([b, plan.services.get(b.service), plan.workloads.get(b.workload)?.selector]);
  const old = new Map((before?.bindings ?? []).map((b) => [b.name, key(before as Plan, b)]));
  const now = new Map(after.bindings.map((b) => [b.name, key(after, b)]));
  const added = [...now.keys()].filter((n) => !old.has(n));
  const removed = [...old.keys()].filter((n) => !now.has(n));
  const changed = [...now.keys()].filter((n) => old.has(n) && old.get(n) !== now.get(n));
  const parts = [
    added.length ? `bindings added ${added.join(', ')}` : '',
    removed.length ? `removed ${removed.join(', ')}` : '',
    changed.length ? `changed ${changed.join(', ')}` : '',
  ].filter(Boolean);
  return `policy ${before ? planHash(before) : '?'} -> ${planHash(after)}; ${parts.length ? parts.join('; ') : 'no binding changed'}`;
}

/** A stable text form of identity tables, to tell whether anything changed. */
function tablesKey(t: IdentityTables): string {
  return JSON.stringify({
    cgroups: [...t.cgroups].map(([k, v]) => [k.toString(), v]).sort(),
    exes: t.exes.map((e) => [`${e.key.dev}:${e.key.ino}:${e.key.inode}`, e.workloads]).sort(),
    uids: [...t.uids].sort(),
    any: t.any,
  });
}

/** How often the kernel datapath's header lines are checked against their credentials. */
const KERNEL_REFRESH_MS = 1000;
/** How often the kernel datapath's usage counters become audit lines, by default. */
const KERNEL_USAGE_MS = 10_000;

function writeFileAtomic(file: string, data: string): void {
  const tmp = `${file}.${process.pid}.tmp`;
  writeFileSync(tmp, data, { mode: 0o600 });
  renameSync(tmp, file);
}

/** Whether some workload of both plans has another id in `next` (the kernel's records would then mean another workload). */
function numberingChanged(current: Plan, next: Plan): boolean {
  for (const w of current.workloads.values()) {
    const n = next.workloads.get(w.name);
    if (n && n.id !== w.id) return true;
  }
  // A removed workload's id now held by another.
  const ids = new Map([...current.workloads.values()].map((w) => [w.id, w.name]));
  for (const w of next.workloads.values()) {
    const was = ids.get(w.id);
    if (was !== undefined && was !== w.name) return true;
  }
  return false;
}
