/**
 * One agent per host: an agent holds an exclusive flock on its state dir
 * (STATE_DIR/agent.lock) and one on its pin dir (a lock file under
 * /run/wirekey named after the pin dir, since bpffs holds no regular files),
 * for as long as it runs; the kernel drops both when the process dies, so a
 * crashed agent never leaves a stale lock. Each file holds its owner's pid,
 * for messages. `wirekey status` and `explain` look the lock up in
 * /proc/locks to tell whether the agent that wrote the state is alive.
 */
import { closeSync, ftruncateSync, mkdirSync, readFileSync, statSync, writeSync } from 'node:fs';
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

/** Where the locks for `stateDir` and `pinDir` live. */
export function lockPaths(stateDir: string, pinDir: string): { state: string; pins: string } {
  const id = createHash('sha256').update(path.resolve(pinDir)).digest('hex').slice(0, 16);
  return { state: path.join(stateDir, 'agent.lock'), pins: path.join(RUN_DIR, `pins-${id}.lock`) };
}

/**
 * Takes both locks, writing this pid into them.
 * @throws WirekeyError WK_AGENT_RUNNING naming the other agent's pid and the
 *   shared directory; WK_LOCK when a lock file cannot be created (the path
 *   and errno in one line). Nothing stays locked after a throw.
 */
export function acquireInstanceLock(stateDir: string, pinDir: string): InstanceLock {
  const paths = lockPaths(stateDir, pinDir);
  mkdirSync(RUN_DIR, { recursive: true, mode: 0o700 });
  const fds: number[] = [];
  let previousPid: number | undefined;
  try {
    for (const [file, what] of [[paths.state, `state dir ${stateDir}`], [paths.pins, `pin dir ${pinDir}`]] as const) {
      let fd: number;
      try {
        fd = native().lockFile(file, true);
      } catch (err) {
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
export function agentRunning(stateDir: string): { running: boolean; pid: number | undefined } {
  const file = path.join(stateDir, 'agent.lock');
  let st: ReturnType<typeof statSync>;
  try {
    st = statSync(file);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'EACCES' || code === 'EPERM') throw new WirekeyError('WK_ACCESS', `cannot read ${stateDir}: permission denied (run as root)`);
    return { running: false, pid: undefined };
  }
  const dev = `${hex2(Math.floor(st.dev / 256) & 0xfff)}:${hex2(st.dev & 0xff)}:${st.ino}`;
  for (const line of readFileSync('/proc/locks', 'utf8').split('\n')) {
    // "1: FLOCK  ADVISORY  WRITE 1234 00:2a:5678 0 EOF"
    const f = line.trim().split(/\s+/);
    if (f[1] === 'FLOCK' && f[3] === 'WRITE' && f[5] === dev) return { running: true, pid: Number(f[4]) };
  }
  return { running: false, pid: ownerPid(file) };
}

function hex2(n: number): string {
  return n.toString(16).padStart(2, '0');
}

function ownerPid(file: string): number | undefined {
  try {
    const n = Number.parseInt(readFileSync(file, 'utf8'), 10);
    return Number.isInteger(n) && n > 0 ? n : undefined;
  } catch {
    return undefined;
  }
}
