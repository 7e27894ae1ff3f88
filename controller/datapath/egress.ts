/**
 * Egress policy in the kernel (bpf/egress.bpf.c): the maps that say where a
 * restricted workload may connect() or sendmsg(), kept in step with the
 * plan, and what the kernel reports back (events, counters).
 *
 * planEgress() is pure: it turns the plan's rules into wk_egress_rules
 * entries, one per (protocol, prefix), each holding its own ports
 * and those of every rule prefix that contains it (the kernel looks up the
 * longest prefix only), or refuses the whole policy when it does not fit.
 * EgressMaps applies a plan: per workload, the new set under a new id, then
 * the workload's entry flipped in one update, then the old set removed.
 */
import { WirekeyError } from '../errors.js';
import { parseAddressPrefix, prefixesOverlap, type AddressPrefix } from '../addresses.js';
import type { PlanEgress } from '../policy/types.js';
import { bpfCall, type NativeMap, type NativeObject } from './native.js';
import {
  LAYOUTS,
  WK_EGRESS_AUDIT,
  WK_EGRESS_MAX_PREFIXES,
  WK_EGRESS_MAX_RANGES,
  WK_EGRESS_RESTRICTED,
  WK_EGRESS_STATS,
  WK_EGRESS_TCP,
  WK_EGRESS_UDP,
  WK_MAX_WORKLOADS,
  decodeEgressEvent,
  decodeEgressKey,
  decodeEgressPolicy,
  decodeEgressVal,
  egressStatIndex,
  encodeEgressKey,
  encodeEgressPolicy,
  encodeEgressVal,
  encodeU32,
  type EgressEventRecord,
  type EgressPrefix,
  type EgressRange,
} from './layout.js';
import { RingEvents, type RingEventsOptions, type Timed } from './ring-events.js';

/** A workload as setEgress() takes it: its kernel id, its name (for errors), its egress policy (none: unrestricted). */
export interface EgressWorkload {
  id: number;
  name: string;
  egress?: PlanEgress;
}

/** One refused call, or one that audit mode let through. */
export type EgressEvent = Timed<EgressEventRecord>;
export type EgressEventHandler = (event: EgressEvent) => void;
export type EgressEventsOptions = RingEventsOptions;
export type EgressEvents = RingEvents<EgressEventRecord>;

export interface EgressStats {
  /** Per workload id, for every workload restricted now or with a non-zero counter. */
  workloads: Map<number, { refused: bigint; wouldRefuse: bigint }>;
  /** Events the kernel could not record (wk_egress_events was full), all workloads together. */
  eventsLost: bigint;
}

/** The policy does not fit the kernel's maps; nothing was changed. */
export class EgressTooLargeError extends WirekeyError {
  /** The workload that does not fit, or null when it is the workloads together. */
  readonly workload: string | null;
  /** How much over the limit: port ranges of one prefix, or prefix entries overall. */
  readonly over: number;

  constructor(workload: string | null, over: number, message: string) {
    super('WK_EGRESS_TOO_LARGE', message);
    this.workload = workload;
    this.over = over;
  }
}

/** A workload's rules as the kernel holds them: entries keyed by protocol and prefix, before a set id is given. */
export interface PlannedEgress {
  id: number;
  name: string;
  flags: number;
  entries: { protocol: number; prefix: EgressPrefix; text: string; ranges: EgressRange[] }[];
}

const EGRESS_EVENTS = 'wk_egress_events';

function isMapped(p: { bits: number; bytes: number[] }): boolean {
  return p.bits >= 96 && p.bytes.slice(0, 10).every((b) => b === 0) && p.bytes[10] === 0xff && p.bytes[11] === 0xff;
}

