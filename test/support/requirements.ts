/**
 * What a kernel or e2e test needs from the machine. A test whose needs are
 * not met is skipped with the reason, and the suite prints every skip.
 * Kernel features are probed (controller/datapath/features.ts), never read
 * off uname: on a kernel whose probes pass, a program the verifier refuses
 * is a failure, not a skip.
 */
import { existsSync } from 'node:fs';
import { findCgroup2Root } from '../../controller/cgroup.js';
import { probeFeatures, type FeatureSet } from '../../controller/datapath/features.js';

/** Why the probes of `sets` say this kernel cannot run them, or undefined. */
function featureSkipReason(...sets: FeatureSet[]): string | undefined {
  try {
    for (const set of sets) {
      const missing = probeFeatures(set);
      if (missing) return `requires ${missing.feature}${missing.minimumKernel ? ` (Linux ${missing.minimumKernel})` : ''}; the probe saw: ${missing.detail}`;
    }
  } catch (err) {
    return `cannot probe the kernel's BPF features: ${(err as Error).message}`;
  }
  return undefined;
}

/** Why kernel tests cannot run here, or undefined when they can. */
export function kernelSkipReason(): string | undefined {
  if (process.getuid?.() !== 0) return 'requires root (attaching BPF programs to the cgroup v2 root)';
  if (!existsSync('/sys/kernel/btf/vmlinux')) return 'requires a kernel with BTF (/sys/kernel/btf/vmlinux)';
  try {
    findCgroup2Root();
  } catch {
    return 'requires a cgroup v2 mount';
  }
  return featureSkipReason('identity', 'redirect');
}

/** Why the kernel HTTP datapath's tests cannot run here: only a negative probe excuses them. */
export function kernelHttpSkipReason(): string | undefined {
  return kernelSkipReason() ?? featureSkipReason('kernelHttp');
}

/** Why the failed-push watch (fexit) cannot run here, or undefined (after kernelHttpSkipReason). */
export function pushWatchSkipReason(): string | undefined {
  return featureSkipReason('pushWatch');
}
