/** Workload selectors in policy: shapes, precedence, and the ambiguity rule `validate` enforces. */
import { describe, expect, it } from 'vitest';
import { parsePolicyText } from '../../controller/policy/parse.js';
import { checkPolicy } from '../../controller/policy/check.js';
import { compilePolicy } from '../../controller/policy/compile.js';
import { couldOverlap, comparePrecedence } from '../../controller/policy/precedence.js';
import { identityTables } from '../../controller/datapath/identity-tables.js';
import { encodeMask, decodeMask, kernelDev } from '../../controller/datapath/layout.js';

const workloads = (...selectors: string[]) =>
  selectors
    .map((s, i) => `apiVersion: wirekey.dev/v1alpha1\nkind: Workload\nmetadata: {name: w${i}}\nspec: {selector: ${s}}\n`)
    .join('---\n');

function check(text: string): string[] {
  const { documents, diagnostics } = parsePolicyText(text, 'p.yaml');
  const all = diagnostics.length ? diagnostics : checkPolicy({ documents });
  return all.map((d) => `${d.line}:${d.column}: ${d.message}`);
}

describe('workload selectors', () => {
  it('accepts every selector kind and their combinations', () => {
    expect(
      check(
        workloads(
          '{systemdUnit: billing.service}',
          '{cgroup: /app, executable: /usr/bin/curl}',
          '{executable: {path: /usr/bin/python3.11, sha256: ' + 'A'.repeat(64) + '}, user: billing}',
          '{uid: 1000, cgroup: /other}',
        ),
      ),
    ).toEqual([]);
  });

  it('words shape errors with their positions', () => {
    expect(check(workloads('{executable: 12}', '{systemdUnit: billing}', '{executable: {path: /x, sha256: abc}}', '{uid: -1}'))).toEqual([
      '4:31: Workload "w0": spec.selector.executable: must be a string or a mapping',
      '9:32: Workload "w1": spec.selector.systemdUnit: must be a unit name ending in .service or .scope, such as billing.service',
      '14:50: Workload "w2": spec.selector.executable.sha256: must be 64 hexadecimal digits',
      '19:24: Workload "w3": spec.selector.uid: must be >= 0',
    ]);
  });

  it('refuses user and uid together', () => {
    expect(check(workloads('{user: root, uid: 0}'))).toEqual(['4:36: Workload "w0": spec.selector: give user or uid, not both']);
  });

  it('reports two workloads that could claim one process with equal precedence', () => {
    const problems = check(workloads('{user: alice}', '{executable: /usr/bin/curl}'));
    expect(problems).toHaveLength(1);
    expect(problems[0]).toMatch(/^9:18: Workload "w1" and Workload "w0" \(p\.yaml:4\) could both match one process and neither is more specific/);
  });

  it('accepts overlaps that precedence orders, and disjoint workloads', () => {
    expect(check(workloads('{cgroup: /app}', '{cgroup: /app/worker}'))).toEqual([]); // deeper wins
    expect(check(workloads('{cgroup: /app}', '{cgroup: /app, user: billing}'))).toEqual([]); // more selectors win
    expect(check(workloads('{cgroup: /a}', '{cgroup: /b}'))).toEqual([]); // disjoint
    expect(check(workloads('{uid: 1}', '{uid: 2}'))).toEqual([]);
    expect(check(workloads('{executable: /bin/a}', '{executable: {path: /bin/b}}'))).toEqual([]);
  });

  it('numbers workloads by precedence, so the kernel picks the most specific', () => {
    const { documents } = parsePolicyText(workloads('{cgroup: /app}', '{cgroup: /app/worker}', '{cgroup: /app, executable: /usr/bin/curl}', '{uid: 5}'), 'p.yaml');
    const plan = compilePolicy({ documents });
    const order = [...plan.workloads.values()].sort((a, b) => a.id - b.id).map((w) => w.name);
    // Two selector kinds first; then the deeper cgroup; then name order among equals.
    expect(order).toEqual(['w2', 'w1', 'w0', 'w3']);
    expect(comparePrecedence({ cgroup: '/a/b' }, { cgroup: '/a' })).toBeLessThan(0);
    expect(comparePrecedence({ systemdUnit: 'x.service' }, { cgroup: '/system.slice' })).toBeLessThan(0);
  });

  it('judges overlap conservatively', () => {
    expect(couldOverlap({ cgroup: '/a' }, { cgroup: '/a/b' })).toBe(true);
    expect(couldOverlap({ cgroup: '/a' }, { cgroup: '/ab' })).toBe(false);
    expect(couldOverlap({ systemdUnit: 'x.service' }, { cgroup: '/system.slice' })).toBe(true);
    expect(couldOverlap({ user: 'alice' }, { uid: 1000 })).toBe(true);
    expect(couldOverlap({ executable: { path: '/a' } }, { executable: { path: '/a', sha256: 'f'.repeat(64) } })).toBe(true);
  });
});

