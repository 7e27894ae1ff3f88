/**
 * What this kernel's BPF can do, asked of the kernel itself, never guessed
 * from its version: a 5.10 kernel with backports and a 6.x kernel built
 * without trampolines both exist, and uname tells neither apart.
 *
 * Each part of the datapath has a list of requirements (program types,
 * map types, helpers per program type, tracepoints in the kernel's BTF,
 * BPF trampolines); probe() answers, per part, the first one missing. The
 * probes:
 *
 * - program and map types: libbpf_probe_bpf_prog_type and
 *   libbpf_probe_bpf_map_type;
 * - helpers: libbpf_probe_bpf_helper, whose "no" is final. Its "yes" is
 *   confirmed by loading a program that calls the helper and reading the
 *   verifier's log, because libbpf 1.1 (Debian 12's) knows only the older
 *   wordings of "no such helper": on 6.18 the verifier says "program of
 *   this type cannot use helper" and libbpf 1.1 reports even
 *   bpf_xdp_adjust_head as usable from sk_msg;
 * - tracing programs (tp_btf, fexit), which libbpf 1.1 cannot probe (they
 *   need a BTF id to attach to): a program that does nothing, loaded
 *   against the very tracepoint or function wirekey uses;
 * - BPF trampolines (fexit): libbpf has no probe for attach types, and a
 *   kernel may load an fexit program yet refuse to attach it (no ftrace
 *   direct calls), or refuse to load it (lockdown, and this build machine,
 *   with EPERM). So the probe loads a do-nothing fexit program on
 *   tcp_bpf_push, attaches it and detaches it at once: the only answer
 *   that holds for the attach the agent makes. For that instant a no-op
 *   program runs on tcp_bpf_push's return.
 *
 * Answers are cached for the life of the process: a kernel does not gain
 * or lose features while it runs.
 */
import { BpfError, NotSupportedError } from '../errors.js';
import { native, type NativeProbes } from './native.js';

/* UAPI numbers (linux/bpf.h): part of the kernel's ABI, never renumbered. */
const PROG = { SOCKET_FILTER: 1, CGROUP_SKB: 8, CGROUP_SOCK: 9, SOCK_OPS: 13, SK_MSG: 16, CGROUP_SOCK_ADDR: 18, CGROUP_SOCKOPT: 25, TRACING: 26 } as const;
const ATTACH = {
  CGROUP_INET_EGRESS: 1, CGROUP_INET_SOCK_CREATE: 2, SK_MSG_VERDICT: 7, CGROUP_INET4_CONNECT: 10, CGROUP_UDP4_SENDMSG: 14, CGROUP_SETSOCKOPT: 22,
  TRACE_RAW_TP: 23, TRACE_FEXIT: 25, CGROUP_INET4_GETPEERNAME: 29,
} as const;
const MAP = { LRU_HASH: 9, LPM_TRIE: 11, SOCKHASH: 18, SK_STORAGE: 24, RINGBUF: 27 } as const;
const HELPER = {
  ktime_get_ns: 5,
  get_socket_cookie: 46,
  sock_ops_cb_flags_set: 59,
  msg_apply_bytes: 61,
  msg_cork_bytes: 62,
  msg_pull_data: 63,
  sock_hash_update: 70,
  get_current_cgroup_id: 80,
  msg_push_data: 90,
  msg_pop_data: 91,
  spin_lock: 93,
  sk_fullsock: 95,
  sk_storage_get: 107,
  get_netns_cookie: 122,
  get_current_ancestor_cgroup_id: 123,
  ringbuf_reserve: 131,
  ringbuf_query: 134,
  skc_to_tcp_sock: 137,
  loop: 181,
} as const;
type HelperName = keyof typeof HELPER;

/** The parts of the datapath, each loaded only when the kernel has all it needs. */
export type FeatureSet = 'identity' | 'redirect' | 'kernelHttp' | 'pushWatch';

/** A requirement the kernel does not meet. */
export interface MissingFeature {
  set: FeatureSet;
  /** What is missing, as a user would search for it: "bpf_loop in sk_msg programs". */
  feature: string;
  /** What the probe saw (the verifier's words, or an errno). */
  detail: string;
  /** The kernel this part of wirekey needs (one that has every one of its requirements); none when no version brings it for sure. */
  minimumKernel?: string;
}

