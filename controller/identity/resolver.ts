/**
 * Turns workload selectors into what the kernel can compare: cgroup ids,
 * executables (device and inode, with an optional SHA-256 check) and uids.
 * Resolution is repeated periodically: cgroups come and go, units start
 * after the agent, binaries are upgraded. A selector that cannot be
 * resolved leaves its workload unable to match anything (fail closed), and
 * is reported.
 */
import { createHash } from 'node:crypto';
import { createReadStream, existsSync, statSync, type BigIntStats } from 'node:fs';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import path from 'node:path';
import { cgroupId } from '../datapath/cgroup.js';
import { kernelDev, type ExeKey } from '../datapath/layout.js';
import type { PlanWorkload } from '../policy/types.js';

const run = promisify(execFile);

export interface ResolvedWorkload {
  id: number;
  name: string;
  /** The cgroup the process must be in (or below), relative to the v2 root; undefined: any cgroup. */
  cgroupPath?: string;
  /** Its id; null when the cgroup cannot be resolved now. */
  cgroupId?: bigint | null;
  /** undefined: any executable; null: the executable cannot be resolved (or failed its digest). */
  exe?: ExeKey | null;
  /** undefined: any user; null: the user cannot be resolved. */
  uid?: number | null;
  /** Why a selector could not be resolved, for the log. */
  problems: string[];
}

interface DigestCacheEntry {
  stamp: string;
  sha256: string;
}

export class IdentityResolver {
  readonly #cgroupRoot: string;
  readonly #digests = new Map<string, DigestCacheEntry>();
  readonly #units = new Map<string, string>();
  readonly #users = new Map<string, number>();

  constructor(cgroupRoot: string) {
    this.#cgroupRoot = cgroupRoot;
  }

  /** Resolves every workload's selectors as of now. Never throws: problems are reported per workload. */
  async resolve(workloads: Iterable<PlanWorkload>): Promise<ResolvedWorkload[]> {
    const out: ResolvedWorkload[] = [];
    for (const w of workloads) out.push(await this.#resolveOne(w));
    return out;
  }

  async #resolveOne(w: PlanWorkload): Promise<ResolvedWorkload> {
    const r: ResolvedWorkload = { id: w.id, name: w.name, problems: [] };
    const s = w.selector;

    const cgroups: string[] = [];
    if (s.cgroup !== undefined) cgroups.push(s.cgroup);
    if (s.systemdUnit !== undefined) {
      const unitPath = await this.#unitCgroup(s.systemdUnit);
      if (unitPath) cgroups.push(unitPath);
      else r.problems.push(`systemd unit ${s.systemdUnit} has no cgroup (not running?)`);
    }
    if (s.cgroup !== undefined || s.systemdUnit !== undefined) {
      r.cgroupPath = innermost(cgroups);
      if (r.cgroupPath === undefined) {
        if (cgroups.length > 1) r.problems.push(`cgroup ${s.cgroup} and unit ${s.systemdUnit} (${cgroups[1]}) are not nested: nothing can be in both`);
        r.cgroupId = null;
      } else {
        r.cgroupId = cgroupId(path.join(this.#cgroupRoot, r.cgroupPath)) ?? null;
        if (r.cgroupId === null) r.problems.push(`cgroup ${r.cgroupPath} does not exist (yet)`);
      }
    }

    if (s.executable !== undefined) r.exe = await this.#executable(s.executable.path, s.executable.sha256, r.problems);

    if (s.uid !== undefined) r.uid = s.uid;
    else if (s.user !== undefined) {
      r.uid = await this.#uidOf(s.user);
      if (r.uid === null) r.problems.push(`user ${s.user} does not exist`);
    }
    return r;
  }

  /** The unit's cgroup: systemd's ControlGroup when systemd runs, else the standard system.slice layout. */
  async #unitCgroup(unit: string): Promise<string | undefined> {
    const cached = this.#units.get(unit);
    if (cached && existsSync(path.join(this.#cgroupRoot, cached))) return cached;
    let found: string | undefined;
    if (existsSync('/run/systemd/system')) {
      try {
        const { stdout } = await run('systemctl', ['show', '--property=ControlGroup', '--value', unit]);
        found = stdout.trim() || undefined;
      } catch {
        found = undefined;
      }
    } else {
      found = `/system.slice/${unit}`;
    }
    if (found && existsSync(path.join(this.#cgroupRoot, found))) this.#units.set(unit, found);
    return found;
  }

  async #uidOf(user: string): Promise<number | null> {
    const cached = this.#users.get(user);
    if (cached !== undefined) return cached;
    try {
      // getent, not /etc/passwd: users may come from NSS (LDAP, sssd, systemd-homed).
      const { stdout } = await run('getent', ['passwd', user]);
      const uid = Number(stdout.split(':')[2]);
      if (!Number.isInteger(uid)) return null;
      this.#users.set(user, uid);
      return uid;
    } catch {
      return null;
    }
  }

  /** The file's (dev, ino); null when missing or when its digest differs from `sha256`. */
  async #executable(file: string, sha256: string | undefined, problems: string[]): Promise<ExeKey | null> {
    let st: BigIntStats;
    try {
      // stat follows symlinks: /usr/bin/python3 -> python3.11 selects the file the kernel executes.
      st = statSync(file, { bigint: true });
    } catch {
      problems.push(`executable ${file} does not exist`);
      return null;
    }
    if (!st.isFile()) {
      problems.push(`executable ${file} is not a regular file`);
      return null;
    }
    const key = { ino: st.ino, dev: kernelDev(st.dev) };
    if (!sha256) return key;
    const stamp = [st.dev, st.ino, st.size, st.mtimeNs, st.ctimeNs].join(':');
    let entry = this.#digests.get(file);
    if (!entry || entry.stamp !== stamp) {
      entry = { stamp, sha256: await digest(file) };
      this.#digests.set(file, entry);
    }
    if (entry.sha256 !== sha256) {
      problems.push(`executable ${file} has SHA-256 ${entry.sha256}, the policy requires ${sha256}: unbound until it matches`);
      return null;
    }
    return key;
  }
}

/** The deepest of nested cgroup paths (a process in it is in all of them), or undefined when they are not nested. */
function innermost(paths: string[]): string | undefined {
  const sorted = [...paths].sort((a, b) => b.length - a.length);
  const deepest = sorted[0];
  if (deepest === undefined) return undefined;
  const within = (outer: string) => outer === '/' || deepest === outer || deepest.startsWith(`${outer}/`);
  return sorted.every(within) ? deepest : undefined;
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
