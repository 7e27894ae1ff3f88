/**
 * The running agent: policy, local CA, credentials, kernel datapath and
 * proxy, started in that order and stopped in reverse.
 */
import path from 'node:path';
import { mkdirSync } from 'node:fs';
import type https from 'node:https';
import { loadPolicy } from '../policy/load.js';
import { compilePolicy } from '../policy/compile.js';
import type { Plan } from '../policy/types.js';
import { LocalCa } from '../tls/local-ca.js';
import { FileCredentialSource } from '../credentials/file-source.js';
import type { Secret } from '../credentials/secret.js';
import { Datapath, type WorkloadCgroup } from '../datapath/datapath.js';
import { cgroupDir, cgroupId, findCgroup2Root } from '../datapath/cgroup.js';
import { ProxyServer } from '../proxy/proxy-server.js';
import { createUpstreamAgent } from '../proxy/upstream.js';
import { AuditLog } from '../audit/audit-log.js';
import { RouteTable } from './routes.js';
import { CredentialError } from '../errors.js';
import type { Logger } from '../log.js';

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
  /** How often cgroup selectors are resolved again (cgroups come and go). */
  resyncIntervalMs?: number;
  log: Logger;
}

interface LoadedPlan {
  plan: Plan;
  routes: RouteTable;
  credentials: Map<string, FileCredentialSource>;
}

export class Agent {
  readonly #opts: AgentOptions;
  readonly #log: Logger;
  #plan!: Plan;
  #routes!: RouteTable;
  #credentials = new Map<string, FileCredentialSource>();
  #cgroupRoot!: string;
  #datapath: Datapath | undefined;
  #proxy: ProxyServer | undefined;
  #audit: AuditLog | undefined;
  #upstreamAgent: https.Agent | undefined;
  #resync: NodeJS.Timeout | undefined;
  #resolved = '';

  private constructor(opts: AgentOptions) {
    this.#opts = opts;
    this.#log = opts.log;
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
    const next = await this.#loadPlan();
    this.#plan = next.plan;
    this.#routes = next.routes;
    this.#credentials = next.credentials;

    mkdirSync(this.#opts.stateDir, { recursive: true, mode: 0o700 });
    const ca = await LocalCa.loadOrCreate(path.join(this.#opts.stateDir, 'ca'));
    await this.#checkCredentials();

    this.#cgroupRoot = findCgroup2Root();
    this.#audit = new AuditLog(this.#opts.auditPath);
    this.#upstreamAgent = createUpstreamAgent({ caFile: this.#opts.upstreamCaFile });
    this.#proxy = new ProxyServer({
      identify: (address, port) => this.#datapath?.takeConnection(address, port) ?? null,
      routes: () => this.#routes,
      secureContextFor: (host) => ca.secureContextFor(host),
      credential: (name) => this.#credential(name),
      upstreamAgent: this.#upstreamAgent,
      audit: this.#audit,
      log: this.#log,
    });
    // Listen before attaching: a redirect must never point at a closed port.
    await this.#proxy.listen(this.#opts.proxyPort);

    this.#datapath = Datapath.open({ cgroupRoot: this.#cgroupRoot, pinDir: this.#opts.pinDir, proxyPort: this.#opts.proxyPort });
    this.#datapath.setPortBindings(this.#routes.portBindings());
    // Strict here (a policy the maps cannot hold fails the start); the
    // periodic resync after it only logs.
    this.#datapath.setWorkloadCgroups(this.#resolveCgroups().entries);
    this.#syncCgroups();
    this.#resync = setInterval(() => this.#syncCgroups(), this.#opts.resyncIntervalMs ?? 2000);
    this.#resync.unref();

    this.#log.info(
      'ready: proxy on 127.0.0.1:%d and [::1]:%d, programs %s attached to %s, pins in %s',
      this.#opts.proxyPort, this.#opts.proxyPort, this.#datapath.programIds().join(','), this.#cgroupRoot, this.#opts.pinDir,
    );
  }

