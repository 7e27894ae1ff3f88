/** The command line's side of the control socket: what reload and status say when the agent does not answer there. */
import { describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import net from 'node:net';
import { probeReadiness, requestReload } from '../../controller/agent/control-client.js';
import { formatStatus } from '../../controller/host/status.js';
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

describe('probeReadiness', () => {
  /** A control socket in a temp state dir that handles each connection with `serve`. */
  async function withSocket(serve: (socket: net.Socket) => void, fn: (dir: string) => Promise<void>): Promise<void> {
    const dir = mkdtempSync(path.join(tmpdir(), 'wirekey-control-'));
    const server = net.createServer(serve);
    const open = new Set<net.Socket>();
    server.on('connection', (s) => open.add(s));
    await new Promise<void>((resolve) => server.listen(path.join(dir, 'agent.sock'), resolve));
    try {
      await fn(dir);
    } finally {
      for (const s of open) s.destroy();
      await new Promise((resolve) => server.close(resolve));
      rmSync(dir, { recursive: true, force: true });
    }
  }

  it('ready when /readyz answers 200', async () => {
    await withSocket((s) => s.once('data', () => s.end('HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nready\n')), async (dir) => {
      expect(await probeReadiness(dir, 5000)).toEqual({ ready: true });
    });
  });

  it('not ready, saying what it answered, when /readyz answers 503 starting', async () => {
    await withSocket((s) => s.once('data', () => s.end('HTTP/1.1 503 Service Unavailable\r\ncontent-length: 9\r\n\r\nstarting\n')), async (dir) => {
      expect(await probeReadiness(dir, 5000)).toEqual({ ready: false, reason: `it answers starting on its control socket ${path.join(dir, 'agent.sock')}` });
    });
  });

  it('not ready when the agent accepts but never answers (a hung event loop)', async () => {
    await withSocket(() => {}, async (dir) => {
      const r = await probeReadiness(dir, 50);
      expect(r).toEqual({ ready: false, reason: `it does not answer on its control socket ${path.join(dir, 'agent.sock')} within 0.05s (hung or stopped?)` });
    });
  });

  it('status says NOT READY and why on its first line', () => {
    const out = formatStatus({ running: true, pid: 9, workloads: [], maps: [], tasksFull: 0n, storageFailures: 0n, proxyPortBinds: 0n, egress: [], egressEventsLost: 0n, kernelHttp: null, proxy: null,
      draining: [], attached: [], readiness: { ready: false, reason: 'it does not answer on its control socket /s/agent.sock within 5s (hung or stopped?)' } });
    expect(out.split('\n')[0]).toBe('agent pid 9: NOT READY: it does not answer on its control socket /s/agent.sock within 5s (hung or stopped?); what it last wrote and its pins show:');
  });
});
