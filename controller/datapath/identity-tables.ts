/**
 * From resolved workloads to the kernel's identity tables (see
 * bpf/redirect.bpf.c: current_workload). Pure.
 */
import type { IdentityTables } from './datapath.js';
import type { ResolvedWorkload } from '../identity/resolver.js';

export function identityTables(workloads: ResolvedWorkload[]): IdentityTables {
  const t: IdentityTables = { cgroups: new Map(), exes: [], uids: new Map(), any: { cgroup: [], exe: [], uid: [] } };
  const exes = new Map<string, IdentityTables['exes'][number]>();
  const add = <K>(m: Map<K, number[]>, k: K, id: number) => m.set(k, [...(m.get(k) ?? []), id]);
  for (const w of workloads) {
    // A selector that did not resolve (null) puts the workload nowhere: it cannot match.
    if (w.cgroupId === undefined) t.any.cgroup.push(w.id);
    else if (w.cgroupId !== null) add(t.cgroups, w.cgroupId, w.id);
    if (w.exe === undefined) t.any.exe.push(w.id);
    else if (w.exe !== null) {
      const k = `${w.exe.dev}:${w.exe.ino}:${w.exe.inode}`;
      const e = exes.get(k) ?? { key: w.exe, workloads: [] };
      e.workloads.push(w.id);
      exes.set(k, e);
    }
    if (w.uid === undefined) t.any.uid.push(w.id);
    else if (w.uid !== null) add(t.uids, w.uid, w.id);
  }
  t.exes = [...exes.values()];
  return t;
}
