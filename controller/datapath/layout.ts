/**
 * The controller's view of the structs in bpf/wirekey.h. Each layout is
 * checked against the compiled object's BTF when the object is opened
 * (verifyLayouts), so a change on one side only fails loudly at start-up
 * instead of corrupting map entries.
 */
import type { RefusalCode } from '../refusals.js';
import ipaddr from 'ipaddr.js';
import { BpfError } from '../errors.js';
import { parseAddressPrefix } from '../addresses.js';
import type { BtfStruct, NativeObject } from './native.js';
import type { ExeKey } from '../identity/exe-key.js';
import { WK_HTTP_HOST_MAX, WK_HTTP_MAX_HOSTS, WK_MASK_WORDS, WK_MAX_WORKLOADS } from '../kernel-limits.js';

export { WK_HTTP_HOST_MAX, WK_HTTP_MAX_HOSTS, WK_MASK_WORDS, WK_MAX_WORKLOADS };
export type { ExeKey };

interface Field {
  offset: number;
  size: number;
}

type Layout = { size: number; fields: Record<string, Field> };

export const LAYOUTS = {
  wk_mask: { size: 32, fields: { bits: { offset: 0, size: 32 } } },
  wk_exe_key: {
    size: 24,
    fields: { ino: { offset: 0, size: 8 }, dev: { offset: 8, size: 4 }, _pad: { offset: 12, size: 4 }, inode: { offset: 16, size: 8 } },
  },
  wk_agent_file: { size: 32, fields: { fd: { offset: 0, size: 4 }, _pad: { offset: 4, size: 4 }, key: { offset: 8, size: 24 } } },
  wk_any: { size: 96, fields: { cgroup: { offset: 0, size: 32 }, exe: { offset: 32, size: 32 }, uid: { offset: 64, size: 32 } } },
  wk_bind_key: { size: 8, fields: { workload_id: { offset: 0, size: 4 }, port: { offset: 4, size: 2 }, _pad: { offset: 6, size: 2 } } },
  wk_bind_val: { size: 8, fields: { action: { offset: 0, size: 4 }, _pad: { offset: 4, size: 4 } } },
  wk_orig_dst: {
    size: 40,
    fields: {
      addr: { offset: 0, size: 16 },
      port: { offset: 16, size: 2 },
      family: { offset: 18, size: 2 },
      workload_id: { offset: 20, size: 4 },
      pid: { offset: 24, size: 4 },
      uid: { offset: 28, size: 4 },
      cgroup_id: { offset: 32, size: 8 },
    },
  },
  wk_conn_key: { size: 20, fields: { addr: { offset: 0, size: 16 }, port: { offset: 16, size: 2 }, _pad: { offset: 18, size: 2 } } },
  wk_http_dest_key: {
    size: 24,
    fields: { prefixlen: { offset: 0, size: 4 }, port: { offset: 4, size: 2 }, _pad: { offset: 6, size: 2 }, addr: { offset: 8, size: 16 } },
  },
  wk_http_dest_val: { size: 8, fields: { service_id: { offset: 0, size: 4 }, flags: { offset: 4, size: 4 } } },
  wk_http_host_key: { size: 264, fields: { service_id: { offset: 0, size: 4 }, len: { offset: 4, size: 4 }, name: { offset: 8, size: 256 } } },
  wk_http_hdr_key: { size: 8, fields: { workload_id: { offset: 0, size: 4 }, service_id: { offset: 4, size: 4 } } },
  wk_http_hdr: {
    size: 536,
    fields: {
      lock: { offset: 0, size: 4 },
      state: { offset: 4, size: 2 },
      len: { offset: 6, size: 2 },
      name_len: { offset: 8, size: 2 },
      _pad: { offset: 10, size: 2 },
      version: { offset: 12, size: 4 },
      selection: { offset: 16, size: 4 },
      _pad2: { offset: 20, size: 4 },
      line: { offset: 24, size: 512 },
    },
  },
  wk_http_config: { size: 16, fields: { epoch: { offset: 0, size: 4 }, flags: { offset: 4, size: 4 }, alive_until: { offset: 8, size: 8 } } },
  wk_http_event: {
    size: 64,
    fields: {
      time_ns: { offset: 0, size: 8 },
      cookie: { offset: 8, size: 8 },
      cgroup_id: { offset: 16, size: 8 },
      addr: { offset: 24, size: 16 },
      port: { offset: 40, size: 2 },
      kind: { offset: 42, size: 1 },
      reason: { offset: 43, size: 1 },
      pid: { offset: 44, size: 4 },
      uid: { offset: 48, size: 4 },
      workload_id: { offset: 52, size: 4 },
      service_id: { offset: 56, size: 4 },
      version: { offset: 60, size: 4 },
    },
  },
  wk_http_usage_key: {
    size: 16,
    fields: { workload_id: { offset: 0, size: 4 }, service_id: { offset: 4, size: 4 }, version: { offset: 8, size: 4 }, epoch: { offset: 12, size: 4 } },
  },
  wk_http_usage: { size: 24, fields: { requests: { offset: 0, size: 8 }, first_ns: { offset: 8, size: 8 }, last_ns: { offset: 16, size: 8 } } },
  wk_egress_policy: { size: 8, fields: { flags: { offset: 0, size: 4 }, set_id: { offset: 4, size: 4 } } },
  wk_egress_key: {
    size: 28,
    fields: {
      prefixlen: { offset: 0, size: 4 },
      set_id: { offset: 4, size: 4 },
      protocol: { offset: 8, size: 1 },
      _pad: { offset: 9, size: 3 },
      addr: { offset: 12, size: 16 },
    },
  },
  wk_egress_range: { size: 8, fields: { lo: { offset: 0, size: 2 }, hi: { offset: 2, size: 2 }, rule_id: { offset: 4, size: 4 } } },
  wk_egress_val: { size: 136, fields: { count: { offset: 0, size: 4 }, _pad: { offset: 4, size: 4 }, ranges: { offset: 8, size: 128 } } },
  wk_egress_event: {
    size: 56,
    fields: {
      time_ns: { offset: 0, size: 8 },
      cgroup_id: { offset: 8, size: 8 },
      addr: { offset: 16, size: 16 },
      port: { offset: 32, size: 2 },
      protocol: { offset: 34, size: 1 },
      verdict: { offset: 35, size: 1 },
      hook: { offset: 36, size: 1 },
      sock_type: { offset: 37, size: 1 },
      family: { offset: 38, size: 1 },
      _pad: { offset: 39, size: 1 },
      pid: { offset: 40, size: 4 },
      uid: { offset: 44, size: 4 },
      workload_id: { offset: 48, size: 4 },
      set_id: { offset: 52, size: 4 },
    },
  },
} as const satisfies Record<string, Layout>;

