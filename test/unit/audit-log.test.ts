import { afterEach, describe, expect, it } from 'vitest';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { AuditLog } from '../../controller/audit/audit-log.js';

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