/** A prefix as people write it: IPv4 (and IPv4-mapped) as a.b.c.d/n, one address without /n. */
function prefixText(p: { bits: number; bytes: number[] }, address: string): string {
  if (isMapped(p)) return p.bits === 128 ? p.bytes.slice(12).join('.') : `${p.bytes.slice(12).join('.')}/${p.bits - 96}`;
  return p.bits === 128 ? address : `${address}/${p.bits}`;
}

/**
 * The union of `ranges`, sorted: overlapping or adjacent ranges become one,
 * named by the lowest rule id among them (the kernel only asks whether a
 * port is allowed; the id is for people reading the maps).
 */
export function mergeRanges(ranges: readonly EgressRange[]): EgressRange[] {
  const sorted = [...ranges].sort((a, b) => a.lo - b.lo || a.hi - b.hi);
  const out: EgressRange[] = [];
  for (const r of sorted) {
    const last = out.at(-1);
    if (last && r.lo <= last.hi + 1) {
      last.hi = Math.max(last.hi, r.hi);
      last.ruleId = Math.min(last.ruleId, r.ruleId);
    } else {
      out.push({ ...r });
    }
  }
  return out;
}

function protocolName(p: number): string {
  return p === WK_EGRESS_TCP ? 'tcp' : 'udp';
}

/**
 * What the kernel must hold for `workloads`: pure, no map is touched.
 * Name rules (hosts) are not the kernel's: their ports go to the proxy
 * through the port bindings.
 * @throws EgressTooLargeError (WK_EGRESS_TOO_LARGE) when a prefix needs
 *   more than WK_EGRESS_MAX_RANGES port ranges, or the workloads together
 *   more than WK_EGRESS_MAX_PREFIXES entries.
 * @throws RangeError for a workload id outside 1..WK_MAX_WORKLOADS, a
 *   duplicate id, a prefix that does not parse or a port outside 0..65535.
 */