/*
 * Constants shared with bpf/wirekey.h. Each one is a member of an enum
 * there and is listed in CONSTANTS below, which verifyConstants checks
 * against the object's BTF at load.
 */
/** wk_bind_val.action: redirect to the proxy (enum wk_action). */
export const WK_ACTION_PROXY = 1;
/** wk_stats indexes (enum wk_stat). */
export const WK_STAT_TASKS_FULL = 0;
export const WK_STAT_STORAGE_FAIL = 1;
export const WK_STAT_PORT_BIND = 2;
/** Entries of wk_stats. */
export const WK_STAT_MAX = 8;
/** Map capacities (enum wk_limits); the maps' own max_entries are what the controller checks fits. */
const WK_LIMITS = {
  WK_MAX_CGROUPS: 4096,
  WK_MAX_EXES: 4096,
  WK_MAX_UIDS: 4096,
  WK_MAX_BINDINGS: 4096,
  WK_MAX_CONNS: 65536,
  WK_MAX_TASKS: 131072,
  WK_MASK_WORDS,
  WK_MAX_WORKLOADS,
  WK_MAX_CGROUP_DEPTH: 32,
};
export const BPF_NOEXIST = 1;
export const AF_INET = 2;
export const AF_INET6 = 10;

/**
 * Compares every layout with the object's BTF.
 * @throws BpfError naming the first struct and member that differ.
 */
export function verifyLayouts(btfStruct: (name: string) => BtfStruct | null): void {
  for (const [name, layout] of Object.entries(LAYOUTS) as [string, Layout][]) {
    const btf = btfStruct(name);
    if (!btf) throw new BpfError(`struct ${name} is missing from the BPF object's BTF`);
    if (btf.size !== layout.size) {
      throw new BpfError(`struct ${name}: BTF size ${btf.size}, controller expects ${layout.size}`);
    }
    const names = new Set(btf.members.map((m) => m.name));
    for (const [field, want] of Object.entries(layout.fields)) {
      const got = btf.members.find((m) => m.name === field);
      if (!got || got.offset !== want.offset || got.size !== want.size) {
        throw new BpfError(
          `struct ${name}.${field}: BTF has ${got ? `offset ${got.offset} size ${got.size}` : 'no such member'}, ` +
            `controller expects offset ${want.offset} size ${want.size}`,
        );
      }
      names.delete(field);
    }
    if (names.size) throw new BpfError(`struct ${name}: members unknown to the controller: ${[...names].join(', ')}`);
  }
}

/**
 * Compares the controller's copies of the constants bpf/wirekey.h keeps in
 * enums (so that they reach BTF) with the object's: every member of each
 * enum, with its value, on both sides. With `btfEnumNames`, also every
 * enum of the object named wk_*: one the controller does not know is an
 * error too, so a constant cannot be added on the C side alone.
 * @throws BpfError naming the first enum and member that differ.
 */
export function verifyConstants(
  btfEnum: (name: string) => Record<string, number> | null,
  btfEnumNames?: () => string[],
): void {
  if (btfEnumNames) {
    const unknown = btfEnumNames().filter((n) => n.startsWith('wk_') && !(n in CONSTANTS));
    if (unknown.length) throw new BpfError(`enum ${unknown.join(', ')} in the BPF object is unknown to the controller (controller/datapath/layout.ts CONSTANTS)`);
  }
  for (const [name, want] of Object.entries(CONSTANTS) as [string, Record<string, number>][]) {
    const got = btfEnum(name);
    if (!got) throw new BpfError(`enum ${name} is missing from the BPF object's BTF`);
    for (const [member, value] of Object.entries(want)) {
      if (got[member] !== value) {
        throw new BpfError(`enum ${name}: ${member} is ${got[member] ?? 'missing'} in the BPF object, controller expects ${value}`);
      }
    }
    const unknown = Object.keys(got).filter((m) => !(m in want));
    if (unknown.length) throw new BpfError(`enum ${name}: members unknown to the controller: ${unknown.join(', ')}`);
  }
}

/**
 * The whole C/TypeScript contract of an opened object: every struct layout
 * and every shared constant (verifyLayouts, verifyConstants with the
 * object's enum names). Call between open and load.
 * @throws BpfError naming the first struct, enum or member that differs.
 */
export function verifyContract(object: Pick<NativeObject, 'btfStruct' | 'btfEnum' | 'btfEnumNames'>): void {
  verifyLayouts((name) => object.btfStruct(name));
  verifyConstants((name) => object.btfEnum(name), () => object.btfEnumNames());
}

/** A 16-byte address in the kernel's form: IPv4 as ::ffff:a.b.c.d. */
export function encodeAddress(ip: string): Buffer {
  const parsed = ipaddr.parse(ip);
  const v6 = parsed.kind() === 'ipv4' ? (parsed as ipaddr.IPv4).toIPv4MappedAddress() : (parsed as ipaddr.IPv6);
  return Buffer.from(v6.toByteArray());
}

/** The text form of a 16-byte kernel address; mapped IPv4 comes back as a.b.c.d. */
export function decodeAddress(buf: Buffer): string {
  const v6 = ipaddr.fromByteArray([...buf]) as ipaddr.IPv6;
  return v6.isIPv4MappedAddress() ? v6.toIPv4Address().toString() : v6.toString();
}

export function encodeBindKey(workloadId: number, port: number): Buffer {
  const b = Buffer.alloc(LAYOUTS.wk_bind_key.size);
  b.writeUInt32LE(workloadId, LAYOUTS.wk_bind_key.fields.workload_id.offset);
  b.writeUInt16LE(port, LAYOUTS.wk_bind_key.fields.port.offset);
  return b;
}

export function encodeBindVal(action: number): Buffer {
  const b = Buffer.alloc(LAYOUTS.wk_bind_val.size);
  b.writeUInt32LE(action, LAYOUTS.wk_bind_val.fields.action.offset);
  return b;
}

export function encodeConnKey(ip: string, port: number): Buffer {
  const b = Buffer.alloc(LAYOUTS.wk_conn_key.size);
  encodeAddress(ip).copy(b, LAYOUTS.wk_conn_key.fields.addr.offset);
  b.writeUInt16LE(port, LAYOUTS.wk_conn_key.fields.port.offset);
  return b;
}

