/** What status, explain and reload read: the runtime state, only when the agent holding the lock wrote it. */
import { describe, expect, it } from 'vitest';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { acquireInstanceLock } from '../../controller/datapath/instance-lock.js';
import { discardRuntimeState, previousRuntimeStatePath, readRuntimeState, retireRuntimeState, runtimeStatePath } from '../../controller/host/runtime-state.js';

function state(pid: number): string {
  return JSON.stringify({ pid, policyPath: '/p', pinDir: '/sys/fs/bpf/x', cgroupRoot: '/sys/fs/cgroup', workloads: [], bindings: [] });
}

function withStateDir(fn: (dir: string) => void): void {
  const dir = mkdtempSync(path.join(tmpdir(), 'wirekey-state-'));
  try {
    fn(dir);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

describe('readRuntimeState', () => {
  it('while a new agent starts, a dead agent\'s state is not reported as running: the lock owner is "starting"', () => {
    withStateDir((dir) => {
      // pid 1 stands for the dead agent that wrote the state; this process holds the lock, as a starting agent does.
      writeFileSync(runtimeStatePath(dir), state(1));
      const lock = acquireInstanceLock(dir, path.join(dir, 'pins'), { runDir: path.join(dir, 'run') });
      try {
        expect(() => readRuntimeState(dir)).toThrow(expect.objectContaining({ code: 'WK_STARTING', message: expect.stringContaining(`the agent (pid ${process.pid}) is starting`) }));
        expect(() => readRuntimeState(dir, { evenIfDead: true })).toThrow(expect.objectContaining({ code: 'WK_STARTING' }));
        retireRuntimeState(dir);
        expect(existsSync(runtimeStatePath(dir))).toBe(false);
        expect(() => readRuntimeState(dir)).toThrow(expect.objectContaining({ code: 'WK_STARTING' }));
        writeFileSync(runtimeStatePath(dir), state(process.pid));
        expect(readRuntimeState(dir)).toMatchObject({ pid: process.pid, running: true });
        discardRuntimeState(dir, { previousOnly: true });
        expect(existsSync(previousRuntimeStatePath(dir))).toBe(false);
        expect(existsSync(runtimeStatePath(dir))).toBe(true);
      } finally {
        lock.release();
      }
    });
  });

  it('with no lock held: a dead agent\'s state for status only, and no agent for the others', () => {
    withStateDir((dir) => {
      writeFileSync(runtimeStatePath(dir), state(1));
      expect(readRuntimeState(dir, { evenIfDead: true })).toMatchObject({ pid: 1, running: false });
      expect(() => readRuntimeState(dir)).toThrow(expect.objectContaining({ code: 'WK_NO_AGENT', message: `no agent is running with state dir ${dir}` }));
    });
  });

  it('a dead agent\'s state with the new agent\'s pid (a container\'s pid 1) is retired on taking the lock, so not taken for its own', () => {
    withStateDir((dir) => {
      writeFileSync(runtimeStatePath(dir), state(process.pid));
      const lock = acquireInstanceLock(dir, path.join(dir, 'pins'), { runDir: path.join(dir, 'run') });
      try {
        retireRuntimeState(dir);
        expect(() => readRuntimeState(dir)).toThrow(expect.objectContaining({ code: 'WK_STARTING' }));
      } finally {
        lock.release();
      }
    });
  });

  it('an agent that retired a dead one\'s state and then failed to start leaves it for status', () => {
    withStateDir((dir) => {
      writeFileSync(runtimeStatePath(dir), state(1));
      retireRuntimeState(dir);
      expect(readRuntimeState(dir, { evenIfDead: true })).toMatchObject({ pid: 1, running: false });
      discardRuntimeState(dir);
      expect(() => readRuntimeState(dir, { evenIfDead: true })).toThrow(expect.objectContaining({ code: 'WK_NO_AGENT' }));
    });
  });
});
