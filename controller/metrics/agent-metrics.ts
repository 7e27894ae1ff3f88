/**
 * The agent's Prometheus metrics (prom-client), in a registry of its own.
 *
 * Requests and refusals are counted where they happen (the proxy, kernel
 * events): label values are the policy's names (workload, service,
 * credential, Vault connection) and the refusal vocabulary
 * (refusals.ts), never anything a workload chose (a host, a path) and never
 * a secret. The counters' children are kept per (workload, service), so the
 * hot path only increments. Everything that is a level (connections open,
 * map fill, credential ages and TTLs, the kernel's own counters) is read
 * when a scraper asks, in collect() callbacks.
 *
 * Every metric is listed in the README (Metrics).
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { AuditEvent } from '../audit/audit-log.js';
import type { CredentialState } from '../credentials/credential.js';
import type { VaultOperation } from '../credentials/vault/vault-connection.js';
import { httpStatRefusal, type HttpStatName } from '../datapath/layout.js';
import type { ProxyObserver } from '../proxy/proxy-server.js';
import type { EgressDecision } from '../proxy/egress-decision.js';
import type { RefusalCode } from '../refusals.js';
import { SeriesHistogram, type HistogramSeries } from './series-histogram.js';

export interface MapUsage {
  name: string;
  entries: number;
  capacity: number;
}

/** Where levels are read from at scrape time; each part may be absent (starting, stopping, no kernel datapath). */
export interface MetricsSources {
  ready(): boolean;
  /** accepted: connections since start; acceptedByWorker: the same per proxy worker thread (absent: one, the agent's). */
  proxy(): { handshakes: number; connections: Record<string, number>; accepted?: number; acceptedByWorker?: number[] } | undefined;
  datapath(): { mapUsage(): MapUsage[]; stats(): { tasksFull: bigint; storageFailures: bigint; proxyPortBinds: bigint } } | undefined;
  kernelHttp(): { mapUsage(): MapUsage[]; stats(): Record<HttpStatName, bigint> } | null | undefined;
  credentials(): { name: string; state?(): CredentialState }[];
  /** Whether audit lines can be written now (false after a write failed, until one succeeds); undefined while there is no audit log yet. */
  auditWritable?(): boolean | undefined;
  vaultConnections(): { name: string; status(): { tokenExpiresAt: number | undefined; degraded: boolean } }[];
  /**
   * Delivers what was already reported but not yet handed over (the
   * kernel's ring buffers' waiting events, what proxy worker threads
   * counted), so a scrape counts everything that happened before it.
   */
  settle?(): void | Promise<void>;
}

export interface AgentMetricsOptions {
  /** Map fill is read at most this often (it walks every key of every map); default 5 s. */
  mapUsageIntervalMs?: number;
  /** prom-client's process and Node.js metrics (CPU, memory, event loop lag, ...), prefixed wirekey_; default true. */
  processMetrics?: boolean;
  /** What runs, for wirekey_build_info; absent: no such series. */
  build?: { version: string; node: string; libbpf: string };
  /** The clock of the timestamp gauges, epoch ms; default Date.now. */
  now?: () => number;
}

interface Children {
  injected: Counter.Internal;
  /** Proxy requests injected since the last scrape: added to `injected` when it is collected (a number is cheaper per request than prom-client's inc). */
  pending: number;
  refused: Map<string, Counter.Internal>;
  latency: HistogramSeries | undefined;
}

const LATENCY_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];
const VAULT_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];
const DEFAULT_MAP_USAGE_INTERVAL_MS = 5000;

/**
 * How a reload ended, as wirekey_policy_reloads_total's `result`: applied;
 * refused (before the switch to the new policy, or with the switch undone
 * whole: the running policy stays in force); failed (once the switch had
 * begun: the new policy is in force but a step after it failed, or the
 * previous one is only partly in force, or the reload threw).
 */
export type ReloadMetricResult = 'applied' | 'refused' | 'failed';
const RELOAD_RESULTS: readonly ReloadMetricResult[] = ['applied', 'refused', 'failed'];