/** What the kernel recorded for a redirected connection. */
export interface OrigDst {
  address: string;
  port: number;
  family: 'ipv4' | 'ipv6';
  workloadId: number;
  pid: number;
  uid: number;
  cgroupId: bigint;
}

export function decodeOrigDst(b: Buffer): OrigDst {
  const f = LAYOUTS.wk_orig_dst.fields;
  return {
    address: decodeAddress(b.subarray(f.addr.offset, f.addr.offset + f.addr.size)),
    port: b.readUInt16BE(f.port.offset),
    family: b.readUInt16LE(f.family.offset) === AF_INET ? 'ipv4' : 'ipv6',
    workloadId: b.readUInt32LE(f.workload_id.offset),
    pid: b.readUInt32LE(f.pid.offset),
    uid: b.readUInt32LE(f.uid.offset),
    cgroupId: b.readBigUInt64LE(f.cgroup_id.offset),
  };
}

export function encodeU64(v: bigint): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(v);
  return b;
}

export function encodeU32(v: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(v);
  return b;
}

export function encodeU16(v: number): Buffer {
  const b = Buffer.alloc(2);
  b.writeUInt16LE(v);
  return b;
}

/** A set of workload ids (1..WK_MAX_WORKLOADS) as the kernel's struct wk_mask. */
export function encodeMask(ids: Iterable<number>): Buffer {
  const b = Buffer.alloc(LAYOUTS.wk_mask.size);
  for (const id of ids) {
    if (id < 1 || id > WK_MAX_WORKLOADS) throw new RangeError(`workload id ${id} is outside 1..${WK_MAX_WORKLOADS}`);
    const bit = id - 1;
    b[bit >> 3] = (b[bit >> 3] as number) | (1 << (bit & 7));
  }
  return b;
}

/** The workload ids in a struct wk_mask, ascending. */
export function decodeMask(b: Buffer): number[] {
  const ids: number[] = [];
  for (let bit = 0; bit < WK_MAX_WORKLOADS; bit++) if (((b[bit >> 3] as number) >> (bit & 7)) & 1) ids.push(bit + 1);
  return ids;
}

/** stat()'s st_dev (the C library's encoding) as the kernel's dev_t: (major << 20) | minor. */
export function kernelDev(statDev: number | bigint): number {
  const d = BigInt(statDev);
  const major = Number(((d >> 8n) & 0xfffn) | ((d >> 32n) & 0xfffff000n));
  const minor = Number((d & 0xffn) | ((d >> 12n) & 0xffffff00n));
  return ((major << 20) | minor) >>> 0;
}

/** The kernel dev_t as people write it: major:minor. */
export function formatDev(dev: number): string {
  return `${dev >>> 20}:${dev & 0xfffff}`;
}

export function encodeExeKey(k: ExeKey): Buffer {
  const f = LAYOUTS.wk_exe_key.fields;
  const b = Buffer.alloc(LAYOUTS.wk_exe_key.size);
  b.writeBigUInt64LE(k.ino, f.ino.offset);
  b.writeUInt32LE(k.dev, f.dev.offset);
  b.writeBigUInt64LE(k.inode, f.inode.offset);
  return b;
}

export function decodeExeKey(b: Buffer): ExeKey {
  const f = LAYOUTS.wk_exe_key.fields;
  return { ino: b.readBigUInt64LE(f.ino.offset), dev: b.readUInt32LE(f.dev.offset), inode: b.readBigUInt64LE(f.inode.offset) };
}

/** What wk_agent_files wrote: descriptor -> the kernel's key of the file it holds. */
export function decodeAgentFiles(b: Buffer): Map<number, ExeKey> {
  const { size, fields: f } = LAYOUTS.wk_agent_file;
  if (b.length % size !== 0) throw new BpfError(`wk_agent_files wrote ${b.length} bytes, not a whole number of ${size}-byte records`);
  const out = new Map<number, ExeKey>();
  for (let off = 0; off < b.length; off += size) {
    out.set(b.readInt32LE(off + f.fd.offset), decodeExeKey(b.subarray(off + f.key.offset, off + f.key.offset + f.key.size)));
  }
  return out;
}

export function encodeAny(any: { cgroup: Iterable<number>; exe: Iterable<number>; uid: Iterable<number> }): Buffer {
  const f = LAYOUTS.wk_any.fields;
  const b = Buffer.alloc(LAYOUTS.wk_any.size);
  encodeMask(any.cgroup).copy(b, f.cgroup.offset);
  encodeMask(any.exe).copy(b, f.exe.offset);
  encodeMask(any.uid).copy(b, f.uid.offset);
  return b;
}

export function decodeAny(b: Buffer): { cgroup: number[]; exe: number[]; uid: number[] } {
  const f = LAYOUTS.wk_any.fields;
  const part = (o: { offset: number; size: number }) => decodeMask(b.subarray(o.offset, o.offset + o.size));
  return { cgroup: part(f.cgroup), exe: part(f.exe), uid: part(f.uid) };
}

/* ---- kernel HTTP datapath (bpf/http-inject.bpf.c) ---- */

/** Longest header line the kernel injects, CRLF included (WK_HTTP_LINE_MAX). */
export const WK_HTTP_LINE_MAX = 512;
/** Longest request head the kernel handles (WK_HTTP_HEAD_MAX). */
export const WK_HTTP_HEAD_MAX = 8192;
/** wk_http_hdr.state (enum wk_http_hdr_state) */
export const WK_HTTP_UNBOUND = 0;
export const WK_HTTP_INJECT = 1;
export const WK_HTTP_WITHHOLD = 2;
/** wk_http_dest_key.prefixlen covers the port and its pad before the address bits. */
const DEST_PORT_BITS = 32;
/** bpf(2) map update flag: update a value in place under its bpf_spin_lock. */
export const BPF_F_LOCK = 4;

/**
 * wk_http_stats, in enum wk_http_stat's order: the counter's name, its C
 * name, and for a refusal the code audit lines and `wirekey status` give it
 * (controller/refusals.ts, shared with the proxy).
 */