/** What a program of some type is loaded as, for probing it and its helpers. */
interface ProgramKind {
  name: string;
  progType: number;
  expectedAttachType?: number;
  attachTo?: string;
  returnValue?: number;
}

const KIND = {
  tpExec: { name: 'tp_btf/sched_process_exec programs', progType: PROG.TRACING, expectedAttachType: ATTACH.TRACE_RAW_TP, attachTo: 'sched_process_exec' },
  tpFork: { name: 'tp_btf/sched_process_fork programs', progType: PROG.TRACING, expectedAttachType: ATTACH.TRACE_RAW_TP, attachTo: 'sched_process_fork' },
  tpExit: { name: 'tp_btf/sched_process_exit programs', progType: PROG.TRACING, expectedAttachType: ATTACH.TRACE_RAW_TP, attachTo: 'sched_process_exit' },
  tpMem: { name: 'tp_btf/sock_exceed_buf_limit programs', progType: PROG.TRACING, expectedAttachType: ATTACH.TRACE_RAW_TP, attachTo: 'sock_exceed_buf_limit' },
  connect: { name: 'cgroup/connect programs', progType: PROG.CGROUP_SOCK_ADDR, expectedAttachType: ATTACH.CGROUP_INET4_CONNECT, returnValue: 1 },
  sendmsg: { name: 'cgroup/sendmsg programs', progType: PROG.CGROUP_SOCK_ADDR, expectedAttachType: ATTACH.CGROUP_UDP4_SENDMSG, returnValue: 1 },
  sockCreate: { name: 'cgroup/sock_create programs', progType: PROG.CGROUP_SOCK, expectedAttachType: ATTACH.CGROUP_INET_SOCK_CREATE, returnValue: 1 },
  setsockopt: { name: 'cgroup/setsockopt programs', progType: PROG.CGROUP_SOCKOPT, expectedAttachType: ATTACH.CGROUP_SETSOCKOPT, returnValue: 1 },
  skbEgress: { name: 'cgroup_skb/egress programs', progType: PROG.CGROUP_SKB, expectedAttachType: ATTACH.CGROUP_INET_EGRESS, returnValue: 1 },
  getpeername: { name: 'cgroup/getpeername programs', progType: PROG.CGROUP_SOCK_ADDR, expectedAttachType: ATTACH.CGROUP_INET4_GETPEERNAME, returnValue: 1 },
  sockops: { name: 'sockops programs', progType: PROG.SOCK_OPS, returnValue: 1 },
  skMsg: { name: 'sk_msg programs', progType: PROG.SK_MSG, expectedAttachType: ATTACH.SK_MSG_VERDICT, returnValue: 1 },
} as const satisfies Record<string, ProgramKind>;

type Requirement =
  | { program: ProgramKind }
  | { map: keyof typeof MAP; feature: string }
  | { helper: HelperName; in: ProgramKind }
  | { trampoline: string };

/**
 * Per part: its floor (the README's), and what it uses that some kernel
 * may lack. Helpers every BPF kernel has (map lookups, pid/uid) are left out.
 */
