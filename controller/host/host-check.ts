/**
 * Checks a valid policy against the host it is meant for: the files,
 * users, executables and cgroups it names. Not pure, unlike the rest of
 * controller/policy: it reads the file system and asks NSS. Used by
 * `wirekey validate --host`, and by `wirekey run` at start (as warnings:
 * the agent withholds what it cannot use and serves the rest).
 */
import { createHash } from 'node:crypto';
import { execFile } from 'node:child_process';
import { createReadStream, existsSync, type Stats } from 'node:fs';
import { access, constants, stat } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { FileCredentialSource } from '../credentials/file-source.js';
import { findCgroup2Root } from '../cgroup.js';
import { CredentialError, type PolicyDiagnostic } from '../errors.js';
import { normalizeCgroup } from '../policy/compile.js';
import { positionOf, type PolicyPath } from '../policy/parse.js';
import type { CredentialSourceDoc, Policy, PolicyDoc, VaultConnectionDoc, WorkloadDoc } from '../policy/types.js';

const run = promisify(execFile);

export interface HostCheckOptions {
  /** The cgroup v2 mount point; found in /proc/self/mountinfo when absent. */
  cgroupRoot?: string;
  /** The passwd entry for a user name or uid, as `getent passwd KEY` prints it; undefined when there is none. */
  passwd?: (key: string) => Promise<string | undefined>;
  /**
   * A systemd unit's cgroup relative to the cgroup v2 root, or why there is
   * none. Default: systemd's ControlGroup when systemd runs, else
   * /system.slice/UNIT (as the agent resolves it).
   */
  unitCgroup?: (unit: string) => Promise<{ cgroup: string } | { problem: string }>;
}

/**
 * What the policy names that this host does not have, at the policy line
 * that names it. Errors: a credential file that is missing or that the
 * agent would refuse (not a regular file, group/other-accessible, owned by
 * a user other than root or this process's, empty, without its field), a
 * missing or unreadable Vault login file, an unknown user, an executable
 * that is missing or fails its digest. Warnings (severity 'warning'): a
 * cgroup or unit that does not exist now (it may appear later), a uid no
 * user has, a Vault secret file others can read. Vault itself is not
 * contacted. Expects a policy without errors. Never throws.
 */
export async function checkHost(policy: Policy, options: HostCheckOptions = {}): Promise<PolicyDiagnostic[]> {
  const passwd = memoize(options.passwd ?? getentPasswd);
  const unitCgroup = options.unitCgroup ?? systemdUnitCgroup;
  let cgroupRoot: string | { problem: string } | undefined = options.cgroupRoot;
  const root = (): string | { problem: string } => {
    if (cgroupRoot === undefined) {
      try {
        cgroupRoot = findCgroup2Root();
      } catch (err) {
        cgroupRoot = { problem: (err as Error).message };
      }
    }
    return cgroupRoot;
  };
  const out: PolicyDiagnostic[] = [];
  for (const doc of policy.documents) {
    const found: PolicyDiagnostic[] = [];
    const say = (at: PolicyPath, message: string, warning = false) =>
      found.push({ ...positionOf(doc, at), message: `${label(doc)}: ${at.join('.')}: ${message}`, ...(warning ? { severity: 'warning' as const } : {}) });
    if (doc.kind === 'CredentialSource') await credentialFile(doc, say);
    else if (doc.kind === 'VaultConnection') await vaultFiles(doc, say);
    else if (doc.kind === 'Workload') await selectors(doc, say, { passwd, unitCgroup, root });
    out.push(...found.sort((a, b) => a.line - b.line || a.column - b.column));
  }
  return out;
}

type Say = (at: PolicyPath, message: string, warning?: boolean) => void;