const HTTP_STATS = [
  ['injected', 'WK_HTTP_STAT_INJECTED', null],
  ['corked', 'WK_HTTP_STAT_CORKED', null],
  ['refusedHeadSize', 'WK_HTTP_STAT_REFUSED_HEAD_SIZE', 'head-too-large'],
  ['refusedMalformed', 'WK_HTTP_STAT_REFUSED_MALFORMED', 'malformed-request'],
  ['refusedTransferEncoding', 'WK_HTTP_STAT_REFUSED_TRANSFER', 'bad-transfer-encoding'],
  ['refusedUpgrade', 'WK_HTTP_STAT_REFUSED_UPGRADE', 'upgrade-unsupported'],
  ['refusedHeaderPresent', 'WK_HTTP_STAT_REFUSED_HEADER', 'credential-header-present'],
  ['refusedContentLength', 'WK_HTTP_STAT_REFUSED_LENGTH', 'ambiguous-length'],
  ['refusedBinding', 'WK_HTTP_STAT_REFUSED_BINDING', 'binding-changed'],
  ['refusedStream', 'WK_HTTP_STAT_REFUSED_STREAM', 'stream-desync'],
  ['refusedInternal', 'WK_HTTP_STAT_REFUSED_INTERNAL', 'internal-error'],
  ['dropped', 'WK_HTTP_STAT_DROPPED', null],
  ['sockhashFull', 'WK_HTTP_STAT_SOCKHASH_FULL', null],
  ['storageFailures', 'WK_HTTP_STAT_STORAGE_FAIL', 'no-socket-storage'],
  ['refusedBusy', 'WK_HTTP_STAT_REFUSED_BUSY', 'send-buffer-full'],
  ['refusedFastOpen', 'WK_HTTP_STAT_REFUSED_FASTOPEN', 'fast-open'],
  ['eventsLost', 'WK_HTTP_STAT_EVENTS_LOST', null],
  ['refusedChunked', 'WK_HTTP_STAT_REFUSED_CHUNKED', 'bad-chunked-framing'],
  ['refusedMethod', 'WK_HTTP_STAT_REFUSED_METHOD', 'method-not-allowed'],
  ['refusedPush', 'WK_HTTP_STAT_REFUSED_PUSH', 'push-failed'],
  ['refusedHost', 'WK_HTTP_STAT_REFUSED_HOST', 'host-mismatch'],
  ['refusedAgent', 'WK_HTTP_STAT_REFUSED_AGENT', 'agent-gone'],
  ['refusedCredential', 'WK_HTTP_STAT_REFUSED_CREDENTIAL', 'credential-unavailable'],
  ['passThrough', 'WK_HTTP_STAT_PASSTHROUGH', null],
  ['usageFull', 'WK_HTTP_STAT_USAGE_FULL', null],
] as const satisfies readonly (readonly [string, string, RefusalCode | null])[];

/** Indexes of wk_http_stats. */
export const WK_HTTP_STATS = HTTP_STATS.map(([name]) => name);
export type HttpStatName = (typeof HTTP_STATS)[number][0];

/** The refusal code of a wk_http_stats counter, or null for one that counts no refusal (injected, corked, ...). */
export function httpStatRefusal(stat: HttpStatName): RefusalCode | null {
  return HTTP_STATS.find(([name]) => name === stat)?.[2] ?? null;
}

/** wk_http_dest_val.flags: the service lists hosts; requests must name one (WK_HTTP_DEST_CHECK_HOST). */
export const WK_HTTP_DEST_CHECK_HOST = 1;

/** wk_http_event.kind (enum wk_http_event_kind) */
export const WK_HTTP_EVENT_INJECTED = 1;
export const WK_HTTP_EVENT_REFUSED = 2;
/** wk_http_config.flags: an injected event per request, not per connection and header version (enum wk_http_cfg_flag). */
export const WK_HTTP_CFG_AUDIT_REQUESTS = 1;
/** wk_http_config.flags: the failed-push watch is attached and refuses urgent data as it is pushed (enum wk_http_cfg_flag). */
export const WK_HTTP_CFG_PUSH_WATCH = 2;
/** Entries of wk_http_usage (WK_HTTP_MAX_USAGE). */
export const WK_HTTP_MAX_USAGE = 4 * WK_LIMITS.WK_MAX_BINDINGS;

/* ---- egress policy (bpf/egress.bpf.h, bpf/egress.bpf.c) ---- */

/** Prefix entries of wk_egress_rules a policy may use, all workloads together (WK_EGRESS_MAX_PREFIXES). */
export const WK_EGRESS_MAX_PREFIXES = 8192;
/** Port ranges one prefix entry holds (WK_EGRESS_MAX_RANGES). */
export const WK_EGRESS_MAX_RANGES = 16;
/** wk_egress_key.prefixlen bits before the address (WK_EGRESS_KEY_FIXED). */
export const WK_EGRESS_KEY_FIXED = 64;
/** wk_egress_policy.flags (enum wk_egress_flag) */
export const WK_EGRESS_RESTRICTED = 1;
export const WK_EGRESS_AUDIT = 2;
/** wk_egress_key.protocol (enum wk_egress_proto): IPPROTO_* */
export const WK_EGRESS_TCP = 6;
export const WK_EGRESS_UDP = 17;
/** wk_egress_event.verdict (enum wk_egress_verdict) */
export const WK_EGRESS_REFUSED = 1;
export const WK_EGRESS_WOULD_REFUSE = 2;
/** wk_egress_event.hook (enum wk_egress_hook) */
export const WK_EGRESS_HOOK_CONNECT = 1;
export const WK_EGRESS_HOOK_SENDMSG = 2;
export const WK_EGRESS_HOOK_SOCKET = 3;
export const WK_EGRESS_HOOK_ROUTE = 4;
const EGRESS_HOOKS: Record<number, EgressHook> = {
  [WK_EGRESS_HOOK_CONNECT]: 'connect',
  [WK_EGRESS_HOOK_SENDMSG]: 'sendmsg',
  [WK_EGRESS_HOOK_SOCKET]: 'socket',
  [WK_EGRESS_HOOK_ROUTE]: 'route',
};

/**
 * A workload's wk_egress_stats counters, in enum wk_egress_stat's order:
 * the counter's name, its C name, and for a refusal the code audit lines
 * and `wirekey status` give it (controller/refusals.ts).
 */
const EGRESS_STATS = [
  ['refused', 'WK_EGRESS_STAT_REFUSED', 'egress-not-allowed'],
  ['wouldRefuse', 'WK_EGRESS_STAT_WOULD_REFUSE', 'egress-not-allowed'],
  ['eventsLost', 'WK_EGRESS_STAT_EVENTS_LOST', null],
] as const satisfies readonly (readonly [string, string, RefusalCode | null])[];

