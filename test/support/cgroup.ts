/** Test cgroups under the cgroup v2 root, and running commands inside them. */
import { mkdirSync, rmdirSync, readdirSync, existsSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { run, type RunResult } from './shell.js';
import type { SpawnOptions } from 'node:child_process';

/** Creates `<root>/<relative>` (and parents). */
export function createCgroup(root: string, relative: string): string {
  const dir = path.join(root, relative);
  mkdirSync(dir, { recursive: true });
  return dir;
}

/**
 * Removes a cgroup tree, depth first. Processes still inside are moved to
 * the root first, so a failed test cannot leave a cgroup behind.
 */
export function removeCgroupTree(root: string, dir: string): void {
  if (!existsSync(dir)) return;
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    if (entry.isDirectory()) removeCgroupTree(root, path.join(dir, entry.name));
  }
  const procs = readFileSync(path.join(dir, 'cgroup.procs'), 'utf8').split('\n').filter(Boolean);
  for (const pid of procs) {
    try {
      writeFileSync(path.join(root, 'cgroup.procs'), pid);
    } catch {
      /* already gone */
    }
  }
  rmdirSync(dir);
}

/**
 * Runs `cmd args` as a process of cgroup `dir`: a shell joins the cgroup and
 * then execs the command, so the command is in the cgroup from its first
 * instruction.
 */
export function runInCgroup(dir: string, cmd: string, args: string[], opts: SpawnOptions & { input?: string; timeoutMs?: number } = {}): Promise<RunResult> {
  return run('sh', ['-c', 'echo $$ > "$0/cgroup.procs" && exec "$@"', dir, cmd, ...args], opts);
}
