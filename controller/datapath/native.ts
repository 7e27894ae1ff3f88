/**
 * The typed face of the native addon. Only the datapath module imports this
 * file; everything else talks to Datapath.
 */
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import { BpfError } from '../errors.js';

export interface ProgramInfo {
  name: string;
  section: string;
  id?: number;
}

export interface BtfStruct {
  size: number;
  members: { name: string; offset: number; size: number }[];
}

export interface MapInfo {
  name: string;
  type: number;
  keySize: number;
  valueSize: number;
  maxEntries: number;
  fd: number;
  /** The kernel's id of the map (as bpftool shows it), once it exists. */
  id?: number;
}

export interface NativeMap {
  info(): MapInfo;
  /** A per-CPU map's value is every possible CPU's, each padded to 8 bytes, back to back (update takes the same). */
  lookup(key: Buffer): Buffer | null;
  update(key: Buffer, value: Buffer, flags?: number): void;
  delete(key: Buffer): boolean;
  keys(): Buffer[];
  pin(path: string): void;
  unpin(): void;
  /** Ids of the sk_msg programs attached to this sockmap or sockhash (BPF_PROG_QUERY, Linux 5.19). */
  attachedPrograms(): number[];
}

export interface NativeLink {
  info(): { fd: number; id?: number; progId?: number; pinPath?: string } | null;
  pin(path: string): void;
  unpin(): void;
  destroy(): void;
}

/**
 * The consumer of a BPF_MAP_TYPE_RINGBUF map (libbpf's ring_buffer), read on
 * the event loop: the kernel's wake-ups arrive through a uv_poll_t on the
 * ring's epoll fd, and consume() reads what is waiting without blocking.
 * Records are copies. It keeps its own fd of the map: closing the object
 * does not stop it. It never keeps the process alive by itself.
 */
export interface NativeRingBuffer {
  /**
   * Reads what is waiting now (at most RingBuffer.batch records), hands it
   * to the callback synchronously, and returns the number of records.
   * @throws Error when closed or when the ring cannot be read.
   */
  consume(): number;
  /** Stops the poll and frees the ring: no callback after this. Idempotent. */
  close(): void;
  info(): { closed: boolean; epollFd?: number; mapFd?: number };
}

/**
 * Called with the records read at once: `data` holds them back to back (a
 * copy: record i starts at the sum of sizes[0..i-1]), `sizes` their
 * lengths. One Buffer per batch rather than per record, so a busy ring
 * costs little. With an error (the poll failed and stopped, or the ring
 * could not be read) there may be no records.
 */
export type RingBufferCallback = (data: Buffer, sizes: Uint32Array, error?: Error & { errno?: number }) => void;

export interface NativeObject {
  setGlobal(name: string, value: Buffer): void;
  /** Whether load() loads the program; programs in SEC("?...") sections are off until turned on. Before load only. */
  setAutoload(program: string, load: boolean): void;
  load(): void;
  programs(): ProgramInfo[];
  attachCgroup(program: string, cgroupPath: string): NativeLink;
  /** Attaches as the program's section says (tp_btf/..., ...). */
  attach(program: string): NativeLink;
  /**
   * Attaches an sk_msg/sk_skb program to a sockmap or sockhash
   * (bpf_prog_attach; no link exists for this before kernel 6.10). The
   * attachment belongs to the map: it lasts until detachFromMap() or until
   * the map is destroyed, and a socket keeps the programs it got when it
   * was added to the map until it leaves the map.
   */
  attachToMap(program: string, map: string): void;
  /** Undoes attachToMap (bpf_prog_detach2); sockets already in the map keep the program. */
  detachFromMap(program: string, map: string): void;
  /**
   * Runs an iterator program (SEC("iter/...")) once and returns what it
   * wrote; a non-zero `pid` limits a task iterator to that process (Linux
   * 6.1). Synchronous.
   */
  iterate(program: string, pid: number): Buffer;
  map(name: string): NativeMap;
  btfStruct(name: string): BtfStruct | null;
  /** The members of an enum in the object's BTF, by name; null when there is no such enum. */
  btfEnum(name: string): Record<string, number> | null;
  /** The names of every named enum in the object's BTF. */
  btfEnumNames(): string[];
  close(): void;
}

