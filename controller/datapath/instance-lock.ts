/**
 * One agent per host: an agent holds an exclusive flock on its state dir
 * (STATE_DIR/agent.lock) and one on its pin dir (a lock file under
 * /run/wirekey named after the pin dir's real path, since bpffs holds no
 * regular files), for as long as it runs; the kernel drops both when the
 * process dies, so a crashed agent never leaves a stale lock. /run/wirekey is
 * the unit's RuntimeDirectory=, kept across stops (RuntimeDirectoryPreserve=yes)
 * so that systemd never deletes the lock of an agent started by hand. Each
 * file holds its owner's pid, for messages. `wirekey status` and `explain`
 * look the lock up in /proc/locks to tell whether the agent that wrote the
 * state is alive, and which pid it is: taking a shared lock to find out would
 * make an agent that is starting at that instant fail its LOCK_NB as if
 * another agent ran.
 */
import { type BigIntStats, closeSync, fstatSync, ftruncateSync, mkdirSync, readFileSync, realpathSync, statSync, writeSync } from 'node:fs';
import { createHash } from 'node:crypto';
import path from 'node:path';
import { WirekeyError } from '../errors.js';
import { native } from './native.js';

const EWOULDBLOCK = 11;
const RUN_DIR = '/run/wirekey';

export interface InstanceLock {
  /** The pid that held the state dir's lock before (a dead agent), if any. */
  previousPid: number | undefined;
  release(): void;
}

/** A lock file replaced this many times while being locked is given up on. */
const LOCK_ATTEMPTS = 5;

/**
 * Where the locks for `stateDir` and `pinDir` live: the pin dir's lock is
 * named after its real path (symbolic links and `..` resolved as far as the
 * path exists), so two spellings of one directory share one lock.
 */
export function lockPaths(stateDir: string, pinDir: string, runDir = RUN_DIR): { state: string; pins: string } {
  const id = createHash('sha256').update(realPath(pinDir)).digest('hex').slice(0, 16);
  return { state: path.join(stateDir, 'agent.lock'), pins: path.join(runDir, `pins-${id}.lock`) };
}

/** `p` with its longest existing prefix resolved by realpath(3), the rest appended as written. */
export function realPath(p: string): string {
  const abs = path.resolve(p);
  try {
    return realpathSync(abs);
  } catch {
    const parent = path.dirname(abs);
    return parent === abs ? abs : path.join(realPath(parent), path.basename(abs));
  }
}

/**
 * flock()s `file` (exclusive, LOCK_NB) and checks that the locked open file
 * is still the one at the path (same device and inode): a lock file removed
 * and created again between open() and flock() would leave this process
 * holding a lock nobody else can see. Tries again with the new file.
 * @throws the lock function's error (errno EWOULDBLOCK when held);
 *   WirekeyError WK_LOCK when the file keeps changing.
 */
export function lockCurrentFile(file: string, lock: (file: string) => number = (f) => native().lockFile(f, true)): number {
  for (let attempt = 0; attempt < LOCK_ATTEMPTS; attempt++) {
    const fd = lock(file);
    const held = fstatSync(fd, { bigint: true });
    let now: BigIntStats | undefined;
    try {
      now = statSync(file, { bigint: true });
    } catch {
      now = undefined;
    }
    if (now && now.dev === held.dev && now.ino === held.ino) return fd;
    closeSync(fd);
  }
  throw new WirekeyError('WK_LOCK', `cannot lock ${file}: it was removed or replaced each of ${LOCK_ATTEMPTS} times it was locked`);
}

/**
 * Takes both locks, writing this pid into them.
 * @throws WirekeyError WK_AGENT_RUNNING naming the other agent's pid and the
 *   shared directory; WK_LOCK when a lock file cannot be created (the path
 *   and errno in one line). Nothing stays locked after a throw.
 */
