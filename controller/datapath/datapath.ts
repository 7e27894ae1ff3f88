/**
 * The kernel half of wirekey: loads bpf/redirect.bpf.c, attaches it to the
 * cgroup v2 root, and keeps its maps in step with the plan. The only module
 * that touches the native addon.
 */
import { mkdirSync, rmSync, existsSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { BpfError, NotSupportedError } from '../errors.js';
import { bpfCall, native, repoRoot, type NativeLink, type NativeMap, type NativeObject } from './native.js';
import {
  WK_ACTION_PROXY,
  decodeOrigDst,
  encodeBindKey,
  encodeBindVal,
  encodeConnKey,
  encodeU16,
  encodeU32,
  encodeU64,
  verifyLayouts,
  type OrigDst,
} from './layout.js';

export type { OrigDst } from './layout.js';

export interface DatapathOptions {
  /** cgroup v2 mount point; programs attach here and so see every process. */
  cgroupRoot: string;
  /** bpffs directory for this agent's pins; removed on close. */
  pinDir: string;
  /** Port the proxy listens on, on 127.0.0.1 and ::1. */
  proxyPort: number;
  /** The compiled object; defaults to build/bpf/wirekey.bpf.o. */
  objectPath?: string;
}

export interface WorkloadCgroup {
  cgroupId: bigint;
  workloadId: number;
}

export interface PortBinding {
  workloadId: number;
  port: number;
}

/* Attach order matters: bookkeeping first, so that by the time connect()
 * redirects anything, sockops and getpeername are already in place. */
const PROGRAMS = ['wk_sockops', 'wk_getpeername4', 'wk_getpeername6', 'wk_connect4', 'wk_connect6'] as const;
const MAPS = ['wk_cgroup_workload', 'wk_bind_port', 'wk_conn'] as const;

export class Datapath {
  readonly #object: NativeObject;
  readonly #links: NativeLink[] = [];
  readonly #maps: Map<string, NativeMap> = new Map();
  readonly #pinDir: string;
  #closed = false;

  private constructor(object: NativeObject, pinDir: string) {
    this.#object = object;
    this.#pinDir = pinDir;
  }

  /**
   * Opens, loads and attaches the programs.
   * @throws BpfError (with the verifier log when a program is refused),
   *   NotSupportedError when the kernel lacks a needed feature.
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

    const object = bpfCall(() => new addon.BpfObject(objectPath));
    const dp = new Datapath(object, opts.pinDir);
    try {
      verifyLayouts((name) => object.btfStruct(name));
      bpfCall(() => {
        object.setGlobal('agent_tgid', encodeU32(process.pid));
        object.setGlobal('host_netns_cookie', encodeU64(netns));
        object.setGlobal('proxy_port', encodeU16(opts.proxyPort));
        object.load();
      });
      for (const name of MAPS) dp.#maps.set(name, bpfCall(() => object.map(name)));
      dp.#pin();
      for (const prog of PROGRAMS) {
        dp.#links.push(bpfCall(() => object.attachCgroup(prog, opts.cgroupRoot)));
      }
    } catch (err) {
      dp.close();
      throw err;
    }
    return dp;
  }

  /** Kernel ids of the loaded programs, for status and for tests that check detachment. */
  programIds(): number[] {
    return this.#object.programs().map((p) => p.id ?? 0).filter((id) => id > 0);
  }

  get pinDir(): string {
    return this.#pinDir;
  }

  /** Makes wk_cgroup_workload hold exactly `entries` (adds first, then removes stale keys). */
  setWorkloadCgroups(entries: WorkloadCgroup[]): void {
    const map = this.#map('wk_cgroup_workload');
    const want = new Map(entries.map((e) => [encodeU64(e.cgroupId).toString('hex'), encodeU32(e.workloadId)]));
    this.#replace(map, want);
  }

  /** Makes wk_bind_port hold exactly `entries`. */
  setPortBindings(entries: PortBinding[]): void {
    const map = this.#map('wk_bind_port');
    const want = new Map(entries.map((e) => [encodeBindKey(e.workloadId, e.port).toString('hex'), encodeBindVal(WK_ACTION_PROXY)]));
    this.#replace(map, want);
  }

  /**
   * What the kernel recorded for the redirected connection whose client end
   * is `address:port` (the accepted socket's peer), removing the entry so it
   * can be used once only. Null when the kernel did not redirect it.
   */
  takeConnection(address: string, port: number): OrigDst | null {
    const map = this.#map('wk_conn');
    const key = encodeConnKey(address, port);
    const value = map.lookup(key);
    if (!value) return null;
    map.delete(key);
    return decodeOrigDst(value);
  }

  /** Detaches every program, removes every pin and closes the object. Idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    for (const link of this.#links.splice(0).reverse()) link.destroy();
    for (const map of this.#maps.values()) {
      try {
        map.unpin();
      } catch {
        /* the directory is removed below in any case */
      }
    }
    rmSync(this.#pinDir, { recursive: true, force: true });
    this.#object.close();
  }

  #map(name: (typeof MAPS)[number]): NativeMap {
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
      // Left by an agent that did not exit cleanly; pins alone keep nothing attached.
      rmSync(this.#pinDir, { recursive: true, force: true });
    }
    mkdirSync(this.#pinDir, { recursive: true, mode: 0o700 });
    for (const [name, map] of this.#maps) bpfCall(() => map.pin(path.join(this.#pinDir, name)));
  }
}

const BPFFS = '/sys/fs/bpf';

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