/** A program that does nothing (or calls one helper with whatever is in its registers), loaded to see whether the kernel takes it. */
export interface ProbeLoadOptions {
  /** BPF_PROG_TYPE_* (linux/bpf.h). */
  progType: number;
  /** BPF_* attach type the program is loaded for. */
  expectedAttachType?: number;
  /** For tracing programs: the function (fentry/fexit) or tracepoint (tp_btf) in the kernel's BTF. */
  attachTo?: string;
  /** BPF_FUNC_* to call first. */
  helper?: number;
  /** What the program returns (some attach types accept only 1). */
  returnValue?: number;
  /** Also attach it (bpf_link_create) and detach it at once: for trampolines, whose attach can fail where the load did not. */
  attach?: boolean;
}

export interface ProbeLoadResult {
  loaded: boolean;
  attached: boolean;
  /** Why the load (or the attach) failed. */
  errno?: number;
  /** The verifier's log, or why the attach target was not found. */
  log?: string;
}

/** The kernel feature probes (native/src/probe.cc); controller/datapath/features.ts reads their answers. */
export interface NativeProbes {
  /** libbpf_probe_bpf_prog_type. @throws Error when libbpf cannot tell. */
  probeProgType(progType: number): boolean;
  /** libbpf_probe_bpf_map_type. @throws Error when libbpf cannot tell. */
  probeMapType(mapType: number): boolean;
  /** libbpf_probe_bpf_helper. @throws Error when libbpf cannot tell (tracing programs: EOPNOTSUPP). */
  probeHelper(progType: number, helper: number): boolean;
  probeLoad(opts: ProbeLoadOptions): ProbeLoadResult;
}

interface Addon extends NativeProbes {
  BpfObject: new (path: string) => NativeObject;
  /** @throws TypeError when `map` is not a ring buffer map; Error when it is not loaded. */
  RingBuffer: (new (map: NativeMap, callback: RingBufferCallback) => NativeRingBuffer) & { readonly batch: number };
  netnsCookie(): bigint;
  /** A map pinned by a running agent (read by `wirekey explain` and `status`). */
  openPinnedMap(path: string): NativeMap;
  /** A map by kernel id (e.g. one a program uses; see programMapIds). */
  openMapById(id: number): NativeMap;
  /** The ids of the maps a loaded program uses. */
  programMapIds(progId: number): number[];
  /** prctl(PR_SET_DUMPABLE). */
  setDumpable(dumpable: boolean): void;
  /** prctl(PR_GET_DUMPABLE): 0 (not dumpable), 1 or 2. */
  dumpable(): number;
  /** open(O_CREAT, 0600) + flock(LOCK_NB), exclusive or shared; the fd. @throws errno EWOULDBLOCK when held. */
  lockFile(path: string, exclusive: boolean): number;
  libbpfVersion(): string;
  /** A TCP socket bound to address:port with SO_REUSEPORT (IPv6: v6-only), listening, non-blocking; its fd. @throws errno (EADDRINUSE...). */
  reusePortListener(address: string, port: number): number;
  /** One datagram to a Unix socket path, or an @abstract name, without blocking. @throws errno (EAGAIN, ENOENT, ECONNREFUSED...). */
  sdNotify(socketPath: string, message: string): void;
}

const here = path.dirname(fileURLToPath(import.meta.url));

/** Repository root, from either controller/ (vitest) or dist/controller/ (built). */
export const repoRoot = here.includes(`${path.sep}dist${path.sep}`)
  ? path.resolve(here, '../../..')
  : path.resolve(here, '../..');

let addon: Addon | undefined;

/**
 * Loads the addon built by scripts/setup.
 * @throws BpfError when it has not been built.
 */
export function native(): Addon {
  if (!addon) {
    const file = path.join(repoRoot, 'native/build/Release/wirekey_native.node');
    try {
      addon = createRequire(import.meta.url)(file) as Addon;
    } catch (cause) {
      throw new BpfError(`cannot load the native addon ${file}; run scripts/setup`, { cause });
    }
  }
  return addon;
}

/** Runs a native call, turning the addon's errors into BpfError. */
export function bpfCall<T>(fn: () => T): T {
  try {
    return fn();
  } catch (err) {
    if (err instanceof Error && !(err instanceof BpfError)) {
      const e = err as Error & { errno?: number; libbpfLog?: string; verifierLog?: string };
      throw new BpfError(e.message, {
        errno: e.errno,
        libbpfLog: e.libbpfLog,
        verifierLog: e.verifierLog,
        cause: err,
      });
    }
    throw err;
  }
}

/** The libbpf the addon was built against, for the start line; "unavailable" when the addon is not built. */
export function libbpfVersion(): string {
  try {
    return native().libbpfVersion();
  } catch {
    return 'unavailable';
  }
}
