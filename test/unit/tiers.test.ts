/**
 * Which skips a run that must cover every tier accepts: the machine's
 * (root, a kernel feature), listed; a missing test tool or no reason at
 * all, a failed run when WIREKEY_REQUIRE_TIERS=1.
 */
import { afterEach, describe, expect, it, vi } from 'vitest';
import SummaryReporter from '../support/summary-reporter.js';
import { classifySkip, machineSkipTitle, toolSkipTitle } from '../support/tiers.js';

const suite = (name: string, tasks: object[]) => ({ type: 'suite', name, mode: 'run', tasks });
const test = (name: string, mode = 'run', result: object = { state: 'pass' }) => ({ type: 'test', name, mode, result });
const skipped = (name: string) => test(name, 'skip', {});

function report(files: object[], requireTiers: string | undefined): { out: string; exitCode: typeof process.exitCode } {
  const before = process.exitCode;
  const env = process.env.WIREKEY_REQUIRE_TIERS;
  let out = '';
  const spy = vi.spyOn(process.stdout, 'write').mockImplementation(((chunk: unknown) => {
    out += String(chunk);
    return true;
  }) as typeof process.stdout.write);
  try {
    if (requireTiers === undefined) delete process.env.WIREKEY_REQUIRE_TIERS;
    else process.env.WIREKEY_REQUIRE_TIERS = requireTiers;
    process.exitCode = undefined;
    new SummaryReporter().onFinished(files as never);
    return { out, exitCode: process.exitCode };
  } finally {
    spy.mockRestore();
    process.exitCode = before;
    if (env === undefined) delete process.env.WIREKEY_REQUIRE_TIERS;
    else process.env.WIREKEY_REQUIRE_TIERS = env;
  }
}

const files = [
  suite('test/vault/kv.test.ts', [suite(`Vault KV${toolSkipTitle('scripts/openbao could not build OpenBao or Vault (exit 1)')}`, [skipped('reads'), skipped('refreshes')])]),
  suite('test/kernel/x.test.ts', [
    suite(`kernel${machineSkipTitle('requires Linux 5.17 (bpf_loop)')}`, [skipped('loads')]),
    suite('kernel features', [test('fexit', 'run', { state: 'skip', note: 'this kernel refuses fexit programs' }), test('works')]),
  ]),
];

describe('skips and required tiers', () => {
  afterEach(() => {
    vi.restoreAllMocks();
  });

  it('tells a missing test tool from the machine, and both from a skip with no reason', () => {
    expect(classifySkip(['f', `Vault${toolSkipTitle('no server (exit 1)')}`, 't'])).toEqual({ kind: 'tool', reason: 'no server (exit 1)' });
    expect(classifySkip(['f', `kernel${machineSkipTitle('requires root (BPF)')}`, 't'])).toEqual({ kind: 'machine', reason: 'requires root (BPF)' });
    expect(classifySkip(['f', 's', 't'], 'no cgroup v1 memory controller')).toEqual({ kind: 'machine', reason: 'no cgroup v1 memory controller' });
    expect(classifySkip(['f', 's', 't'])).toEqual({ kind: 'unexplained', reason: 'no reason given' });
    // The innermost title decides.
    expect(classifySkip([`outer${toolSkipTitle('tool')}`, `inner${machineSkipTitle('requires root')}`, 't']).kind).toBe('machine');
  });

  it('lists every skip with its reason and passes, where not every tier is required', () => {
    const { out, exitCode } = report(files, undefined);
    expect(exitCode).toBeUndefined();
    expect(out).toContain('Skipped 4 test(s):');
    expect(out).toContain('> fexit (skipped: this kernel refuses fexit programs)');
    expect(out).toContain('tests: 1 passed, 0 failed, 4 skipped\n');
  });

  it('fails the run, saying why, when a required tier was skipped', () => {
    const { out, exitCode } = report(files, '1');
    expect(exitCode).toBe(1);
    expect(out).toContain('WIREKEY_REQUIRE_TIERS=1: 2 skipped test(s) must run here');
    expect(out).toContain('  - 2 test(s): scripts/openbao could not build OpenBao or Vault (exit 1)');
    expect(out).toContain('tests: 1 passed, 0 failed, 4 skipped, of which 2 must not be (run failed)');
  });

  it('accepts the machine\'s skips, and refuses one without a reason, when every tier is required', () => {
    const machineOnly = [files[1] as object];
    expect(report(machineOnly, '1').exitCode).toBeUndefined();
    const { out, exitCode } = report([suite('f', [skipped('left out')])], '1');
    expect(exitCode).toBe(1);
    expect(out).toContain('  - 1 test(s): no reason given');
  });
});