describe('identity tables', () => {
  it('puts a workload in the any-mask of each kind it does not constrain, and nowhere for a selector that did not resolve', () => {
    const t = identityTables([
      { id: 1, name: 'a', cgroupPath: '/x', cgroupId: 10n, exe: { dev: 5, ino: 7n, inode: 0xffff1000n }, problems: [] },
      { id: 2, name: 'b', uid: 1000, problems: [] },
      { id: 3, name: 'c', cgroupPath: '/gone', cgroupId: null, problems: ['gone'] },
      { id: 4, name: 'd', cgroupPath: '/x', cgroupId: 10n, problems: [] },
    ]);
    expect([...t.cgroups]).toEqual([[10n, [1, 4]]]);
    expect(t.exes).toEqual([{ key: { dev: 5, ino: 7n, inode: 0xffff1000n }, workloads: [1] }]);
    expect([...t.uids]).toEqual([[1000, [2]]]);
    expect(t.any).toEqual({ cgroup: [2], exe: [2, 3, 4], uid: [1, 3, 4] });
  });

  it('keeps two files apart that share a device and inode number (btrfs subvolumes, overlay layers)', () => {
    const t = identityTables([
      { id: 1, name: 'a', exe: { dev: 42, ino: 257n, inode: 0xffff1000n }, problems: [] },
      { id: 2, name: 'b', exe: { dev: 42, ino: 257n, inode: 0xffff2000n }, problems: [] },
      { id: 3, name: 'c', exe: { dev: 42, ino: 257n, inode: 0xffff1000n }, problems: [] },
    ]);
    expect(t.exes).toEqual([
      { key: { dev: 42, ino: 257n, inode: 0xffff1000n }, workloads: [1, 3] },
      { key: { dev: 42, ino: 257n, inode: 0xffff2000n }, workloads: [2] },
    ]);
  });

  it('encodes masks as the kernel reads them: workload n is bit n-1', () => {
    const m = encodeMask([1, 64, 65, 256]);
    expect(m.readBigUInt64LE(0)).toBe((1n << 0n) | (1n << 63n));
    expect(m.readBigUInt64LE(8)).toBe(1n);
    expect(m.readBigUInt64LE(24)).toBe(1n << 63n);
    expect(decodeMask(m)).toEqual([1, 64, 65, 256]);
    expect(() => encodeMask([257])).toThrow(RangeError);
  });

  it("converts stat's device numbers to the kernel's dev_t", () => {
    // glibc makedev(8, 1) = 0x801; kernel MKDEV(8, 1) = 8 << 20 | 1.
    expect(kernelDev(0x801)).toBe((8 << 20) | 1);
    // major 259, minor 300: glibc encodes minor's high bits above bit 12.
    const glibc = (259n & 0xfffn) << 8n | (300n & 0xffn) | ((300n & ~0xffn) << 12n);
    expect(kernelDev(glibc)).toBe((259 << 20) | 300);
  });
});
