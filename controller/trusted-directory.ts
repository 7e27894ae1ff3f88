/**
 * Whether the directories a trusted file lives in let anyone else replace
 * it: a file only root and the agent's own user may write (a policy, the
 * audit log) is no safer than the directories above it, where whoever may
 * write could rename it away and put another in its place.
 */
import { realpathSync, statSync } from 'node:fs';
import { dirname, resolve } from 'node:path';

/** Who may own a trusted file or directory: root, and the agent's own user. */
export function trustedOwners(): string {
  const euid = process.geteuid?.();
  return euid === undefined || euid === 0 ? 'root' : `root or uid ${euid}`;
}

export function trustedOwner(uid: number): boolean {
  const euid = process.geteuid?.();
  return euid === undefined || uid === 0 || uid === euid;
}

/**
 * Why a file in `dirs` could be replaced by someone else through them or a
 * directory above them, or undefined. `dirs` are the directories a file is
 * listed in; each counts as its path is written and as it resolves
 * through symbolic links. Such a directory may not be owned by another
 * user, nor writable by group or others without the sticky bit (as /tmp
 * has: there nobody may rename or remove what they do not own). Every
 * directory above it up to / may not be owned by another user nor
 * writable by others without the sticky bit: whoever may write one could
 * rename the subtree below it away and put their own in its place. (A
 * group may write one: Ubuntu's /var/log is its syslog group's.) `why`
 * says what the file is for. The message names the nearest such directory.
 * @throws the error of realpath or stat (a directory is gone).
 */
export function replaceableThroughDirectory(dirs: readonly string[], why: string): string | undefined {
  const seen = new Set<string>();
  const check = (d: string, above: boolean): string | undefined => {
    if (seen.has(d)) return undefined;
    seen.add(d);
    const st = statSync(d);
    const what = above ? `the directory ${d} above it` : `its directory ${d}`;
    if (!trustedOwner(st.uid)) return `${what} is owned by uid ${st.uid}; ${why}: the directory must be owned by ${trustedOwners()}`;
    if (st.mode & 0o1000) return undefined;
    const mode = `0${(st.mode & 0o777).toString(8)}`;
    if (above && st.mode & 0o002) return `${what} has mode ${mode}: others can rename what is in it, and ${why} (chmod o-w, or +t)`;
    // A shared directory (Ubuntu's /var/log is syslog's group's) is not the operator's to chmod: a directory of the file's own is.
    if (!above && st.mode & 0o022) {
      return `${what} has mode ${mode}: group or others can add or replace files in it, and ${why} (put the file in a directory of its own that only ${trustedOwners()} can write, or chmod go-w ${d})`;
    }
    return undefined;
  };
  // Each directory as it resolves and as it is written, the resolved one first (the one an error should name).
  const starts = dirs.flatMap((dir) => [realpathSync(dir), resolve(dir)]);
  for (const start of starts) {
    const problem = check(start, false);
    if (problem) return problem;
  }
  for (const start of starts) {
    for (let d = start; d !== dirname(d);) {
      d = dirname(d);
      const problem = check(d, true);
      if (problem) return problem;
    }
  }
  return undefined;
}