  /**
   * Loads the policy again and applies it whole, or not at all: a policy
   * that does not load, or that the kernel maps cannot hold, leaves the
   * running one in force. Returns whether the new policy was applied.
   */
  async reload(): Promise<boolean> {
    let next: LoadedPlan;
    try {
      next = await this.#loadPlan();
    } catch (err) {
      this.#log.error('policy reload failed, keeping the running policy:\n%s', (err as Error).message);
      return false;
    }
    const datapath = this.#datapath;
    if (!datapath) return false;
    const previous = { ports: this.#routes.portBindings(), cgroups: this.#resolveCgroups().entries };
    try {
      datapath.setPortBindings(next.routes.portBindings());
      datapath.setWorkloadCgroups(this.#resolveCgroups(next.plan).entries);
    } catch (err) {
      // Put the kernel back as it was; the proxy has not seen the new plan yet.
      datapath.setPortBindings(previous.ports);
      datapath.setWorkloadCgroups(previous.cgroups);
      this.#log.error('policy reload failed, keeping the running policy: %s', (err as Error).message);
      return false;
    }
    this.#plan = next.plan;
    this.#routes = next.routes;
    this.#credentials = next.credentials;
    this.#resolved = '';
    this.#syncCgroups();
    await this.#checkCredentials();
    this.#log.info('policy reloaded');
    return true;
  }

  /** Stops everything that was started, in reverse order. Idempotent. */
  async stop(): Promise<void> {
    if (this.#resync) clearInterval(this.#resync);
    this.#resync = undefined;
    // Detach first so no new connection is sent to a proxy that is closing.
    this.#datapath?.close();
    this.#datapath = undefined;
    await this.#proxy?.close();
    this.#proxy = undefined;
    this.#upstreamAgent?.destroy();
    this.#audit?.close();
    this.#audit = undefined;
  }

  /**
   * Loads and compiles the policy. Credential sources whose definition did
   * not change are kept, with what they have cached.
   * @throws PolicyError
   */
  async #loadPlan(): Promise<LoadedPlan> {
    const { policy, files } = await loadPolicy(this.#opts.policyPath);
    const plan = compilePolicy(policy);
    const credentials = new Map<string, FileCredentialSource>();
    for (const c of plan.credentials.values()) {
      const old = this.#credentials.get(c.name);
      const same = old && old.path === c.file.path && old.field === c.file.field;
      credentials.set(c.name, same ? old : new FileCredentialSource({ name: c.name, path: c.file.path, field: c.file.field }));
    }
    this.#log.info('policy: %d file(s), %d workload(s), %d service(s), %d binding(s)', files.length,
      plan.workloads.size, plan.services.size, plan.bindings.length);
    return { plan, routes: new RouteTable(plan), credentials };
  }

  async #credential(name: string): Promise<Secret> {
    const source = this.#credentials.get(name);
    if (!source) throw new CredentialError(name, 'is not defined in the policy');
    return source.get();
  }

  /** A credential that cannot be read now is reported, not fatal: it may appear later. */
  async #checkCredentials(): Promise<void> {
    for (const source of this.#credentials.values()) {
      try {
        await source.get();
      } catch (err) {
        this.#log.warn('%s; requests that need it will fail until it can be read', (err as Error).message);
      }
    }
  }

  /** The cgroup ids of a plan's workloads, and the workloads whose cgroup does not exist. */
  #resolveCgroups(plan: Plan = this.#plan): { entries: WorkloadCgroup[]; missing: string[] } {
    const entries: WorkloadCgroup[] = [];
    const missing: string[] = [];
    for (const w of plan.workloads.values()) {
      const id = cgroupId(cgroupDir(this.#cgroupRoot, w.cgroup));
      if (id === undefined) missing.push(`${w.name} (${w.cgroup})`);
      else entries.push({ cgroupId: id, workloadId: w.id });
    }
    return { entries, missing };
  }

  /** Resolves cgroup selectors again and pushes changes into the kernel. */
  #syncCgroups(): void {
    if (!this.#datapath) return;
    const { entries, missing } = this.#resolveCgroups();
    const summary = JSON.stringify([entries.map((e) => `${e.workloadId}:${e.cgroupId}`), missing]);
    if (summary === this.#resolved) return;
    this.#resolved = summary;
    try {
      this.#datapath.setWorkloadCgroups(entries);
    } catch (err) {
      this.#log.error('cannot update workload cgroups: %s', (err as Error).message);
      this.#resolved = '';
      return;
    }
    for (const m of missing) this.#log.warn('workload %s: cgroup does not exist (yet); it is bound when it appears', m);
    this.#log.debug('workload cgroups: %s', entries.map((e) => `${e.workloadId}=${e.cgroupId}`).join(' ') || 'none');
  }
}
