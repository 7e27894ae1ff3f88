/**
 * What a kernel or e2e test needs from the machine. A test whose needs are
 * not met is skipped with the reason, and the suite prints every skip.
 */
import { existsSync } from 'node:fs';
import os from 'node:os';
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

/** Whether this kernel is at least `major.minor` (uname -r). */
export function kernelAtLeast(major: number, minor: number): boolean {
  const m = /^(\d+)\.(\d+)/.exec(os.release());
  return !!m && (Number(m[1]) > major || (Number(m[1]) === major && Number(m[2]) >= minor));
}

/**
 * Why the kernel HTTP datapath's tests cannot run here. Only the kernel
 * version excuses them (bpf_loop is 5.17): on a newer kernel a program the
 * verifier refuses is a failure, not a skip.
 */
export function kernelHttpSkipReason(): string | undefined {
  return kernelSkipReason() ?? (kernelAtLeast(5, 17) ? undefined : `requires Linux 5.17 (bpf_loop) for the kernel HTTP datapath; this is ${os.release()}`);
}
