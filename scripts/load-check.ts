/**
 * Loads the BPF object into the running kernel the way the agent does
 * (Datapath.open: every program, the kernel HTTP datapath and its
 * failed-push watch included, each left out only when this kernel refuses
 * it), prints one JSON line saying what loaded, and unloads it again.
 * Exits 1 when any program of the object was left out or the load failed.
 * Root only. The kernel matrix (scripts/kernel-matrix) runs it in each guest.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Datapath } from '../controller/datapath/datapath.js';
import { findCgroup2Root } from '../controller/cgroup.js';
import { native, repoRoot } from '../controller/datapath/native.js';

interface LoadReport {
  kernel: string;
  libbpf: string;
  /** Every program in the object, by name. */
  programs: string[];
  /** The ones the kernel now holds. */
  loaded: string[];
  kernelHttpUnavailable: string | null;
  pushWatchUnavailable: string | null;
  error: string | null;
}

function main(): number {
  const objectPath = path.join(repoRoot, 'build/bpf/wirekey.bpf.o');
  const all = new (native().BpfObject)(objectPath);
  const report: LoadReport = {
    kernel: os.release(),
    libbpf: native().libbpfVersion(),
    programs: all.programs().map((p) => p.name).sort(),
    loaded: [],
    kernelHttpUnavailable: null,
    pushWatchUnavailable: null,
    error: null,
  };
  all.close();

  // Under the bpffs mount the agent uses, in a directory of its own.
  const pinDir = mkdtempSync('/sys/fs/bpf/wirekey-load-check-');
  rmSync(pinDir, { recursive: true });
  let dp: Datapath | null = null;
  try {
    dp = Datapath.open({ cgroupRoot: findCgroup2Root(), pinDir, proxyPort: 1 });
    report.kernelHttpUnavailable = dp.kernelHttpUnavailable;
    report.pushWatchUnavailable = dp.pushWatchUnavailable;
    const ids = new Set(dp.programIds());
    const shown = JSON.parse(execFileSync('bpftool', ['-j', 'prog', 'show'], { encoding: 'utf8' })) as { id: number; name: string }[];
    // bpftool shows the kernel's name, cut to 15 characters.
    const byKernelName = new Map(report.programs.map((name) => [name.slice(0, 15), name]));
    report.loaded = shown.filter((p) => ids.has(p.id)).map((p) => byKernelName.get(p.name) ?? p.name).sort();
  } catch (err) {
    report.error = err instanceof Error ? `${err.message}${'verifierLog' in err ? `\n${String(err.verifierLog)}` : ''}` : String(err);
  } finally {
    try {
      dp?.close();
    } finally {
      rmSync(pinDir, { recursive: true, force: true });
    }
  }
  process.stdout.write(`${JSON.stringify(report)}\n`);
  return report.error === null && report.loaded.length === report.programs.length ? 0 : 1;
}

process.exitCode = main();
