/**
 * What `wirekey run` needs from the kernel's permission checks, named before
 * anything fails with a bare "Operation not permitted".
 */
import { readFileSync } from 'node:fs';
import { WirekeyError } from '../errors.js';

const CAP = { CAP_NET_ADMIN: 12, CAP_SYS_PTRACE: 19, CAP_SYS_ADMIN: 21, CAP_PERFMON: 38, CAP_BPF: 39 } as const;
type CapName = keyof typeof CAP;

/** Loading, pinning and attaching the programs to the cgroup root, and mounting bpffs. */
const REQUIRED: CapName[] = ['CAP_SYS_ADMIN', 'CAP_NET_ADMIN'];

/** The effective capabilities of this process (from /proc/self/status). */
export function effectiveCapabilities(status = readFileSync('/proc/self/status', 'utf8')): Set<CapName> {
  const hex = /^CapEff:\s*([0-9a-f]+)/m.exec(status)?.[1] ?? '0';
  const bits = BigInt(`0x${hex}`);
  return new Set((Object.keys(CAP) as CapName[]).filter((n) => (bits >> BigInt(CAP[n])) & 1n));
}

/**
 * @throws WirekeyError WK_PERMISSION naming the capabilities that are
 *   missing. Returns a warning for CAP_SYS_PTRACE, which only the start-up
 *   backfill (other processes' /proc/PID/exe) needs.
 */
export function checkCapabilities(have = effectiveCapabilities()): string | undefined {
  const missing = REQUIRED.filter((c) => !have.has(c));
  if (missing.length) {
    throw new WirekeyError('WK_PERMISSION',
      `wirekey run needs ${REQUIRED.join(' and ')} (this process lacks ${missing.join(', ')}): run it as root, or from packaging/wirekey.service`);
  }
  if (!have.has('CAP_SYS_PTRACE')) {
    return 'without CAP_SYS_PTRACE, processes of other users that started before the agent cannot be identified by executable until they exec again';
  }
  return undefined;
}