/** Exactly the checks the agent makes before it uses the file (FileCredentialSource), so that both say the same. */
async function credentialFile(doc: CredentialSourceDoc, say: Say): Promise<void> {
  const file = doc.spec.file;
  if (!file) return;
  const source = new FileCredentialSource({ name: doc.metadata.name, path: file.path, field: file.field, recheckIntervalMs: 0 });
  try {
    await source.get();
  } catch (err) {
    const prefix = `credential ${JSON.stringify(doc.metadata.name)}: `;
    const message = err instanceof CredentialError && err.message.startsWith(prefix) ? err.message.slice(prefix.length) : (err as Error).message;
    // The agent's own wording, with errno codes in words where a person reads it.
    say(['spec', 'file', 'path'], message.replace(/^cannot stat (.*) \((ENOENT|EACCES|ENOTDIR|ELOOP)\)$/, (_m, file: string, code: string) =>
      `${file} ${fsProblem({ code })}`));
  } finally {
    await source.close();
  }
}

async function vaultFiles(doc: VaultConnectionDoc, say: Say): Promise<void> {
  const { auth, tls } = doc.spec;
  // [where in the document, the file, whether it holds a secret]
  const files: [PolicyPath, string, boolean][] = [];
  if ('token' in auth) files.push([['spec', 'auth', 'token', 'file'], auth.token.file, true]);
  if ('approle' in auth) {
    files.push([['spec', 'auth', 'approle', 'roleIdFile'], auth.approle.roleIdFile, false]);
    files.push([['spec', 'auth', 'approle', 'secretIdFile'], auth.approle.secretIdFile, true]);
  }
  if ('jwt' in auth) files.push([['spec', 'auth', 'jwt', 'file'], auth.jwt.file, true]);
  if ('kubernetes' in auth && auth.kubernetes.tokenFile) files.push([['spec', 'auth', 'kubernetes', 'tokenFile'], auth.kubernetes.tokenFile, true]);
  if (tls?.caFile) files.push([['spec', 'tls', 'caFile'], tls.caFile, false]);
  for (const [at, file, secret] of files) {
    let st: Stats;
    try {
      st = await stat(file);
    } catch (err) {
      say(at, `${file} ${fsProblem(err)}`);
      continue;
    }
    if (!st.isFile()) {
      say(at, `${file} is not a regular file`);
      continue;
    }
    try {
      await access(file, constants.R_OK);
    } catch (err) {
      say(at, `${file} ${fsProblem(err)}`);
      continue;
    }
    if (st.size === 0) say(at, `${file} is empty`);
    else if (secret && (st.mode & 0o077) !== 0) {
      say(at, `${file} has mode 0${(st.mode & 0o777).toString(8)}: it holds a secret that group or others can read (chmod 600)`, true);
    }
  }
}

interface SelectorContext {
  passwd: (key: string) => Promise<string | undefined>;
  unitCgroup: NonNullable<HostCheckOptions['unitCgroup']>;
  root: () => string | { problem: string };
}

async function selectors(doc: WorkloadDoc, say: Say, ctx: SelectorContext): Promise<void> {
  const s = doc.spec.selector;
  const at = (key: string): PolicyPath => ['spec', 'selector', key];
  if (s.user !== undefined && (await ctx.passwd(s.user)) === undefined) {
    say(at('user'), `no user named ${s.user} on this host (getent passwd): the workload would match nothing`);
  }
  if (s.uid !== undefined && (await ctx.passwd(String(s.uid))) === undefined) {
    say(at('uid'), `no user has uid ${s.uid} on this host (getent passwd); processes can still run as it`, true);
  }
  if (s.executable !== undefined) {
    const exe = typeof s.executable === 'string' ? { path: s.executable } : s.executable;
    const problem = await executableProblem(exe.path, exe.sha256);
    if (problem) say(at('executable'), problem);
  }
  if (s.cgroup !== undefined) {
    const root = ctx.root();
    const cgroup = normalizeCgroup(s.cgroup);
    if (typeof root !== 'string') say(at('cgroup'), root.problem, true);
    else if (!existsSync(path.join(root, cgroup))) {
      say(at('cgroup'), `cgroup ${cgroup} does not exist under ${root} (yet): the workload matches nothing until it does`, true);
    }
  }
  if (s.systemdUnit !== undefined) {
    const unit = await ctx.unitCgroup(s.systemdUnit);
    const root = ctx.root();
    if ('problem' in unit) say(at('systemdUnit'), unit.problem, true);
    else if (typeof root !== 'string') say(at('systemdUnit'), root.problem, true);
    else if (!existsSync(path.join(root, unit.cgroup))) {
      say(at('systemdUnit'), `${s.systemdUnit} is not running (no cgroup ${unit.cgroup}): the workload matches nothing until it starts`, true);
    }
  }
}

