/**
 * The agent holds every credential in its memory: it marks itself not
 * dumpable (prctl PR_SET_DUMPABLE 0), so it writes no core dump and other
 * processes of its uid without CAP_SYS_PTRACE can neither ptrace it nor read
 * its /proc/PID/mem, environ or fds.
 */
import { bpfCall, native } from './native.js';

/** @throws BpfError (with errno) when prctl fails. */
export function makeNotDumpable(): void {
  bpfCall(() => native().setDumpable(false));
}

/** prctl(PR_GET_DUMPABLE) of this process: 0 once makeNotDumpable() has run. */
export function dumpable(): number {
  return native().dumpable();
}
