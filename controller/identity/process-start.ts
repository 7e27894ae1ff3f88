/**
 * When a process started, as the kernel counts it for /proc/<pid>/stat's
 * starttime: clock ticks (USER_HZ) since boot. The BPF programs exempt the
 * agent by its pid together with this (is_agent() in bpf/workload.bpf.h),
 * so that a process given the same pid after the agent died is judged like
 * any other while the agent's pinned programs stay attached.
 */
import { readFileSync } from 'node:fs';

/** starttime is the 22nd field of /proc/<pid>/stat; the fields after the command's closing parenthesis start at the 3rd. */
const STARTTIME_AFTER_COMM = 22 - 3;

/** @throws Error when /proc/<pid>/stat cannot be read or has no starttime. */
export function processStartTicks(pid: number | 'self' = 'self'): bigint {
  const stat = readFileSync(`/proc/${pid}/stat`, 'latin1');
  // The command (in parentheses) may itself hold spaces and parentheses: the fields start after the last ')'.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const value = fields[STARTTIME_AFTER_COMM];
  if (value === undefined || !/^\d+$/.test(value)) throw new Error(`/proc/${pid}/stat has no start time`);
  return BigInt(value);
}
