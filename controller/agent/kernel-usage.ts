/**
 * "How often": the kernel datapath counts every injected request per
 * (binding, header version, id epoch) in a per-CPU map (KernelHttp.usage()),
 * with no event. This reads those running totals, hands what each read adds
 * to the request metrics at once (collect(): a scrape calls it first), and
 * writes it to the audit log as `usage` lines (summarize(): on a timer, and
 * before a reload and at stop): per workload, service, credential and
 * credential version, the requests since the previous line of that entry,
 * and the first and latest request the entry counted.
 *
 * Entries no request can be counted under any more (a header version since
 * replaced, an earlier epoch) are deleted once a summary has found them
 * quiet since the one before, so the map holds about one entry per
 * binding.
 */
import type { AuditEvent } from '../audit/audit-log.js';
import type { HttpUsageRecord } from '../datapath/kernel-http.js';
import type { UsageNames } from './kernel-bindings.js';

export interface KernelUsageSource {
  usage(): HttpUsageRecord[];
  forgetUsage(entry: Pick<HttpUsageRecord, 'workloadId' | 'serviceId' | 'headerVersion' | 'epoch'>): void;
}

export interface KernelUsageOptions {
  /** Names an entry (KernelBindings.usageNames); undefined for ids no kept plan names. */
  names(u: HttpUsageRecord): UsageNames | undefined;
  /** Requests injected since the last read, for one workload and service (the request metrics). */
  counted(workload: string, service: string, requests: number): void;
}

interface Pending {
  record: HttpUsageRecord;
  /** The names last known for it (kept once a reload forgets them, for requests counted late). */
  names: UsageNames | undefined;
  /** Requests may still be counted under it: the names in force say so now. */
  current: boolean;
  /** Requests since the last summary line of this entry. */
  requests: bigint;
}

export class KernelUsage {
  readonly #source: KernelUsageSource;
  readonly #opts: KernelUsageOptions;
  /** Entry key -> its running total as last read. */
  readonly #seen = new Map<string, bigint>();
  /** Entry key -> what the next summary says about it. */
  readonly #pending = new Map<string, Pending>();
  /** Entries found no longer current, and quiet, by the last summary. */
  #stale = new Set<string>();

  constructor(source: KernelUsageSource, opts: KernelUsageOptions) {
    this.#source = source;
    this.#opts = opts;
  }

  /**
   * Reads the kernel's totals and counts what they added since the last
   * read. Returns the requests added.
   * @throws BpfError when the map cannot be read (nothing is counted then).
   */
  collect(): number {
    let added = 0;
    for (const r of this.#source.usage()) {
      const key = entryKey(r);
      const before = this.#seen.get(key) ?? 0n;
      // Fewer than last read: the entry was deleted and made again.
      const delta = r.requests >= before ? r.requests - before : r.requests;
      this.#seen.set(key, r.requests);
      let p = this.#pending.get(key);
      if (!p) this.#pending.set(key, (p = { record: r, names: undefined, current: false, requests: 0n }));
      const names = this.#opts.names(r);
      p.record = r;
      p.names = names ?? p.names;
      p.current = names?.current ?? false;
      if (!delta) continue;
      p.requests += delta;
      this.#stale.delete(key);
      const n = Number(delta);
      added += n;
      this.#opts.counted(p.names?.workload ?? `#${r.workloadId}`, p.names?.service ?? `#${r.serviceId}`, n);
    }
    return added;
  }

  /**
   * Collects, then returns a `usage` audit line per entry that counted
   * requests since its last line, and deletes the entries that are no
   * longer current and were already quiet at the summary before.
   * @throws BpfError when the map cannot be read.
   */
  summarize(): AuditEvent[] {
    this.collect();
    // CLOCK_MONOTONIC to wall clock, measured once.
    const offsetMs = Date.now() - Number(process.hrtime.bigint()) / 1e6;
    const iso = (ns: bigint) => new Date(Number(ns) / 1e6 + offsetMs).toISOString();
    const lines: AuditEvent[] = [];
    const stale = new Set<string>();
    for (const [key, p] of this.#pending) {
      const { record: r, names } = p;
      if (p.requests) {
        lines.push({
          decision: 'usage',
          datapath: 'kernel',
          workload: names?.workload ?? `#${r.workloadId}`,
          service: names?.service ?? `#${r.serviceId}`,
          ...(names?.credential !== undefined ? { credential: names.credential } : {}),
          ...(names?.credentialVersion !== undefined ? { credentialVersion: names.credentialVersion } : {}),
          requests: Number(p.requests),
          firstSeen: iso(r.firstNs),
          lastSeen: iso(r.lastNs),
        });
        p.requests = 0n;
        continue;
      }
      if (p.current) continue;
      if (this.#stale.has(key)) {
        try {
          this.#source.forgetUsage(r);
        } catch {
          stale.add(key); // tried again at the next summary
          continue;
        }
        this.#pending.delete(key);
        this.#seen.delete(key);
      } else {
        stale.add(key);
      }
    }
    this.#stale = stale;
    return lines;
  }
}

function entryKey(r: Pick<HttpUsageRecord, 'workloadId' | 'serviceId' | 'headerVersion' | 'epoch'>): string {
  return `${r.workloadId}:${r.serviceId}:${r.headerVersion}:${r.epoch}`;
}
