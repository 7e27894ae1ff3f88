/** The one-agent-per-host locks: where they live, how they are taken, and how status finds their owner. */
import { describe, expect, it } from 'vitest';
import { mkdirSync, mkdtempSync, openSync, rmSync, statSync, symlinkSync, unlinkSync, writeFileSync, fstatSync, closeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { acquireInstanceLock, agentRunning, flockOwner, lockCurrentFile, lockPaths, procLocksDevice } from '../../controller/datapath/instance-lock.js';

/** glibc's makedev(). */
function makedev(major: bigint, minor: bigint): bigint {
  return ((major & 0xfffn) << 8n) | ((major & ~0xfffn) << 32n) | (minor & 0xffn) | ((minor & ~0xffn) << 12n);
}

function tempDir(): string {
  return mkdtempSync(path.join(tmpdir(), 'wirekey-lock-'));
}

describe('procLocksDevice', () => {
  it('prints major:minor as /proc/locks does, minors above 255 and majors above 4095 included', () => {
    expect(procLocksDevice(makedev(0n, 0x2an))).toBe('00:2a');
    expect(procLocksDevice(makedev(254n, 0n))).toBe('fe:00');
    expect(procLocksDevice(makedev(0n, 300n))).toBe('00:12c');
    expect(procLocksDevice(makedev(259n, 1n))).toBe('103:01');
    expect(procLocksDevice(makedev(0n, 0xfffffn))).toBe('00:fffff');
    expect(procLocksDevice(makedev(0x1234n, 0x56789n))).toBe('1234:56789');
  });
});

describe('flockOwner', () => {
  it('finds the holder of device 0:300, not that of 0:44 (its low byte)', () => {
    const text = [
      '1: FLOCK  ADVISORY  WRITE 111 00:2c:77 0 EOF',
      '2: FLOCK  ADVISORY  WRITE 222 00:12c:77 0 EOF',
      '3: FLOCK  ADVISORY  WRITE 333 00:12c:78 0 EOF',
      '',
    ].join('\n');
    expect(flockOwner(text, makedev(0n, 300n), 77n)).toBe(222);
    expect(flockOwner(text, makedev(0n, 44n), 77n)).toBe(111);
    expect(flockOwner(text, makedev(0n, 301n), 77n)).toBeUndefined();
  });

  it('ignores shared locks and waiters', () => {
    const text = ['1: FLOCK  ADVISORY  READ 111 00:12c:77 0 EOF', '1: -> FLOCK  ADVISORY  WRITE 222 00:12c:77 0 EOF'].join('\n');
    expect(flockOwner(text, makedev(0n, 300n), 77n)).toBeUndefined();
  });
});

describe('lockCurrentFile', () => {
  it('locks again when the file was removed and created anew between open and flock', () => {
    const dir = tempDir();
    try {
      const file = path.join(dir, 'x.lock');
      let calls = 0;
      // Stands for open+flock; the first time, the file is replaced right after (systemd emptying a RuntimeDirectory=).
      const lock = (f: string) => {
        const fd = openSync(f, 'a');
        if (calls++ === 0) {
          unlinkSync(f);
          writeFileSync(f, '');
        }
        return fd;
      };
      const fd = lockCurrentFile(file, lock);
      expect(calls).toBe(2);
      expect(fstatSync(fd).ino).toBe(statSync(file).ino);
      closeSync(fd);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('gives up, naming the file, when it is replaced every time', () => {
    const dir = tempDir();
    try {
      const file = path.join(dir, 'x.lock');
      const lock = (f: string) => {
        const fd = openSync(f, 'a');
        unlinkSync(f);
        return fd;
      };
      expect(() => lockCurrentFile(file, lock)).toThrow(`cannot lock ${file}: it was removed or replaced`);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('acquireInstanceLock', () => {
  it('two spellings of one pin dir share one lock', () => {
    const dir = tempDir();
    try {
      const runDir = path.join(dir, 'run');
      mkdirSync(path.join(dir, 'bpf/pins'), { recursive: true });
      symlinkSync(path.join(dir, 'bpf'), path.join(dir, 'alias'));
      expect(lockPaths('/s', path.join(dir, 'alias/pins'), runDir).pins).toBe(lockPaths('/s', path.join(dir, 'bpf/x/../pins'), runDir).pins);
      // A pin dir not created yet: resolved as far as it exists.
      expect(lockPaths('/s', path.join(dir, 'alias/new'), runDir).pins).toBe(lockPaths('/s', path.join(dir, 'bpf/new'), runDir).pins);
      mkdirSync(path.join(dir, 's1'));
      const first = acquireInstanceLock(path.join(dir, 's1'), path.join(dir, 'bpf/pins'), { runDir });
      try {
        mkdirSync(path.join(dir, 's2'));
        expect(() => acquireInstanceLock(path.join(dir, 's2'), path.join(dir, 'alias/pins'), { runDir }))
          .toThrow(`another wirekey agent (pid ${process.pid}) is running with the pin dir ${path.join(dir, 'alias/pins')}`);
      } finally {
        first.release();
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('agentRunning finds the holder of a state dir\'s lock, and none once released', () => {
    const dir = tempDir();
    try {
      const lock = acquireInstanceLock(dir, path.join(dir, 'pins'), { runDir: path.join(dir, 'run') });
      expect(agentRunning(dir)).toEqual({ running: true, pid: process.pid });
      lock.release();
      expect(agentRunning(dir)).toEqual({ running: false, pid: process.pid });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('agentRunning: a holder outside this pid namespace (pid 0 in /proc/locks) is running, with the pid it wrote', () => {
    const dir = tempDir();
    try {
      const file = path.join(dir, 'agent.lock');
      writeFileSync(file, '4242\n');
      const st = statSync(file, { bigint: true });
      const procLocks = () => `1: FLOCK  ADVISORY  WRITE 0 ${procLocksDevice(st.dev)}:${st.ino} 0 EOF\n`;
      expect(agentRunning(dir, procLocks)).toEqual({ running: true, pid: 4242 });
      expect(agentRunning(dir, () => '')).toEqual({ running: false, pid: 4242 });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
