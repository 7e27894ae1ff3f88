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
import { Datapath } from '../datapath/datapath.js';
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
    const { policy, files } = await loadPolicy(this.#opts.policyPath);
    this.#plan = compilePolicy(policy);
    this.#routes = new RouteTable(this.#plan);
    this.#log.info('policy: %d file(s), %d workload(s), %d service(s), %d binding(s)', files.length,
      this.#plan.workloads.size, this.#plan.services.size, this.#plan.bindings.length);

    mkdirSync(this.#opts.stateDir, { recursive: true, mode: 0o700 });
    const ca = await LocalCa.loadOrCreate(path.join(this.#opts.stateDir, 'ca'));
    for (const c of this.#plan.credentials.values()) {
      this.#credentials.set(c.name, new FileCredentialSource({ name: c.name, path: c.file.path, field: c.file.field }));
    }
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
    this.#syncCgroups();
    this.#resync = setInterval(() => this.#syncCgroups(), this.#opts.resyncIntervalMs ?? 2000);
    this.#resync.unref();

    this.#log.info(
      'ready: proxy on 127.0.0.1:%d and [::1]:%d, programs %s attached to %s, pins in %s',
      this.#opts.proxyPort, this.#opts.proxyPort, this.#datapath.programIds().join(','), this.#cgroupRoot, this.#opts.pinDir,
    );
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

  /** Resolves cgroup selectors to cgroup ids and pushes them into the kernel. */
  #syncCgroups(): void {
    if (!this.#datapath) return;
    const entries: { cgroupId: bigint; workloadId: number }[] = [];
    const missing: string[] = [];
    for (const w of this.#plan.workloads.values()) {
      const id = cgroupId(cgroupDir(this.#cgroupRoot, w.cgroup));
      if (id === undefined) missing.push(`${w.name} (${w.cgroup})`);
      else entries.push({ cgroupId: id, workloadId: w.id });
    }
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