export function planEgress(workloads: readonly EgressWorkload[]): PlannedEgress[] {
  const seen = new Set<number>();
  const planned: PlannedEgress[] = [];
  for (const w of workloads) {
    if (!Number.isInteger(w.id) || w.id < 1 || w.id > WK_MAX_WORKLOADS) throw new RangeError(`workload "${w.name}": id ${w.id} is outside 1..${WK_MAX_WORKLOADS}`);
    if (seen.has(w.id)) throw new RangeError(`workload "${w.name}": id ${w.id} given twice`);
    seen.add(w.id);
    if (!w.egress) continue;
    // protocol -> the rule prefixes, with their ports (one address space: ::/0 contains IPv4).
    const groups = new Map<string, { protocol: number; items: { prefix: AddressPrefix; text: string; ranges: EgressRange[] }[] }>();
    for (const rule of w.egress.rules) {
      if (!rule.cidrs.length) continue;
      const protocols = rule.protocol === 'any' ? [WK_EGRESS_TCP, WK_EGRESS_UDP] : [rule.protocol === 'udp' ? WK_EGRESS_UDP : WK_EGRESS_TCP];
      const ranges = rule.ports.map(([lo, hi]) => {
        if (!(Number.isInteger(lo) && Number.isInteger(hi) && lo >= 0 && lo <= hi && hi <= 65535)) {
          throw new RangeError(`workload "${w.name}", rule ${rule.label}: port range ${lo}-${hi} is not within 0..65535`);
        }
        return { lo, hi, ruleId: rule.id };
      });
      for (const cidr of rule.cidrs) {
        const prefix = parseAddressPrefix(cidr);
        if (!prefix) throw new RangeError(`workload "${w.name}", rule ${rule.label}: ${cidr} is not an address prefix`);
        for (const protocol of protocols) {
          const k = `${protocol}`;
          let g = groups.get(k);
          if (!g) groups.set(k, (g = { protocol, items: [] }));
          g.items.push({ prefix, text: prefixText(prefix, prefix.text.split('/')[0] as string), ranges });
        }
      }
    }
    const entries: PlannedEgress['entries'] = [];
    for (const { protocol, items } of groups.values()) {
      // Shortest first, so each entry's containers are the items before it.
      const byPrefix = new Map<string, { prefix: AddressPrefix; text: string; ranges: EgressRange[] }>();
      for (const it of items) {
        const k = `${it.prefix.bits}/${it.prefix.bytes.join('.')}`;
        const have = byPrefix.get(k);
        if (have) have.ranges = have.ranges.concat(it.ranges);
        else byPrefix.set(k, { ...it, ranges: [...it.ranges] });
      }
      const distinct = [...byPrefix.values()].sort((a, b) => a.prefix.bits - b.prefix.bits);
      for (let i = 0; i < distinct.length; i++) {
        const own = distinct[i] as (typeof distinct)[number];
        let all = own.ranges;
        for (let j = 0; j < i; j++) {
          const outer = distinct[j] as (typeof distinct)[number];
          if (outer.prefix.bits < own.prefix.bits && prefixesOverlap(outer.prefix, own.prefix)) all = all.concat(outer.ranges);
        }
        const ranges = mergeRanges(all);
        if (ranges.length > WK_EGRESS_MAX_RANGES) {
          throw new EgressTooLargeError(
            w.name,
            ranges.length - WK_EGRESS_MAX_RANGES,
            `workload "${w.name}": egress to ${own.text} (${protocolName(protocol)}) needs ${ranges.length} separate port ranges, ` +
              `counting those of the rules for prefixes that contain it; the kernel holds at most ${WK_EGRESS_MAX_RANGES} per prefix ` +
              `(${ranges.length - WK_EGRESS_MAX_RANGES} over). Merge port ranges or rules.`,
          );
        }
        entries.push({ protocol, prefix: { bits: own.prefix.bits, bytes: own.prefix.bytes }, text: own.text, ranges });
      }
    }
    planned.push({ id: w.id, name: w.name, flags: WK_EGRESS_RESTRICTED | (w.egress.mode === 'audit' ? WK_EGRESS_AUDIT : 0), entries });
  }
  const total = planned.reduce((n, p) => n + p.entries.length, 0);
  if (total > WK_EGRESS_MAX_PREFIXES) {
    const largest = [...planned].sort((a, b) => b.entries.length - a.entries.length).slice(0, 3);
    throw new EgressTooLargeError(
      largest.length === 1 ? (largest[0] as PlannedEgress).name : null,
      total - WK_EGRESS_MAX_PREFIXES,
      `egress rules need ${total} kernel prefix entries (one per address prefix and protocol), all workloads together; ` +
        `the kernel holds at most ${WK_EGRESS_MAX_PREFIXES} (${total - WK_EGRESS_MAX_PREFIXES} over). Largest: ` +
        largest.map((p) => `"${p.name}" ${p.entries.length}`).join(', '),
    );
  }
  return planned;
}

/**
 * The counters of wk_egress_stats: per workload restricted now (`restricted`)
 * or with a non-zero count, and the events lost by all.
 */
export function readEgressStats(stats: NativeMap, restricted: ReadonlySet<number>): EgressStats {
  const read = (i: number) => stats.lookup(encodeU32(i))?.readBigUInt64LE(0) ?? 0n;
  const workloads = new Map<number, { refused: bigint; wouldRefuse: bigint }>();
  let eventsLost = 0n;
  for (let id = 1; id <= WK_MAX_WORKLOADS; id++) {
    const refused = read(egressStatIndex(id, 'refused'));
    const wouldRefuse = read(egressStatIndex(id, 'wouldRefuse'));
    eventsLost += read(egressStatIndex(id, 'eventsLost'));
    if (refused || wouldRefuse || restricted.has(id)) workloads.set(id, { refused, wouldRefuse });
  }
  return { workloads, eventsLost };
}

