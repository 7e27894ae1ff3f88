/**
 * Egress by process identity in the kernel, end to end: the real agent
 * applies a policy's egress rules, a long-lived Python process in a
 * restricted workload's cgroup connects and sends (TCP over IPv4 and IPv6,
 * unconnected UDP, ICMP on a raw socket), and what the kernel refused reaches the audit log,
 * `wirekey status` and the metrics. A reload changes the rules under the
 * same running process.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { E2eFixture } from '../support/e2e-fixture.js';
import { startDriven, type DrivenProcess } from '../support/driven.js';
import { run } from '../support/shell.js';
import { wirekeyBin } from '../support/agent.js';
import { kernelSkipReason } from '../support/requirements.js';
import { eventually } from '../support/wait.js';

const skip = kernelSkipReason();

/**
 * One command per line: "tcp ADDR PORT" connects, "udp ADDR PORT" sends one
 * datagram, "icmp ADDR 0" sends an echo request on a raw socket; prints
 * "ok" or the errno's name.
 */
const CLIENT = `
import errno, socket, sys
for line in sys.stdin:
    kind, addr, port = line.split()
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    try:
        if kind == "icmp":
            s = socket.socket(family, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        else:
            s = socket.socket(family, socket.SOCK_STREAM if kind == "tcp" else socket.SOCK_DGRAM)
    except OSError as e:
        print(errno.errorcode.get(e.errno, str(e.errno)), flush=True)
        continue
    s.settimeout(10)
    try:
        if kind == "icmp":
            s.sendto(b"\\x08\\x00\\xf7\\xff\\x00\\x00\\x00\\x00", (addr, 0))
        elif kind == "tcp":
            s.connect((addr, int(port)))
        else:
            s.sendto(b"x", (addr, int(port)))
        print("ok", flush=True)
    except OSError as e:
        print(errno.errorcode.get(e.errno, str(e.errno)), flush=True)
    finally:
        s.close()
`;

/** Workload `locked` (cgroup `<cgBase>/locked`), enforcing: only the test host's IPv4 address on `ports`. */
const lockedWorkload = (f: E2eFixture, ports: string) => `apiVersion: wirekey.dev/v1alpha1
kind: Workload
metadata: {name: locked}
spec:
  selector: {cgroup: ${f.cgBase}/locked}
  egress:
    mode: enforce
    allow:
      - {cidr: ${f.host.ipv4}, ports: [${ports}]}
`;

