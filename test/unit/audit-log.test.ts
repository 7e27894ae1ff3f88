import { afterEach, describe, expect, it } from 'vitest';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { AuditLog } from '../../controller/audit/audit-log.js';
import { machineSkipTitle } from '../support/tiers.js';

describe('AuditLog.recordBatch', () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'wirekey-audit-'));
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('writes a proxy worker\'s lines at once, after the done lines still waiting, in order, without query strings', () => {
    const file = path.join(dir, 'audit.log');
    const log = new AuditLog(file);
    log.recordDone({ decision: 'inject', workload: 'a', path: '/first' });
    log.recordBatch([{ decision: 'deny', workload: 'b', path: '/second?token=x' }, { decision: 'inject', workload: 'c', path: '/third' }]);
    // No turn of the event loop has ended: everything is on disk already.
    const lines = readFileSync(file, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { workload: string; path: string });
    expect(lines.map((l) => [l.workload, l.path])).toEqual([['a', '/first'], ['b', '/second'], ['c', '/third']]);
    log.recordBatch([]);
    log.close();
    expect(readFileSync(file, 'utf8').trim().split('\n')).toHaveLength(3);
  });
});

const notRoot = process.getuid?.() === 0 ? undefined : 'requires root (mounts a small tmpfs)';

describe.skipIf(notRoot)(`AuditLog on a file system that fills up${machineSkipTitle(notRoot)}`, () => {
  it('a line cut short by a full disk is ended by the next write once there is room: every whole line still parses', () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'wirekey-audit-full-'));
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=16k,mode=0700', 'wirekey-audit-test', dir]);
    let log: AuditLog | undefined;
    try {
      const file = path.join(dir, 'audit.log');
      const errors: Error[] = [];
      log = new AuditLog(file, (err) => errors.push(err));
      const filler = path.join(dir, 'filler');
      writeFileSync(filler, Buffer.alloc(12 * 1024));
      for (let i = 0; i < 200 && log.writable; i++) log.record({ decision: 'inject', workload: 'w'.repeat(60), path: `/${i}` });
      expect(log.writable).toBe(false);
      expect(errors.map((e) => (e as NodeJS.ErrnoException).code)).toEqual(['ENOSPC']);
      // The file ends in part of a line.
      expect(readFileSync(file, 'utf8').endsWith('\n')).toBe(false);
      rmSync(filler);
      log.record({ decision: 'inject', workload: 'after' });
      expect(log.writable).toBe(true);
      const lines = readFileSync(file, 'utf8').split('\n');
      expect(lines.at(-1)).toBe('');
      expect((JSON.parse(lines.at(-2) as string) as { workload: string }).workload).toBe('after');
      // Every line but the torn one is whole.
      const broken = lines.slice(0, -1).filter((l) => {
        try {
          JSON.parse(l);
          return false;
        } catch {
          return true;
        }
      });
      expect(broken).toHaveLength(1);
    } finally {
      // Its file open, the file system could not be unmounted.
      log?.close();
      execFileSync('umount', [dir]);
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
