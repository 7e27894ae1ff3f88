/**
 * The kernel half of wirekey: loads the BPF object (redirect, identity,
 * egress policy and, where the kernel takes it, the kernel HTTP datapath),
 * attaches it to the cgroup v2 root, and keeps its maps in step with the plan.
 */
import { mkdirSync, rmSync, existsSync, readdirSync, renameSync } from 'node:fs';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { BpfError, NotSupportedError } from '../errors.js';
import { bpfCall, native, repoRoot, type NativeLink, type NativeMap, type NativeObject } from './native.js';
import {
  WK_ACTION_PROXY,
  WK_STAT_PORT_BIND,
  WK_STAT_STORAGE_FAIL,
  WK_STAT_TASKS_FULL,
  decodeAgentFiles,
  decodeExeKey,
  encodeAny,
  encodeExeKey,
  encodeMask,
  type ExeKey,
  decodeOrigDst,
  encodeBindKey,
  encodeBindVal,
  encodeConnKey,
  encodeU16,
  encodeU32,
  encodeU64,
  verifyContract,
  type OrigDst,
} from './layout.js';
import { KernelHttp } from './kernel-http.js';
import { EgressMaps, type EgressEventHandler, type EgressEvents, type EgressEventsOptions, type EgressStats, type EgressWorkload, type InstalledEgress } from './egress.js';
import { WK_EGRESS_MAX_PREFIXES } from './layout.js';
import { describeMissing, notSupported, probeFeatures, type FeatureSet, type MissingFeature, type Prober } from './features.js';
import { LINKS_DIR, PREVIOUS_LINKS_DIR } from './pinned-links.js';
import { drainingDir, retireSockhash, sweepDraining, type DrainingSockhash, type RetireResult } from './draining.js';
import { processStartTicks } from '../identity/process-start.js';

export type { OrigDst, ExeKey } from './layout.js';
export {
  EgressTooLargeError,
  planEgress,
  type EgressEvent,
  type EgressEventHandler,
  type EgressEvents,
  type EgressEventsOptions,
  type EgressStats,
  type EgressWorkload,
  type InstalledEgress,
} from './egress.js';
export { drainingDir, type DrainingSockhash, type RetireResult } from './draining.js';

export interface DatapathOptions {
  /** cgroup v2 mount point; programs attach here and so see every process. */
  cgroupRoot: string;
  /** bpffs directory for this agent's pins; removed on close. */
  pinDir: string;
  /** Port the proxy listens on, on 127.0.0.1 and ::1. */
  proxyPort: number;
  /** Load the kernel HTTP datapath when the kernel takes it (default true). */
  kernelHttp?: boolean;
  /** The compiled object; defaults to build/bpf/wirekey.bpf.o. */
  objectPath?: string;
  /** How long the kernel HTTP datapath injects without a heartbeat from this process (KernelHttp.attach). */
  kernelAliveTimeoutMs?: number;
  /** Answers the feature probes instead of the kernel (tests: a kernel without bpf_loop, or without trampolines). */
  prober?: Prober;
}

/**
 * The kernel's view of the workloads' selectors: for each cgroup id,
 * executable and uid, the workloads that name it; and, per kind, the
 * workloads that place no constraint of that kind.
 */
export interface IdentityTables {
  cgroups: Map<bigint, number[]>;
  exes: { key: ExeKey; workloads: number[] }[];
  uids: Map<number, number[]>;
  any: { cgroup: number[]; exe: number[]; uid: number[] };
}

export interface DatapathStats {
  /** Processes the kernel could not record because wk_task_exe was full. */
  tasksFull: bigint;
  /** Redirects refused because socket storage could not be allocated. */
  storageFailures: bigint;
  /** bind()s to the proxy port refused: a uid other than 0 tried to take it. */
  proxyPortBinds: bigint;
}

export interface PortBinding {
  workloadId: number;
  port: number;
}

/* Identity programs first: processes are tracked from here on, and
 * backfill() covers the ones that started before. */