/** A workload's counters in wk_egress_stats, by index. */
export const WK_EGRESS_STATS = EGRESS_STATS.map(([name]) => name);
export type EgressStatName = (typeof EGRESS_STATS)[number][0];

/** The refusal code of a wk_egress_stats counter (a would-refuse is counted under the code it would have had), or null. */
export function egressStatRefusal(stat: EgressStatName): RefusalCode | null {
  return EGRESS_STATS.find(([name]) => name === stat)?.[2] ?? null;
}

/** The wk_egress_stats index of workload `workloadId`'s counter `stat`. */
export function egressStatIndex(workloadId: number, stat: EgressStatName): number {
  return workloadId * EGRESS_STATS.length + WK_EGRESS_STATS.indexOf(stat);
}

export function encodeEgressPolicy(flags: number, setId: number): Buffer {
  const f = LAYOUTS.wk_egress_policy.fields;
  const b = Buffer.alloc(LAYOUTS.wk_egress_policy.size);
  b.writeUInt32LE(flags >>> 0, f.flags.offset);
  b.writeUInt32LE(setId >>> 0, f.set_id.offset);
  return b;
}

export function decodeEgressPolicy(b: Buffer): { flags: number; setId: number } {
  const f = LAYOUTS.wk_egress_policy.fields;
  return { flags: b.readUInt32LE(f.flags.offset), setId: b.readUInt32LE(f.set_id.offset) };
}

/** An address prefix as wk_egress_rules keys it: bits and bytes in the one 128-bit space. */
export interface EgressPrefix {
  /** Bits of `bytes` that count (an IPv4 /24 is 120). */
  bits: number;
  /** 16 bytes, IPv4 as ::ffff:a.b.c.d, bits past the prefix zero. */
  bytes: number[];
}

/**
 * A wk_egress_rules key. IPv4 and IPv6 are one address space (IPv4 as
 * ::ffff:a.b.c.d), as controller/policy/egress.ts matches them: IPv4 rules
 * match IPv4-mapped destinations, and ::/0 matches IPv4 too.
 */
export function encodeEgressKey(setId: number, protocol: number, prefix: EgressPrefix): Buffer {
  const f = LAYOUTS.wk_egress_key.fields;
  const b = Buffer.alloc(LAYOUTS.wk_egress_key.size);
  b.writeUInt32LE(WK_EGRESS_KEY_FIXED + prefix.bits, f.prefixlen.offset);
  b.writeUInt32LE(setId >>> 0, f.set_id.offset);
  b.writeUInt8(protocol, f.protocol.offset);
  Buffer.from(prefix.bytes).copy(b, f.addr.offset);
  return b;
}

export function decodeEgressKey(b: Buffer): { setId: number; protocol: number; bits: number; address: string } {
  const f = LAYOUTS.wk_egress_key.fields;
  return {
    setId: b.readUInt32LE(f.set_id.offset),
    protocol: b.readUInt8(f.protocol.offset),
    bits: b.readUInt32LE(f.prefixlen.offset) - WK_EGRESS_KEY_FIXED,
    address: decodeAddress(b.subarray(f.addr.offset, f.addr.offset + f.addr.size)),
  };
}

/** An allowed port range of a prefix entry, and the rule that allows it. */
export interface EgressRange {
  lo: number;
  hi: number;
  ruleId: number;
}

/** @throws RangeError when there are more than WK_EGRESS_MAX_RANGES ranges (callers check first). */
export function encodeEgressVal(ranges: readonly EgressRange[]): Buffer {
  const f = LAYOUTS.wk_egress_val.fields;
  const r = LAYOUTS.wk_egress_range;
  if (ranges.length > WK_EGRESS_MAX_RANGES) throw new RangeError(`${ranges.length} port ranges; a prefix entry holds at most ${WK_EGRESS_MAX_RANGES}`);
  const b = Buffer.alloc(LAYOUTS.wk_egress_val.size);
  b.writeUInt32LE(ranges.length, f.count.offset);
  ranges.forEach((range, i) => {
    const at = f.ranges.offset + i * r.size;
    b.writeUInt16LE(range.lo, at + r.fields.lo.offset);
    b.writeUInt16LE(range.hi, at + r.fields.hi.offset);
    b.writeUInt32LE(range.ruleId >>> 0, at + r.fields.rule_id.offset);
  });
  return b;
}

export function decodeEgressVal(b: Buffer): EgressRange[] {
  const f = LAYOUTS.wk_egress_val.fields;
  const r = LAYOUTS.wk_egress_range;
  const count = Math.min(b.readUInt32LE(f.count.offset), WK_EGRESS_MAX_RANGES);
  return Array.from({ length: count }, (_, i) => {
    const at = f.ranges.offset + i * r.size;
    return { lo: b.readUInt16LE(at + r.fields.lo.offset), hi: b.readUInt16LE(at + r.fields.hi.offset), ruleId: b.readUInt32LE(at + r.fields.rule_id.offset) };
  });
}

/**
 * Where the kernel judged a call: connect() (TCP, connected UDP), sendmsg()
 * (unconnected UDP), socket() (a kind of socket no rule can name), or
 * route (IPv4 options or an IPv6 routing header: setsockopt(), or a packet
 * that carries them).
 */
export type EgressHook = 'connect' | 'sendmsg' | 'socket' | 'route';

/** One wk_egress_events record: a call refused, or one audit mode let through. */
export interface EgressEventRecord {
  verdict: 'refused' | 'would-refuse';
  hook: EgressHook;
  /** IPPROTO_* of the socket: 6 TCP, 17 UDP; on socket() events another (1 ICMP, 58 ICMPv6, 132 SCTP, 255 raw, ...). */
  protocol: number;
  /** SOCK_* of the socket: 1 stream, 2 datagram, 3 raw, 5 seqpacket. */
  socketType: number;
  family: 'ipv4' | 'ipv6';
  /** tgid of the caller (on route events, of the process that made the socket). */
  pid: number;
  uid: number;
  workloadId: number;
  /** The rule set it was judged against (changes on every reload of the workload's rules). */
  setId: number;
  /** The destination; IPv4 (also IPv4-mapped on an IPv6 socket) as a.b.c.d. Absent on socket() and setsockopt() events. */
  address?: string;
  /** Absent on socket() and route events. */
  port?: number;
  /** cgroup v2 id of the caller (on route events, of the process that made the socket). */
  cgroupId: bigint;
  /** bpf_ktime_get_ns(): CLOCK_MONOTONIC, as process.hrtime.bigint() reads it. */
  monotonicNs: bigint;
}