/** The kernel counters that are refusals, and the code each is counted under. */
const KERNEL_REFUSALS = (
  ['refusedHeadSize', 'refusedMalformed', 'refusedTransferEncoding', 'refusedUpgrade', 'refusedHeaderPresent', 'refusedContentLength',
    'refusedBinding', 'refusedStream', 'refusedInternal', 'refusedBusy', 'refusedFastOpen', 'refusedChunked', 'refusedMethod', 'refusedPush',
    'refusedHost', 'refusedAgent', 'refusedCredential', 'storageFailures'] as const
).map((stat) => [stat, httpStatRefusal(stat) as RefusalCode] as const);

export class AgentMetrics implements ProxyObserver {
  readonly registry = new Registry();
  readonly #sources: MetricsSources;
  readonly #mapUsageIntervalMs: number;
  #mapUsage: { at: number; maps: MapUsage[] } | undefined;
  /** The kernel's counters as read for the scrape in progress: one read per scrape, none carried to the next. */
  #kernelStatsRead: { stats: Record<HttpStatName, bigint> | undefined } | undefined;

  readonly #injected: Counter<'datapath' | 'workload' | 'service'>;
  readonly #refused: Counter<'datapath' | 'workload' | 'service' | 'reason'>;
  readonly #latency: SeriesHistogram<'workload' | 'service'>;
  readonly #connectionsRefused: Counter<'workload' | 'reason'>;
  readonly #unidentified: Counter;
  readonly #h1HandedOff: Counter<'workload'>;
  readonly #reflections: Counter<'workload' | 'service'>;
  readonly #egress: Counter<'datapath' | 'workload' | 'rule' | 'decision'>;
  /** `${datapath}\0${workload}\0${rule}\0${decision}` -> child. */
  readonly #egressChildren = new Map<string, Counter.Internal>();
  readonly #vaultDuration: Histogram<'connection' | 'operation'>;
  readonly #vaultErrors: Counter<'connection' | 'operation' | 'status'>;
  readonly #reloads: Counter<'result'>;
  readonly #lastReload: Gauge;
  readonly #policy: Gauge<'hash'>;
  readonly #policyAppliedAt: Gauge;
  readonly #now: () => number;
  /** datapath -> workload -> service -> children. */
  readonly #children = new Map<string, Map<string, Map<string, Children>>>();
  readonly #connectionChildren = new Map<string, Map<string, Counter.Internal>>();

