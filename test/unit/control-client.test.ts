/** `wirekey reload`'s side of the control socket: what it says when nothing answers there. */
import { describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { requestReload } from '../../controller/agent/control-client.js';
import { acquireInstanceLock } from '../../controller/datapath/instance-lock.js';

describe('requestReload', () => {
  it('an agent holding the lock whose socket does not answer is running, not "not running"', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'wirekey-control-'));
    try {
      await expect(requestReload(dir, 1000)).rejects.toMatchObject({ code: 'WK_NO_AGENT', message: `no agent is running with state dir ${dir} (nothing listens on ${path.join(dir, 'agent.sock')})` });
      // This process holds the lock as an agent does, and serves no socket.
      const lock = acquireInstanceLock(dir, path.join(dir, 'pins'), { runDir: path.join(dir, 'run') });
      try {
        await expect(requestReload(dir, 1000)).rejects.toMatchObject({
          code: 'WK_CONTROL',
          message: `the agent (pid ${process.pid}) is running with state dir ${dir}, but its control socket ${path.join(dir, 'agent.sock')} does not answer (ENOENT)`,
        });
      } finally {
        lock.release();
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
