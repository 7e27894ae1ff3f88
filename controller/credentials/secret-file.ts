/**
 * Reading a file that holds a secret (a file credential, a Vault secret id,
 * JWT or token): only a regular file that nobody but root or the agent's
 * own user can read or replace, and no bigger than a secret can be.
 */
import { constants, type BigIntStats } from 'node:fs';
import { open, stat } from 'node:fs/promises';

/** Secrets are small; refusing big files keeps a wrong path from filling memory. */
export const MAX_SECRET_FILE_BYTES = 1024 * 1024;

/**
 * What is wrong with a secret file, for an error message: names the file
 * and the problem, never its content.
 */
export class SecretFileProblem extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'SecretFileProblem';
  }
}

/** Errno codes are safe to show; the rest of a system error is not needed. */
export function errnoOf(err: unknown): string {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' ? code : 'unknown error';
}

/**
 * Why `st` (the stat of `path`) may not hold a secret, or undefined when
 * it may: not a regular file, accessible by group or others (mode & 0o077),
 * owned by a user other than root and the agent's, or too big.
 */
export function secretFileProblem(path: string, st: BigIntStats): string | undefined {
  if (!st.isFile()) return `${path} is not a regular file`;
  const mode = Number(st.mode & 0o777n);
  if ((mode & 0o077) !== 0) {
    return `${path} has mode 0${mode.toString(8)}; it must not be accessible by group or others (chmod 600)`;
  }
  // Another unprivileged owner could read the file or swap its content.
  const euid = process.geteuid?.();
  if (euid !== undefined && st.uid !== 0n && st.uid !== BigInt(euid)) {
    return `${path} is owned by uid ${st.uid}; it must be owned by ${euid === 0 ? 'root' : `root or uid ${euid}`}`;
  }
  if (st.size > BigInt(MAX_SECRET_FILE_BYTES)) return `${path} is larger than ${MAX_SECRET_FILE_BYTES} bytes`;
  return undefined;
}

/** stat()s `path` (following symlinks, as Kubernetes-style mounts need). @throws SecretFileProblem */
export async function statSecretFile(path: string): Promise<BigIntStats> {
  try {
    return await stat(path, { bigint: true });
  } catch (err) {
    throw new SecretFileProblem(`cannot stat ${path} (${errnoOf(err)})`);
  }
}

/**
 * Reads a secret file after checking it ({@link secretFileProblem}) both
 * before opening it (opening a FIFO would block until a writer comes) and
 * on the file actually opened (the path may have been swapped in between).
 * Returns the content and the stat of the file read.
 * @throws SecretFileProblem naming the file and what is wrong with it.
 */
export async function readSecretFile(path: string, checked?: BigIntStats): Promise<{ content: Buffer; stat: BigIntStats }> {
  const before = checked ?? (await statSecretFile(path));
  const problem = secretFileProblem(path, before);
  if (problem) throw new SecretFileProblem(problem);
  let handle;
  try {
    // O_NONBLOCK: the path may have been swapped for a FIFO since stat().
    handle = await open(path, constants.O_RDONLY | constants.O_NONBLOCK | constants.O_NOCTTY);
  } catch (err) {
    throw new SecretFileProblem(`cannot open ${path} (${errnoOf(err)})`);
  }
  try {
    const st = await handle.stat({ bigint: true });
    const opened = secretFileProblem(path, st);
    if (opened) throw new SecretFileProblem(opened);
    const content = await handle.readFile();
    if (BigInt(content.length) !== st.size) {
      // Written to while we read: the caller retries later.
      throw new SecretFileProblem(`${path} changed while being read`);
    }
    return { content, stat: st };
  } catch (err) {
    if (err instanceof SecretFileProblem) throw err;
    throw new SecretFileProblem(`cannot read ${path} (${errnoOf(err)})`);
  } finally {
    await handle.close();
  }
}
