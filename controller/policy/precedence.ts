/**
 * Which workload a process belongs to when several could claim it.
 *
 * The rule, in order:
 *   1. the workload with more kinds of selector wins (cgroup or systemdUnit,
 *      executable, user or uid each count once);
 *   2. then the one whose cgroup is deeper (a systemd unit counts as
 *      /system.slice/UNIT);
 *   3. two workloads still tied that could match the same process are an
 *      error in the policy (`wirekey validate` reports them).
 * Workload ids follow this order (ties broken by name, for stable ids), and
 * the kernel picks the lowest id among the workloads that match.
 */
import type { WorkloadSelector } from './types.js';
import { WK_MAX_WORKLOADS } from '../kernel-limits.js';

/** As many as the kernel can tell apart (struct wk_mask; checked against the BPF object at load). */
export const MAX_WORKLOADS = WK_MAX_WORKLOADS;

/** The key workloads are sorted by: lower sorts first and wins. */
export function precedenceKey(selector: WorkloadSelector): [number, number] {
  return [-selectorKinds(selector), -cgroupDepth(selector)];
}

export function comparePrecedence(a: WorkloadSelector, b: WorkloadSelector): number {
  const [ka, kb] = [precedenceKey(a), precedenceKey(b)];
  return ka[0] - kb[0] || ka[1] - kb[1];
}

function selectorKinds(s: WorkloadSelector): number {
  return (s.cgroup !== undefined || s.systemdUnit !== undefined ? 1 : 0) +
    (s.executable !== undefined ? 1 : 0) +
    (s.user !== undefined || s.uid !== undefined ? 1 : 0);
}

function cgroupSegments(path: string): string[] {
  // `.` names the same cgroup, as the agent's path.join() reads it (`..` is refused by the schema).
  return path.split('/').filter((s) => s !== '' && s !== '.');
}

/** The cgroups a selector names (both must hold when both are given). */
function cgroups(s: WorkloadSelector): string[][] {
  const out: string[][] = [];
  if (s.cgroup !== undefined) out.push(cgroupSegments(s.cgroup));
  if (s.systemdUnit !== undefined) out.push(['system.slice', s.systemdUnit]);
  return out;
}

function cgroupDepth(s: WorkloadSelector): number {
  return Math.max(0, ...cgroups(s).map((c) => c.length));
}

const isPrefix = (a: string[], b: string[]) => a.length <= b.length && a.every((seg, i) => seg === b[i]);

function exePath(s: WorkloadSelector): string | undefined {
  return typeof s.executable === 'string' ? s.executable : s.executable?.path;
}

/**
 * Whether some process could match both selectors. Conservative: user names
 * are not resolved here, so `user: a` and `uid: 1000` are taken to overlap.
 */
export function couldOverlap(a: WorkloadSelector, b: WorkloadSelector): boolean {
  // cgroups: every pair of named cgroups must be nested one way or the other.
  for (const ca of cgroups(a)) {
    for (const cb of cgroups(b)) if (!isPrefix(ca, cb) && !isPrefix(cb, ca)) return false;
  }
  const ea = exePath(a);
  const eb = exePath(b);
  if (ea !== undefined && eb !== undefined && ea !== eb) return false;
  if (a.uid !== undefined && b.uid !== undefined && a.uid !== b.uid) return false;
  if (a.user !== undefined && b.user !== undefined && a.user !== b.user) return false;
  return true;
}