/** What the kernel enforces for one workload, read back from its maps (`wirekey explain`). */
export interface InstalledEgress {
  mode: 'enforce' | 'audit';
  setId: number;
  /** Each prefix entry: protocol, prefix (IPv4 as a.b.c.d/n) and the ports allowed there with their rule ids. */
  entries: { protocol: 'tcp' | 'udp'; prefix: string; ranges: EgressRange[] }[];
}

/**
 * A workload's egress policy as the maps hold it, or null when it is
 * unrestricted. Walks every key of wk_egress_rules: for a command, not per
 * request.
 */
export function readInstalledEgress(policy: NativeMap, rules: NativeMap, workloadId: number): InstalledEgress | null {
  const v = policy.lookup(encodeU32(workloadId));
  if (!v) return null;
  const { flags, setId } = decodeEgressPolicy(v);
  if (!(flags & WK_EGRESS_RESTRICTED)) return null;
  const entries: InstalledEgress['entries'] = [];
  for (const key of rules.keys()) {
    const k = decodeEgressKey(key);
    if (k.setId !== setId) continue;
    const val = rules.lookup(key);
    if (!val) continue;
    const addr = LAYOUTS.wk_egress_key.fields.addr;
    const prefix = prefixText({ bits: k.bits, bytes: [...key.subarray(addr.offset, addr.offset + addr.size)] }, k.address);
    entries.push({ protocol: k.protocol === WK_EGRESS_UDP ? 'udp' : 'tcp', prefix, ranges: decodeEgressVal(val) });
  }
  entries.sort((a, b) => a.protocol.localeCompare(b.protocol) || a.prefix.localeCompare(b.prefix));
  return { mode: flags & WK_EGRESS_AUDIT ? 'audit' : 'enforce', setId, entries };
}

function sameEntries(a: Map<string, Buffer>, b: Map<string, Buffer>): boolean {
  if (a.size !== b.size) return false;
  for (const [k, v] of a) if (!b.get(k)?.equals(v)) return false;
  return true;
}

interface InstalledSet {
  flags: number;
  setId: number;
  /** The set's keys and values, hex, as written. */
  entries: Map<string, Buffer>;
}

/**
 * The egress maps of a loaded object, and what this process wrote into
 * them. A new Datapath starts from empty maps (they are not reused across
 * agents), so what is installed is known without reading the kernel back.
 */
export class EgressMaps {
  readonly #object: NativeObject;
  readonly #policy: NativeMap;
  readonly #rules: NativeMap;
  readonly #stats: NativeMap;
  readonly #installed = new Map<number, InstalledSet>();
  readonly #names = new Map<number, string>();
  #nextSet = 1;
  #events: EgressEvents | null = null;

  constructor(object: NativeObject, maps: { policy: NativeMap; rules: NativeMap; stats: NativeMap }) {
    this.#object = object;
    this.#policy = maps.policy;
    this.#rules = maps.rules;
    this.#stats = maps.stats;
  }

