/**
 * Turns workload selectors into what the kernel can compare: cgroup ids,
 * executables (the kernel's own key of the file, with an optional SHA-256
 * check) and uids. Resolution is repeated periodically: cgroups come and
 * go, units start after the agent, binaries are upgraded. A selector that
 * cannot be resolved leaves its workload unable to match anything (fail
 * closed), and is reported.
 */
import { createHash } from 'node:crypto';
import { closeSync, constants, createReadStream, existsSync, fstatSync, openSync, statSync, type BigIntStats } from 'node:fs';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import path from 'node:path';
import { cgroupId } from '../cgroup.js';
import type { ExeKey } from './exe-key.js';
import type { PlanWorkload } from '../policy/types.js';

const run = promisify(execFile);

/**
 * The kernel's key of every regular file this process holds open, by
 * descriptor (Datapath.openFileKeys).
 */
export type OpenFileKeys = () => Map<number, ExeKey>;

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

/** An executable selector's file, held open so that its inode, and so its key, stays what the kernel knows. */
interface HeldFile {
  fd: number;
  /** stat()'s identity of the file: unique among files that exist, so it tells whether the path still names this one. */
  id: string;
  /** The kernel's key, once asked. */
  key?: ExeKey;
  /** size, mtime and ctime with the identity: the digest is computed again when it changes. */
  stamp: string;
  sha256?: string;
}

export class IdentityResolver {
  readonly #cgroupRoot: string;
  readonly #openFileKeys: OpenFileKeys;
  readonly #held = new Map<string, HeldFile>();
  /** Files no selector names any more (or replaced on disk), closed on the next round, after the maps moved on. */
  #retired: HeldFile[] = [];
  readonly #units = new Map<string, string>();
  readonly #users = new Map<string, number>();
  #round: Promise<unknown> = Promise.resolve();
  #closed = false;

  /**
   * @param openFileKeys asks the kernel which file each of this process's
   *   descriptors holds; executable selectors are resolved through it.
   */
  constructor(cgroupRoot: string, openFileKeys: OpenFileKeys) {
    this.#cgroupRoot = cgroupRoot;
    this.#openFileKeys = openFileKeys;
  }

  /**
   * Resolves every workload's selectors as of now. Never throws: problems
   * are reported per workload. Files replaced or no longer named since the
   * previous call are closed now, once the caller has applied that call's
   * result; until then the kernel could reuse none of their keys.
   */
  resolve(workloads: Iterable<PlanWorkload>): Promise<ResolvedWorkload[]> {
    // One round at a time: a round closes the files the previous one retired.
    const round = this.#round.then(() => this.#resolveAll(workloads));
    this.#round = round.catch(() => undefined);
    return round;
  }

  async #resolveAll(workloads: Iterable<PlanWorkload>): Promise<ResolvedWorkload[]> {
    for (const f of this.#retired.splice(0)) closeSync(f.fd);
    const list = [...workloads];
    const named = new Set<string>();
    for (const w of list) if (w.selector.executable !== undefined) named.add(w.selector.executable.path);
    for (const [file, held] of this.#held) {
      if (!named.has(file)) {
        this.#held.delete(file);
        this.#retired.push(held);
      }
    }
    const opened = new Map<string, HeldFile | string>();
    for (const file of named) opened.set(file, this.#hold(file));
    if ([...opened.values()].some((h) => typeof h !== 'string' && h.key === undefined)) {
      let keys: Map<number, ExeKey> | undefined;
      let failure = '';
      try {
        keys = this.#openFileKeys();
      } catch (err) {
        failure = `: ${(err as Error).message.split('\n')[0]}`;
      }
      for (const [file, h] of opened) {
        if (typeof h === 'string' || h.key !== undefined) continue;
        h.key = keys?.get(h.fd);
        if (h.key === undefined) opened.set(file, `executable ${file}: the kernel did not say which file it is${failure}`);
      }
    }
    const out: ResolvedWorkload[] = [];
    for (const w of list) out.push(await this.#resolveOne(w, opened));
    return out;
  }

  /** Closes every file held for selectors; a round still running, or asked for later, opens none. */
  close(): void {
    this.#closed = true;
    for (const f of [...this.#retired.splice(0), ...this.#held.values()]) closeSync(f.fd);
    this.#held.clear();
  }

  /**
   * The file `file` names now, held open: the one already held when the
   * path still names it, else the new one (the old one is retired). A
   * string says why there is none.
   */
  #hold(file: string): HeldFile | string {
    if (this.#closed) return `executable ${file}: the agent is stopping`;
    let st: BigIntStats;
    try {
      // stat and open follow symlinks: /usr/bin/python3 -> python3.11 selects the file the kernel executes.
      st = statSync(file, { bigint: true });
    } catch {
      return this.#drop(file, `executable ${file} does not exist`);
    }
    // Never open what is not a regular file: opening a device can do something.
    if (!st.isFile()) return this.#drop(file, `executable ${file} is not a regular file`);
    let fd: number;
    try {
      fd = openSync(file, constants.O_RDONLY | constants.O_NONBLOCK | constants.O_NOCTTY);
    } catch (err) {
      return this.#drop(file, `executable ${file} cannot be opened: ${(err as Error).message}`);
    }
    const now = fstatSync(fd, { bigint: true });
    if (!now.isFile()) {
      closeSync(fd);
      return this.#drop(file, `executable ${file} is not a regular file`);
    }
    const id = `${now.dev}:${now.ino}`;
    const stamp = `${id}:${now.size}:${now.mtimeNs}:${now.ctimeNs}`;
    const held = this.#held.get(file);
    if (held?.id === id) {
      closeSync(fd);
      if (held.stamp !== stamp) {
        held.stamp = stamp;
        delete held.sha256;
      }
      return held;
    }
    if (held) this.#retired.push(held);
    const fresh: HeldFile = { fd, id, stamp };
    this.#held.set(file, fresh);
    return fresh;
  }

  #drop(file: string, problem: string): string {
    const held = this.#held.get(file);
    if (held) {
      this.#held.delete(file);
      this.#retired.push(held);
    }
    return problem;
  }

  async #resolveOne(w: PlanWorkload, opened: Map<string, HeldFile | string>): Promise<ResolvedWorkload> {
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

    if (s.executable !== undefined) r.exe = await this.#executable(s.executable.path, s.executable.sha256, opened, r.problems);

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

  /** The file's kernel key; null when it has none or when its digest differs from `sha256`. */
  async #executable(file: string, sha256: string | undefined, opened: Map<string, HeldFile | string>, problems: string[]): Promise<ExeKey | null> {
    const held = opened.get(file);
    if (held === undefined || typeof held === 'string') {
      problems.push(held ?? `executable ${file} was not opened`);
      return null;
    }
    if (!held.key) return null;
    if (!sha256) return held.key;
    // The digest of the file held, not of whatever the path names by the time it is read.
    try {
      held.sha256 ??= await digest(held.fd);
    } catch (err) {
      problems.push(`executable ${file} cannot be read: ${(err as Error).message}`);
      return null;
    }
    if (held.sha256 !== sha256) {
      problems.push(`executable ${file} has SHA-256 ${held.sha256}, the policy requires ${sha256}: unbound until it matches`);
      return null;
    }
    return held.key;
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

function digest(fd: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const hash = createHash('sha256');
    createReadStream('', { fd, start: 0, autoClose: false })
      .on('data', (d) => hash.update(d))
      .on('end', () => resolve(hash.digest('hex')))
      .on('error', reject);
  });
}
