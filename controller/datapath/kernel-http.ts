/**
 * The kernel HTTP datapath (bpf/http-inject.bpf.c): plaintext HTTP/1.1 to
 * policy-pinned addresses gets its credential header from an sk_msg
 * program, on the workload's own connection, with no user-space hop.
 *
 * Given a loaded BPF object, KernelHttp attaches the programs to a cgroup
 * and keeps four maps in step with the plan: pinned destinations
 * (address, port -> service), the hosts of services that list them, the
 * header line per (workload, service), and an id epoch. Workload ids are the ones Datapath.setIdentity() gives the
 * kernel; service ids are the caller's own (any non-zero u32).
 *
 * What the kernel refuses, and how (the write fails with EACCES and the
 * connection takes no more writes), is documented at the top of
 * bpf/http-inject.bpf.c and counted in stats(); events() delivers each
 * refusal, and each injection once per connection and header version (or
 * per request: setAuditGrain), as an audit event (kernel-events.ts);
 * usage() counts every injected request per binding and header version.
 *
 * No agent, no injection: from attach() on, a heartbeat on this process's
 * event loop keeps wk_http_config.alive_until `aliveTimeoutMs` ahead of
 * CLOCK_MONOTONIC; once it lapses (the process died, or its event loop is
 * stuck) the kernel refuses every request instead of injecting
 * (refusedAgent). close() sets it to 0 at once and wipes the header lines.
 */
import { BpfError, WirekeyError } from '../errors.js';
import { bpfCall, type NativeLink, type NativeMap, type NativeObject } from './native.js';
import { KernelHttpEvents, type KernelHttpEventHandler, type KernelHttpEventsOptions } from './kernel-events.js';
import {
  BPF_F_LOCK,
  WK_HTTP_CFG_AUDIT_REQUESTS,
  WK_HTTP_CFG_PUSH_WATCH,
  WK_HTTP_DEST_CHECK_HOST,
  WK_HTTP_INJECT,
  WK_HTTP_LINE_MAX,
  WK_HTTP_STATS,
  WK_HTTP_UNBOUND,
  WK_HTTP_WITHHOLD,
  decodeHttpConfig,
  decodeHttpHdrKey,
  decodeHttpHdrMeta,
  decodeHttpUsage,
  encodeHttpConfig,
  encodeHttpDestKey,
  encodeHttpDestVal,
  encodeHttpHdr,
  encodeHttpHdrKey,
  encodeHttpHostKey,
  encodeHttpUsageKey,
  encodeU32,
  type HttpConfig,
  type HttpStatName,
  type HttpUsageRecord,
} from './layout.js';

export type { HttpUsageRecord } from './layout.js';

export { WK_HTTP_HEAD_MAX, WK_HTTP_LINE_MAX } from './layout.js';
export type { KernelHttpEvent, KernelHttpEventHandler, KernelHttpEventsOptions, KernelHttpEvents } from './kernel-events.js';

/** A plaintext destination the policy pins to a service. */
export interface PinnedDestination {
  /** IPv4 or IPv6 address, or a CIDR; IPv4 also matches IPv4-mapped IPv6 connects. */
  address: string;
  port: number;
  serviceId: number;
}

/** The header a binding adds to every request, e.g. {name: 'Authorization', value: 'Bearer ...'}. */
export interface HeaderLine {
  name: string;
  /** The secret part. Never logged, never in an error message. */
  value: string | Buffer;
}

/**
 * The host names a plaintext service answers to. When a service has them,
 * the kernel refuses every request whose Host (or absolute-form target)
 * names another host, or none.
 */
export interface ServiceHosts {
  serviceId: number;
  /** DNS names; compared case-insensitively, a trailing dot ignored, at most WK_HTTP_HOST_MAX characters. */
  hosts: string[];
}

export interface HttpBinding {
  workloadId: number;
  serviceId: number;
  /** null: bound, but no credential now (Vault down past expiry): requests are refused, not sent bare. */
  header: HeaderLine | null;
  /**
   * The workload's selection: moved on when its selectors change, and
   * every connection made under another value has its next request
   * refused (other workloads' are left alone). Default 0.
   */
  selection?: number;
}

