/**
 * Executable selectors: the resolver holds each named file open and keys it
 * by what the kernel says that descriptor holds. Here a stand-in answers
 * for the kernel from fstat(), so the resolver's own logic (what it holds,
 * when it asks, when it lets go) runs without root.
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { createHash } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { appendFileSync, fstatSync, mkdirSync, mkdtempSync, readdirSync, readlinkSync, rmSync, renameSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { IdentityResolver, type OpenFileKeys } from '../../controller/identity/resolver.js';
import type { ExeKey } from '../../controller/datapath/layout.js';
import type { PlanWorkload } from '../../controller/policy/types.js';

/** The kernel's answer, simulated: every regular file this process holds, with a made-up inode address. */
function fakeKernel() {
  const k = {
    calls: 0,
    fail: undefined as string | undefined,
    keys: (() => {
      k.calls++;
      if (k.fail) throw new Error(k.fail);
      const out = new Map<number, ExeKey>();
      for (const name of readdirSync('/proc/self/fd')) {
        const fd = Number(name);
        try {
          const st = fstatSync(fd, { bigint: true });
          if (st.isFile()) out.set(fd, { dev: Number(st.dev), ino: st.ino, inode: 0xffff000000000000n + st.ino });
        } catch {
          /* closed meanwhile (readdir's own descriptor) */
        }
      }
      return out;
    }) as OpenFileKeys,
  };
  return k;
}

const exe = (file: string, sha256?: string): PlanWorkload => ({ id: 1, name: 'w', selector: { executable: { path: file, ...(sha256 ? { sha256 } : {}) } } });
const isOpen = (fd: number) => {
  try {
    fstatSync(fd);
    return true;
  } catch {
    return false;
  }
};
/** Descriptors of this process open on `file`. */
const heldOn = (file: string) =>
  readdirSync('/proc/self/fd').filter((fd) => {
    try {
      return readlinkSync(`/proc/self/fd/${fd}`) === file;
    } catch {
      return false;
    }
  }).length;