/**
 * Decodes the wk_egress_events record of `length` bytes at `offset` in `b`.
 * @throws BpfError when the record is not a wk_egress_event (size, verdict, hook or family unknown).
 */
export function decodeEgressEvent(b: Buffer, offset = 0, length = b.length - offset): EgressEventRecord {
  const f = LAYOUTS.wk_egress_event.fields;
  if (length !== LAYOUTS.wk_egress_event.size || offset + length > b.length) {
    throw new BpfError(`wk_egress_events record is ${length} bytes; struct wk_egress_event is ${LAYOUTS.wk_egress_event.size}`);
  }
  const verdict = b[offset + f.verdict.offset] as number;
  const hook = EGRESS_HOOKS[b[offset + f.hook.offset] as number];
  const family = b[offset + f.family.offset];
  if ((verdict !== WK_EGRESS_REFUSED && verdict !== WK_EGRESS_WOULD_REFUSE) || !hook || (family !== AF_INET && family !== AF_INET6)) {
    throw new BpfError(`wk_egress_events record of unknown verdict ${verdict}, hook ${b[offset + f.hook.offset]} or family ${family}`);
  }
  const record: EgressEventRecord = {
    verdict: verdict === WK_EGRESS_REFUSED ? 'refused' : 'would-refuse',
    hook,
    protocol: b[offset + f.protocol.offset] as number,
    socketType: b[offset + f.sock_type.offset] as number,
    family: family === AF_INET ? 'ipv4' : 'ipv6',
    pid: b.readUInt32LE(offset + f.pid.offset),
    uid: b.readUInt32LE(offset + f.uid.offset),
    workloadId: b.readUInt32LE(offset + f.workload_id.offset),
    setId: b.readUInt32LE(offset + f.set_id.offset),
    cgroupId: b.readBigUInt64LE(offset + f.cgroup_id.offset),
    monotonicNs: b.readBigUInt64LE(offset + f.time_ns.offset),
  };
  if (hook === 'connect' || hook === 'sendmsg') {
    record.address = eventAddress(b, offset + f.addr.offset);
    record.port = b.readUInt16LE(offset + f.port.offset);
  } else if (hook === 'route' && !b.subarray(offset + f.addr.offset, offset + f.addr.offset + f.addr.size).every((x) => x === 0)) {
    // A packet's: where it was addressed (its first hop). setsockopt() has none.
    record.address = eventAddress(b, offset + f.addr.offset);
  }
  return record;
}

/**
 * Every enum of bpf/wirekey.h, member by member, as the controller uses
 * them (verifyConstants). A member is named here with the value the
 * controller reads or writes; a C-side change that is not made here too
 * fails the load, naming the enum and member.
 */
export const CONSTANTS: Record<string, Record<string, number>> = {
  wk_limits: WK_LIMITS,
  wk_action: { WK_ACTION_PROXY },
  wk_stat: { WK_STAT_TASKS_FULL, WK_STAT_STORAGE_FAIL, WK_STAT_PORT_BIND, WK_STAT_MAX },
  wk_http_limits: {
    WK_HTTP_MAX_DESTS: 4096,
    WK_HTTP_DEST_EXACT: DEST_PORT_BITS + 128,
    WK_HTTP_MAX_SOCKS: 65536,
    WK_HTTP_LINE_MAX,
    WK_HTTP_HEAD_MAX,
    WK_HTTP_EVENTS_SIZE: 1 << 20,
    WK_HTTP_EVENTS_WAKE: 64 << 10,
    WK_HTTP_MAX_USAGE,
  },
  wk_http_hdr_state: { WK_HTTP_UNBOUND, WK_HTTP_INJECT, WK_HTTP_WITHHOLD },
  wk_http_stat: {
    ...Object.fromEntries(HTTP_STATS.map(([, cName], i) => [cName, i])),
    WK_HTTP_STAT_MAX: HTTP_STATS.length,
  },
  wk_http_event_kind: { WK_HTTP_EVENT_INJECTED, WK_HTTP_EVENT_REFUSED },
  wk_http_hosts: {
    WK_HTTP_DEST_CHECK_HOST,
    WK_HTTP_HOST_MAX,
    WK_HTTP_HOST_KEY_NAME: 256,
    WK_HTTP_MAX_HOSTS,
  },
  wk_http_cfg_flag: { WK_HTTP_CFG_AUDIT_REQUESTS, WK_HTTP_CFG_PUSH_WATCH },
  wk_egress_limits: {
    WK_EGRESS_MAX_PREFIXES,
    WK_EGRESS_MAP_ENTRIES: 2 * WK_EGRESS_MAX_PREFIXES,
    WK_EGRESS_MAX_RANGES,
    WK_EGRESS_KEY_FIXED,
    WK_EGRESS_EVENTS_SIZE: 256 << 10,
  },
  wk_egress_flag: { WK_EGRESS_RESTRICTED, WK_EGRESS_AUDIT },
  wk_egress_proto: { WK_EGRESS_TCP, WK_EGRESS_UDP },
  wk_egress_verdict: { WK_EGRESS_REFUSED, WK_EGRESS_WOULD_REFUSE },
  wk_egress_hook: { WK_EGRESS_HOOK_CONNECT, WK_EGRESS_HOOK_SENDMSG, WK_EGRESS_HOOK_SOCKET, WK_EGRESS_HOOK_ROUTE },
  wk_egress_stat: {
    ...Object.fromEntries(EGRESS_STATS.map(([, cName], i) => [cName, i])),
    WK_EGRESS_STAT_MAX: EGRESS_STATS.length,
  },
};

/**
 * One wk_http_events record: an injected request or a refusal. It holds no
 * header bytes; `headerVersion` names the line (wk_http_hdr.version).
 */
export interface HttpEventRecord {
  kind: 'injected' | 'refused';
  /** The wk_http_stats counter this event was counted in: 'injected', or why it was refused ('refusedTransferEncoding', ...). */
  reason: HttpStatName;
  /** tgid of the process that connected (as the proxy path reports it). */
  pid: number;
  uid: number;
  workloadId: number;
  serviceId: number;
  /** The version of the header line sent (injected), or of the last one copied (refused); 0 if none. */
  headerVersion: number;
  /** Where the connection goes, as connect() named it; IPv4 as a.b.c.d. */
  address: string;
  port: number;
  /** The socket cookie (SO_COOKIE), the same for every event of a connection. */
  cookie: bigint;
  /** cgroup v2 id of the connecting process at connect(). */
  cgroupId: bigint;
  /** bpf_ktime_get_ns(): CLOCK_MONOTONIC, as process.hrtime.bigint() reads it. */
  monotonicNs: bigint;
}

