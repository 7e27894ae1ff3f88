/**
 * Read access to a running agent's maps through their bpffs pins, for
 * `wirekey explain` and `wirekey status` (separate processes).
 */
import { existsSync } from 'node:fs';
import path from 'node:path';
import { BpfError } from '../errors.js';
import { bpfCall, native, type NativeMap } from './native.js';
import type { MapName } from './datapath.js';
import { listDraining, type DrainingSockhash } from './draining.js';
import { readEgressStats, readInstalledEgress, type EgressStats, type InstalledEgress } from './egress.js';
import {
  WK_STAT_PORT_BIND,
  WK_STAT_STORAGE_FAIL,
  WK_STAT_TASKS_FULL,
  WK_EGRESS_MAX_PREFIXES,
  WK_HTTP_STATS,
  type HttpStatName,
  decodeAny,
  decodeExeKey,
  decodeMask,
  encodeExeKey,
  encodeU32,
  encodeU64,
  type ExeKey,
} from './layout.js';

export class PinnedMaps {
  readonly #dir: string;
  readonly #open = new Map<MapName, NativeMap>();

  /** @throws BpfError when `pinDir` holds no wirekey pins. */
  constructor(pinDir: string) {
    this.#dir = pinDir;
    this.#get('wk_any');
  }

  #get(name: MapName): NativeMap {
    let map = this.#open.get(name);
    if (!map) {
      const file = path.join(this.#dir, name);
      try {
        map = bpfCall(() => native().openPinnedMap(file));
      } catch (err) {
        throw new BpfError(`cannot open ${file}: is wirekey run running with --pin-dir ${this.#dir}?`, { cause: err });
      }
      this.#open.set(name, map);
    }
    return map;
  }

  taskExe(tgid: number): ExeKey | null {
    const v = this.#get('wk_task_exe').lookup(encodeU32(tgid));
    return v ? decodeExeKey(v) : null;
  }

  /** Every process the kernel tracks, with its recorded executable (a snapshot). */
  trackedTasks(): { tgid: number; exe: ExeKey }[] {
    const map = this.#get('wk_task_exe');
    const out: { tgid: number; exe: ExeKey }[] = [];
    for (const key of map.keys()) {
      const v = map.lookup(key);
      if (v) out.push({ tgid: key.readUInt32LE(0), exe: decodeExeKey(v) });
    }
    return out;
  }

  any(): { cgroup: number[]; exe: number[]; uid: number[] } {
    const v = this.#get('wk_any').lookup(encodeU32(0));
    return v ? decodeAny(v) : { cgroup: [], exe: [], uid: [] };
  }

  cgroupWorkloads(cgroupId: bigint): number[] {
    const v = this.#get('wk_cgroup_mask').lookup(encodeU64(cgroupId));
    return v ? decodeMask(v) : [];
  }

  exeWorkloads(exe: ExeKey): number[] {
    const v = this.#get('wk_exe_mask').lookup(encodeExeKey(exe));
    return v ? decodeMask(v) : [];
  }

  uidWorkloads(uid: number): number[] {
    const v = this.#get('wk_uid_mask').lookup(encodeU32(uid));
    return v ? decodeMask(v) : [];
  }

  /** Entries and capacity of each map, and the kernel's drop counters. */
  usage(): { maps: { name: string; entries: number; capacity: number }[]; tasksFull: bigint; storageFailures: bigint; proxyPortBinds: bigint } {
    const counted: MapName[] = ['wk_task_exe', 'wk_cgroup_mask', 'wk_exe_mask', 'wk_uid_mask', 'wk_bind_port', 'wk_conn'];
    if (this.hasEgress()) counted.push('wk_egress_policy', 'wk_egress_rules');
    if (this.hasKernelHttp()) counted.push('wk_http_dest', 'wk_http_socks');
    const maps = counted.map((name) => {
      const m = this.#get(name);
      // As Datapath.mapUsage(): a policy may use half of wk_egress_rules.
      const capacity = name === 'wk_egress_rules' ? WK_EGRESS_MAX_PREFIXES : m.info().maxEntries;
      return { name, entries: m.keys().length, capacity };
    });
    const stats = this.#get('wk_stats');
    const read = (i: number) => stats.lookup(encodeU32(i))?.readBigUInt64LE(0) ?? 0n;
    return { maps, tasksFull: read(WK_STAT_TASKS_FULL), storageFailures: read(WK_STAT_STORAGE_FAIL), proxyPortBinds: read(WK_STAT_PORT_BIND) };
  }

  /** Whether the agent has the egress maps (one from before them does not). */
  hasEgress(): boolean {
    return existsSync(path.join(this.#dir, 'wk_egress_policy'));
  }

  /** A workload's egress rules as the kernel enforces them (`wirekey explain`); null when unrestricted or without the maps. */
  egress(workloadId: number): InstalledEgress | null {
    if (!this.hasEgress()) return null;
    return readInstalledEgress(this.#get('wk_egress_policy'), this.#get('wk_egress_rules'), workloadId);
  }

  /** Refused and would-refuse calls per workload, and events lost; null without the maps. */
  egressStats(): EgressStats | null {
    if (!this.hasEgress()) return null;
    const restricted = new Set(
      this.#get('wk_egress_policy')
        .keys()
        .map((k) => k.readUInt32LE(0))
        .filter((id) => id > 0),
    );
    return readEgressStats(this.#get('wk_egress_stats'), restricted);
  }

  /** Whether the agent runs the kernel HTTP datapath (its maps are pinned). */
  hasKernelHttp(): boolean {
    return existsSync(path.join(this.#dir, 'wk_http_stats'));
  }

  /** Previous agents' kernel-path connections still open (refused), by sockhash; see draining.ts. */
  draining(): DrainingSockhash[] {
    return listDraining(this.#dir);
  }

  /** The kernel HTTP datapath's counters (requests injected, refused by reason, ...), or null without it. */
  kernelHttpStats(): Record<HttpStatName, bigint> | null {
    if (!this.hasKernelHttp()) return null;
    const map = this.#get('wk_http_stats');
    const out = {} as Record<HttpStatName, bigint>;
    WK_HTTP_STATS.forEach((name, i) => (out[name] = map.lookup(encodeU32(i))?.readBigUInt64LE(0) ?? 0n));
    return out;
  }
}