describe.skipIf(skip)(`egress in the kernel through the agent${skip ? ` (skipped: ${skip})` : ''}`, () => {
  const f = new E2eFixture();
  let locked: DrivenProcess;
  let watched: DrivenProcess;
  const audit = () => readFileSync(f.auditPath, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>);

  const policy = (lockedPorts: string) => `${lockedWorkload(f, lockedPorts)}---
apiVersion: wirekey.dev/v1alpha1
kind: Workload
metadata: {name: watched}
spec:
  selector: {cgroup: ${f.cgBase}/watched}
  egress: {mode: audit, allow: []}
`;

  beforeAll(async () => {
    await f.setUp();
    const lockedCg = f.cgroup('locked');
    const watchedCg = f.cgroup('watched');
    f.writePolicy(policy('443'));
    await f.startAgent();
    // Started after the agent: identified at exec, like any process.
    locked = startDriven(lockedCg, 'python3', ['-c', CLIENT]);
    watched = startDriven(watchedCg, 'python3', ['-c', CLIENT]);
    f.onClose(() => {
      locked?.kill();
      watched?.kill();
    });
  });

  afterAll(() => f.close());

  it('an allowed destination connects; others fail with EPERM before a packet leaves (TCP on IPv4 and IPv6, unconnected UDP)', async () => {
    expect(await locked.send(`tcp ${f.host.ipv4} 443`)).toBe('ok');
    expect(await locked.send(`tcp ${f.host.ipv4} 8443`)).toBe('EPERM');
    expect(await locked.send(`tcp ${f.host.ipv6} 443`)).toBe('EPERM');
    expect(await locked.send(`udp ${f.host.ipv4} 53`)).toBe('EPERM');
    await eventually(async () => audit().filter((l) => l.workload === 'locked' && l.decision === 'deny').length === 3, 10_000, 'three kernel egress refusals audited');
    const denied = audit().filter((l) => l.workload === 'locked' && l.decision === 'deny');
    expect(denied.map((l) => [l.address, l.port, l.protocol, l.hook])).toEqual([
      [f.host.ipv4, 8443, 'tcp', 'connect'],
      [f.host.ipv6, 443, 'tcp', 'connect'],
      [f.host.ipv4, 53, 'udp', 'sendmsg'],
    ]);
    for (const l of denied) {
      expect(l).toMatchObject({ datapath: 'kernel', pid: locked.pid, uid: 0, reason: 'egress-not-allowed' });
      // When the kernel refused it, by its clock; the line was written after.
      expect(Date.parse(l.seen as string)).toBeLessThanOrEqual(Date.parse(l.time as string));
    }
    expect(Date.parse(denied[0]?.seen as string)).toBeLessThanOrEqual(Date.parse(denied[2]?.seen as string));
  });

  it('audit mode lets everything through and logs what enforce would refuse', async () => {
    // Nothing listens on 8443: the connection reaches the host and is reset, it is not refused locally.
    expect(await watched.send(`tcp ${f.host.ipv4} 8443`)).toBe('ECONNREFUSED');
    expect(await watched.send(`udp ${f.host.ipv4} 53`)).toBe('ok');
    await eventually(async () => audit().filter((l) => l.workload === 'watched').length === 2, 10_000, 'two would-refuse lines');
    expect(audit().filter((l) => l.workload === 'watched').map((l) => [l.decision, l.port, l.protocol, l.reason])).toEqual([
      ['would-refuse', 8443, 'tcp', 'egress-not-allowed'],
      ['would-refuse', 53, 'udp', 'egress-not-allowed'],
    ]);
  });

  it('status counts the kernel\'s refusals per workload, and the metrics count each decision', async () => {
    const status = await run(process.execPath, [wirekeyBin, 'status', '--state-dir', f.stateDir]);
    expect(status.code).toBe(0);
    expect(status.stdout).toContain('egress locked (enforce): 3 refused (egress-not-allowed), 0 would-refuse in the kernel\n');
    expect(status.stdout).toContain('egress watched (audit): 0 refused (egress-not-allowed), 2 would-refuse in the kernel\n');
    const metrics = await run('curl', ['-sS', '--unix-socket', path.join(f.stateDir, 'agent.sock'), 'http://agent/metrics']);
    expect(metrics.stdout).toContain('wirekey_egress_decisions_total{datapath="kernel",workload="locked",rule="none",decision="deny"} 3');
    expect(metrics.stdout).toContain('wirekey_egress_decisions_total{datapath="kernel",workload="watched",rule="none",decision="would-refuse"} 2');
  });

  it('a raw socket is refused at socket() (hook socket, no destination); audit mode makes it and sends', async () => {
    expect(await locked.send(`icmp ${f.host.ipv4} 0`)).toBe('EPERM');
    expect(await watched.send(`icmp ${f.host.ipv4} 0`)).toBe('ok');
    await eventually(async () => audit().filter((l) => l.hook === 'socket').length === 2, 10_000, 'two socket lines');
    const lines = audit().filter((l) => l.hook === 'socket');
    expect(lines.map((l) => [l.workload, l.decision, l.protocol, l.socket, l.reason])).toEqual([
      ['locked', 'deny', 'icmp', 'raw ipv4', 'egress-not-allowed'],
      ['watched', 'would-refuse', 'icmp', 'raw ipv4', 'egress-not-allowed'],
    ]);
    for (const l of lines) {
      expect(l).toMatchObject({ datapath: 'kernel', uid: 0 });
      expect(l).not.toHaveProperty('address');
      expect(l).not.toHaveProperty('port');
    }
    const status = await run(process.execPath, [wirekeyBin, 'status', '--state-dir', f.stateDir]);
    expect(status.stdout).toContain('egress locked (enforce): 4 refused (egress-not-allowed), 0 would-refuse in the kernel\n');
    expect(status.stdout).toContain('egress watched (audit): 0 refused (egress-not-allowed), 3 would-refuse in the kernel\n');
  });

  it('a reload changes the rules for the next connect() of a process already running; a refused reload changes nothing', async () => {
    f.writePolicy(policy('443, 8443'));
    expect(await f.agent?.reload()).toBe('reloaded');
    expect(await locked.send(`tcp ${f.host.ipv4} 8443`)).toBe('ECONNREFUSED');
    // Too many port ranges for one prefix: refused whole by the kernel maps' limits, the running rules stay.
    f.writePolicy(policy(Array.from({ length: 20 }, (_, i) => String(9000 + 2 * i)).join(', ')));
    expect(await f.agent?.reload()).toBe('failed');
    expect(f.agent?.output()).toMatch(/egress to .* needs 20 separate port ranges/);
    expect(await locked.send(`tcp ${f.host.ipv4} 8443`)).toBe('ECONNREFUSED');
    expect(await locked.send(`tcp ${f.host.ipv4} 9000`)).toBe('EPERM');
  });
});

