/**
 * What a kernel or e2e test needs from the machine. A test whose needs are
 * not met is skipped with the reason, and the suite prints every skip.
 */
import { existsSync } from 'node:fs';
import { findCgroup2Root } from '../../controller/datapath/cgroup.js';

/** Why kernel tests cannot run here, or undefined when they can. */
export function kernelSkipReason(): string | undefined {
  if (process.getuid?.() !== 0) return 'requires root (attaching BPF programs to the cgroup v2 root)';
  if (!existsSync('/sys/kernel/btf/vmlinux')) return 'requires a kernel with BTF (/sys/kernel/btf/vmlinux)';
  try {
    findCgroup2Root();
  } catch {
    return 'requires a cgroup v2 mount';
  }
  return undefined;
}
