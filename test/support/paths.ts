/** The repository root, found from this file whether it runs from test/ or dist/test/. */
import { chmodSync, cpSync, existsSync, mkdtempSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

function findRoot(): string {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  while (!existsSync(path.join(dir, 'package.json')) || path.basename(dir) === 'dist') {
    const up = path.dirname(dir);
    if (up === dir) throw new Error('cannot find the repository root');
    dir = up;
  }
  return dir;
}

export const repoRoot = findRoot();

/**
 * A copy of the repository's `rel` (a file, or a directory and what is in
 * it), owned by this process and writable by it alone, in a new temporary
 * directory: the agent and `validate` refuse policy files another user
 * could change, and a clone of the repository may be another user's (run
 * with sudo). Remove it with removeCopy().
 */
export function ownedCopy(rel: string): string {
  const dir = mkdtempSync(path.join(tmpdir(), 'wirekey-copy-'));
  const to = path.join(dir, path.basename(rel));
  cpSync(path.join(repoRoot, rel), to, { recursive: true });
  const tighten = (p: string): void => {
    chmodSync(p, statSync(p).mode & 0o755);
    if (statSync(p).isDirectory()) for (const e of readdirSync(p)) tighten(path.join(p, e));
  };
  tighten(to);
  return to;
}

/** Removes what ownedCopy() made for `copy`. */
export function removeCopy(copy: string): void {
  rmSync(path.dirname(copy), { recursive: true, force: true });
}