describe('executable selectors, resolved through the kernel', () => {
  let dir: string;
  let kernel: ReturnType<typeof fakeKernel>;
  let resolver: IdentityResolver;

  beforeEach(() => {
    dir = mkdtempSync(path.join(tmpdir(), 'wirekey-resolver-'));
    kernel = fakeKernel();
    resolver = new IdentityResolver('/nonexistent-cgroup-root', kernel.keys);
  });
  afterEach(() => {
    resolver.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it("keys a file by the kernel's answer for the descriptor held on it, and asks the kernel only about new files", async () => {
    const file = path.join(dir, 'tool');
    writeFileSync(file, 'v1', { mode: 0o755 });
    const [r] = await resolver.resolve([exe(file)]);
    expect(r?.problems).toEqual([]);
    const st = statSync(file, { bigint: true });
    expect(r?.exe).toEqual({ dev: Number(st.dev), ino: st.ino, inode: 0xffff000000000000n + st.ino });
    expect(heldOn(file)).toBe(1);
    expect(kernel.calls).toBe(1);

    const [again] = await resolver.resolve([exe(file)]);
    expect(again?.exe).toEqual(r?.exe);
    expect(heldOn(file)).toBe(1);
    expect(kernel.calls).toBe(1);
  });

  it('follows symlinks to the file the kernel would execute', async () => {
    const file = path.join(dir, 'python3.11');
    writeFileSync(file, 'x', { mode: 0o755 });
    symlinkSync(file, path.join(dir, 'python3'));
    const [viaLink] = await resolver.resolve([exe(path.join(dir, 'python3'))]);
    const [direct] = await resolver.resolve([exe(file)]);
    expect(viaLink?.exe).toBeTruthy();
    expect(viaLink?.exe).toEqual(direct?.exe);
  });

  it('a file renamed over the path is the new key; the old file is let go one round later, after the maps moved on', async () => {
    const file = path.join(dir, 'tool');
    writeFileSync(file, 'v1', { mode: 0o755 });
    const [before] = await resolver.resolve([exe(file)]);
    const oldFds = readdirSync('/proc/self/fd').map(Number).filter((fd) => isOpen(fd) && fstatSync(fd, { bigint: true }).ino === before?.exe?.ino);
    expect(oldFds).toHaveLength(1);

    writeFileSync(`${file}.new`, 'v2', { mode: 0o755 });
    renameSync(`${file}.new`, file);
    const [after] = await resolver.resolve([exe(file)]);
    expect(after?.exe?.ino).not.toBe(before?.exe?.ino);
    expect(kernel.calls).toBe(2);
    // Still held: until the caller applies this round, the kernel's maps still name the old file.
    expect(isOpen(oldFds[0] as number) && fstatSync(oldFds[0] as number, { bigint: true }).ino).toBe(before?.exe?.ino);

    await resolver.resolve([exe(file)]);
    const stillOld = readdirSync('/proc/self/fd').map(Number).filter((fd) => isOpen(fd) && fstatSync(fd, { bigint: true }).ino === before?.exe?.ino);
    expect(stillOld).toEqual([]);
  });

  it('fails closed, with the reason, for a missing file, a directory and a FIFO (never opened)', async () => {
    mkdirSync(path.join(dir, 'd'));
    execFileSync('mkfifo', [path.join(dir, 'fifo')]);
    const out = await resolver.resolve([exe(path.join(dir, 'missing')), exe(path.join(dir, 'd')), exe(path.join(dir, 'fifo'))]);
    expect(out.map((r) => r.exe)).toEqual([null, null, null]);
    expect(out.map((r) => r.problems[0])).toEqual([
      `executable ${path.join(dir, 'missing')} does not exist`,
      `executable ${path.join(dir, 'd')} is not a regular file`,
      `executable ${path.join(dir, 'fifo')} is not a regular file`,
    ]);
    expect(kernel.calls).toBe(0);
  });

  it('fails closed when the kernel does not name the file, and asks again next round', async () => {
    const file = path.join(dir, 'tool');
    writeFileSync(file, 'v1', { mode: 0o755 });
    kernel.fail = 'iterator refused';
    const [r] = await resolver.resolve([exe(file)]);
    expect(r?.exe).toBeNull();
    expect(r?.problems).toEqual([`executable ${file}: the kernel did not say which file it is: iterator refused`]);

    kernel.fail = undefined;
    const [next] = await resolver.resolve([exe(file)]);
    expect(next?.exe).toBeTruthy();
    expect(next?.problems).toEqual([]);
  });

  it('a missing answer for one descriptor fails that selector only', async () => {
    const a = path.join(dir, 'a');
    const b = path.join(dir, 'b');
    writeFileSync(a, 'a', { mode: 0o755 });
    writeFileSync(b, 'b', { mode: 0o755 });
    const bIno = statSync(b, { bigint: true }).ino;
    const resolver2 = new IdentityResolver('/nonexistent-cgroup-root', () => {
      const m = kernel.keys();
      for (const [fd, k] of m) if (k.ino === bIno) m.delete(fd);
      return m;
    });
    try {
      const [ra, rb] = await resolver2.resolve([exe(a), { ...exe(b), id: 2, name: 'w2' }]);
      expect(ra?.exe).toBeTruthy();
      expect(rb?.exe).toBeNull();
      expect(rb?.problems[0]).toMatch(/the kernel did not say which file it is/);
    } finally {
      resolver2.close();
    }
  });

  it('checks the SHA-256 of the file held, and again when it changes in place', async () => {
    const file = path.join(dir, 'tool');
    writeFileSync(file, 'v1', { mode: 0o755 });
    const sum = (s: string) => createHash('sha256').update(s).digest('hex');
    const [ok] = await resolver.resolve([exe(file, sum('v1'))]);
    expect(ok?.exe).toBeTruthy();

    appendFileSync(file, '!');
    const [changed] = await resolver.resolve([exe(file, sum('v1'))]);
    expect(changed?.exe).toBeNull();
    expect(changed?.problems[0]).toBe(`executable ${file} has SHA-256 ${sum('v1!')}, the policy requires ${sum('v1')}: unbound until it matches`);

    const [pinnedNew] = await resolver.resolve([exe(file, sum('v1!'))]);
    expect(pinnedNew?.exe).toEqual(ok?.exe);
  });

  it('lets go of files no selector names any more, and of everything on close()', async () => {
    const a = path.join(dir, 'a');
    const b = path.join(dir, 'b');
    writeFileSync(a, 'a', { mode: 0o755 });
    writeFileSync(b, 'b', { mode: 0o755 });
    await resolver.resolve([exe(a), { ...exe(b), id: 2, name: 'w2' }]);
    expect([heldOn(a), heldOn(b)]).toEqual([1, 1]);
    await resolver.resolve([exe(a)]);
    await resolver.resolve([exe(a)]);
    expect([heldOn(a), heldOn(b)]).toEqual([1, 0]);
    resolver.close();
    expect(heldOn(a)).toBe(0);
    const [late] = await resolver.resolve([exe(a)]);
    expect(late?.exe).toBeNull();
    expect(heldOn(a)).toBe(0);
  });
});