const SETS: Record<FeatureSet, { minimumKernel?: string; requires: Requirement[] }> = {
  identity: {
    minimumKernel: '5.14',
    requires: [{ program: KIND.tpExec }, { program: KIND.tpFork }, { program: KIND.tpExit }],
  },
  redirect: {
    minimumKernel: '5.14',
    requires: [
      { program: KIND.connect },
      { program: KIND.getpeername },
      { program: KIND.sockops },
      { map: 'LRU_HASH', feature: 'LRU hash maps' },
      { map: 'SK_STORAGE', feature: 'socket-local storage (BPF_MAP_TYPE_SK_STORAGE)' },
      { helper: 'sk_storage_get', in: KIND.connect },
      { helper: 'sk_storage_get', in: KIND.sockops },
      { helper: 'get_netns_cookie', in: KIND.connect },
      { helper: 'get_current_ancestor_cgroup_id', in: KIND.connect },
      { helper: 'get_current_cgroup_id', in: KIND.connect },
      // Egress policy (egress.bpf.c): judged at connect(), sendmsg() and socket(); and how a restricted socket routes.
      { program: KIND.sendmsg },
      { program: KIND.sockCreate },
      { program: KIND.setsockopt },
      { program: KIND.skbEgress },
      { map: 'LPM_TRIE', feature: 'LPM trie maps' },
      { map: 'RINGBUF', feature: 'BPF ring buffers' },
      { helper: 'ringbuf_reserve', in: KIND.connect },
      { helper: 'ringbuf_reserve', in: KIND.sendmsg },
      { helper: 'get_netns_cookie', in: KIND.sendmsg },
      { helper: 'ringbuf_reserve', in: KIND.sockCreate },
      { helper: 'get_netns_cookie', in: KIND.sockCreate },
      { helper: 'get_current_ancestor_cgroup_id', in: KIND.sockCreate },
      { helper: 'sk_storage_get', in: KIND.sockCreate },
      { helper: 'sk_storage_get', in: KIND.setsockopt },
      { helper: 'ringbuf_reserve', in: KIND.setsockopt },
      { helper: 'sk_fullsock', in: KIND.skbEgress },
      { helper: 'sk_storage_get', in: KIND.skbEgress },
      { helper: 'ringbuf_reserve', in: KIND.skbEgress },
    ],
  },
  kernelHttp: {
    minimumKernel: '5.17',
    requires: [
      { program: KIND.skMsg },
      { program: KIND.tpMem },
      { map: 'SOCKHASH', feature: 'sockhash maps' },
      { map: 'RINGBUF', feature: 'BPF ring buffers' },
      { map: 'LPM_TRIE', feature: 'LPM trie maps' },
      { helper: 'loop', in: KIND.skMsg },
      { helper: 'sk_storage_get', in: KIND.skMsg },
      { helper: 'skc_to_tcp_sock', in: KIND.skMsg },
      { helper: 'msg_push_data', in: KIND.skMsg },
      { helper: 'msg_pull_data', in: KIND.skMsg },
      { helper: 'msg_pop_data', in: KIND.skMsg },
      { helper: 'msg_cork_bytes', in: KIND.skMsg },
      { helper: 'msg_apply_bytes', in: KIND.skMsg },
      { helper: 'spin_lock', in: KIND.skMsg },
      { helper: 'ringbuf_reserve', in: KIND.skMsg },
      { helper: 'ringbuf_query', in: KIND.skMsg },
      { helper: 'ktime_get_ns', in: KIND.skMsg },
      { helper: 'sock_hash_update', in: KIND.sockops },
      { helper: 'sock_ops_cb_flags_set', in: KIND.sockops },
      { helper: 'skc_to_tcp_sock', in: KIND.sockops },
      { helper: 'get_socket_cookie', in: KIND.sockops },
      { helper: 'get_socket_cookie', in: KIND.connect },
      { helper: 'skc_to_tcp_sock', in: KIND.connect },
      { helper: 'ringbuf_reserve', in: KIND.connect },
      { helper: 'sk_storage_get', in: KIND.tpMem },
      { helper: 'ringbuf_reserve', in: KIND.tpMem },
    ],
  },
  // Trampolines come and go with the kernel's configuration (ftrace
  // direct calls, lockdown), not with its version: no floor to name.
  pushWatch: {
    requires: [{ trampoline: 'tcp_bpf_push' }],
  },
};

/** What the verifier says of a helper a program type cannot call, in every wording kernels have used. */
const NO_SUCH_HELPER = /invalid func |unknown func |program of this type cannot use helper /;

/** The line of a verifier log that says a helper is missing, or null when it does not say so. */
export function helperRefusal(log: string): string | null {
  return log.split('\n').find((l) => NO_SUCH_HELPER.test(l)) ?? null;
}

/** The kernel's side of the probes (the addon); replaced in tests. */
export type Prober = NativeProbes;

function errnoText(errno: number | undefined): string {
  const names: Record<number, string> = { 1: 'EPERM', 2: 'ENOENT', 13: 'EACCES', 22: 'EINVAL', 95: 'EOPNOTSUPP', 524: 'ENOTSUPP' };
  return errno === undefined ? 'refused' : `${names[errno] ?? 'errno'} (${errno})`;
}