describe.skipIf(skip)(`egress while no agent runs${skip ? ` (skipped: ${skip})` : ''}`, () => {
  const f = new E2eFixture();
  let locked: DrivenProcess;

  beforeAll(async () => {
    await f.setUp();
    const lockedCg = f.cgroup('locked');
    f.writePolicy(lockedWorkload(f, '443'));
    await f.startAgent();
    locked = startDriven(lockedCg, 'python3', ['-c', CLIENT]);
    f.onClose(() => locked?.kill());
  });

  afterAll(() => f.close());

  it('kill -9: the rules stay enforced (the links are pinned), also for a process started while no agent runs; the next agent takes over; a clean stop lifts them', async () => {
    expect(await locked.send(`tcp ${f.host.ipv4} 8443`)).toBe('EPERM');
    await f.agent?.kill();
    // The agent is gone; its programs are not.
    expect(await locked.send(`tcp ${f.host.ipv4} 443`)).toBe('ok');
    expect(await locked.send(`tcp ${f.host.ipv4} 8443`)).toBe('EPERM');
    expect(await locked.send(`udp ${f.host.ipv4} 53`)).toBe('EPERM');
    // exec() is still tracked: a process that starts now is judged as its workload.
    const late = startDriven(f.cgroup('locked'), 'python3', ['-c', CLIENT]);
    try {
      expect(await late.send(`tcp ${f.host.ipv6} 443`)).toBe('EPERM');
    } finally {
      late.kill();
    }
    const dead = await run(process.execPath, [wirekeyBin, 'status', '--state-dir', f.stateDir]);
    expect(dead.code).toBe(3);
    expect(dead.stdout).toMatch(/programs still attached: \d+/);

    // A restart: while it starts, the dead agent's programs still judge; once it is ready, its own.
    const next = await f.startAgent();
    expect(next.output()).toMatch(/took over from the previous agent/);
    expect(await locked.send(`tcp ${f.host.ipv4} 8443`)).toBe('EPERM');
    expect(await locked.send(`tcp ${f.host.ipv4} 443`)).toBe('ok');

    // A clean stop detaches everything: the workload is no longer restricted.
    expect(await next.stop()).toBe(0);
    f.agentStopped = true;
    expect(await locked.send(`tcp ${f.host.ipv4} 8443`)).toBe('ECONNREFUSED');
  });
});
