/**
 * Reads policy files from disk and turns them into one checked Policy, or
 * every problem found in all of them.
 */
import { readdir, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { PolicyError, type PolicyDiagnostic } from '../errors.js';
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

async function readPolicy(pathOrDir: string): Promise<LoadedPolicy & { diagnostics: PolicyDiagnostic[] }> {
  const policy: Policy = { documents: [] };
  let files: string[];
  try {
    files = await policyFiles(pathOrDir);
  } catch (err) {
    return { policy, files: [], warnings: [], diagnostics: [atStart(pathOrDir, `cannot read policy: ${describeFsError(err)}`)] };
  }
  if (files.length === 0) {
    return { policy, files, warnings: [], diagnostics: [atStart(pathOrDir, 'no policy files (*.yaml or *.yml) in this directory')] };
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
  return { policy, files, diagnostics, warnings };
}

async function readPolicyFile(file: string): Promise<ParseResult> {
  try {
    return parsePolicyText(await readFile(file, 'utf8'), file);
  } catch (err) {
    return { documents: [], diagnostics: [atStart(file, `cannot read policy file: ${describeFsError(err)}`)] };
  }
}

/** `path` itself, or the policy files directly inside it, sorted by name. */
async function policyFiles(path: string): Promise<string[]> {
  if (!(await stat(path)).isDirectory()) return [path];
  // Dot files are skipped: editors leave lock and backup files such as .#x.yaml next to the real ones.
  const names = (await readdir(path))
    .filter((name) => /\.ya?ml$/.test(name) && !name.startsWith('.'))
    .sort();
  const candidates = names.map((name) => join(path, name));
  // A file that cannot be stat'ed stays in, so that reading it reports the problem against its own name.
  const isFile = await Promise.all(candidates.map((file) => stat(file).then((s) => s.isFile(), () => true)));
  return candidates.filter((_, i) => isFile[i]);
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