/** What the kernel holds for a binding; never the header itself. */
export interface HttpBindingState {
  workloadId: number;
  serviceId: number;
  state: 'inject' | 'withhold' | 'unbound';
  /** Bumped on every change of this binding's header (starts at 1). */
  version: number;
  /** The selection connections must have been made under (HttpBinding.selection). */
  selection: number;
}

export type KernelHttpStats = Record<HttpStatName, bigint>;

export interface KernelHttpAttachOptions {
  /**
   * How long the kernel goes on injecting after the last heartbeat of this
   * process (default DEFAULT_ALIVE_TIMEOUT_MS). The heartbeat runs every
   * second, or every quarter of this when that is shorter.
   */
  aliveTimeoutMs?: number;
}

/** How long the kernel injects without a heartbeat from the agent, by default. */
export const DEFAULT_ALIVE_TIMEOUT_MS = 5000;
/** The shortest timeout accepted: the heartbeat must fit in it a few times over. */
export const MIN_ALIVE_TIMEOUT_MS = 500;
const HEARTBEAT_MS = 1000;

const MAPS = ['wk_http_dest', 'wk_http_host', 'wk_http_hdr', 'wk_http_config', 'wk_http_stats', 'wk_http_socks', 'wk_http_usage'] as const;
type MapName = (typeof MAPS)[number];

/* connect() last: by the time a connection is bound, the programs that
 * follow it (sk_msg on the sockhash, sockops) are in place. */
const MSG_PROGRAM = 'wk_http_msg';
const CGROUP_PROGRAMS = ['wk_http_sockops', 'wk_http_connect4', 'wk_http_connect6'] as const;
/*
 * The failed-push watch (fexit/tcp_bpf_push): attached first, so a failed
 * push is caught from the first connection on. It needs BPF trampolines
 * (fentry/fexit), which some kernels refuse (no ftrace direct calls,
 * lockdown); the rest of the datapath then runs without it (see enable()).
 */
export const PUSH_WATCH_PROGRAM = 'wk_http_push_done';
/*
 * The memory watch (tp_btf/sock_exceed_buf_limit): a send charge refused by
 * socket memory accounting refuses the connection before the push fails.
 * A tracepoint, so it loads wherever the identity programs do; attached
 * with the push watch, before any connection is bound.
 */
const MEMORY_WATCH_PROGRAM = 'wk_http_mem_refused';
/** The kernel HTTP programs; SEC("?...") in the object, so not loaded unless enable()d. */
export const KERNEL_HTTP_PROGRAMS = [MSG_PROGRAM, ...CGROUP_PROGRAMS, MEMORY_WATCH_PROGRAM, PUSH_WATCH_PROGRAM] as const;

/*
 * A removed binding's entry is first turned into a tombstone in place (the
 * program may be copying it under its lock right now) and only deleted
 * once no program run can still hold it: a deleted hash element's memory
 * can be reused at once for another key.
 */
const TOMBSTONE_GRACE_MS = 1000;

const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;

export class KernelHttp {
  readonly #object: NativeObject;
  readonly #maps = new Map<MapName, NativeMap>();
  readonly #links: NativeLink[] = [];
  readonly #versions = new Map<string, number>();
  /** Each binding's selection (HttpBinding.selection), kept by setHeader(), withhold() and unbind(). */
  readonly #selections = new Map<string, number>();
  readonly #tombstones = new Map<string, number>();
  #events: KernelHttpEvents | null = null;
  #msgAttached = false;
  #pushWatch = false;
  #closed = false;
  #aliveTimeoutNs = BigInt(DEFAULT_ALIVE_TIMEOUT_MS) * 1_000_000n;
  #heartbeat: NodeJS.Timeout | null = null;
  #expired = false;

  private constructor(object: NativeObject) {
    this.#object = object;
  }