async function executableProblem(file: string, sha256: string | undefined): Promise<string | undefined> {
  let st: Stats;
  try {
    st = await stat(file);
  } catch (err) {
    return `${file} ${fsProblem(err)}`;
  }
  if (!st.isFile()) return `${file} is not a regular file`;
  if ((st.mode & 0o111) === 0) return `${file} is not executable (mode 0${(st.mode & 0o777).toString(8)}): no process can run it`;
  if (sha256 === undefined) return undefined;
  let actual: string;
  try {
    actual = await digest(file);
  } catch (err) {
    return `${file} cannot be read to check its SHA-256 (${fsProblem(err)})`;
  }
  if (actual !== sha256.toLowerCase()) return `${file} has SHA-256 ${actual}, not ${sha256.toLowerCase()}: the workload would match nothing`;
  return undefined;
}

function digest(file: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const hash = createHash('sha256');
    createReadStream(file)
      .on('data', (d) => hash.update(d))
      .on('end', () => resolve(hash.digest('hex')))
      .on('error', reject);
  });
}

async function getentPasswd(key: string): Promise<string | undefined> {
  try {
    // getent, not /etc/passwd: users may come from NSS (LDAP, sssd, systemd-homed), as for the agent.
    const { stdout } = await run('getent', ['passwd', key]);
    return stdout.trim() || undefined;
  } catch {
    return undefined;
  }
}

/** As IdentityResolver resolves a unit: systemd's ControlGroup when systemd runs, else the standard system.slice layout. */
async function systemdUnitCgroup(unit: string): Promise<{ cgroup: string } | { problem: string }> {
  if (!existsSync('/run/systemd/system')) return { cgroup: `/system.slice/${unit}` };
  try {
    const { stdout } = await run('systemctl', ['show', '--property=LoadState', '--property=ControlGroup', unit]);
    const props = new Map(stdout.trim().split('\n').map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)] as const));
    if (props.get('LoadState') === 'not-found') return { problem: `systemd has no unit named ${unit} (yet): the workload matches nothing until it does` };
    const cgroup = props.get('ControlGroup');
    return cgroup ? { cgroup } : { problem: `${unit} is not running: the workload matches nothing until it starts` };
  } catch (err) {
    return { problem: `cannot ask systemd about ${unit}: ${(err as Error).message.split('\n')[0]}` };
  }
}

function memoize(fn: (key: string) => Promise<string | undefined>): (key: string) => Promise<string | undefined> {
  const cache = new Map<string, Promise<string | undefined>>();
  return (key) => {
    let found = cache.get(key);
    if (!found) cache.set(key, (found = fn(key)));
    return found;
  };
}

function fsProblem(err: unknown): string {
  const code = (err as NodeJS.ErrnoException).code;
  const words: Record<string, string> = {
    ENOENT: 'does not exist',
    EACCES: 'cannot be read here (permission denied)',
    EPERM: 'cannot be read here (permission denied)',
    ENOTDIR: 'does not exist (a parent is not a directory)',
    ELOOP: 'is a loop of symbolic links',
  };
  return (code && words[code]) || `cannot be read (${code ?? (err as Error).message})`;
}

function label(doc: PolicyDoc): string {
  return `${doc.kind} ${JSON.stringify(doc.metadata.name)}`;
}