/*
 * decodeAddress() for every event would cost more than the rest of the
 * decoding; events name few destinations (the pinned ones), so their text
 * is cached.
 */
const eventAddresses4 = new Map<number, string>();
const eventAddresses6 = new Map<string, string>();

function eventAddress(b: Buffer, off: number): string {
  const mapped = b.readUInt32LE(off) === 0 && b.readUInt32LE(off + 4) === 0 && b.readUInt32BE(off + 8) === 0xffff;
  const cache: Map<number | string, string> = mapped ? eventAddresses4 : eventAddresses6;
  const key = mapped ? b.readUInt32BE(off + 12) : b.toString('hex', off, off + 16);
  let text = cache.get(key);
  if (text === undefined) {
    if (cache.size >= 1024) cache.clear();
    text = decodeAddress(b.subarray(off, off + 16));
    cache.set(key, text);
  }
  return text;
}

/**
 * Decodes the wk_http_events record of `length` bytes at `offset` in `b`
 * (the ring buffer hands over records back to back).
 * @throws BpfError when the record is not a wk_http_event (size, kind or reason unknown).
 */
export function decodeHttpEvent(b: Buffer, offset = 0, length = b.length - offset): HttpEventRecord {
  const f = LAYOUTS.wk_http_event.fields;
  if (length !== LAYOUTS.wk_http_event.size || offset + length > b.length) {
    throw new BpfError(`wk_http_events record is ${length} bytes; struct wk_http_event is ${LAYOUTS.wk_http_event.size}`);
  }
  const kind = b[offset + f.kind.offset];
  const reason = WK_HTTP_STATS[b[offset + f.reason.offset] as number];
  if ((kind !== WK_HTTP_EVENT_INJECTED && kind !== WK_HTTP_EVENT_REFUSED) || reason === undefined) {
    throw new BpfError(`wk_http_events record of unknown kind ${kind} or reason ${b[offset + f.reason.offset]}`);
  }
  return {
    kind: kind === WK_HTTP_EVENT_INJECTED ? 'injected' : 'refused',
    reason,
    pid: b.readUInt32LE(offset + f.pid.offset),
    uid: b.readUInt32LE(offset + f.uid.offset),
    workloadId: b.readUInt32LE(offset + f.workload_id.offset),
    serviceId: b.readUInt32LE(offset + f.service_id.offset),
    headerVersion: b.readUInt32LE(offset + f.version.offset),
    address: eventAddress(b, offset + f.addr.offset),
    port: b.readUInt16LE(offset + f.port.offset),
    cookie: b.readBigUInt64LE(offset + f.cookie.offset),
    cgroupId: b.readBigUInt64LE(offset + f.cgroup_id.offset),
    monotonicNs: b.readBigUInt64LE(offset + f.time_ns.offset),
  };
}

/** One wk_http_usage entry, its CPUs summed. */
export interface HttpUsageRecord {
  workloadId: number;
  serviceId: number;
  /** wk_http_hdr.version of the line those requests carried. */
  headerVersion: number;
  /** wk_http_config.epoch their connections were made under. */
  epoch: number;
  /** Requests injected since the entry was made. */
  requests: bigint;
  /** bpf_ktime_get_ns() (CLOCK_MONOTONIC) of the first and the latest of them. */
  firstNs: bigint;
  lastNs: bigint;
}

export function encodeHttpUsageKey(k: { workloadId: number; serviceId: number; headerVersion: number; epoch: number }): Buffer {
  const f = LAYOUTS.wk_http_usage_key.fields;
  const b = Buffer.alloc(LAYOUTS.wk_http_usage_key.size);
  b.writeUInt32LE(k.workloadId, f.workload_id.offset);
  b.writeUInt32LE(k.serviceId, f.service_id.offset);
  b.writeUInt32LE(k.headerVersion, f.version.offset);
  b.writeUInt32LE(k.epoch, f.epoch.offset);
  return b;
}

/**
 * A wk_http_usage entry from its key and its per-CPU value (every CPU's
 * struct wk_http_usage, each padded to 8 bytes): requests summed, the
 * earliest first and the latest last over the CPUs that counted any.
 * @throws BpfError when the value is not a whole number of per-CPU values.
 */
export function decodeHttpUsage(key: Buffer, value: Buffer): HttpUsageRecord {
  const kf = LAYOUTS.wk_http_usage_key.fields;
  const vf = LAYOUTS.wk_http_usage.fields;
  const stride = Math.ceil(LAYOUTS.wk_http_usage.size / 8) * 8;
  if (key.length !== LAYOUTS.wk_http_usage_key.size || value.length === 0 || value.length % stride) {
    throw new BpfError(`wk_http_usage entry of ${key.length} + ${value.length} bytes is not a struct wk_http_usage_key and per-CPU struct wk_http_usage values`);
  }
  let requests = 0n;
  let firstNs = 0n;
  let lastNs = 0n;
  for (let off = 0; off < value.length; off += stride) {
    const n = value.readBigUInt64LE(off + vf.requests.offset);
    if (!n) continue;
    requests += n;
    const first = value.readBigUInt64LE(off + vf.first_ns.offset);
    const last = value.readBigUInt64LE(off + vf.last_ns.offset);
    if (!firstNs || first < firstNs) firstNs = first;
    if (last > lastNs) lastNs = last;
  }
  return {
    workloadId: key.readUInt32LE(kf.workload_id.offset),
    serviceId: key.readUInt32LE(kf.service_id.offset),
    headerVersion: key.readUInt32LE(kf.version.offset),
    epoch: key.readUInt32LE(kf.epoch.offset),
    requests,
    firstNs,
    lastNs,
  };
}

/**
 * A wk_http_dest (LPM trie) key: `port` and an address or CIDR. IPv4 goes in
 * mapped form, so an IPv4 prefix /n is the IPv6 prefix /96+n; bits beyond the
 * prefix are zero, so one network has one key however it is written.
 * @throws RangeError when `address` is neither an IP address nor a CIDR.
 */