  /**
   * Has load() load the kernel HTTP programs, which the object leaves out by
   * default (an agent without kernel-path bindings loads exactly what it
   * did before, and a kernel that refuses these programs cannot stop it
   * from starting). Call between open and load. `pushWatch: false` leaves
   * out the failed-push watch, for a kernel that refused it (a degraded
   * datapath: see pushWatch).
   * @throws BpfError when the object is already loaded.
   */
  static enable(object: NativeObject, opts: { pushWatch?: boolean } = {}): void {
    for (const prog of KERNEL_HTTP_PROGRAMS) {
      if (prog === PUSH_WATCH_PROGRAM && opts.pushWatch === false) continue;
      bpfCall(() => object.setAutoload(prog, true));
    }
  }

  /**
   * Attaches the kernel HTTP programs to `cgroupDir` (the cgroup v2 root to
   * cover the host; a test cgroup to cover only its processes). The object
   * must have been enable()d, then loaded with agent_tgid and
   * host_netns_cookie set (Datapath.open sets those). Connections made
   * before this call are never touched. Starts the heartbeat (see above)
   * before anything is attached.
   * @throws RangeError when aliveTimeoutMs is below MIN_ALIVE_TIMEOUT_MS.
   * @throws BpfError when a program was not loaded, a map is missing or the
   *   kernel refuses an attach; nothing stays attached then.
   */
  static attach(object: NativeObject, cgroupDir: string, options: KernelHttpAttachOptions = {}): KernelHttp {
    const timeoutMs = options.aliveTimeoutMs ?? DEFAULT_ALIVE_TIMEOUT_MS;
    if (!Number.isFinite(timeoutMs) || timeoutMs < MIN_ALIVE_TIMEOUT_MS) {
      throw new RangeError(`aliveTimeoutMs ${timeoutMs} is below ${MIN_ALIVE_TIMEOUT_MS} ms`);
    }
    const loaded = new Set(object.programs().filter((p) => p.id).map((p) => p.name));
    const missing = KERNEL_HTTP_PROGRAMS.filter((p) => p !== PUSH_WATCH_PROGRAM && !loaded.has(p));
    if (missing.length) throw new BpfError(`kernel HTTP programs not loaded (${missing.join(', ')}): call KernelHttp.enable() before load()`);
    const kh = new KernelHttp(object);
    try {
      for (const name of MAPS) kh.#maps.set(name, bpfCall(() => object.map(name)));
      kh.#aliveTimeoutNs = BigInt(Math.round(timeoutMs * 1e6));
      kh.#beat();
      kh.#heartbeat = setInterval(() => kh.#beat(), Math.min(HEARTBEAT_MS, timeoutMs / 4)).unref();
      kh.#links.push(bpfCall(() => object.attach(MEMORY_WATCH_PROGRAM)));
      if (loaded.has(PUSH_WATCH_PROGRAM)) {
        kh.#links.push(bpfCall(() => object.attach(PUSH_WATCH_PROGRAM)));
        kh.#pushWatch = true;
        // It refuses urgent data as it is pushed: connections made from here
        // are not watched segment by segment (watch_urgent() in the program).
        kh.#setConfig({ flags: kh.#config().flags | WK_HTTP_CFG_PUSH_WATCH });
      }
      bpfCall(() => object.attachToMap(MSG_PROGRAM, 'wk_http_socks'));
      kh.#msgAttached = true;
      for (const prog of CGROUP_PROGRAMS) kh.#links.push(bpfCall(() => object.attachCgroup(prog, cgroupDir)));
    } catch (err) {
      kh.close();
      throw err;
    }
    return kh;
  }