const IDENTITY_PROGRAMS = ['wk_exit', 'wk_fork', 'wk_exec'] as const;
/* Attach order matters: bookkeeping first, so that by the time connect()
 * redirects anything, sockops and getpeername are already in place (and
 * the proxy port is kept for the agent, whose proxy already listens). */
const CGROUP_PROGRAMS = [
  'wk_bind4', 'wk_bind6', 'wk_sockops', 'wk_getpeername4', 'wk_getpeername6', 'wk_connect4', 'wk_connect6', 'wk_sendmsg4', 'wk_sendmsg6', 'wk_sock_create',
  'wk_setsockopt', 'wk_egress_skb',
] as const;
export const MAPS = [
  'wk_cgroup_mask',
  'wk_exe_mask',
  'wk_uid_mask',
  'wk_any',
  'wk_task_exe',
  'wk_bind_port',
  'wk_ports',
  'wk_conn',
  'wk_stats',
  'wk_egress_policy',
  'wk_egress_rules',
  'wk_egress_stats',
] as const;
/**
 * Kernel HTTP maps pinned for `wirekey status`, and so that the next agent
 * can keep this one's open connections refused (draining.ts). Never
 * wk_http_hdr: it holds the header lines.
 */
export const KERNEL_HTTP_PINNED = ['wk_http_dest', 'wk_http_socks', 'wk_http_stats', 'wk_http_config'] as const;
export type MapName = (typeof MAPS)[number] | (typeof KERNEL_HTTP_PINNED)[number];


export class Datapath {
  readonly #object: NativeObject;
  readonly #links: NativeLink[] = [];
  readonly #maps: Map<string, NativeMap> = new Map();
  readonly #pinDir: string;
  #kernelHttp: KernelHttp | null = null;
  #kernelHttpUnavailable: string | null = null;
  #kernelHttpError: BpfError | null = null;
  #kernelAliveTimeoutMs: number | undefined;
  #previous: RetireResult | null = null;
  /** Links a previous agent left pinned, held until attachRedirect() has attached this one's. */
  #previousLinks = 0;
  #releasedLinks = 0;
  /** The pin directory is this instance's (a previous instance's pins were retired). */
  #pinned = false;
  #pushWatchUnavailable: string | null = null;
  #egress: EgressMaps | null = null;
  #closed = false;

  private constructor(object: NativeObject, pinDir: string) {
    this.#object = object;
    this.#pinDir = pinDir;
  }

