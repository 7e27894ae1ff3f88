/**
 * Reads policy files from disk and turns them into one checked Policy, or
 * every problem found in all of them.
 */
import { realpathSync, type Stats } from 'node:fs';
import { open, readdir, stat } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { PolicyError, type PolicyDiagnostic } from '../errors.js';
import { replaceableThroughDirectory, trustedOwner, trustedOwners } from '../trusted-directory.js';
import { checkPolicy, policyWarnings } from './check.js';
import { parsePolicyText, type ParseResult } from './parse.js';
import type { Policy } from './types.js';

export interface LoadedPolicy {
  policy: Policy;
  /** The files read, in the order their documents appear in `policy`. */
  files: string[];
  /** What is valid but probably not meant (see policyWarnings); never stops a load. */
  warnings: PolicyDiagnostic[];
}

/**
 * Loads the policy at `pathOrDir`: one file, or every `*.yaml` / `*.yml` file
 * directly in a directory, in name order. Documents from all files are
 * checked together (names, references, conflicts).
 *
 * @throws PolicyError with every diagnostic from every file when the path
 *   cannot be read, a directory holds no policy file, or anything is invalid.
 */
export async function loadPolicy(pathOrDir: string): Promise<LoadedPolicy> {
  const { diagnostics, ...loaded } = await readPolicy(pathOrDir);
  if (diagnostics.length > 0) throw new PolicyError(diagnostics);
  return loaded;
}

/**
 * Everything wrong with the policy at `path` (as loadPolicy reads it);
 * empty when the policy is valid. Does not throw for problems in or with
 * the policy.
 */
export async function validatePolicyPath(path: string): Promise<PolicyDiagnostic[]> {
  return (await readPolicy(path)).diagnostics;
}

/**
 * For `wirekey validate`: the errors (as validatePolicyPath), then the
 * warnings of a policy without errors (severity 'warning'). Does not throw
 * for problems in or with the policy.
 */
export async function lintPolicyPath(path: string): Promise<PolicyDiagnostic[]> {
  const { diagnostics, warnings } = await readPolicy(path);
  return [...diagnostics, ...warnings];
}

/** A file in a policy directory that is not read, and why. */
export interface IgnoredFile {
  file: string;
  reason: string;
}

export interface PolicyReport extends LoadedPolicy {
  /** Errors: the policy cannot be loaded while there are any. */
  diagnostics: PolicyDiagnostic[];
  /** Entries of a policy directory that were not read (empty for a file). */
  ignored: IgnoredFile[];
  /** Whether the path is a directory. */
  directory: boolean;
}

/**
 * Everything `wirekey validate` says about the policy at `path`: what was
 * read and ignored, the errors, and the warnings (given only when there
 * are no errors). Does not throw for problems in or with the policy.
 */
export function reportPolicyPath(path: string): Promise<PolicyReport> {
  return readPolicy(path);
}

async function readPolicy(pathOrDir: string): Promise<PolicyReport> {
  const policy: Policy = { documents: [] };
  let found: { files: string[]; ignored: IgnoredFile[]; directory: boolean };
  try {
    found = await policyFiles(pathOrDir);
  } catch (err) {
    return { policy, files: [], ignored: [], directory: false, warnings: [], diagnostics: [atStart(pathOrDir, `cannot read policy: ${describeFsError(err)}`)] };
  }
  const { files, ignored, directory } = found;
  if (files.length === 0) {
    return { policy, files, ignored, directory, warnings: [], diagnostics: [atStart(pathOrDir, 'no policy files (*.yaml or *.yml) in this directory')] };
  }
  const diagnostics: PolicyDiagnostic[] = [];
  for (const parsed of await Promise.all(files.map(readPolicyFile))) {
    policy.documents.push(...parsed.documents);
    diagnostics.push(...parsed.diagnostics);
  }
  // References into a document that failed to parse would all look dangling;
  // cross-document checks wait until every document is sound.
  if (diagnostics.length === 0) diagnostics.push(...checkPolicy(policy));
  const warnings = diagnostics.length === 0 ? policyWarnings(policy) : [];
  if (diagnostics.length === 0 && policy.documents.length === 0) {
    // Valid, and almost never meant: an agent on it redirects and injects nothing.
    const what = directory ? `the ${files.length} file(s) read hold` : 'this file holds';
    warnings.push({ ...atStart(pathOrDir, `empty policy: ${what} no documents (only comments or nothing), so nothing would be injected`), severity: 'warning' });
  }
  return { policy, files, ignored, directory, diagnostics, warnings };
}