  /**
   * Makes the pinned destinations exactly `dests`, and the listed hosts
   * exactly `hosts` (a service not in `hosts`, or with none, has its Host
   * left unchecked). Everything is checked before anything changes; then
   * new hosts are added before the destinations that check them, and
   * stale ones removed after, so a request is judged against the old list,
   * the new one or both, never against none. A connection whose
   * destination stops being pinned (or moves to another service) has its
   * next request refused; one whose service's hosts change has its next
   * request judged against the new ones.
   * @throws RangeError (a bad address, port or host name), BpfError
   *   (capacity); both before anything changes.
   */
  setDestinations(dests: PinnedDestination[], hosts: ServiceHosts[] = []): void {
    const wantHosts = new Map<string, Buffer>();
    const checked = new Set<number>();
    for (const h of hosts) {
      checkId('service', h.serviceId);
      for (const host of h.hosts) wantHosts.set(encodeHttpHostKey(h.serviceId, host).toString('hex'), encodeU32(1));
      if (h.hosts.length) checked.add(h.serviceId);
    }
    const want = new Map<string, Buffer>();
    for (const d of dests) {
      checkId('service', d.serviceId);
      if (!Number.isInteger(d.port) || d.port < 1 || d.port > 65535) throw new RangeError(`port ${d.port} is outside 1..65535`);
      const key = encodeHttpDestKey(d.address, d.port).toString('hex');
      const value = encodeHttpDestVal(d.serviceId, checked.has(d.serviceId) ? WK_HTTP_DEST_CHECK_HOST : 0);
      const earlier = want.get(key);
      if (earlier && !earlier.equals(value)) throw new RangeError(`${d.address} port ${d.port} is pinned to two services`);
      want.set(key, value);
    }
    const map = this.#map('wk_http_dest');
    const hostMap = this.#map('wk_http_host');
    for (const [m, n] of [[map, want.size], [hostMap, wantHosts.size]] as const) {
      const { name, maxEntries } = m.info();
      if (n > maxEntries) throw new BpfError(`${name} holds at most ${maxEntries} entries; the policy needs ${n}`);
    }
    bpfCall(() => {
      for (const [key, value] of wantHosts) hostMap.update(Buffer.from(key, 'hex'), value);
      for (const [key, value] of want) map.update(Buffer.from(key, 'hex'), value);
      for (const key of map.keys()) if (!want.has(key.toString('hex'))) map.delete(key);
      for (const key of hostMap.keys()) if (!wantHosts.has(key.toString('hex'))) hostMap.delete(key);
    });
  }

  /**
   * Sets the header line a binding injects. Replaced in place under the
   * value's lock: a request carries the whole old line or the whole new
   * one, and the next request carries the new one.
   * @throws WirekeyError WK_HTTP_HEADER when the name is not a token, the
   *   value holds CR, LF or another control byte, or the line is longer
   *   than WK_HTTP_LINE_MAX (the message never includes the value).
   * Returns the version written (what audit events report as headerVersion).
   * @throws BpfError
   */
  setHeader(workloadId: number, serviceId: number, header: HeaderLine): number {
    const { line, nameLength } = headerLine(header);
    return this.#write(workloadId, serviceId, WK_HTTP_INJECT, line, nameLength);
  }

  /** Keeps the binding but withholds the credential: its requests are refused (EACCES), never sent without it. */
  withhold(workloadId: number, serviceId: number): number {
    return this.#write(workloadId, serviceId, WK_HTTP_WITHHOLD);
  }