  /**
   * Opens, loads and attaches the programs. What the kernel can do is
   * probed first (features.ts), and only a negative probe is "not
   * supported": the identity and redirect programs' missing feature fails
   * the open; the kernel HTTP datapath's leaves it out (kernelHttpUnavailable
   * names the feature and the minimum kernel), and a kernel without BPF
   * trampolines runs it without the failed-push watch (pushWatchUnavailable).
   *
   * Any other load failure is a bug, never a feature to do without: it is a
   * BpfError with libbpf's message and the verifier log. For the kernel HTTP
   * programs on a kernel whose probes all passed, the agent still starts
   * with the proxy datapath alone (so TLS services keep their
   * credentials), and the error is kept in kernelHttpError for the caller
   * to report loudly; plaintext services are then refused with it.
   * @throws BpfError (with the verifier log when a program is refused),
   *   NotSupportedError when a probe finds the kernel lacks a feature the
   *   identity or redirect programs need.
   */
  static open(opts: DatapathOptions): Datapath {
    const addon = native();
    const objectPath = opts.objectPath ?? path.join(repoRoot, 'build/bpf/wirekey.bpf.o');
    if (!existsSync(objectPath)) throw new BpfError(`BPF object ${objectPath} is missing; run scripts/setup`);
    let netns: bigint;
    try {
      netns = addon.netnsCookie();
    } catch (cause) {
      throw new NotSupportedError('SO_NETNS_COOKIE', `cannot read the host network namespace cookie (${String(cause)})`, '5.14');
    }

    const startTicks = processStartTicks();
    const load = (withKernelHttp: boolean, pushWatch = true): NativeObject => {
      const object = bpfCall(() => new addon.BpfObject(objectPath));
      try {
        verifyContract(object);
        if (withKernelHttp) KernelHttp.enable(object, { pushWatch });
        bpfCall(() => {
          object.setGlobal('agent_tgid', encodeU32(process.pid));
          object.setGlobal('agent_start_ticks', encodeU64(startTicks));
          object.setGlobal('host_netns_cookie', encodeU64(netns));
          object.setGlobal('proxy_port', encodeU16(opts.proxyPort));
          object.load();
        });
      } catch (err) {
        object.close();
        throw err;
      }
      return object;
    };
    const probe = (set: FeatureSet): MissingFeature | null => probeFeatures(set, opts.prober);
    for (const set of ['identity', 'redirect'] as const) {
      const missing = probe(set);
      if (missing) throw notSupported(missing);
    }
    // The kernel HTTP programs need more of the kernel than the rest (5.17):
    // a kernel the probes find short of it still gets the proxy datapath, and
    // policies with plaintext services are refused with this reason.
    let object: NativeObject;
    let kernelHttpUnavailable: string | null = null;
    let kernelHttpError: BpfError | null = null;
    let pushWatchUnavailable: string | null = null;
    const missingHttp = opts.kernelHttp === false ? null : probe('kernelHttp');
    if (opts.kernelHttp === false) {
      kernelHttpUnavailable = 'turned off (--no-kernel-datapath)';
      object = load(false);
    } else if (missingHttp) {
      kernelHttpUnavailable = describeMissing(missingHttp);
      object = load(false);
    } else {
      // Without BPF trampolines (fexit) the failed-push watch cannot load:
      // the rest of the datapath can, degraded (KernelHttp.pushWatch).
      const missingWatch = probe('pushWatch');
      if (missingWatch) pushWatchUnavailable = describeMissing(missingWatch);
      try {
        object = load(true, !missingWatch);
      } catch (err) {
        if (!(err instanceof BpfError)) throw err;
        // Refused on a kernel that has everything the programs use: a bug
        // in them (or in a probe), reported with the verifier log, never
        // passed off as an old kernel.
        kernelHttpError = err;
        kernelHttpUnavailable = `the kernel refused its programs although it has every feature they use (a wirekey bug; the verifier log is in the agent's log): ${err.message.split('\n')[0] ?? ''}`;
        pushWatchUnavailable = null;
        object = load(false);
      }
    }
    const dp = new Datapath(object, opts.pinDir);
    dp.#kernelHttpUnavailable = kernelHttpUnavailable;
    dp.#kernelHttpError = kernelHttpError;
    dp.#kernelAliveTimeoutMs = opts.kernelAliveTimeoutMs;
    dp.#pushWatchUnavailable = pushWatchUnavailable;
    try {
      for (const name of MAPS) dp.#maps.set(name, bpfCall(() => object.map(name)));
      if (!kernelHttpUnavailable) for (const name of KERNEL_HTTP_PINNED) dp.#maps.set(name, bpfCall(() => object.map(name)));
      dp.#egress = new EgressMaps(object, {
        policy: dp.#map('wk_egress_policy'),
        rules: dp.#map('wk_egress_rules'),
        stats: dp.#map('wk_egress_stats'),
      });
      dp.#pin();
      for (const prog of IDENTITY_PROGRAMS) dp.#pinLink(prog, bpfCall(() => object.attach(prog)));
    } catch (err) {
      dp.close();
      throw err;
    }
    return dp;
  }

  /**
   * Attaches the connect() programs: from here on, bound workloads'
   * connections are redirected. Call after backfill() and the first
   * setIdentity(), so no process is judged on partial state.
   * @throws BpfError
   */
  attachRedirect(cgroupRoot: string): void {
    try {
      if (!this.#kernelHttpUnavailable) {
        this.#kernelHttp = KernelHttp.attach(this.#object, cgroupRoot, { aliveTimeoutMs: this.#kernelAliveTimeoutMs });
      }
      for (const prog of CGROUP_PROGRAMS) {
        this.#pinLink(prog, bpfCall(() => this.#object.attachCgroup(prog, cgroupRoot)));
      }
    } catch (err) {
      this.close();
      throw err;
    }
    // Every program of this agent is attached: a previous agent's go.
    if (this.#previousLinks) {
      rmSync(path.join(this.#pinDir, PREVIOUS_LINKS_DIR), { recursive: true, force: true });
      this.#releasedLinks = this.#previousLinks;
      this.#previousLinks = 0;
    }
  }

  /**
   * How many programs a previous agent had left attached (its links pinned:
   * it died without stopping) that this one held until its own were
   * attached, then released; 0 when there were none.
   */
  get previousLinksReleased(): number {
    return this.#releasedLinks;
  }

  #pinLink(program: string, link: NativeLink): void {
    this.#links.push(link);
    bpfCall(() => link.pin(path.join(this.#pinDir, LINKS_DIR, program)));
  }

  /** The kernel HTTP datapath, once attachRedirect() has run; null when this kernel refused its programs. */
  get kernelHttp(): KernelHttp | null {
    return this.#kernelHttp;
  }

  /**
   * Why the kernel HTTP datapath is not loaded, or null: turned off, the
   * feature a probe found missing (with the minimum kernel), or a refusal
   * on a kernel that has every feature (then kernelHttpError holds it).
   */
  get kernelHttpUnavailable(): string | null {
    return this.#kernelHttpUnavailable;
  }

  /**
   * The load failure of the kernel HTTP programs on a kernel whose probes
   * all passed (a bug: with libbpf's message and the verifier log), or null.
   */
  get kernelHttpError(): BpfError | null {
    return this.#kernelHttpError;
  }

  /**
   * Why the kernel HTTP datapath runs without its failed-push watch (the
   * trampoline probe failed: no fexit here), or null when it has it or is not loaded.
   */
  get pushWatchUnavailable(): string | null {
    return this.#pushWatchUnavailable;
  }

  /** Kernel ids of the loaded programs, for status and for tests that check detachment. */
  programIds(): number[] {
    return this.#object.programs().map((p) => p.id ?? 0).filter((id) => id > 0);
  }

  get pinDir(): string {
    return this.#pinDir;
  }

  /**
   * What open() found of a previous agent's kernel-path connections in the
   * pin directory (expired, wiped, and moved to drain when some remain), or
   * null when there was nothing.
   */
  get previous(): RetireResult | null {
    return this.#previous;
  }

  /**
   * Removes the draining sockhashes (of previous agents, and of this one's
   * earlier runs) that have no connection left; returns those removed.
   * @throws BpfError, or a file system error
   */
  sweepDraining(): DrainingSockhash[] {
    return sweepDraining(this.#pinDir);
  }

  /** Makes the identity maps hold exactly `tables`; `wk_any` last, so a workload's entries exist before it can match. */
  setIdentity(tables: IdentityTables): void {
    this.#replace(this.#map('wk_cgroup_mask'), new Map([...tables.cgroups].map(([id, ws]) => [encodeU64(id).toString('hex'), encodeMask(ws)])));
    this.#replace(this.#map('wk_exe_mask'), new Map(tables.exes.map((e) => [encodeExeKey(e.key).toString('hex'), encodeMask(e.workloads)])));
    this.#replace(this.#map('wk_uid_mask'), new Map([...tables.uids].map(([uid, ws]) => [encodeU32(uid).toString('hex'), encodeMask(ws)])));
    this.#replace(this.#map('wk_any'), new Map([[encodeU32(0).toString('hex'), encodeAny(tables.any)]]));
  }

  /**
   * Records the processes that predate the programs, as the kernel sees
   * their executables (wk_backfill reads each one's mm->exe_file). Never
   * overwrites what the exec/fork programs already wrote, which is newer.
   * Returns how many were added.
   * @throws BpfError
   */
  backfill(): number {
    if (this.#closed) throw new BpfError('datapath is closed');
    const added = bpfCall(() => this.#object.iterate('wk_backfill', 0));
    return new Set(Array.from({ length: added.length / 4 }, (_, i) => added.readUInt32LE(i * 4))).size;
  }

  /**
   * The kernel's key of every regular file this process holds open, by
   * descriptor (wk_agent_files): how executable selectors are resolved, so
   * that they name a file exactly as wk_exec does.
   * @throws BpfError
   */
  openFileKeys(): Map<number, ExeKey> {
    if (this.#closed) throw new BpfError('datapath is closed');
    return decodeAgentFiles(bpfCall(() => this.#object.iterate('wk_agent_files', process.pid)));
  }

  /** The executable the kernel recorded for a process, or null. */
  taskExe(tgid: number): ExeKey | null {
    const v = this.#map('wk_task_exe').lookup(encodeU32(tgid));
    return v ? decodeExeKey(v) : null;
  }

  /** How many processes the kernel currently tracks, and the map's capacity. */
  taskCount(): { entries: number; capacity: number } {
    const map = this.#map('wk_task_exe');
    return { entries: map.keys().length, capacity: map.info().maxEntries };
  }

  /**
   * Entries and capacity of the maps that can fill up (the ones `wirekey
   * status` lists). Walks every key: call it on a scrape, not per request.
   */
  mapUsage(): { name: string; entries: number; capacity: number }[] {
    const names: MapName[] = ['wk_task_exe', 'wk_cgroup_mask', 'wk_exe_mask', 'wk_uid_mask', 'wk_bind_port', 'wk_conn', 'wk_egress_policy', 'wk_egress_rules'];
    if (this.#maps.has('wk_http_dest')) names.push('wk_http_dest', 'wk_http_socks');
    return names.map((name) => {
      const map = this.#map(name);
      // wk_egress_rules has room for two sets per workload (a reload's new
      // one beside the old); a policy may use half of it.
      const capacity = name === 'wk_egress_rules' ? WK_EGRESS_MAX_PREFIXES : map.info().maxEntries;
      return { name, entries: map.keys().length, capacity };
    });
  }

  /**
   * Makes the kernel enforce exactly these workloads' egress policies, at
   * connect() and unconnected sendmsg(), and at socket() for kinds of
   * socket no rule can name (bpf/egress.bpf.c); a workload without
   * `egress`, or not listed, is unrestricted. Whole or nothing: a
   * policy that does not fit is refused before any map changes. Each
   * workload switches from its old rules to its new ones in one map update.
   * @throws EgressTooLargeError (code WK_EGRESS_TOO_LARGE) when a prefix
   *   needs more than WK_EGRESS_MAX_RANGES port ranges or the policy more
   *   than WK_EGRESS_MAX_PREFIXES prefix entries; RangeError for an id
   *   outside 1..WK_MAX_WORKLOADS or a prefix that does not parse; both
   *   before changing anything. BpfError when the kernel refuses an update.
   */
  setEgress(workloads: EgressWorkload[]): void {
    this.#egressMaps().set(workloads);
  }

  /**
   * Delivers every refused call of a restricted workload (and every call
   * audit mode lets through) to `handler`, read from the wk_egress_events
   * ring buffer on the event loop. One reader at a time; close() it.
   * @throws WirekeyError WK_EGRESS_EVENTS_OPEN when a reader is open; BpfError.
   */
  egressEvents(handler: EgressEventHandler, options?: EgressEventsOptions): EgressEvents {
    return this.#egressMaps().events(handler, options);
  }

  /** Refused and would-refuse calls per workload id, and events lost. */
  egressStats(): EgressStats {
    return this.#egressMaps().stats();
  }

  /** A workload's egress rules as the kernel holds them now (mode, set id, prefix entries); null when unrestricted. */
  egressOf(workloadId: number): InstalledEgress | null {
    return this.#egressMaps().installed(workloadId);
  }

  stats(): DatapathStats {
    const map = this.#map('wk_stats');
    const read = (i: number) => map.lookup(encodeU32(i))?.readBigUInt64LE(0) ?? 0n;
    return { tasksFull: read(WK_STAT_TASKS_FULL), storageFailures: read(WK_STAT_STORAGE_FAIL), proxyPortBinds: read(WK_STAT_PORT_BIND) };
  }

  /** Makes wk_bind_port hold exactly `entries`, and wk_ports their ports (added first, removed last). */
  setPortBindings(entries: PortBinding[]): void {
    const ports = new Map(entries.map((e) => [encodeU16(e.port).toString('hex'), encodeU32(1)]));
    const bindings = new Map(entries.map((e) => [encodeBindKey(e.workloadId, e.port).toString('hex'), encodeBindVal(WK_ACTION_PROXY)]));
    const portMap = this.#map('wk_ports');
    const current = new Set(portMap.keys().map((k) => k.toString('hex')));
    this.#replace(portMap, new Map([...ports, ...[...current].map((k) => [k, encodeU32(1)] as [string, Buffer])]));
    this.#replace(this.#map('wk_bind_port'), bindings);
    this.#replace(portMap, ports);
  }

  /**
   * What the kernel recorded for the redirected connection whose client end
   * is `address:port` (the accepted socket's peer), removing the entry so it
   * can be used once only. Null when the kernel did not redirect it.
   */
  /**
   * Drops every record of a redirected connection not yet taken; returns
   * how many. Their connections are then refused by the proxy.
   */
  dropConnections(): number {
    const map = this.#map('wk_conn');
    let n = 0;
    for (const key of map.keys()) {
      map.delete(key);
      n++;
    }
    return n;
  }

  takeConnection(address: string, port: number): OrigDst | null {
    const map = this.#map('wk_conn');
    const key = encodeConnKey(address, port);
    const value = map.lookup(key);
    if (!value) return null;
    map.delete(key);
    return decodeOrigDst(value);
  }

  /**
   * Stops kernel injection (every open kernel-path connection is refused
   * from its next request on, and the header lines are wiped), detaches
   * every program, removes every pin and closes the object. A sockhash with
   * connections left in it keeps its pin, moved under drainingDir(pinDir),
   * so that they stay refused instead of going on bare; returns it then.
   * Idempotent.
   * @throws BpfError when the heartbeat or the lines could not be cleared,
   *   after doing the rest.
   */
  close(): DrainingSockhash | null {
    if (this.#closed) return null;
    this.#closed = true;
    let failure: unknown;
    let draining: DrainingSockhash | null = null;
    try {
      this.#kernelHttp?.close();
    } catch (err) {
      failure = err;
    }
    this.#kernelHttp = null;
    this.#egress?.close();
    for (const link of this.#links.splice(0).reverse()) {
      // A pinned link stays attached when its fd closes: unpin first.
      try {
        link.unpin();
      } catch (err) {
        failure ??= err;
      }
      link.destroy();
    }
    // A sockhash that could not be moved keeps its pins where they are, for
    // the next agent to retire: removing them would send its connections on bare.
    let keep = false;
    if (this.#pinned && this.#maps.has('wk_http_socks')) {
      try {
        draining = retireSockhash(this.#pinDir, this.#pinDir)?.draining ?? null;
      } catch (err) {
        failure ??= err;
        keep = true;
      }
    }
    for (const [name, map] of this.#maps) {
      if (keep && (name === 'wk_http_socks' || name === 'wk_http_config')) continue;
      try {
        map.unpin();
      } catch {
        /* the directory is removed below in any case */
      }
    }
    // Never a directory this instance did not make its own (a previous
    // instance's pins that could not be retired stay for the next try), and
    // never a previous agent's links this one did not replace (a start that
    // failed leaves them enforcing).
    if (this.#pinned && !keep && existsSync(this.#pinDir)) {
      for (const entry of readdirSync(this.#pinDir)) {
        if (entry !== PREVIOUS_LINKS_DIR) rmSync(path.join(this.#pinDir, entry), { recursive: true, force: true });
      }
      if (!readdirSync(this.#pinDir).length) rmSync(this.#pinDir, { recursive: true, force: true });
    }
    this.#object.close();
    if (failure) throw failure;
    return draining;
  }

  #egressMaps(): EgressMaps {
    if (this.#closed || !this.#egress) throw new BpfError('datapath is closed');
    return this.#egress;
  }

  #map(name: MapName): NativeMap {
    if (this.#closed) throw new BpfError('datapath is closed');
    return this.#maps.get(name) as NativeMap;
  }

  /** @throws BpfError, before changing anything, when `want` does not fit the map. */
  #replace(map: NativeMap, want: Map<string, Buffer>): void {
    const { name, maxEntries } = map.info();
    if (want.size > maxEntries) {
      throw new BpfError(`${name} holds at most ${maxEntries} entries; the policy needs ${want.size}`);
    }
    bpfCall(() => {
      for (const [key, value] of want) map.update(Buffer.from(key, 'hex'), value);
      for (const key of map.keys()) if (!want.has(key.toString('hex'))) map.delete(key);
    });
  }

  #pin(): void {
    ensureBpffs(BPFFS);
    if (existsSync(this.#pinDir)) {
      // Left by an agent that did not exit cleanly. Its cgroup programs died
      // with it, but its sockhash pin keeps its sk_msg program running on
      // the connections it saw open: those are refused from now on and kept
      // draining, never freed (freeing would send them on bare).
      try {
        this.#previous = retireSockhash(this.#pinDir, this.#pinDir);
      } catch (cause) {
        // Removing the pins anyway would send those connections on bare.
        throw new BpfError(`cannot retire the kernel-path connections a previous agent left in ${this.#pinDir}: ${(cause as Error).message}`, { cause });
      }
      // Its links stay attached (held in PREVIOUS_LINKS_DIR) until this
      // agent's are; everything else of it goes.
      this.#previousLinks = holdPreviousLinks(this.#pinDir);
      for (const entry of readdirSync(this.#pinDir)) {
        if (entry !== PREVIOUS_LINKS_DIR) rmSync(path.join(this.#pinDir, entry), { recursive: true, force: true });
      }
    }
    mkdirSync(path.join(this.#pinDir, LINKS_DIR), { recursive: true, mode: 0o700 });
    this.#pinned = true;
    for (const [name, map] of this.#maps) bpfCall(() => map.pin(path.join(this.#pinDir, name)));
  }
}

const BPFFS = '/sys/fs/bpf';

/**
 * Moves the links pinned under `<pinDir>/links` into
 * `<pinDir>/links-previous` (with those an earlier start left there), still
 * pinned, so they stay attached; returns how many are held.
 */
function holdPreviousLinks(pinDir: string): number {
  const from = path.join(pinDir, LINKS_DIR);
  const held = path.join(pinDir, PREVIOUS_LINKS_DIR);
  if (existsSync(from)) {
    mkdirSync(held, { recursive: true, mode: 0o700 });
    for (const name of readdirSync(from)) {
      let target = path.join(held, name);
      for (let n = 1; existsSync(target); n++) target = path.join(held, `${name}-${n}`);
      renameSync(path.join(from, name), target);
    }
  }
  return existsSync(held) ? readdirSync(held).length : 0;
}

/** Mounts bpffs at `dir` when nothing is mounted there yet. */
function ensureBpffs(dir: string): void {
  mkdirSync(dir, { recursive: true });
  try {
    execFileSync('mountpoint', ['-q', dir]);
  } catch {
    try {
      execFileSync('mount', ['-t', 'bpf', 'bpf', dir]);
    } catch (cause) {
      throw new NotSupportedError('bpffs', `cannot mount bpffs at ${dir}: ${String(cause)}`);
    }
  }
}

/** True when `pinDir` holds nothing (used by tests and status). */
export function pinDirIsEmpty(pinDir: string): boolean {
  return !existsSync(pinDir) || readdirSync(pinDir).length === 0;
}
