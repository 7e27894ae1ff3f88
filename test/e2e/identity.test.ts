/**
 * Process identity on the real kernel: systemd units, executables, users,
 * and everything a process can do to them (fork, exec, threads, moving
 * between cgroups, starting before the agent, pid reuse, a replaced binary).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createHash } from 'node:crypto';
import { copyFileSync, existsSync, mkdirSync, readFileSync, realpathSync, renameSync, rmdirSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { E2eFixture, HOST, sha256 } from '../support/e2e-fixture.js';
import { startDriven, type DrivenProcess } from '../support/driven.js';
import { kernelSkipReason } from '../support/requirements.js';
import { repoRoot, wirekeyBin } from '../support/agent.js';
import { must, run } from '../support/shell.js';
import { runInCgroup } from '../support/cgroup.js';
import { PinnedMaps } from '../../controller/datapath/pinned.js';
import { formatDev } from '../../controller/datapath/layout.js';

const skip = kernelSkipReason();
const NOBODY = 65534;

describe.skipIf(skip)(`process identity${skip ? ` (skipped: ${skip})` : ''}`, () => {
  const f = new E2eFixture();
  const python = realpathSync((process.env.PYTHON ?? '/usr/bin/python3').trim());
  const curlBin = realpathSync('/usr/bin/curl');
  const dash = realpathSync('/bin/sh');
  const unit = `wirekey-test-${f.tag}.service`;
  const unitCgroup = () => path.join(f.cgRoot, 'system.slice', unit);
  let createdSystemSlice = false;
  let cg: Record<'exe' | 'user' | 'py' | 'sh' | 'sha' | 'move' | 'elsewhere', string>;
  let myCurl: string;
  let early: DrivenProcess;
  const drivers: DrivenProcess[] = [];

  /** Whether a request from the given run reached the upstream with the token. */
  const injected = async (before: number) => {
    const recs = await f.recordsSince(before);
    expect(recs.length, 'the request reached the upstream').toBe(1);
    return (recs[0]?.authorization ?? []).includes(f.expectedAuth);
  };
  const pyWorkload = (cgroup: string) => {
    const d = startDriven(cgroup, python, [path.join(repoRoot, 'test/support/clients/py-workload.py'), HOST, f.host.ipv4, f.bothCas]);
    drivers.push(d);
    return d;
  };
  const explain = async (pid: number) => {
    const r = await run(process.execPath, [wirekeyBin, 'explain', String(pid), '--state-dir', f.stateDir, '--json']);
    expect(r.stderr).toBe('');
    return JSON.parse(r.stdout) as {
      workload: { name: string } | null;
      candidates: { name: string; matched: boolean }[];
      egress: { mode: string; rules: { label: string; cidrs: string[]; hosts: string[]; ports: number[][]; protocol: string }[] } | null;
    };
  };

  beforeAll(async () => {
    await f.setUp();
    cg = {
      exe: f.cgroup('exe'),
      user: f.cgroup('user'),
      py: f.cgroup('py'),
      sh: f.cgroup('sh'),
      sha: f.cgroup('sha'),
      move: f.cgroup('move'),
      elsewhere: f.cgroup('elsewhere'),
    };
    myCurl = path.join(f.shared, 'mycurl');
    copyFileSync(curlBin, myCurl);
    const digest = createHash('sha256').update(readFileSync(myCurl)).digest('hex');
    if (!existsSync(path.join(f.cgRoot, 'system.slice'))) {
      mkdirSync(path.join(f.cgRoot, 'system.slice'));
      createdSystemSlice = true;
    }
    f.onClose(() => {
      for (const d of drivers) d.kill();
      if (existsSync(unitCgroup())) rmdirSync(unitCgroup());
      if (createdSystemSlice) rmdirSync(path.join(f.cgRoot, 'system.slice'));
    });

    const workload = (name: string, selector: string, egress = '') => `apiVersion: wirekey.dev/v1alpha1
kind: Workload
metadata: {name: ${name}}
spec: {selector: ${selector}${egress ? `, egress: ${egress}` : ''}}
---
apiVersion: wirekey.dev/v1alpha1
kind: Binding
metadata: {name: ${name}-api}
spec: {workload: ${name}, service: api, inject: {bearer: {credential: api-token}}}
---
`;
    f.writePolicy(
      [
        workload('curl-only', `{cgroup: ${f.cgBase}/exe, executable: ${curlBin}}`),
        workload('nobody-only', `{cgroup: ${f.cgBase}/user, user: nobody}`),
        workload('python', `{cgroup: ${f.cgBase}/py, executable: ${python}}`),
        // Audit mode: explain shows the rules, and nothing this file tests is refused.
        workload('shell', `{cgroup: ${f.cgBase}/sh, executable: ${dash}}`, `{mode: audit, allow: [{cidr: ${f.host.ipv4}, ports: [443]}, {host: "*.example.com"}]}`),
        workload('pinned-curl', `{cgroup: ${f.cgBase}/sha, executable: {path: ${myCurl}, sha256: ${digest}}}`),
        workload('unit', `{systemdUnit: ${unit}}`),
        workload('moved', `{cgroup: ${f.cgBase}/move}`),
      ].join(''),
    );
    // Started before the agent: it must be backfilled to match its executable selector.
    early = pyWorkload(cg.py);
    expect(await early.send('pid')).toBe(`pid ${early.pid}`);
    await f.startAgent();
  });

  afterAll(() => f.close());

  it('a process started before the agent gets the credential', async () => {
    const before = f.upstream.records.length;
    expect(await early.send('get /early')).toBe('status 200');
    expect(await injected(before)).toBe(true);
    const e = await explain(early.pid);
    expect(e.workload?.name).toBe('python');
    expect(e.egress).toBeNull();
    expect(await must(process.execPath, [wirekeyBin, 'explain', String(early.pid), '--state-dir', f.stateDir])).toContain('\negress: unrestricted\n');
  });

  it('two executables in the same bound cgroup: only the selected one gets the credential', async () => {
    let before = f.upstream.records.length;
    expect((await f.curl(cg.exe, ['--cacert', f.wirekeyCa, `https://${HOST}/curl`])).stderr).toBe('');
    expect(await injected(before)).toBe(true);

    before = f.upstream.records.length;
    const py = pyWorkload(cg.exe);
    expect(await py.send('get /python-in-curl-cgroup')).toBe('status 200');
    expect(await injected(before)).toBe(false);
    expect((await explain(py.pid)).workload).toBeNull();
  });

  it('the same executable run by two users: only the selected user gets it', async () => {
    let before = f.upstream.records.length;
    expect((await f.curl(cg.user, ['--cacert', f.bothCas, `https://${HOST}/as-nobody`], { uid: NOBODY })).stderr).toBe('');
    expect(await injected(before)).toBe(true);
    before = f.upstream.records.length;
    expect((await f.curl(cg.user, ['--cacert', f.bothCas, `https://${HOST}/as-root`])).stderr).toBe('');
    expect(await injected(before)).toBe(false);
  });

  it('fork without exec inherits; a non-main thread carries the identity; exec into another binary changes it', async () => {
    const py = pyWorkload(cg.py);
    let before = f.upstream.records.length;
    expect(await py.send('get /main')).toBe('status 200');
    expect(await injected(before)).toBe(true);
    before = f.upstream.records.length;
    expect(await py.send('fork-get /forked')).toBe('status 200');
    expect(await injected(before)).toBe(true);
    before = f.upstream.records.length;
    expect(await py.send('thread-get /thread')).toBe('status 200');
    expect(await injected(before)).toBe(true);

    before = f.upstream.records.length;
    py.write(`exec ${curlBin} -sS --resolve ${HOST}:443:${f.host.ipv4} --cacert ${f.bothCas} https://${HOST}/exec-curl`);
    expect(await py.exited).toBe(0);
    expect(await injected(before)).toBe(false);
  });

  it('a shell script that runs curl is the shell until curl execs', async () => {
    const sh = startDriven(cg.sh, '/bin/sh', ['-c', `read line; echo shell-done; exec "$@"`, 'sh', 'curl', '-sS', '--resolve',
      `${HOST}:443:${f.host.ipv4}`, '--cacert', f.bothCas, `https://${HOST}/from-script`]);
    drivers.push(sh);
    await new Promise((r) => setTimeout(r, 200));
    const e = await explain(sh.pid);
    expect(e.workload?.name).toBe('shell');
    // The workload's egress rules, then the rule its binding implies.
    expect(e.egress?.mode).toBe('audit');
    expect(e.egress?.rules.map((r) => [r.label, [...r.cidrs, ...r.hosts], r.ports, r.protocol])).toEqual([
      ['allow[1]', [`${f.host.ipv4}/32`], [[443, 443]], 'tcp'],
      ['allow[2]', ['*.example.com'], [[443, 443]], 'tcp'],
      ['binding shell-api', [HOST], [[443, 443]], 'tcp'],
    ]);
    const text = await must(process.execPath, [wirekeyBin, 'explain', String(sh.pid), '--state-dir', f.stateDir]);
    expect(text).toContain('egress: audit (nothing is refused; what would be is logged), 3 rule(s)\n');
    expect(text).toContain(`  allow[1]: ${f.host.ipv4}/32 port 443 tcp\n`);
    expect(text).toContain(`  binding shell-api: service api: ${HOST} port 443 tcp, TLS server name\n`);
    const before = f.upstream.records.length;
    expect(await sh.send('go')).toBe('shell-done');
    expect(await sh.exited).toBe(0);
    expect(await injected(before)).toBe(false);
  });

  it('a process moved into a bound cgroup gets the credential; moved out, it loses it', async () => {
    const py = pyWorkload(cg.elsewhere);
    let before = f.upstream.records.length;
    expect(await py.send('get /before-move')).toBe('status 200');
    expect(await injected(before)).toBe(false);

    writeFileSync(path.join(cg.move, 'cgroup.procs'), String(py.pid));
    before = f.upstream.records.length;
    expect(await py.send('get /moved-in')).toBe('status 200');
    expect(await injected(before)).toBe(true);

    writeFileSync(path.join(cg.elsewhere, 'cgroup.procs'), String(py.pid));
    before = f.upstream.records.length;
    expect(await py.send('get /moved-out')).toBe('status 200');
    expect(await injected(before)).toBe(false);
  });

  it('a systemd unit that starts after the agent is picked up without a restart', async () => {
    mkdirSync(unitCgroup());
    // The agent resolves selectors every 2 s.
    let workload: string | undefined;
    for (let i = 0; i < 40 && workload !== 'unit'; i++) {
      await new Promise((r) => setTimeout(r, 250));
      const sh = startDriven(unitCgroup(), '/bin/sh', ['-c', 'read line']);
      drivers.push(sh);
      await new Promise((r) => setTimeout(r, 50));
      workload = (await explain(sh.pid)).workload?.name;
      sh.kill();
    }
    expect(workload).toBe('unit');
    const before = f.upstream.records.length;
    expect((await f.curl(unitCgroup(), ['--cacert', f.wirekeyCa, `https://${HOST}/unit`])).stderr).toBe('');
    expect(await injected(before)).toBe(true);
  });

  it('a binary replaced on disk under a sha256 selector stops getting the credential', async () => {
    let before = f.upstream.records.length;
    expect((await f.curl(cg.sha, ['--cacert', f.wirekeyCa, `https://${HOST}/pinned`], { binary: myCurl })).stderr).toBe('');
    expect(await injected(before)).toBe(true);

    // Same program plus one byte: still runs, but is not the file the policy pinned.
    const replacement = `${myCurl}.new`;
    writeFileSync(replacement, Buffer.concat([readFileSync(myCurl), Buffer.from([0])]), { mode: 0o755 });
    renameSync(replacement, myCurl);
    for (let i = 0; i < 40 && !/pinned-curl: executable .* has SHA-256/.test(f.agent?.output() ?? ''); i++) {
      await new Promise((r) => setTimeout(r, 250));
    }
    expect(f.agent?.output()).toMatch(/workload pinned-curl: executable .* has SHA-256 [0-9a-f]{64}, the policy requires/);
    before = f.upstream.records.length;
    expect((await f.curl(cg.sha, ['--cacert', f.bothCas, `https://${HOST}/replaced`], { binary: myCurl })).stderr).toBe('');
    expect(await injected(before)).toBe(false);
  });

  it('thousands of short-lived processes: every process the kernel tracks is alive and recorded with its own executable', async () => {
    // 3000 forks and execs in a bound cgroup, reaped as they go.
    const r = await runInCgroup(cg.exe, '/bin/sh', ['-c', 'i=0; while [ $i -lt 3000 ]; do /bin/true; i=$((i+1)); done'], { timeoutMs: 120_000 });
    expect(r.code).toBe(0);
    const maps = new PinnedMaps(f.pinDir);
    const tracked = maps.trackedTasks();
    expect(tracked.length).toBeGreaterThan(0);
    const wrong: string[] = [];
    for (const { tgid, exe: { dev, ino } } of tracked) {
      let st;
      try {
        st = statSync(`/proc/${tgid}/exe`, { bigint: true });
      } catch {
        // Exited between the two reads, or a stale entry: only the latter is wrong.
        if (existsSync(`/proc/${tgid}`) || maps.taskExe(tgid) !== null) {
          await new Promise((res) => setTimeout(res, 200));
          if (maps.taskExe(tgid) !== null && !existsSync(`/proc/${tgid}`)) wrong.push(`${tgid}: entry outlived the process`);
        }
        continue;
      }
      // The inode number only: stat()'s st_dev is not the kernel's device on
      // every file system (btrfs, overlays; see identity-filesystems.test.ts).
      if (st.ino !== ino) {
        // An exec may land between the map read and the stat: read the map again.
        const again = maps.taskExe(tgid);
        if (!again || again.ino !== st.ino) wrong.push(`${tgid}: recorded ${formatDev(dev)}/${ino}, runs ${st.ino}`);
      }
    }
    expect(wrong).toEqual([]);
    const status = await must(process.execPath, [wirekeyBin, 'status', '--state-dir', f.stateDir]);
    expect(status).toMatch(/processes not recorded \(wk_task_exe full\): 0/);
  });

  it('explain names a pid that does not exist', async () => {
    const r = await run(process.execPath, [wirekeyBin, 'explain', '4194999', '--state-dir', f.stateDir]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('no process with pid 4194999');
  });

  it('the token is in no log or audit line', () => {
    expect(f.agent?.output()).not.toContain(f.token);
    expect(readFileSync(f.auditPath, 'utf8')).not.toContain(f.token);
    expect(readFileSync(f.auditPath, 'utf8')).toContain(`"workload":"python"`);
    expect(sha256(`Bearer ${f.token}`)).toBe(f.expectedAuth);
  });
});
