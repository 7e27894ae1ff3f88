/**
 * `wirekey reload` and what systemd hears, through a real `wirekey run`
 * whose NOTIFY_SOCKET is a datagram socket of the test's: READY=1 only once
 * the agent is ready, STATUS= lines, RELOADING=1/READY=1 around reloads
 * (from `wirekey reload` and SIGHUP alike), WATCHDOG=1 pings, STOPPING=1;
 * and the exit codes and reasons `wirekey reload` gives for a policy
 * applied, one that does not validate, and one the agent refuses.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { E2eFixture, HOST } from '../support/e2e-fixture.js';
import { kernelSkipReason } from '../support/requirements.js';
import { wirekeyBin, type RunningAgent } from '../support/agent.js';
import { NotifyListener, field } from '../support/notify-listener.js';
import { run } from '../support/shell.js';

const skip = kernelSkipReason();

describe.skipIf(skip)(`wirekey reload and systemd notifications${skip ? ` (skipped: ${skip})` : ''}`, () => {
  const f = new E2eFixture();
  let bound: string;
  let agent: RunningAgent;
  let notify: NotifyListener;
  const more = () => path.join(f.policyDir, 'more.yaml');
  const reload = () => run(process.execPath, [wirekeyBin, 'reload', '--state-dir', f.stateDir]);
  const get = (p: string) => f.curl(bound, ['--cacert', f.wirekeyCa, '-o', '/dev/null', '-w', '%{http_code}', `https://${HOST}${p}`]);

  beforeAll(async () => {
    await f.setUp();
    bound = f.writeBoundPolicy();
    notify = await NotifyListener.start();
    f.onClose(() => notify.close());
    // Without the kernel HTTP datapath, a plaintext service is a policy that
    // validates but that this agent must refuse.
    agent = await f.startAgent({
      env: { ...process.env, NOTIFY_SOCKET: notify.socket, WATCHDOG_USEC: '1000000' },
      extraArgs: ['--no-kernel-datapath'],
    });
  });
  afterAll(() => f.close());

  it('sends READY=1 from the agent once it is ready, with a STATUS line naming the policy, and pings the watchdog', async () => {
    const ready = await notify.next((n) => field(n, 'READY') === '1', 'READY=1');
    expect(ready.pid).toBe(agent.pid);
    expect(field(ready, 'STATUS')).toMatch(/^ready: 1 workload\(s\), 1 binding\(s\), policy [0-9a-f]{12}$/);
    // What came before READY=1 is status only: start-up, never a reload.
    const before = notify.received.slice(0, notify.received.indexOf(ready)).map((n) => n.fields[0]?.[0]);
    expect(before.every((k) => k === 'STATUS' || k === 'WATCHDOG')).toBe(true);
    expect(field(notify.received.find((n) => field(n, 'STATUS'))!, 'STATUS')).toMatch(/^starting/);
    const from = notify.received.length;
    // WATCHDOG_USEC=1s: a ping every half second.
    await notify.next((n) => n.message === 'WATCHDOG=1' && n.pid === agent.pid, 'WATCHDOG=1', from, 3000);
    expect(await get('/first')).toMatchObject({ stdout: '200' });
  });

  it('a good policy: applied, exit 0, what changed on stderr; RELOADING=1 then READY=1 with the new policy', async () => {
    const from = notify.received.length;
    writeFileSync(more(), `apiVersion: wirekey.dev/v1alpha1
kind: Workload
metadata: {name: other}
spec: {selector: {cgroup: ${f.cgBase}/other}}
---
apiVersion: wirekey.dev/v1alpha1
kind: Binding
metadata: {name: other-api}
spec: {workload: other, service: api, inject: {bearer: {credential: api-token}}}
`);
    const r = await reload();
    expect(r.stderr).toMatch(/^reloaded: policy [0-9a-f]{12} -> [0-9a-f]{12}; bindings added other-api\n$/);
    expect(r.code).toBe(0);
    const reloading = await notify.next((n) => field(n, 'RELOADING') === '1', 'RELOADING=1', from);
    expect(field(reloading, 'MONOTONIC_USEC')).toMatch(/^\d+$/);
    const ready = await notify.next((n) => field(n, 'READY') === '1', 'READY=1', from);
    expect(notify.received.indexOf(ready)).toBeGreaterThan(notify.received.indexOf(reloading));
    const hash = /-> ([0-9a-f]{12})/.exec(r.stderr)?.[1];
    expect(field(ready, 'STATUS')).toBe(`ready: 2 workload(s), 2 binding(s), policy ${hash}`);
  });

  it('a policy that does not validate: exit 1, each problem as file:line:column, and the agent is not even asked', async () => {
    const from = notify.received.length;
    writeFileSync(more(), 'kind: Nope\n---\nkind: Binding\nmetadata: {name: x}\n');
    const r = await reload();
    expect(r.code).toBe(1);
    const lines = r.stdout.trim().split('\n');
    expect(lines.length).toBeGreaterThan(0);
    for (const line of lines) expect(line.startsWith(`${more()}:`)).toBe(true);
    expect(r.stderr).toMatch(/^wirekey: reload refused: \d+ problem\(s\) in .*; the agent was not asked, its running policy stays in force\n$/);
    // Whatever the agent sent before the command exited is in the queue ahead of the barrier.
    const barrier = await notify.barrier();
    expect(notify.between(from, barrier).filter((n) => field(n, 'RELOADING'))).toEqual([]);
    expect(agent.output()).not.toMatch(/policy reload failed/);
  });

  it('a policy the agent refuses: exit 1 with its reason; the previous policy stays in force and STATUS says so', async () => {
    const from = notify.received.length;
    writeFileSync(more(), `apiVersion: wirekey.dev/v1alpha1
kind: Service
metadata: {name: plain}
spec: {addresses: [198.18.0.10/32], hosts: [plain.wirekey.test], port: 80, tls: false}
---
apiVersion: wirekey.dev/v1alpha1
kind: Binding
metadata: {name: app-plain}
spec: {workload: app, service: plain, inject: {bearer: {credential: api-token}}}
`);
    const r = await reload();
    expect(r.code).toBe(1);
    expect(r.stdout).toMatch(/plaintext service\(s\) plain need the kernel HTTP datapath, which is not loaded/);
    expect(r.stderr).toMatch(/^wirekey: reload refused: the agent refused the policy \(1 problem\(s\)\); policy ([0-9a-f]{12}) stays in force\n$/);
    const hash = /policy ([0-9a-f]{12}) stays/.exec(r.stderr)?.[1];
    await notify.next((n) => field(n, 'RELOADING') === '1', 'RELOADING=1', from);
    const ready = await notify.next((n) => field(n, 'READY') === '1', 'READY=1', from);
    expect(field(ready, 'STATUS')).toMatch(new RegExp(`^policy refused, previous in force: 2 workload\\(s\\), 2 binding\\(s\\), policy ${hash}; .*kernel HTTP datapath`));
    expect(await get('/after-refused')).toMatchObject({ stdout: '200' });
    await f.upstream.sync();
    expect(f.upstream.records.at(-1)).toMatchObject({ url: '/after-refused', authorization: [f.expectedAuth] });
  });

  it('a reload that fails once the new policy is in force (its runtime state cannot be written): the log and STATUS say what failed and which policy is in force, and it injects', async () => {
    const state = path.join(f.stateDir, 'runtime.json');
    const saved = readFileSync(state);
    // A directory in its place: the agent's write (a rename onto it) fails.
    rmSync(state);
    mkdirSync(path.join(state, 'in-the-way'), { recursive: true });
    try {
      rmSync(more(), { force: true });
      const from = notify.received.length;
      expect(await agent.reload()).toBe('reloaded');
      expect(agent.output()).toMatch(/policy reloaded with failures: .*policy ([0-9a-f]{12}) is in force, but writing the runtime state failed \(.+\): wirekey status and explain show the previous policy/);
      const hash = /policy reloaded with failures: .*policy ([0-9a-f]{12}) is in force/.exec(agent.output())?.[1];
      const ready = await notify.next((n) => field(n, 'READY') === '1', 'READY=1', from);
      expect(field(ready, 'STATUS')).toMatch(new RegExp(`^reload failed: policy ${hash} is in force, but writing the runtime state failed`));
      expect(await get('/after-failed-step')).toMatchObject({ stdout: '200' });
      await f.upstream.sync();
      expect(f.upstream.records.at(-1)).toMatchObject({ url: '/after-failed-step', authorization: [f.expectedAuth] });
    } finally {
      rmSync(state, { recursive: true, force: true });
      writeFileSync(state, saved, { mode: 0o600 });
    }
  });

  it('SIGHUP still reloads, with the same notifications; SIGTERM sends STOPPING=1 last', async () => {
    rmSync(more(), { force: true });
    let from = notify.received.length;
    expect(await agent.reload()).toBe('reloaded');
    await notify.next((n) => field(n, 'RELOADING') === '1', 'RELOADING=1', from);
    const ready = await notify.next((n) => field(n, 'READY') === '1', 'READY=1', from);
    expect(field(ready, 'STATUS')).toMatch(/^ready: 1 workload\(s\), 1 binding\(s\)/);
    from = notify.received.length;
    expect(await agent.stop()).toBe(0);
    f.agentStopped = true;
    const stopping = await notify.next((n) => field(n, 'STOPPING') === '1', 'STOPPING=1', from);
    expect(field(stopping, 'STATUS')).toMatch(/^SIGTERM/);
    // The agent has exited: all it sent is ahead of the barrier, and nothing came after STOPPING=1.
    const barrier = await notify.barrier();
    expect(notify.between(notify.received.indexOf(stopping) + 1, barrier)).toEqual([]);
    const gone = await reload();
    expect(gone.code).toBe(3);
  });
});