  constructor(sources: MetricsSources, options: AgentMetricsOptions = {}) {
    this.#sources = sources;
    this.#mapUsageIntervalMs = options.mapUsageIntervalMs ?? DEFAULT_MAP_USAGE_INTERVAL_MS;
    this.#now = options.now ?? Date.now;
    const registers = [this.registry];
    // `self` for collect() callbacks, whose `this` is the metric.
    const self = this;

    this.#injected = new Counter({
      name: 'wirekey_requests_injected_total',
      help: 'Requests sent upstream with their credential injected, by datapath, workload and service',
      labelNames: ['datapath', 'workload', 'service'] as const,
      registers,
      collect() {
        self.#addPending();
      },
    });
    this.#refused = new Counter({
      name: 'wirekey_requests_refused_total',
      help: 'Requests refused, by datapath, workload, service and reason (the x-wirekey-error code)',
      labelNames: ['datapath', 'workload', 'service', 'reason'] as const,
      registers,
    });
    this.#latency = new SeriesHistogram({
      name: 'wirekey_proxy_upstream_latency_seconds',
      help: 'Proxy datapath: time from sending a request upstream to its response headers',
      labelNames: ['workload', 'service'] as const,
      buckets: LATENCY_BUCKETS,
      registers,
    });
    this.#connectionsRefused = new Counter({
      name: 'wirekey_proxy_connections_refused_total',
      help: 'Proxy datapath: connections closed before TLS, by workload and reason',
      labelNames: ['workload', 'reason'] as const,
      registers,
    });
    this.#unidentified = new Counter({
      name: 'wirekey_proxy_connections_unidentified_total',
      help: 'Connections to the proxy that the kernel did not redirect (no identity): closed, no credential',
      registers,
    });
    this.#h1HandedOff = new Counter({
      name: 'wirekey_proxy_h1_handoffs_total',
      help: 'HTTP/1.1 connections the fast path handed to Node\'s HTTP server at a request outside its subset, by workload',
      labelNames: ['workload'] as const,
      registers,
    });
    this.#reflections = new Counter({
      name: 'wirekey_proxy_credential_reflections_total',
      help: 'Occurrences of a request\'s credential values the proxy masked in the upstream\'s response (an upstream echoing them), by workload and service',
      labelNames: ['workload', 'service'] as const,
      registers,
    });
    this.#egress = new Counter({
      name: 'wirekey_egress_decisions_total',
      help: 'Egress decisions for workloads with an egress section, by datapath, workload, rule (its label, or "none") and decision (allow, deny, would-refuse)',
      labelNames: ['datapath', 'workload', 'rule', 'decision'] as const,
      registers,
    });
    new Gauge({
      name: 'wirekey_proxy_connections_open',
      help: 'Proxy datapath: connections open (terminated or relayed), by workload',
      labelNames: ['workload'] as const,
      registers,
      collect() {
        this.reset();
        for (const [workload, n] of Object.entries(sources.proxy()?.connections ?? {})) this.set({ workload }, n);
      },
    });
    new Counter({
      name: 'wirekey_proxy_connections_total',
      help: 'Proxy datapath: connections accepted since start, by proxy worker (0 when the proxy runs in the agent\'s thread; see --proxy-workers)',
      labelNames: ['worker'] as const,
      registers,
      collect() {
        this.reset();
        const proxy = sources.proxy();
        const byWorker = proxy?.acceptedByWorker ?? (proxy?.accepted !== undefined ? [proxy.accepted] : []);
        byWorker.forEach((n, worker) => this.inc({ worker: String(worker) }, n ?? 0));
      },
    });
    new Gauge({
      name: 'wirekey_proxy_handshakes_in_progress',
      help: 'Proxy datapath: connections between accept and TLS established (bounded by --max-handshakes)',
      registers,
      collect() {
        this.set(sources.proxy()?.handshakes ?? 0);
      },
    });

    // The kernel datapath's own counters: exact totals, whatever the audit grain and however many events were lost.
    const kernelCounter = (name: string, help: string, stat: HttpStatName) =>
      new Counter({
        name, help, registers,
        collect() {
          this.reset();
          const stats = self.#kernelStats();
          if (stats) this.inc(Number(stats[stat]));
        },
      });
    kernelCounter('wirekey_kernel_requests_injected_total', 'Kernel datapath: requests injected (the kernel\'s counter)', 'injected');
    kernelCounter('wirekey_kernel_events_lost_total', 'Kernel datapath: audit events lost because the ring buffer was full', 'eventsLost');
    kernelCounter('wirekey_kernel_connections_uninjected_total', 'Kernel datapath: connections left uninjected because wk_http_socks was full', 'sockhashFull');
    kernelCounter('wirekey_kernel_writes_dropped_total', 'Kernel datapath: writes dropped on refused connections', 'dropped');
    kernelCounter('wirekey_kernel_writes_corked_total', 'Kernel datapath: writes held back until the request head was complete', 'corked');
    kernelCounter('wirekey_kernel_connections_passthrough_total', 'Kernel datapath: connections passed through untouched after an injected WebSocket upgrade', 'passThrough');
    new Counter({
      name: 'wirekey_kernel_requests_refused_total',
      help: 'Kernel datapath: requests and connects refused, by reason (the kernel\'s counters)',
      labelNames: ['reason'] as const,
      registers,
      collect() {
        this.reset();
        const stats = self.#kernelStats();
        if (stats) for (const [stat, reason] of KERNEL_REFUSALS) this.inc({ reason }, Number(stats[stat]));
      },
    });
    new Counter({
      name: 'wirekey_kernel_tasks_unrecorded_total',
      help: 'Processes the kernel could not record because wk_task_exe was full',
      registers,
      collect() {
        this.reset();
        const stats = sources.datapath()?.stats();
        if (stats) this.inc(Number(stats.tasksFull));
      },
    });
    new Counter({
      name: 'wirekey_kernel_redirects_refused_total',
      help: 'connect() calls to bound destinations refused by the redirect program, by reason',
      labelNames: ['reason'] as const,
      registers,
      collect() {
        this.reset();
        const stats = sources.datapath()?.stats();
        if (stats) this.inc({ reason: 'no-socket-storage' }, Number(stats.storageFailures));
      },
    });
    new Counter({
      name: 'wirekey_kernel_proxy_port_binds_refused_total',
      help: 'bind() calls to the proxy port refused by the kernel because the caller was not uid 0',
      registers,
      collect() {
        this.reset();
        const stats = sources.datapath()?.stats();
        if (stats) this.inc(Number(stats.proxyPortBinds));
      },
    });
    new Gauge({
      name: 'wirekey_kernel_map_entries',
      help: 'Entries in each BPF map that can fill up (read at most every few seconds)',
      labelNames: ['map'] as const,
      registers,
      collect() {
        this.reset();
        for (const m of self.#maps()) this.set({ map: m.name }, m.entries);
      },
    });
    new Gauge({
      name: 'wirekey_kernel_map_capacity',
      help: 'Capacity (max_entries) of each BPF map that can fill up',
      labelNames: ['map'] as const,
      registers,
      collect() {
        this.reset();
        for (const m of self.#maps()) this.set({ map: m.name }, m.capacity);
      },
    });
    new Gauge({
      name: 'wirekey_kernel_datapath_loaded',
      help: 'Whether the kernel (plaintext, sk_msg) datapath is loaded (1) or not (0: plaintext services cannot be bound)',
      registers,
      collect() {
        this.set(sources.kernelHttp() ? 1 : 0);
      },
    });
    new Gauge({
      name: 'wirekey_kernel_connections_open',
      help: 'Kernel datapath: connections in the sockhash (wk_http_socks entries)',
      registers,
      collect() {
        this.set(self.#maps().find((m) => m.name === 'wk_http_socks')?.entries ?? 0);
      },
    });

    // Credentials: what each source holds now.
    const perCredential = (name: string, help: string, value: (s: CredentialState, now: number) => number | undefined) =>
      new Gauge({
        name, help, labelNames: ['credential'] as const, registers,
        collect() {
          this.reset();
          const now = Date.now();
          for (const c of sources.credentials()) {
            const state = c.state?.();
            const v = state ? value(state, now) : undefined;
            if (v !== undefined) this.set({ credential: c.name }, v);
          }
        },
      });
    perCredential('wirekey_credential_available', 'Whether a value of the credential is held now (1) or requests needing it are refused (0)',
      (s) => (s.available ? 1 : 0));
    perCredential('wirekey_credential_degraded', 'Whether the credential\'s source is failing (serving from cache, or not at all)',
      (s) => (s.degraded ? 1 : 0));
    perCredential('wirekey_credential_age_seconds', 'Age of the value served: since its KV version was created, its file modified, or its lease issued',
      (s, now) => (s.createdAt !== undefined ? Math.max(0, (now - s.createdAt) / 1000) : undefined));
    perCredential('wirekey_credential_version', 'Version of the value served (KV v2 version)', (s) => s.version);
    perCredential('wirekey_credential_ttl_seconds', 'Time left before the value served expires (leased credentials)',
      (s, now) => (s.expiresAt !== undefined ? Math.max(0, (s.expiresAt - now) / 1000) : undefined));

    // Vault connections.
    new Gauge({
      name: 'wirekey_vault_token_ttl_seconds',
      help: 'Time left on each Vault connection\'s token (absent for tokens without a TTL)',
      labelNames: ['connection'] as const,
      registers,
      collect() {
        this.reset();
        const now = Date.now();
        for (const c of sources.vaultConnections()) {
          const at = c.status().tokenExpiresAt;
          if (at !== undefined) this.set({ connection: c.name }, Math.max(0, (at - now) / 1000));
        }
      },
    });
    new Gauge({
      name: 'wirekey_vault_connection_degraded',
      help: 'Whether a Vault connection\'s token renewal or login is failing and being retried',
      labelNames: ['connection'] as const,
      registers,
      collect() {
        this.reset();
        for (const c of sources.vaultConnections()) this.set({ connection: c.name }, c.status().degraded ? 1 : 0);
      },
    });
    this.#vaultDuration = new Histogram({
      name: 'wirekey_vault_request_duration_seconds',
      help: 'HTTP calls to Vault, by connection and operation, failed ones included',
      labelNames: ['connection', 'operation'] as const,
      buckets: VAULT_BUCKETS,
      registers,
    });
    this.#vaultErrors = new Counter({
      name: 'wirekey_vault_request_errors_total',
      help: 'HTTP calls to Vault that failed, by connection, operation and status (an HTTP status, or unreachable)',
      labelNames: ['connection', 'operation', 'status'] as const,
      registers,
    });

    // Policy and lifecycle.
    this.#reloads = new Counter({
      name: 'wirekey_policy_reloads_total',
      help: 'Policy reloads, by result: applied; refused (the running policy stays in force); failed (once the switch to the new policy had begun: ' +
        'it is in force but a later step failed, or the previous one is only partly in force)',
      labelNames: ['result'] as const,
      registers,
    });
    for (const result of RELOAD_RESULTS) this.#reloads.inc({ result }, 0);
    this.#lastReload = new Gauge({
      name: 'wirekey_policy_last_reload_successful',
      help: 'Whether the last reload was applied (1), or refused or failed (0); 1 before any reload',
      registers,
    });
    this.#lastReload.set(1);
    this.#policy = new Gauge({
      name: 'wirekey_policy_info',
      help: 'The policy in force: its hash (as in the log\'s policy lines) as a label, value 1',
      labelNames: ['hash'] as const,
      registers,
    });
    this.#policyAppliedAt = new Gauge({
      name: 'wirekey_policy_last_applied_timestamp_seconds',
      help: 'When the policy in force was applied (at start, or by the last reload that put it in force, failed steps after the switch included), in seconds since the epoch; 0 before one is',
      registers,
    });
    new Gauge({
      name: 'wirekey_audit_log_writable',
      help: 'Whether audit lines can be written (1), or not (0: the last write failed, stdout is backed up, or the audit log is not open yet); the proxy refuses what it cannot audit',
      registers,
      collect() {
        this.set(sources.auditWritable?.() ? 1 : 0);
      },
    });
    if (options.build) {
      new Gauge({
        name: 'wirekey_build_info',
        help: 'What runs: the wirekey version, the Node.js version and the libbpf the addon was built against, as labels; value 1',
        labelNames: ['version', 'node', 'libbpf'] as const,
        registers,
      }).set(options.build, 1);
    }
    new Gauge({
      name: 'wirekey_ready',
      help: 'Whether the agent is ready (programs attached, policy applied, credentials checked), as /readyz answers',
      registers,
      collect() {
        this.set(sources.ready() ? 1 : 0);
      },
    });
    if (options.processMetrics !== false) collectDefaultMetrics({ register: this.registry, prefix: 'wirekey_' });
  }

  /** The exposition text and its content type. */
  async render(): Promise<{ contentType: string; body: string }> {
    this.#kernelStatsRead = undefined;
    await this.#sources.settle?.();
    return { contentType: this.registry.contentType, body: await this.registry.metrics() };
  }

  // ---- the proxy (ProxyObserver) --------------------------------------------

  injected(workload: string, service: string): void {
    this.#route('proxy', workload, service).pending++;
  }

  refused(workload: string, service: string, code: RefusalCode): void {
    this.#refusal(this.#route('proxy', workload, service), 'proxy', workload, service, code).inc();
  }

  upstreamLatency(workload: string, service: string, seconds: number): void {
    const c = this.#route('proxy', workload, service);
    c.latency ??= this.#latency.series({ workload, service });
    c.latency.observe(seconds);
  }

  connectionRefused(workload: string, code: RefusalCode): void {
    let byCode = this.#connectionChildren.get(workload);
    if (!byCode) this.#connectionChildren.set(workload, (byCode = new Map()));
    let child = byCode.get(code);
    if (!child) byCode.set(code, (child = this.#connectionsRefused.labels(workload, code)));
    child.inc();
  }

  unidentified(): void {
    this.#unidentified.inc();
  }

  h1HandedOff(workload: string): void {
    this.#h1HandedOff.labels(workload).inc();
  }

  reflected(workload: string, service: string, occurrences: number): void {
    this.#reflections.labels(workload, service).inc(occurrences);
  }

  egress(workload: string, rule: string | undefined, decision: EgressDecision): void {
    this.egressDecision('proxy', workload, rule, decision);
  }

  /** One egress decision of `datapath` (rule: the allowing rule's label; undefined for a refusal). */
  egressDecision(datapath: 'proxy' | 'kernel', workload: string, rule: string | undefined, decision: EgressDecision): void {
    const r = rule ?? 'none';
    const key = `${datapath}\0${workload}\0${r}\0${decision}`;
    let child = this.#egressChildren.get(key);
    if (!child) this.#egressChildren.set(key, (child = this.#egress.labels(datapath, workload, r, decision)));
    child.inc();
  }

  // ---- the kernel datapath ----------------------------------------------------

  /**
   * One kernel event, as KernelBindings.auditEvent() names it: a refusal
   * is counted; an injection is not (an event stands for a connection, or
   * a request, by the audit grain: kernelInjected() counts requests).
   */
  kernelEvent(e: Pick<AuditEvent, 'decision' | 'workload' | 'service' | 'reason'>): void {
    if (e.decision === 'inject') return;
    const workload = e.workload ?? '';
    const service = e.service ?? '';
    this.#refusal(this.#route('kernel', workload, service), 'kernel', workload, service, e.reason ?? '').inc();
  }

  /** Requests the kernel injected for `workload` and `service`, from its usage counters (KernelUsage). */
  kernelInjected(workload: string, service: string, requests: number): void {
    this.#route('kernel', workload, service).injected.inc(requests);
  }

  // ---- Vault, policy ------------------------------------------------------------

  vaultRequest(r: { connection: string; operation: VaultOperation; seconds: number; error?: string }): void {
    this.#vaultDuration.observe({ connection: r.connection, operation: r.operation }, r.seconds);
    if (r.error) this.#vaultErrors.inc({ connection: r.connection, operation: r.operation, status: r.error });
  }

  /** The policy in force is now the one with `hash` (at start, and after an applied reload). */
  policyApplied(hash: string): void {
    this.#policy.reset();
    this.#policy.set({ hash }, 1);
    this.#policyAppliedAt.set(this.#now() / 1000);
  }

  /** A reload ended with `result` (see ReloadMetricResult). */
  reloaded(result: ReloadMetricResult): void {
    this.#reloads.inc({ result });
    this.#lastReload.set(result === 'applied' ? 1 : 0);
  }

  // ---- internals -------------------------------------------------------------------

  #route(datapath: string, workload: string, service: string): Children {
    let byWorkload = this.#children.get(datapath);
    if (!byWorkload) this.#children.set(datapath, (byWorkload = new Map()));
    let byService = byWorkload.get(workload);
    if (!byService) byWorkload.set(workload, (byService = new Map()));
    let c = byService.get(service);
    if (!c) {
      c = { injected: this.#injected.labels(datapath, workload, service), pending: 0, refused: new Map(), latency: undefined };
      byService.set(service, c);
    }
    return c;
  }

  /** Adds the proxy's injected requests counted since the last scrape to the counter. */
  #addPending(): void {
    for (const byWorkload of this.#children.values()) {
      for (const byService of byWorkload.values()) {
        for (const c of byService.values()) {
          if (!c.pending) continue;
          c.injected.inc(c.pending);
          c.pending = 0;
        }
      }
    }
  }

  #refusal(c: Children, datapath: string, workload: string, service: string, reason: string): Counter.Internal {
    let child = c.refused.get(reason);
    if (!child) c.refused.set(reason, (child = this.#refused.labels(datapath, workload, service, reason)));
    return child;
  }

  /** The kernel's counters, read once per scrape (several metrics use them). */
  #kernelStats(): Record<HttpStatName, bigint> | undefined {
    if (this.#kernelStatsRead) return this.#kernelStatsRead.stats;
    let stats: Record<HttpStatName, bigint> | undefined;
    try {
      stats = this.#sources.kernelHttp()?.stats();
    } catch {
      // Closing meanwhile: nothing to report.
    }
    this.#kernelStatsRead = { stats };
    return stats;
  }

  /** Map fill, read at most once per interval: it walks every key of every map. */
  #maps(): MapUsage[] {
    const now = Date.now();
    if (this.#mapUsage && now - this.#mapUsage.at < this.#mapUsageIntervalMs) return this.#mapUsage.maps;
    let maps: MapUsage[] = [];
    try {
      const datapath = this.#sources.datapath();
      maps = [...(datapath?.mapUsage() ?? []), ...(this.#sources.kernelHttp()?.mapUsage() ?? [])];
    } catch {
      // Closing meanwhile: nothing to report.
    }
    this.#mapUsage = { at: now, maps };
    return maps;
  }
}