function lastLine(log: string | undefined): string {
  return (log ?? '').split('\n').filter((l) => l && !l.startsWith('processed ')).at(-1) ?? '';
}

/** Null when `req` is met; otherwise what is missing and what the probe saw. */
function check(p: Prober, req: Requirement): { feature: string; detail: string } | null {
  if ('program' in req) {
    const k = req.program;
    // libbpf's probe for the type, where it can tell (not for tracing); then
    // the program as wirekey loads it (attach type, tracepoint).
    if (k.progType !== PROG.TRACING && !p.probeProgType(k.progType)) {
      return { feature: k.name, detail: 'libbpf_probe_bpf_prog_type: the kernel has no such program type' };
    }
    const r = p.probeLoad(k);
    return r.loaded ? null : { feature: k.name, detail: `${errnoText(r.errno)}${lastLine(r.log) ? `: ${lastLine(r.log)}` : ''}` };
  }
  if ('map' in req) {
    return p.probeMapType(MAP[req.map]) ? null : { feature: req.feature, detail: 'libbpf_probe_bpf_map_type: the kernel has no such map type' };
  }
  if ('helper' in req) {
    const feature = `bpf_${req.helper} in ${req.in.name}`;
    if (req.in.progType !== PROG.TRACING && !p.probeHelper(req.in.progType, HELPER[req.helper])) {
      return { feature, detail: 'libbpf_probe_bpf_helper: the verifier does not know it' };
    }
    const r = p.probeLoad({ ...req.in, helper: HELPER[req.helper] });
    const refusal = r.loaded ? null : helperRefusal(r.log ?? '');
    // Refused for anything else (the probe passes no valid arguments): the helper exists.
    return refusal ? { feature, detail: refusal } : null;
  }
  const r = p.probeLoad({ progType: PROG.TRACING, expectedAttachType: ATTACH.TRACE_FEXIT, attachTo: req.trampoline, attach: true });
  if (r.loaded && r.attached) return null;
  const what = r.loaded ? 'attach' : 'load';
  return { feature: `BPF trampolines (fexit/${req.trampoline})`, detail: `${what}: ${errnoText(r.errno)}${lastLine(r.log) ? `: ${lastLine(r.log)}` : ''}` };
}

const cache = new Map<FeatureSet, MissingFeature | null>();
let usable: true | undefined;

/**
 * The first requirement of `set` this kernel does not meet, or null when
 * it meets them all. Probes once per process (see above).
 * @throws BpfError when no BPF program can be loaded at all (no privileges):
 *   that says nothing about the kernel's features.
 * @throws NotSupportedError when the kernel has no bpf(2) at all.
 */
export function probeFeatures(set: FeatureSet, prober?: Prober): MissingFeature | null {
  const p = prober ?? native();
  if (!prober && cache.has(set)) return cache.get(set) as MissingFeature | null;
  if (prober || !usable) {
    const base = p.probeLoad({ progType: PROG.SOCKET_FILTER });
    if (!base.loaded) {
      if (base.errno === 38 /* ENOSYS */) throw new NotSupportedError('bpf(2)', 'this kernel has no BPF system call (CONFIG_BPF_SYSCALL)', '5.14');
      throw new BpfError(`cannot load even a trivial BPF program (${errnoText(base.errno)}): run as root, or with CAP_BPF and CAP_PERFMON`, { errno: base.errno });
    }
    if (!prober) usable = true;
  }
  let missing: MissingFeature | null = null;
  for (const req of SETS[set].requires) {
    const m = check(p, req);
    if (m) {
      missing = { set, ...m, minimumKernel: SETS[set].minimumKernel };
      break;
    }
  }
  if (!prober) cache.set(set, missing);
  return missing;
}

/** The NotSupportedError that reports `m`. */
export function notSupported(m: MissingFeature): NotSupportedError {
  return new NotSupportedError(m.feature, `this kernel lacks it (${m.detail})`, m.minimumKernel);
}

/** One line for logs and skip reasons: "this kernel lacks bpf_loop in sk_msg programs (Linux 5.17 or newer is needed): ...". */
export function describeMissing(m: MissingFeature): string {
  return `this kernel lacks ${m.feature}${m.minimumKernel ? ` (Linux ${m.minimumKernel} or newer is needed)` : ''}: ${m.detail}`;
}
