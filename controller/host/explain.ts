/**
 * `wirekey explain PID`: which workload the kernel assigns to a process,
 * computed from the running agent's own maps the way bpf/redirect.bpf.c
 * computes it at connect(), with each selector's verdict.
 */
import { readFileSync, readlinkSync, statSync } from 'node:fs';
import path from 'node:path';
import { WirekeyError } from '../errors.js';
import { PinnedMaps } from '../datapath/pinned.js';
import { formatDev, type ExeKey } from '../datapath/layout.js';
import { readRuntimeState, type RuntimeState } from './runtime-state.js';
import type { PlanEgress, PortRange } from '../policy/types.js';

export interface SelectorVerdict {
  selector: string;
  matched: boolean;
  detail: string;
}

export interface Explanation {
  pid: number;
  tgid: number;
  uid: number;
  cgroup: string;
  executable: string | null;
  /** What the kernel recorded at exec (or backfill) for this process; never the inode's address. */
  kernelExe: Omit<ExeKey, 'inode'> | null;
  workload: { id: number; name: string } | null;
  candidates: { id: number; name: string; matched: boolean; selectors: SelectorVerdict[] }[];
  bindings: RuntimeState['bindings'];
  /** The workload's egress policy; null: unrestricted (no workload, or one without an egress section). */
  egress: PlanEgress | null;
}

/**
 * @throws WirekeyError (WK_NO_PROCESS) for an unknown pid, (WK_NO_AGENT)
 *   when no agent state is found; BpfError when the pins cannot be read.
 */
export function explainPid(pid: number, stateDir: string): Explanation {
  let status: string;
  try {
    status = readFileSync(`/proc/${pid}/status`, 'utf8');
  } catch {
    throw new WirekeyError('WK_NO_PROCESS', `no process with pid ${pid}`);
  }
  const state = readRuntimeState(stateDir);
  const field = (name: string) => new RegExp(`^${name}:\\s*(\\d+)`, 'm').exec(status)?.[1];
  const tgid = Number(field('Tgid'));
  const uid = Number(field('Uid'));
  const cgroup = /^0::(.*)$/m.exec(readFileSync(`/proc/${pid}/cgroup`, 'utf8'))?.[1] ?? '/';
  let executable: string | null = null;
  try {
    executable = readlinkSync(`/proc/${pid}/exe`);
  } catch {
    /* kernel thread, or not permitted */
  }

  const maps = new PinnedMaps(state.pinDir);
  const kernelExe = maps.taskExe(tgid);

  // Ancestors from the root down, as bpf_get_current_ancestor_cgroup_id walks them.
  const segments = cgroup.split('/').filter(Boolean);
  const ancestorIds: bigint[] = [];
  for (let i = 0; i <= segments.length; i++) {
    try {
      ancestorIds.push(statSync(path.join(state.cgroupRoot, ...segments.slice(0, i)), { bigint: true }).ino);
    } catch {
      /* moved or removed meanwhile */
    }
  }
  const any = maps.any();
  const cgroupSet = new Set([...any.cgroup, ...ancestorIds.flatMap((id) => maps.cgroupWorkloads(id))]);
  // The kernel's own answer: wk_exe_mask keys name inodes, which the state file does not hold.
  const exeNamed = new Set(kernelExe ? maps.exeWorkloads(kernelExe) : []);
  const exeSet = new Set([...any.exe, ...exeNamed]);
  const uidSet = new Set([...any.uid, ...maps.uidWorkloads(uid)]);
  const matching = [...cgroupSet].filter((id) => exeSet.has(id) && uidSet.has(id)).sort((a, b) => a - b);
  const winner = state.workloads.find((w) => w.id === matching[0]);

  const candidates = state.workloads.map((w) => {
    const selectors: SelectorVerdict[] = [];
    const s = w.selector;
    if (s.cgroup !== undefined || s.systemdUnit !== undefined) {
      const label = [s.cgroup && `cgroup ${s.cgroup}`, s.systemdUnit && `systemdUnit ${s.systemdUnit}`].filter(Boolean).join(', ');
      const ok = w.cgroupId != null && ancestorIds.includes(BigInt(w.cgroupId));
      selectors.push({ selector: label, matched: ok, detail: w.cgroupId == null ? 'not resolved' : ok ? `in ${w.cgroupPath}` : `process is in ${cgroup}` });
    }
    if (s.executable !== undefined) {
      const ok = !!w.exe && exeNamed.has(w.id);
      const detail = w.exe == null ? 'not resolved (missing file or digest mismatch)' : ok ? 'same file' : `process runs ${executable ?? 'an unknown file'}`;
      selectors.push({ selector: `executable ${s.executable.path}${s.executable.sha256 ? ' (sha256)' : ''}`, matched: ok, detail });
    }
    if (s.user !== undefined || s.uid !== undefined) {
      const ok = w.uid != null && w.uid === uid;
      selectors.push({ selector: s.user !== undefined ? `user ${s.user}` : `uid ${s.uid}`, matched: ok, detail: w.uid == null ? 'not resolved' : `process uid ${uid}, selector uid ${w.uid}` });
    }
    return { id: w.id, name: w.name, matched: matching.includes(w.id), selectors };
  });

  return {
    pid,
    tgid,
    uid,
    cgroup,
    executable,
    kernelExe: kernelExe && { dev: kernelExe.dev, ino: kernelExe.ino },
    workload: winner ? { id: winner.id, name: winner.name } : null,
    candidates,
    bindings: winner ? state.bindings.filter((b) => b.workload === winner.name) : [],
    egress: winner?.egress ?? null,
  };
}

