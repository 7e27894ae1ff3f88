/**
 * Executable selectors on the file systems where stat() and the kernel's
 * record of an executable disagree: btrfs (stat's st_dev is the
 * subvolume's, inode numbers repeat in every subvolume and snapshot) and an
 * overlay whose layers are on different file systems (st_dev is the
 * layer's, every layer's inode numbers show under the overlay's device).
 * Processes started before and after the agent, through the real agent.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { chmodSync, copyFileSync, readFileSync, readdirSync, realpathSync, renameSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { E2eFixture, HOST } from '../support/e2e-fixture.js';
import { startDriven, type DrivenProcess } from '../support/driven.js';
import { kernelSkipReason } from '../support/requirements.js';
import { repoRoot, wirekeyBin } from '../support/agent.js';
import { must, run } from '../support/shell.js';
import { LoopFilesystems, btrfsSkipReason, overlaySkipReason } from '../support/loop-fs.js';
import { runtimeStatePath } from '../../controller/host/runtime-state.js';

const skip = kernelSkipReason() ?? btrfsSkipReason() ?? overlaySkipReason();

describe.skipIf(skip)(`executable identity on btrfs and overlayfs${skip ? ` (skipped: ${skip})` : ''}`, () => {
  const f = new E2eFixture();
  const python = realpathSync((process.env.PYTHON ?? '/usr/bin/python3').trim());
  const fs = new LoopFilesystems(path.join(f.dir, 'fs'));
  const drivers: DrivenProcess[] = [];
  /** The copies of the Python interpreter the test runs, by role. */
  const bin = {} as Record<'btrfsTop' | 'btrfsSub' | 'btrfsSnap' | 'ovl' | 'ovlLowerPath' | 'ovlUpperTwin', string>;
  let cg: Record<'btrfsTop' | 'btrfsSub' | 'ovl' | 'ovlLower', string>;
  const early: Record<string, DrivenProcess> = {};

  const injected = async (before: number) => {
    const recs = await f.recordsSince(before);
    expect(recs.length, 'the request reached the upstream').toBe(1);
    return (recs[0]?.authorization ?? []).includes(f.expectedAuth);
  };
  const start = (cgroup: string, interpreter: string) => {
    const d = startDriven(cgroup, interpreter, [path.join(repoRoot, 'test/support/clients/py-workload.py'), HOST, f.host.ipv4, f.bothCas]);
    drivers.push(d);
    return d;
  };
  const explain = async (pid: number) => {
    const r = await run(process.execPath, [wirekeyBin, 'explain', String(pid), '--state-dir', f.stateDir, '--json']);
    expect(r.stderr).toBe('');
    return JSON.parse(r.stdout) as { workload: { name: string } | null };
  };
  /** Whether a GET from `d` carried the credential, and the workload explain names for it. */
  const verdict = async (d: DrivenProcess, label: string) => {
    const before = f.upstream.records.length;
    expect(await d.send(`get /${label}`)).toBe('status 200');
    return { injected: await injected(before), workload: (await explain(d.pid)).workload?.name ?? null };
  };
  const copyExecutable = (to: string) => {
    copyFileSync(python, to);
    chmodSync(to, 0o755);
    return to;
  };

  beforeAll(async () => {
    await f.setUp();
    f.onClose(() => {
      for (const d of drivers) d.kill();
    });
    // Registered before anything is mounted: runs after the processes are killed, even if set-up fails half way.
    f.onClose(() => fs.cleanup());

    // btrfs: the interpreter in the top-level subvolume and in a subvolume,
    // and a snapshot of the top level, whose copy has the same inode number
    // (and device, as the kernel names it) as the original.
    const btrfs = fs.btrfs('btrfs');
    bin.btrfsTop = copyExecutable(path.join(btrfs, 'python3'));
    await must('btrfs', ['subvolume', 'create', path.join(btrfs, 'sub')]);
    bin.btrfsSub = copyExecutable(path.join(btrfs, 'sub', 'python3'));
    await must('btrfs', ['subvolume', 'snapshot', btrfs, path.join(btrfs, 'snap')]);
    bin.btrfsSnap = path.join(btrfs, 'snap', 'python3');
    expect(statSync(bin.btrfsSnap).ino, 'a snapshot keeps inode numbers').toBe(statSync(bin.btrfsTop).ino);
    expect(statSync(bin.btrfsSnap).dev, "stat() tells snapshots apart by st_dev").not.toBe(statSync(bin.btrfsTop).dev);

    // An overlay of ext4 (lower) under tmpfs (upper): layers on different
    // file systems, xino off, so stat() reports each layer's own device.
    const lower = fs.ext4('lower');
    bin.ovlLowerPath = copyExecutable(path.join(lower, 'python3'));
    const upper = fs.tmpfs('upper');
    const ovl = fs.overlay('ovl', lower, path.join(upper, 'data'), ['xino=off']);
    bin.ovl = path.join(ovl, 'python3');
    expect(statSync(bin.ovl).ino).toBe(statSync(bin.ovlLowerPath).ino);
    // A file written through the overlay lands in the upper layer (tmpfs,
    // numbered from 1): make files until one has the lower file's number.
    const want = statSync(bin.ovl).ino;
    for (let i = 0; i < 10_000 && !bin.ovlUpperTwin; i++) {
      const file = path.join(ovl, `twin-${i}`);
      writeFileSync(file, '');
      if (statSync(file).ino === want) bin.ovlUpperTwin = copyExecutable(file);
    }
    expect(bin.ovlUpperTwin, `an upper-layer file with inode number ${want}`).toBeDefined();
    expect(readdirSync(path.join(upper, 'data'))).toContain(path.basename(bin.ovlUpperTwin));

    cg = { btrfsTop: f.cgroup('btrfs-top'), btrfsSub: f.cgroup('btrfs-sub'), ovl: f.cgroup('ovl'), ovlLower: f.cgroup('ovl-lower') };
    const workload = (name: string, selector: string) => `apiVersion: wirekey.dev/v1alpha1
kind: Workload
metadata: {name: ${name}}
spec: {selector: ${selector}}
---
apiVersion: wirekey.dev/v1alpha1
kind: Binding
metadata: {name: ${name}-api}
spec: {workload: ${name}, service: api, inject: {bearer: {credential: api-token}}}
---
`;
    f.writePolicy(
      [
        workload('btrfs-top', `{cgroup: ${f.cgBase}/btrfs-top, executable: ${bin.btrfsTop}}`),
        workload('btrfs-sub', `{cgroup: ${f.cgBase}/btrfs-sub, executable: ${bin.btrfsSub}}`),
        workload('overlay', `{cgroup: ${f.cgBase}/ovl, executable: ${bin.ovl}}`),
        workload('overlay-lower-path', `{cgroup: ${f.cgBase}/ovl-lower, executable: ${bin.ovlLowerPath}}`),
      ].join(''),
    );

    // Started before the agent: backfilled from the kernel's own view.
    early.btrfsTop = start(cg.btrfsTop, bin.btrfsTop);
    early.btrfsSub = start(cg.btrfsSub, bin.btrfsSub);
    early.btrfsSnap = start(cg.btrfsTop, bin.btrfsSnap);
    early.ovl = start(cg.ovl, bin.ovl);
    early.ovlUpperTwin = start(cg.ovl, bin.ovlUpperTwin);
    for (const d of Object.values(early)) expect(await d.send('pid')).toBe(`pid ${d.pid}`);
    await f.startAgent();
  }, 120_000);

  afterAll(() => f.close());

  it('btrfs: processes started before the agent are bound by the file they run, subvolume included', async () => {
    expect(await verdict(early.btrfsTop as DrivenProcess, 'early-btrfs-top')).toEqual({ injected: true, workload: 'btrfs-top' });
    expect(await verdict(early.btrfsSub as DrivenProcess, 'early-btrfs-sub')).toEqual({ injected: true, workload: 'btrfs-sub' });
  });

  it('btrfs: a snapshot of the selected file (same device and inode number to the kernel) is not the selected file', async () => {
    expect(await verdict(early.btrfsSnap as DrivenProcess, 'early-btrfs-snap')).toEqual({ injected: false, workload: null });
    expect(await verdict(start(cg.btrfsTop, bin.btrfsSnap), 'late-btrfs-snap')).toEqual({ injected: false, workload: null });
  });

  it('btrfs: processes started after the agent are bound', async () => {
    expect(await verdict(start(cg.btrfsTop, bin.btrfsTop), 'late-btrfs-top')).toEqual({ injected: true, workload: 'btrfs-top' });
    expect(await verdict(start(cg.btrfsSub, bin.btrfsSub), 'late-btrfs-sub')).toEqual({ injected: true, workload: 'btrfs-sub' });
  });

  it('overlay: processes started before and after the agent are bound', async () => {
    expect(await verdict(early.ovl as DrivenProcess, 'early-ovl')).toEqual({ injected: true, workload: 'overlay' });
    expect(await verdict(start(cg.ovl, bin.ovl), 'late-ovl')).toEqual({ injected: true, workload: 'overlay' });
  });

  it('overlay: an upper-layer file with the lower file\'s inode number is not the selected file', async () => {
    expect(await verdict(early.ovlUpperTwin as DrivenProcess, 'early-ovl-twin')).toEqual({ injected: false, workload: null });
    expect(await verdict(start(cg.ovl, bin.ovlUpperTwin), 'late-ovl-twin')).toEqual({ injected: false, workload: null });
  });

  it("overlay: a selector naming the lower layer's own path does not select the file run through the overlay", async () => {
    expect(await verdict(start(cg.ovlLower, bin.ovl), 'ovl-via-lower-path')).toEqual({ injected: false, workload: null });
  });

  it('an upgraded binary (a new file renamed over the path) is picked up, and the replaced file is no longer selected', async () => {
    for (const [file, cgroup, name] of [[bin.btrfsTop, cg.btrfsTop, 'btrfs-top'], [bin.ovl, cg.ovl, 'overlay']] as const) {
      const old = start(cgroup, file);
      expect(await old.send('pid')).toBe(`pid ${old.pid}`);
      copyExecutable(`${file}.new`);
      renameSync(`${file}.new`, file);
      // Selectors are resolved again every 2 s: wait until a new process of the new file is claimed, then use it.
      let fresh: DrivenProcess | undefined;
      for (let i = 0; i < 20 && !fresh; i++) {
        await new Promise((r) => setTimeout(r, 250));
        const d = start(cgroup, file);
        expect(await d.send('pid')).toBe(`pid ${d.pid}`);
        if ((await explain(d.pid)).workload?.name === name) fresh = d;
        else d.kill();
      }
      expect(fresh, `a process running the new ${file} is claimed by ${name}`).toBeDefined();
      expect(await verdict(fresh as DrivenProcess, `upgraded-${name}`)).toEqual({ injected: true, workload: name });
      // The replaced file is no longer what the selector names.
      expect(await verdict(old, `old-${name}`)).toEqual({ injected: false, workload: null });
    }
  });

  it("explain shows the kernel's record by device and inode number, never the inode's address", async () => {
    const r = await run(process.execPath, [wirekeyBin, 'explain', String((early.btrfsTop as DrivenProcess).pid), '--state-dir', f.stateDir, '--json']);
    const e = JSON.parse(r.stdout) as { kernelExe: Record<string, unknown> };
    expect(Object.keys(e.kernelExe).sort()).toEqual(['dev', 'ino']);
    expect(readFileSync(runtimeStatePath(f.stateDir), 'utf8')).not.toMatch(/inode/);
  });
});