  /**
   * Makes the kernel enforce exactly `workloads`' egress policies; a
   * workload without one, or not listed, is unrestricted. Whole or
   * nothing: the plan is computed and checked before any map is touched.
   * A workload whose rules did not change keeps its set; one whose id now
   * names another workload has its counters reset.
   * @throws EgressTooLargeError, RangeError (see planEgress), before any change.
   * @throws BpfError when the kernel refuses an update (memory): a workload
   *   whose new set could not be written whole keeps its old one.
   */
  set(workloads: readonly EgressWorkload[]): void {
    const planned = planEgress(workloads);
    const wanted = new Map(planned.map((p) => [p.id, p]));

    for (const w of workloads) {
      if (this.#names.get(w.id) !== w.name) {
        if (this.#names.has(w.id)) this.#resetStats(w.id);
        this.#names.set(w.id, w.name);
      }
    }
    // Key 0 first: from now on, every caller's workload is looked up.
    if (wanted.size) bpfCall(() => this.#policy.update(encodeU32(0), encodeEgressPolicy(WK_EGRESS_RESTRICTED, 0)));

    for (const p of planned) {
      const old = this.#installed.get(p.id);
      const under = (setId: number) =>
        new Map(p.entries.map((e) => [encodeEgressKey(setId, e.protocol, e.prefix).toString('hex'), encodeEgressVal(e.ranges)]));
      if (old && sameEntries(old.entries, under(old.setId))) {
        // Same rules: the mode alone changes, in place.
        if (old.flags !== p.flags) {
          bpfCall(() => this.#policy.update(encodeU32(p.id), encodeEgressPolicy(p.flags, old.setId)));
          old.flags = p.flags;
        }
        continue;
      }
      const setId = this.#allocSet();
      const entries = under(setId);
      const written: Buffer[] = [];
      try {
        bpfCall(() => {
          for (const [k, v] of entries) {
            const key = Buffer.from(k, 'hex');
            this.#rules.update(key, v);
            written.push(key);
          }
          // The flip: one update of the workload's entry, mode and set together.
          this.#policy.update(encodeU32(p.id), encodeEgressPolicy(p.flags, setId));
        });
      } catch (err) {
        // The workload is still under its old set (or unrestricted): take back the half-written new one.
        for (const key of written) this.#rules.delete(key);
        throw err;
      }
      this.#installed.set(p.id, { flags: p.flags, setId, entries });
      if (old) this.#deleteSet(old);
    }

    for (const [id, old] of [...this.#installed]) {
      if (wanted.has(id)) continue;
      bpfCall(() => this.#policy.delete(encodeU32(id)));
      this.#installed.delete(id);
      this.#deleteSet(old);
    }
    if (!wanted.size) bpfCall(() => this.#policy.delete(encodeU32(0)));
  }

  /** Per workload id: calls refused and would-refuse; and events lost. Reads every counter: call it on a scrape. */
  stats(): EgressStats {
    return readEgressStats(this.#stats, new Set(this.#installed.keys()));
  }

  /**
   * Starts delivering refused and would-refuse calls to `handler`, on the
   * event loop. One reader at a time.
   * @throws WirekeyError WK_EGRESS_EVENTS_OPEN when a reader is already open.
   * @throws BpfError when the ring cannot be opened.
   */
  events(handler: EgressEventHandler, options?: EgressEventsOptions): EgressEvents {
    if (this.#events && !this.#events.closed) throw new WirekeyError('WK_EGRESS_EVENTS_OPEN', 'egress events already have a reader; close it first');
    this.#events = new RingEvents(this.#object, EGRESS_EVENTS, decodeEgressEvent, handler, options);
    return this.#events;
  }

  /** What the kernel enforces for a workload now, read back from the maps; null when it is unrestricted. */
  installed(workloadId: number): InstalledEgress | null {
    return readInstalledEgress(this.#policy, this.#rules, workloadId);
  }

  close(): void {
    this.#events?.close();
    this.#events = null;
  }

  #allocSet(): number {
    const used = new Set([...this.#installed.values()].map((s) => s.setId));
    while (used.has(this.#nextSet) || this.#nextSet === 0) this.#nextSet = (this.#nextSet + 1) >>> 0;
    const id = this.#nextSet;
    this.#nextSet = (this.#nextSet + 1) >>> 0;
    return id;
  }

  #deleteSet(set: InstalledSet): void {
    bpfCall(() => {
      for (const k of set.entries.keys()) this.#rules.delete(Buffer.from(k, 'hex'));
    });
  }

  #resetStats(id: number): void {
    const zero = Buffer.alloc(8);
    bpfCall(() => {
      for (const name of WK_EGRESS_STATS) this.#stats.update(encodeU32(egressStatIndex(id, name)), zero);
    });
  }
}

export { WK_EGRESS_MAX_PREFIXES, WK_EGRESS_MAX_RANGES, egressStatRefusal } from './layout.js';
