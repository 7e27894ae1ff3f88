/**
 * The agent's signals and its audit sink, through real `wirekey run`
 * processes: reloads and a stop asked for together run one after the other;
 * SIGUSR1 reopens the audit file after logrotate moved it; and an audit log
 * that cannot be written refuses proxied requests (no audit, no injection)
 * instead of injecting unrecorded or stopping the agent.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { existsSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { E2eFixture, HOST } from '../support/e2e-fixture.js';
import { kernelSkipReason } from '../support/requirements.js';
import { freePort, startAgent, wirekeyBin } from '../support/agent.js';
import { run } from '../support/shell.js';
import { eventually } from '../support/wait.js';

const skip = kernelSkipReason();

describe.skipIf(skip)(`agent signals and the audit sink${skip ? ` (skipped: ${skip})` : ''}`, () => {
  const f = new E2eFixture();
  let bound: string;

  beforeAll(async () => {
    await f.setUp();
    bound = f.writeBoundPolicy();
  });
  afterAll(() => f.close());

  const get = (p: string) => f.curl(bound, ['--cacert', f.wirekeyCa, '-o', '/dev/null', '-w', '%{http_code}', `https://${HOST}${p}`]);

  it('reloads and a stop sent together run one after the other: every reload ends before the stop, which leaves nothing behind', async () => {
    const agent = await f.startAgent();
    f.agentStopped = true;
    process.kill(agent.pid, 'SIGHUP');
    process.kill(agent.pid, 'SIGHUP');
    const code = await agent.stop();
    expect(code).toBe(0);
    const out = agent.output();
    const stopped = out.indexOf(' stopped');
    expect(stopped).toBeGreaterThan(0);
    // A reload asked for before the stop ends before the stop begins (one
    // asked for after it is declined): its line always precedes "stopped".
    expect(out.lastIndexOf('policy reloaded')).toBeLessThan(stopped);
    expect(out).not.toMatch(/policy reload failed|cannot|Error/);
    expect(existsSync(f.pinDir)).toBe(false);
    // A clean stop leaves no runtime state that status or explain could take for a running agent's.
    expect(existsSync(path.join(f.stateDir, 'runtime.json'))).toBe(false);
  });

  it('the log names the version at start and the policy hash; a reload says what changed, and a refused one lists each problem on its own line', async () => {
    const agent = await f.startAgent();
    f.agentStopped = false;
    try {
      expect(agent.output()).toMatch(/info wirekey \d+\.\d+\.\d+ starting \(pid \d+, node v\d+/);
      const hash = /info policy ([0-9a-f]{12}): 1 file\(s\)/.exec(agent.output())?.[1];
      expect(hash).toBeDefined();
      writeFileSync(path.join(f.policyDir, 'more.yaml'), `apiVersion: wirekey.dev/v1alpha1
kind: Workload
metadata: {name: other}
spec: {selector: {cgroup: ${f.cgBase}/other}}
---
apiVersion: wirekey.dev/v1alpha1
kind: Binding
metadata: {name: other-api}
spec: {workload: other, service: api, inject: {bearer: {credential: api-token}}}
`);
      expect(await agent.reload()).toBe('reloaded');
      expect(agent.output()).toMatch(new RegExp(`policy reloaded: policy ${hash} -> [0-9a-f]{12}; bindings added other-api`));
      writeFileSync(path.join(f.policyDir, 'more.yaml'), 'kind: Nope\n---\nkind: Binding\nmetadata: {name: x}\n');
      expect(await agent.reload()).toBe('failed');
      const failed = agent.output().split('\n').filter((l) => / error policy/.test(l));
      expect(failed[0]).toMatch(/policy reload failed, keeping the running policy: \d+ problem\(s\)$/);
      expect(failed.slice(1).every((l) => /error policy: \S+more\.yaml:\d+:\d+: /.test(l))).toBe(true);
    } finally {
      rmSync(path.join(f.policyDir, 'more.yaml'), { force: true });
      await agent.stop();
      f.agentStopped = true;
    }
  });

  it('one agent per state dir and per pin dir; status tells a running agent from a dead one, with distinct exit codes', async () => {
    const status = (...extra: string[]) => run(process.execPath, [wirekeyBin, 'status', '--state-dir', f.stateDir, ...extra]);
    const first = await f.startAgent();
    f.agentStopped = false;
    f.onClose(() => first.kill());
    // Health and readiness on the control socket (root only).
    const sock = path.join(f.stateDir, 'agent.sock');
    expect((statSync(sock).mode & 0o777).toString(8)).toBe('600');
    for (const [route, body] of [['/healthz', 'ok'], ['/readyz', 'ready']]) {
      const r = await run('curl', ['-sS', '--unix-socket', sock, '-w', ' %{http_code}', `http://wirekey${route}`]);
      expect(r.stdout).toBe(`${body}\n 200`);
    }
    const running = await status('--json');
    expect(running.code).toBe(0);
    expect(JSON.parse(running.stdout)).toMatchObject({ pid: first.pid, maps: expect.any(Array), readiness: { ready: true } });
    // A second agent on the same state dir, and one on the same pin dir only, are refused before touching anything.
    for (const [stateDir, pinDir] of [[f.stateDir, `${f.pinDir}-other`], [path.join(f.dir, 'state-2'), f.pinDir]] as const) {
      const second = await run(process.execPath, [wirekeyBin, 'run', '--policy', f.policyDir, '--state-dir', stateDir, '--pin-dir', pinDir,
        '--proxy-port', String(await freePort()), '--audit', path.join(f.dir, 'audit-2.log')]);
      expect(second.code).toBe(1);
      expect(second.stderr).toMatch(new RegExp(`another wirekey agent \\(pid \\d+\\) is running with the (state|pin) dir`));
      expect(second.stderr.split('\n').filter((l) => l.startsWith('wirekey: '))).toHaveLength(1);
      expect(existsSync(`${f.pinDir}-other`)).toBe(false);
    }
    expect(await get('/still-first')).toMatchObject({ stdout: '200' });
    await first.kill();
    f.agentStopped = true;
    // Not running (3), and what the dead agent's pins still show.
    const dead = await status();
    expect(dead.code).toBe(3);
    expect(dead.stdout).toMatch(/^wirekey is not running: agent pid \d+ has exited; what its pins still show:/);
    const explain = await run(process.execPath, [wirekeyBin, 'explain', String(process.pid), '--state-dir', f.stateDir]);
    expect(explain.code).toBe(3);
  });

  it('SIGUSR1 reopens the audit file: after logrotate moves it, new lines go to a new file at the same path', async () => {
    const agent = await f.startAgent();
    f.agentStopped = false;
    expect(await get('/before-rotate')).toMatchObject({ stdout: '200' });
    const rotated = `${f.auditPath}.1`;
    renameSync(f.auditPath, rotated);
    process.kill(agent.pid, 'SIGUSR1');
    await eventually(async () => agent.output().includes('audit log') && agent.output().includes('reopened'), 10_000, 'the reopen line');
    expect(await get('/after-rotate')).toMatchObject({ stdout: '200' });
    await eventually(async () => existsSync(f.auditPath) && readFileSync(f.auditPath, 'utf8').includes('/after-rotate'), 10_000, 'the new file');
    expect(readFileSync(rotated, 'utf8')).toContain('/before-rotate');
    expect(readFileSync(rotated, 'utf8')).not.toContain('/after-rotate');
    expect(readFileSync(f.auditPath, 'utf8')).not.toContain('/before-rotate');
    await agent.stop();
    f.agentStopped = true;
  });

  it('an audit log that cannot be written refuses proxied requests with 503, and the agent stays up', async () => {
    // /dev/full takes the open and fails every write with ENOSPC.
    const proxyPort = await freePort();
    const agent = await startAgent({
      policy: f.policyDir, stateDir: f.stateDir, pinDir: f.pinDir, proxyPort, audit: '/dev/full', upstreamCa: f.pki.caCert,
    });
    try {
      // The first line that fails to be written is the first sign of it: that request was answered.
      expect(await get('/first')).toMatchObject({ stdout: '200' });
      await eventually(async () => /audit log \/dev\/full cannot be written \(ENOSPC/.test(agent.output()), 10_000, 'the audit error');
      const before = f.upstream.records.length;
      const r = await f.curl(bound, ['--cacert', f.wirekeyCa, '-sS', '-D', '-', `https://${HOST}/unaudited`]);
      expect(r.stdout).toMatch(/^HTTP\/(1\.1|2) 503 /);
      expect(r.stdout).toMatch(/x-wirekey-error: audit-unavailable/);
      expect(f.upstream.records.length).toBe(before);
      // Still up: the next request gets the same answer, not a reset.
      expect(await get('/unaudited-again')).toMatchObject({ stdout: '503' });
    } finally {
      expect(await agent.stop()).toBe(0);
    }
    expect(existsSync(path.join(f.pinDir))).toBe(false);
  });
});