/** The explanation as people read it. */
export function formatExplanation(e: Explanation): string {
  const lines = [
    `pid ${e.pid}${e.tgid !== e.pid ? ` (thread of ${e.tgid})` : ''}: ${e.executable ?? '(no executable)'}, uid ${e.uid}, cgroup ${e.cgroup}`,
    `kernel record: ${e.kernelExe ? `executable dev ${formatDev(e.kernelExe.dev)} inode ${e.kernelExe.ino}` : 'none (matches only workloads without an executable selector)'}`,
    `workload: ${e.workload ? `${e.workload.name} (precedence ${e.workload.id})` : 'none'}`,
  ];
  for (const c of e.candidates) {
    lines.push(`  ${c.matched ? '+' : '-'} ${c.name} (precedence ${c.id})${c.matched && c.id !== e.workload?.id ? ', matches but a more specific workload wins' : ''}`);
    for (const s of c.selectors) lines.push(`      ${s.matched ? 'match' : 'no match'}: ${s.selector}: ${s.detail}`);
  }
  if (e.workload) {
    lines.push(e.bindings.length ? 'bindings:' : 'bindings: none');
    for (const b of e.bindings) {
      // State written by an older agent has no datapath: it was the proxy's.
      const where = b.datapath === 'kernel' ? `${(b.addresses ?? []).join(', ')} port ${b.port}, kernel` : `${b.hosts.join(', ')} port ${b.port}`;
      lines.push(`  ${b.name}: ${b.service} (${where}), ${b.inject.kind} from ${b.inject.credential}`);
    }
  }
  lines.push(...formatEgress(e.egress));
  return `${lines.join('\n')}\n`;
}

/**
 * `egress: enforce, 2 rule(s)`, one line per rule (label, what, ports,
 * protocol), and what becomes of sockets no rule can name; or `egress:
 * unrestricted`.
 */
export function formatEgress(egress: PlanEgress | null): string[] {
  if (!egress) return ['egress: unrestricted'];
  const mode = egress.mode === 'audit' ? 'audit (nothing is refused; what would be is logged)' : 'enforce';
  const lines = [`egress: ${mode}, ${egress.rules.length} rule(s)${egress.rules.length ? '' : ': nothing is allowed'}`];
  for (const r of egress.rules) {
    const names = r.hosts.length > 0;
    const what = [r.service !== undefined ? `service ${r.service}` : '', names ? r.hosts.join(', ') : r.cidrs.join(', ')].filter(Boolean).join(': ');
    const how = names ? `tcp, ${r.tls ? 'TLS server name' : 'plaintext Host'}` : r.protocol;
    lines.push(`  ${r.label}: ${what || 'nothing'} ${formatPorts(r.ports)} ${how}`);
  }
  lines.push(`  sockets other than TCP and UDP (raw, ICMP, SCTP, UDP-Lite): ${egress.mode === 'audit' ? 'would be refused' : 'refused'} at socket()`);
  return lines;
}

function formatPorts(ports: readonly PortRange[]): string {
  if (ports.length === 1 && ports[0]?.[0] === 1 && ports[0][1] === 65535) return 'any port';
  const text = ports.map(([lo, hi]) => (lo === hi ? `${lo}` : `${lo}-${hi}`)).join(', ');
  return ports.length === 1 && ports[0]?.[0] === ports[0]?.[1] ? `port ${text}` : `ports ${text}`;
}
