/** The command line's side of the control socket: what reload and status say when the agent does not answer there, or answers that a reload failed. */
import { describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import { tmpdir } from 'node:os';
import path from 'node:path';
import net from 'node:net';
import { probeReadiness, requestReload } from '../../controller/agent/control-client.js';
import { formatStatus } from '../../controller/host/status.js';
import { acquireInstanceLock } from '../../controller/datapath/instance-lock.js';
import { runtimeStatePath } from '../../controller/host/runtime-state.js';
import { failedAfterSwitch, kernelNotRestored, reloadThrew } from '../../controller/agent/reload-outcome.js';
import { repoRoot, wirekeyBin } from '../support/agent.js';
import { run } from '../support/shell.js';

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

describe('a reload that failed once the switch had begun', () => {
  /** A state dir with this process holding its lock as an agent does, its runtime state, and a stand-in agent's control socket answering POST /reload with `status` and `body`. */
  async function withStandInAgent(status: number, body: string, fn: (dir: string) => Promise<void>): Promise<void> {
    const dir = mkdtempSync(path.join(tmpdir(), 'wirekey-control-'));
    const lock = acquireInstanceLock(dir, path.join(dir, 'pins'), { runDir: path.join(dir, 'run') });
    writeFileSync(runtimeStatePath(dir), JSON.stringify({ pid: process.pid, policyPath: path.join(repoRoot, 'policies/demo.yaml'), pinDir: path.join(dir, 'pins'), cgroupRoot: '/', workloads: [], bindings: [] }));
    const standIn = http.createServer((req, res) => {
      req.resume();
      res.writeHead(status, { 'content-type': status === 200 ? 'application/json' : 'text/plain' }).end(body);
    });
    await new Promise<void>((resolve) => standIn.listen(path.join(dir, 'agent.sock'), resolve));
    try {
      await fn(dir);
    } finally {
      standIn.closeAllConnections();
      await new Promise((resolve) => standIn.close(resolve));
      lock.release();
      rmSync(dir, { recursive: true, force: true });
    }
  }

  it('wirekey reload prints each failure, then what failed and which policy is in force, and exits 1', async () => {
    const result = kernelNotRestored('aaaaaaaaaaaa', 'bbbbbbbbbbbb', 'wk_bind_port: update failed (E2BIG)', ['egress rules: update failed (ENOMEM)']);
    await withStandInAgent(200, JSON.stringify(result), async (dir) => {
      const r = await run(process.execPath, [wirekeyBin, 'reload', '--state-dir', dir]);
      expect(r.stdout).toBe('wk_bind_port: update failed (E2BIG)\nputting the kernel back: egress rules: update failed (ENOMEM)\n');
      expect(r.stderr).toBe('wirekey: reload failed: policy bbbbbbbbbbbb could not be put in force (wk_bind_port: update failed (E2BIG)), ' +
        'and the kernel could not be put back whole (egress rules: update failed (ENOMEM)): the previous policy aaaaaaaaaaaa is only partly in force, ' +
        'the kernel may hold parts of bbbbbbbbbbbb; reload again or restart the agent\n');
      expect(r.code).toBe(1);
    });
  });

  it('an agent that answers an error instead of a result failed while reloading; it is not "cannot reload now"', async () => {
    await withStandInAgent(500, 'EROFS: read-only file system\n', async (dir) => {
      await expect(requestReload(dir, 5000)).rejects.toMatchObject({
        code: 'WK_RELOAD_FAILED',
        message: 'the agent\'s reload failed (HTTP 500): EROFS: read-only file system; its log says which policy is in force',
      });
    });
    // Still starting is what "cannot reload now" means.
    await withStandInAgent(503, 'starting: the policy is read once the agent has started\n', async (dir) => {
      await expect(requestReload(dir, 5000)).rejects.toMatchObject({
        code: 'WK_CONTROL',
        message: 'the agent cannot reload now (HTTP 503): starting: the policy is read once the agent has started',
      });
    });
  });
});

describe('what a failed reload answers', () => {
  it('the new policy in force, with each failed step and what it leaves wrong', () => {
    const r = failedAfterSwitch('bbbbbbbbbbbb', 'policy aaaaaaaaaaaa -> bbbbbbbbbbbb; bindings added x', [
      { step: 'writing the runtime state', message: 'ENOSPC: no space left on device', consequence: 'wirekey status and explain show the previous policy' },
    ]);
    expect(r).toEqual({
      applied: true,
      policy: 'bbbbbbbbbbbb',
      change: 'policy aaaaaaaaaaaa -> bbbbbbbbbbbb; bindings added x',
      problems: ['writing the runtime state: ENOSPC: no space left on device'],
      failed: 'policy bbbbbbbbbbbb is in force, but writing the runtime state failed (ENOSPC: no space left on device): wirekey status and explain show the previous policy',
    });
  });

  it('a reload that threw says so, and that the policy it names may be only partly in force', () => {
    const r = reloadThrew('aaaaaaaaaaaa', new Error('map update failed: ENOMEM\nmore detail'));
    expect(r).toEqual({
      applied: false,
      policy: 'aaaaaaaaaaaa',
      problems: ['map update failed: ENOMEM'],
      failed: 'map update failed: ENOMEM; policy aaaaaaaaaaaa is in force, perhaps only partly (see the log); reload again or restart the agent',
    });
  });
});
