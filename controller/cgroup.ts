/**
 * Where cgroup v2 lives on this host, and the ids the kernel uses for its
 * cgroups (bpf_get_current_ancestor_cgroup_id returns the directory's inode).
 */
import { readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { NotSupportedError } from './errors.js';

/**
 * The cgroup v2 mount point: /sys/fs/cgroup on unified hosts,
 * /sys/fs/cgroup/unified on hybrid ones. Read from mountinfo, never assumed.
 * @throws NotSupportedError when no cgroup2 file system is mounted.
 */
export function findCgroup2Root(mountinfo = readFileSync('/proc/self/mountinfo', 'utf8')): string {
  const mounts: string[] = [];
  for (const line of mountinfo.split('\n')) {
    // fields: id parent major:minor root mountpoint options [optional...] - fstype source super
    const sep = line.indexOf(' - ');
    if (sep < 0) continue;
    const fstype = line.slice(sep + 3).split(' ')[0];
    if (fstype !== 'cgroup2') continue;
    const mountPoint = line.slice(0, sep).split(' ')[4];
    if (mountPoint) mounts.push(mountPoint.replace(/\\040/g, ' '));
  }
  if (!mounts.length) {
    throw new NotSupportedError('cgroup v2', 'no cgroup2 file system is mounted (see /proc/self/mountinfo)');
  }
  // The shortest path is the host's own mount; others are usually bind mounts.
  return mounts.sort((a, b) => a.length - b.length)[0] as string;
}

/** The absolute directory of a cgroup given relative to the v2 root. */
export function cgroupDir(root: string, relative: string): string {
  return path.join(root, relative);
}

/** The kernel's id for the cgroup at `dir`, or undefined when it does not exist. */
export function cgroupId(dir: string): bigint | undefined {
  try {
    const st = statSync(dir, { bigint: true });
    return st.isDirectory() ? st.ino : undefined;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
}