export function encodeHttpDestKey(address: string, port: number): Buffer {
  const f = LAYOUTS.wk_http_dest_key.fields;
  const prefix = parseAddressPrefix(address);
  if (!prefix) throw new RangeError(`${address} is not an IP address or CIDR`);
  const b = Buffer.alloc(LAYOUTS.wk_http_dest_key.size);
  b.writeUInt32LE(DEST_PORT_BITS + prefix.bits, f.prefixlen.offset);
  b.writeUInt16LE(port, f.port.offset);
  Buffer.from(prefix.bytes).copy(b, f.addr.offset);
  return b;
}

/** The port and address (`a.b.c.d`, or `a.b.c.d/n` for a prefix) of a wk_http_dest key. */
export function decodeHttpDestKey(b: Buffer): { address: string; port: number } {
  const f = LAYOUTS.wk_http_dest_key.fields;
  const prefix = b.readUInt32LE(f.prefixlen.offset) - DEST_PORT_BITS;
  const ip = decodeAddress(b.subarray(f.addr.offset, f.addr.offset + f.addr.size));
  const bits = ip.includes(':') ? prefix : prefix - 96;
  const full = ip.includes(':') ? 128 : 32;
  return { address: bits === full ? ip : `${ip}/${bits}`, port: b.readUInt16LE(f.port.offset) };
}

export function encodeHttpDestVal(serviceId: number, flags = 0): Buffer {
  const f = LAYOUTS.wk_http_dest_val.fields;
  const b = Buffer.alloc(LAYOUTS.wk_http_dest_val.size);
  b.writeUInt32LE(serviceId, f.service_id.offset);
  b.writeUInt32LE(flags, f.flags.offset);
  return b;
}

/**
 * A wk_http_host key: a plaintext service's host, as the kernel compares
 * it (lower-case, no trailing dot, zero-padded).
 * @throws RangeError when `host` is empty, longer than WK_HTTP_HOST_MAX or
 *   holds a character a Host the kernel accepts cannot (see bpf/http-inject.bpf.c host_char()).
 */
export function encodeHttpHostKey(serviceId: number, host: string): Buffer {
  const f = LAYOUTS.wk_http_host_key.fields;
  const name = host.toLowerCase().replace(/\.$/, '');
  if (!/^[a-z0-9._~-]+$/.test(name) || name.length > WK_HTTP_HOST_MAX) {
    throw new RangeError(`${JSON.stringify(host)} is not a host name of at most ${WK_HTTP_HOST_MAX} characters`);
  }
  const b = Buffer.alloc(LAYOUTS.wk_http_host_key.size);
  b.writeUInt32LE(serviceId, f.service_id.offset);
  b.writeUInt32LE(name.length, f.len.offset);
  b.write(name, f.name.offset, 'latin1');
  return b;
}

export function encodeHttpHdrKey(workloadId: number, serviceId: number): Buffer {
  const f = LAYOUTS.wk_http_hdr_key.fields;
  const b = Buffer.alloc(LAYOUTS.wk_http_hdr_key.size);
  b.writeUInt32LE(workloadId, f.workload_id.offset);
  b.writeUInt32LE(serviceId, f.service_id.offset);
  return b;
}

export function decodeHttpHdrKey(b: Buffer): { workloadId: number; serviceId: number } {
  const f = LAYOUTS.wk_http_hdr_key.fields;
  return { workloadId: b.readUInt32LE(f.workload_id.offset), serviceId: b.readUInt32LE(f.service_id.offset) };
}

/**
 * A wk_http_hdr value. `line` is the whole header line, CRLF included, and
 * `nameLength` the bytes before its colon; both are checked by the caller
 * (KernelHttp). `selection` is the workload's selection counter
 * (connections made under another are refused). The lock word is left
 * zero: the kernel ignores it on BPF_F_LOCK updates. `size` is the map's
 * value size when it is not this layout's (a previous agent's map, only
 * ever wiped): state and version sit at the same offsets in both, and the
 * rest is zero.
 */
export function encodeHttpHdr(
  state: number,
  version: number,
  line: Buffer = Buffer.alloc(0),
  nameLength = 0,
  selection = 0,
  size: number = LAYOUTS.wk_http_hdr.size,
): Buffer {
  const f = LAYOUTS.wk_http_hdr.fields;
  if (line.length > f.line.size) throw new RangeError(`header line is ${line.length} bytes; at most ${f.line.size}`);
  const b = Buffer.alloc(size);
  b.writeUInt16LE(state, f.state.offset);
  b.writeUInt32LE(version >>> 0, f.version.offset);
  b.writeUInt16LE(line.length, f.len.offset);
  b.writeUInt16LE(nameLength, f.name_len.offset);
  b.writeUInt32LE(selection >>> 0, f.selection.offset);
  line.copy(b, f.line.offset);
  return b;
}

/** State, version and selection of a wk_http_hdr value; never the line (it holds a secret). */
export function decodeHttpHdrMeta(b: Buffer): { state: number; version: number; length: number; selection: number } {
  const f = LAYOUTS.wk_http_hdr.fields;
  return {
    state: b.readUInt16LE(f.state.offset),
    version: b.readUInt32LE(f.version.offset),
    length: b.readUInt16LE(f.len.offset),
    selection: b.length === LAYOUTS.wk_http_hdr.size ? b.readUInt32LE(f.selection.offset) : 0,
  };
}

export interface HttpConfig {
  epoch: number;
  flags: number;
  /** The agent's heartbeat: CLOCK_MONOTONIC ns (process.hrtime.bigint()) until which the kernel injects; 0n refuses at once. */
  aliveUntil: bigint;
}

export function encodeHttpConfig(epoch: number, flags = 0, aliveUntil = 0n): Buffer {
  const f = LAYOUTS.wk_http_config.fields;
  const b = Buffer.alloc(LAYOUTS.wk_http_config.size);
  b.writeUInt32LE(epoch >>> 0, f.epoch.offset);
  b.writeUInt32LE(flags >>> 0, f.flags.offset);
  b.writeBigUInt64LE(aliveUntil, f.alive_until.offset);
  return b;
}

export function decodeHttpConfig(b: Buffer): HttpConfig {
  const f = LAYOUTS.wk_http_config.fields;
  return { epoch: b.readUInt32LE(f.epoch.offset), flags: b.readUInt32LE(f.flags.offset), aliveUntil: b.readBigUInt64LE(f.alive_until.offset) };
}