async function readPolicyFile(file: string): Promise<ParseResult> {
  let bytes: Buffer;
  try {
    const handle = await open(file, 'r');
    try {
      // Checked on the file opened: the path may be swapped meanwhile.
      const problem = policyFileProblem(file, await handle.stat());
      if (problem) return { documents: [], diagnostics: [atStart(file, problem)] };
      bytes = await handle.readFile();
    } finally {
      await handle.close();
    }
  } catch (err) {
    return { documents: [], diagnostics: [atStart(file, `cannot read policy file: ${describeFsError(err)}`)] };
  }
  let text: string;
  try {
    // Decoded strictly: a lenient decode turns a binary file into U+FFFD text that YAML then reads as one odd scalar.
    text = new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  } catch {
    return { documents: [], diagnostics: [atStart(file, `${file} is not UTF-8 text (a binary file?): a policy file is YAML in UTF-8`)] };
  }
  return parsePolicyText(text, file);
}

/**
 * Why a policy file may not be trusted, or undefined: a policy says which
 * workload gets which credential, so only root and the agent's own user
 * may write it, or replace it through a directory it is in or below
 * (replaceableThroughDirectory(): the one it is listed in, the one it is
 * in when it is a symbolic link's target, and every one above them).
 * Files other than regular ones (/dev/null, an empty policy) are not
 * checked.
 */
function policyFileProblem(file: string, st: Stats): string | undefined {
  if (!st.isFile()) return undefined;
  const why = 'a policy file says which workload gets which credential';
  if (!trustedOwner(st.uid)) return `${file} is owned by uid ${st.uid}; ${why}: it must be owned by ${trustedOwners()}`;
  if (st.mode & 0o022) return `${file} has mode 0${(st.mode & 0o777).toString(8)}: group or others can write it, and ${why} (chmod go-w)`;
  const problem = replaceableThroughDirectory([dirname(file), dirname(realpathSync(file))], why);
  return problem && `${file}: ${problem}`;
}

/** `path` itself, or the policy files directly inside it sorted by name, and the entries not read. */
async function policyFiles(path: string): Promise<{ files: string[]; ignored: IgnoredFile[]; directory: boolean }> {
  if (!(await stat(path)).isDirectory()) return { files: [path], ignored: [], directory: false };
  const ignored: IgnoredFile[] = [];
  const candidates: string[] = [];
  for (const name of (await readdir(path)).sort()) {
    const file = join(path, name);
    // Dot files are skipped: editors leave lock and backup files such as .#x.yaml next to the real ones.
    if (name.startsWith('.')) ignored.push({ file, reason: 'a hidden file' });
    // Packaging leaves x.yaml.dpkg-old, editors x.yaml~ and x.yaml.bak: only the name's end counts.
    else if (!/\.ya?ml$/.test(name)) ignored.push({ file, reason: 'not *.yaml or *.yml' });
    else candidates.push(file);
  }
  // A file that cannot be stat'ed stays in, so that reading it reports the problem against its own name.
  const kinds = await Promise.all(candidates.map((file) => stat(file).then((s) => (s.isFile() ? 'file' : s.isDirectory() ? 'a directory' : 'not a regular file'), () => 'file')));
  const files = candidates.filter((file, i) => {
    if (kinds[i] === 'file') return true;
    ignored.push({ file, reason: kinds[i] as string });
    return false;
  });
  ignored.sort((a, b) => (a.file < b.file ? -1 : a.file > b.file ? 1 : 0));
  return { files, ignored, directory: true };
}

function atStart(file: string, message: string): PolicyDiagnostic {
  return { file, line: 1, column: 1, message };
}

function describeFsError(err: unknown): string {
  const reasons: Record<string, string> = {
    ENOENT: 'no such file or directory',
    EACCES: 'permission denied',
    EPERM: 'permission denied',
    ENOTDIR: 'a parent is not a directory',
    ELOOP: 'too many symbolic links',
  };
  const code = (err as NodeJS.ErrnoException).code;
  return (code !== undefined ? reasons[code] : undefined) ?? (err as Error).message;
}
