/**
 * Processes that were running before the agent: their executables, read
 * from /proc, for Datapath.backfill().
 */
import { readdirSync, statSync } from 'node:fs';
import { kernelDev } from '../datapath/layout.js';
import type { TaskExe } from '../datapath/datapath.js';

/** Every process whose executable can be read now (kernel threads have none). */
export function runningTasks(proc = '/proc'): TaskExe[] {
  const out: TaskExe[] = [];
  for (const name of readdirSync(proc)) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const st = statSync(`${proc}/${name}/exe`, { bigint: true });
      out.push({ tgid: Number(name), exe: { ino: st.ino, dev: kernelDev(st.dev) } });
    } catch {
      /* exited meanwhile, or a kernel thread */
    }
  }
  return out;
}