  /** Removes a binding: new connections are left alone, existing ones have their next request refused. */
  unbind(workloadId: number, serviceId: number): void {
    const key = encodeHttpHdrKey(workloadId, serviceId).toString('hex');
    if (!this.#map('wk_http_hdr').lookup(Buffer.from(key, 'hex'))) return;
    this.#write(workloadId, serviceId, WK_HTTP_UNBOUND);
    this.#tombstones.set(key, Date.now());
  }

  /**
   * Makes the bindings exactly `bindings` (headers set or withheld);
   * every other binding is removed. Also deletes removed bindings' entries
   * once they are safely unused.
   * Returns the version written for each binding, in order.
   * @throws WirekeyError WK_HTTP_HEADER (before anything changes), BpfError
   */
  setBindings(bindings: HttpBinding[]): number[] {
    const lines = bindings.map((b) => (b.header ? headerLine(b.header) : null));
    const want = new Set(bindings.map((b) => encodeHttpHdrKey(b.workloadId, b.serviceId).toString('hex')));
    const versions = bindings.map((b, i) => {
      const l = lines[i];
      const selection = b.selection ?? 0;
      return l
        ? this.#write(b.workloadId, b.serviceId, WK_HTTP_INJECT, l.line, l.nameLength, selection)
        : this.#write(b.workloadId, b.serviceId, WK_HTTP_WITHHOLD, undefined, 0, selection);
    });
    for (const key of this.#map('wk_http_hdr').keys()) {
      const hex = key.toString('hex');
      if (want.has(hex) || this.#tombstones.has(hex)) continue;
      const { workloadId, serviceId } = decodeHttpHdrKey(key);
      this.unbind(workloadId, serviceId);
    }
    this.collect();
    return versions;
  }

  /** Deletes tombstones older than the grace period; setBindings() calls it. */
  collect(now = Date.now()): void {
    const map = this.#map('wk_http_hdr');
    for (const [key, since] of this.#tombstones) {
      if (now - since < TOMBSTONE_GRACE_MS) continue;
      const k = Buffer.from(key, 'hex');
      const v = map.lookup(k);
      // Re-bound meanwhile: not a tombstone any more.
      if (v && decodeHttpHdrMeta(v).state === WK_HTTP_UNBOUND) bpfCall(() => map.delete(k));
      this.#tombstones.delete(key);
    }
  }

  /**
   * Call when workload or service ids change meaning (a new plan numbers
   * them differently): every existing kernel-path connection has its next
   * request refused, so none can pick up another binding's header.
   * Returns the new epoch.
   */
  bumpEpoch(): number {
    const { epoch } = this.#config();
    this.#setConfig({ epoch: epoch + 1 });
    return (epoch + 1) >>> 0;
  }

  /**
   * How injections are reported as events: once per connection and header
   * version (its first request, and the first after each rotation; the
   * default), or every request. Refusals are always reported, and every
   * injected request is counted in usage() either way.
   */
  setAuditGrain(grain: 'request' | 'connection'): void {
    const { flags } = this.#config();
    this.#setConfig({ flags: grain === 'request' ? flags | WK_HTTP_CFG_AUDIT_REQUESTS : flags & ~WK_HTTP_CFG_AUDIT_REQUESTS });
  }

  /** The id epoch connections are made under now (bumpEpoch() moves it). */
  idEpoch(): number {
    return this.#config().epoch;
  }

  /**
   * The kernel's count of injected requests per (binding, header version,
   * epoch), each entry's CPUs summed: running totals since the entry was
   * made. Exact, whatever the audit grain and however many events the
   * ring lost; a request the map had no room for is counted in
   * stats().usageFull instead.
   */
  usage(): HttpUsageRecord[] {
    const map = this.#map('wk_http_usage');
    const out: HttpUsageRecord[] = [];
    for (const key of map.keys()) {
      const value = map.lookup(key);
      if (value) out.push(decodeHttpUsage(key, value));
    }
    return out;
  }

  /**
   * Deletes a usage() entry. A request counted under its key after its
   * last read is lost with it; a later one makes a new entry. So delete
   * only entries no request can be counted under any more (a header
   * version since replaced, an earlier epoch) once they have been read.
   */
  forgetUsage(entry: Pick<HttpUsageRecord, 'workloadId' | 'serviceId' | 'headerVersion' | 'epoch'>): void {
    const map = this.#map('wk_http_usage');
    bpfCall(() => map.delete(encodeHttpUsageKey(entry)));
  }

  /**
   * Stops injection now: the heartbeat stops and the kernel refuses the
   * next request of every open connection (refusedAgent), as it does once
   * the timeout has run out. close() calls it first. Idempotent; there is
   * no way back (attach a new object).
   */
  expire(): void {
    if (this.#heartbeat) clearInterval(this.#heartbeat);
    this.#heartbeat = null;
    this.#expired = true;
    if (!this.#closed) this.#setConfig({ aliveUntil: 0n });
  }

  /** The CLOCK_MONOTONIC time (process.hrtime.bigint()) until which the kernel injects; 0n once expired. */
  aliveUntil(): bigint {
    return this.#config().aliveUntil;
  }

  #beat(): void {
    if (this.#closed || this.#expired) return;
    this.#setConfig({ aliveUntil: process.hrtime.bigint() + this.#aliveTimeoutNs });
  }

  #config(): HttpConfig {
    const cur = this.#map('wk_http_config').lookup(encodeU32(0));
    return cur ? decodeHttpConfig(cur) : { epoch: 0, flags: 0, aliveUntil: 0n };
  }

  /* One writer (this process's event loop), so read-modify-write is safe. */
  #setConfig(change: Partial<HttpConfig>): void {
    const next = { ...this.#config(), ...change };
    bpfCall(() => this.#map('wk_http_config').update(encodeU32(0), encodeHttpConfig(next.epoch, next.flags, next.aliveUntil)));
  }

  /** The bindings the kernel holds (tombstones included, as 'unbound'); never a header. */
  bindings(): HttpBindingState[] {
    const map = this.#map('wk_http_hdr');
    const out: HttpBindingState[] = [];
    for (const key of map.keys()) {
      const v = map.lookup(key);
      if (!v) continue;
      const meta = decodeHttpHdrMeta(v);
      const state = meta.state === WK_HTTP_INJECT ? 'inject' : meta.state === WK_HTTP_WITHHOLD ? 'withhold' : 'unbound';
      out.push({ ...decodeHttpHdrKey(key), state, version: meta.version, selection: meta.selection });
    }
    return out.sort((a, b) => a.workloadId - b.workloadId || a.serviceId - b.serviceId);
  }

  /** The kernel's counters: requests injected, refused by reason, dropped writes. */
  stats(): KernelHttpStats {
    const map = this.#map('wk_http_stats');
    const out = {} as KernelHttpStats;
    WK_HTTP_STATS.forEach((name, i) => (out[name] = map.lookup(encodeU32(i))?.readBigUInt64LE(0) ?? 0n));
    return out;
  }

  /**
   * Starts delivering the kernel's audit events (one per refusal, and one
   * per injection at the audit grain; never a header) to `handler`, on the
   * event loop. One
   * reader at a time: the ring buffer has one read position. close()
   * closes it too.
   * @throws WirekeyError WK_HTTP_EVENTS_OPEN when a reader is already open.
   * @throws BpfError when the datapath is closed or the ring cannot be opened.
   */
  events(handler: KernelHttpEventHandler, options?: KernelHttpEventsOptions): KernelHttpEvents {
    if (this.#closed) throw new BpfError('kernel HTTP datapath is closed');
    if (this.#events && !this.#events.closed) {
      throw new WirekeyError('WK_HTTP_EVENTS_OPEN', 'kernel HTTP events already have a reader; close it first');
    }
    this.#events = KernelHttpEvents.open(this.#object, handler, options);
    return this.#events;
  }

  /**
   * Whether failed pushes are watched (wk_http_push_done attached). Without
   * it, a push the kernel fails before its first byte goes unnoticed, and
   * the writer's retry passes unseen under the stale verdict: see the
   * README's kernel datapath section for what that allows.
   */
  get pushWatch(): boolean {
    return this.#pushWatch;
  }

  /** Entries and capacity of the header-line, host and usage maps (the pinned ones are in Datapath.mapUsage()). */
  mapUsage(): { name: string; entries: number; capacity: number }[] {
    return (['wk_http_hdr', 'wk_http_host', 'wk_http_usage'] as const).map((name) => {
      const map = this.#map(name);
      return { name, entries: map.keys().length, capacity: map.info().maxEntries };
    });
  }

  /** Kernel-path connections currently established. */
  connectionCount(): number {
    return this.#map('wk_http_socks').keys().length;
  }

  /**
   * Stops injection (expire(): every open connection has its next request
   * refused), detaches the programs, connect() first, so no new connection
   * is bound, hands the events written so far to the events reader, if one
   * is open (synchronously, from this call), and closes it, and wipes every
   * header line from wk_http_hdr. Open connections stay in the sockhash,
   * refused, as long as it lives: taking a socket out of it, or freeing it,
   * would send their next requests bare. Idempotent.
   * @throws BpfError when the heartbeat or the lines cannot be cleared
   *   (after doing everything else).
   */
  close(): void {
    if (this.#closed) return;
    let failure: unknown;
    try {
      this.expire();
    } catch (err) {
      failure = err;
    }
    this.#closed = true;
    for (const link of this.#links.splice(0).reverse()) link.destroy();
    if (this.#events) {
      this.#events.drain();
      this.#events.close();
      this.#events = null;
    }
    try {
      const hdr = this.#maps.get('wk_http_hdr');
      if (hdr) wipeHeaderLines(hdr);
    } catch (err) {
      failure ??= err;
    }
    if (this.#msgAttached) {
      this.#msgAttached = false;
      try {
        this.#object.detachFromMap(MSG_PROGRAM, 'wk_http_socks');
      } catch {
        /* the object was closed first: the map, and the attachment, are gone */
      }
    }
    if (failure) throw failure;
  }

  /** Writes a binding's value; `selection` undefined keeps the binding's. */
  #write(workloadId: number, serviceId: number, state: number, line?: Buffer, nameLength?: number, selection?: number): number {
    checkId('workload', workloadId);
    checkId('service', serviceId);
    const key = encodeHttpHdrKey(workloadId, serviceId);
    const hex = key.toString('hex');
    const version = ((this.#versions.get(hex) ?? 0) + 1) >>> 0 || 1;
    const sel = (selection ?? this.#selections.get(hex) ?? 0) >>> 0;
    const map = this.#map('wk_http_hdr');
    // BPF_F_LOCK: in place under the value's lock (or a new element), never a reused one.
    bpfCall(() => map.update(key, encodeHttpHdr(state, version, line, nameLength, sel), BPF_F_LOCK));
    this.#versions.set(hex, version);
    this.#selections.set(hex, sel);
    if (state !== WK_HTTP_UNBOUND) this.#tombstones.delete(hex);
    return version;
  }

  #map(name: MapName): NativeMap {
    if (this.#closed) throw new BpfError('kernel HTTP datapath is closed');
    return this.#maps.get(name) as NativeMap;
  }
}

/**
 * Overwrites every header line of a wk_http_hdr map with zeros, in place
 * under each value's lock, then deletes the entries: a deleted element of a
 * preallocated hash keeps its bytes until it is reused, so zeroing comes
 * first. Returns how many were wiped. Also used on a previous agent's map.
 * @throws BpfError
 */
export function wipeHeaderLines(map: NativeMap): number {
  let n = 0;
  for (const key of map.keys()) {
    const value = map.lookup(key);
    if (!value) continue;
    const { version } = decodeHttpHdrMeta(value);
    bpfCall(() => map.update(key, encodeHttpHdr(WK_HTTP_UNBOUND, version, undefined, 0, 0, value.length), BPF_F_LOCK));
    bpfCall(() => map.delete(key));
    n++;
  }
  return n;
}

function checkId(kind: string, id: number): void {
  if (!Number.isInteger(id) || id < 1 || id > 0xffffffff) throw new RangeError(`${kind} id ${id} is outside 1..2^32-1`);
}

/**
 * "Name: value\r\n", checked so that the kernel can never be made to send
 * something that is not one header line.
 * @throws WirekeyError WK_HTTP_HEADER; the message names the header, never its value.
 */
export function headerLine(h: HeaderLine): { line: Buffer; nameLength: number } {
  if (!TOKEN.test(h.name)) throw new WirekeyError('WK_HTTP_HEADER', `header name "${h.name}" is not an HTTP token`);
  const value = Buffer.isBuffer(h.value) ? h.value : Buffer.from(h.value, 'utf8');
  for (const byte of value) {
    if ((byte < 0x20 && byte !== 0x09) || byte === 0x7f) {
      throw new WirekeyError('WK_HTTP_HEADER', `the value of header ${h.name} contains a control byte (CR, LF, NUL, ...)`);
    }
  }
  if (!value.length || value[0] === 0x20 || value[0] === 0x09 || value[value.length - 1] === 0x20 || value[value.length - 1] === 0x09) {
    throw new WirekeyError('WK_HTTP_HEADER', `the value of header ${h.name} is empty or has surrounding whitespace`);
  }
  const line = Buffer.concat([Buffer.from(`${h.name}: `, 'latin1'), value, Buffer.from('\r\n')]);
  if (line.length > WK_HTTP_LINE_MAX) {
    throw new WirekeyError('WK_HTTP_HEADER', `header ${h.name} is ${line.length} bytes with its CRLF; the kernel datapath takes at most ${WK_HTTP_LINE_MAX}`);
  }
  return { line, nameLength: Buffer.byteLength(h.name, 'latin1') };
}