export function acquireInstanceLock(stateDir: string, pinDir: string, opts: { runDir?: string; lock?: (file: string) => number } = {}): InstanceLock {
  const runDir = opts.runDir ?? RUN_DIR;
  const paths = lockPaths(stateDir, pinDir, runDir);
  mkdirSync(runDir, { recursive: true, mode: 0o700 });
  const fds: number[] = [];
  let previousPid: number | undefined;
  try {
    for (const [file, what] of [[paths.state, `state dir ${stateDir}`], [paths.pins, `pin dir ${pinDir}`]] as const) {
      let fd: number;
      try {
        fd = lockCurrentFile(file, opts.lock);
      } catch (err) {
        if (err instanceof WirekeyError) throw err;
        const errno = (err as { errno?: number }).errno;
        if (errno === EWOULDBLOCK) {
          const pid = ownerPid(file);
          throw new WirekeyError('WK_AGENT_RUNNING',
            `another wirekey agent${pid ? ` (pid ${pid})` : ''} is running with the ${what}; stop it first (systemctl stop wirekey), or give this one its own --state-dir and --pin-dir`);
        }
        throw new WirekeyError('WK_LOCK', `cannot lock ${file}: ${(err as Error).message}`, { cause: err });
      }
      fds.push(fd);
      if (file === paths.state) previousPid = ownerPid(file);
      ftruncateSync(fd, 0);
      writeSync(fd, `${process.pid}\n`, 0);
    }
  } catch (err) {
    for (const fd of fds) closeSync(fd);
    throw err;
  }
  let released = false;
  return {
    previousPid: previousPid === process.pid ? undefined : previousPid,
    release: () => {
      if (released) return;
      released = true;
      for (const fd of fds) closeSync(fd);
    },
  };
}

/**
 * Whether an agent holds the lock of `stateDir` now, read from /proc/locks
 * (taking the lock to find out would race an agent that is starting).
 * @throws WirekeyError WK_ACCESS when the state dir cannot be read for want
 *   of permission (not root), rather than answering "not running".
 */
export function agentRunning(stateDir: string, procLocks: () => string = () => readFileSync('/proc/locks', 'utf8')): { running: boolean; pid: number | undefined } {
  const file = path.join(stateDir, 'agent.lock');
  let st: BigIntStats;
  try {
    st = statSync(file, { bigint: true });
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'EACCES' || code === 'EPERM') throw new WirekeyError('WK_ACCESS', `cannot read ${stateDir}: permission denied (run as root)`);
    return { running: false, pid: undefined };
  }
  const pid = flockOwner(procLocks(), st.dev, st.ino);
  if (pid === undefined) return { running: false, pid: ownerPid(file) };
  // 0: the holder is outside this pid namespace; the pid it wrote is the best there is.
  return { running: true, pid: pid > 0 ? pid : ownerPid(file) };
}

/**
 * The device as /proc/locks prints it, "MAJOR:MINOR" in hex (at least two
 * digits each), from a stat() st_dev: glibc's encoding of dev_t, where the
 * minor's low 8 bits come first and its upper 12 above the major's 12 low ones.
 */
export function procLocksDevice(dev: bigint): string {
  const major = ((dev >> 8n) & 0xfffn) | ((dev >> 32n) & ~0xfffn);
  const minor = (dev & 0xffn) | ((dev >> 12n) & 0xfff00n);
  return `${major.toString(16).padStart(2, '0')}:${minor.toString(16).padStart(2, '0')}`;
}

/** The pid holding an exclusive flock on the file (dev, ino) in a /proc/locks text, if any. */
export function flockOwner(procLocks: string, dev: bigint, ino: bigint): number | undefined {
  const id = `${procLocksDevice(dev)}:${ino}`;
  for (const line of procLocks.split('\n')) {
    // "1: FLOCK  ADVISORY  WRITE 1234 00:2a:5678 0 EOF"; a waiter's line has "->" after the number.
    const f = line.trim().split(/\s+/);
    if (f[1] === 'FLOCK' && f[3] === 'WRITE' && f[5] === id) return Number(f[4]);
  }
  return undefined;
}

function ownerPid(file: string): number | undefined {
  try {
    const n = Number.parseInt(readFileSync(file, 'utf8'), 10);
    return Number.isInteger(n) && n > 0 ? n : undefined;
  } catch {
    return undefined;
  }
}
