/**
 * KernelBindings' bookkeeping: which ids the kernel's entries are written
 * under, when the epoch must be bumped, and what a refresh rewrites. The
 * kernel side is a recording stand-in (RecordingKernelHttpMock): the real
 * maps are exercised by test/kernel/http-inject.test.ts and through the
 * agent by test/e2e/kernel-datapath.test.ts.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { mkdtempSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { KernelBindings } from '../../controller/agent/kernel-bindings.js';
import type { HeaderLine, HttpBinding, KernelHttp, PinnedDestination, ServiceHosts } from '../../controller/datapath/kernel-http.js';
import { CredentialSources } from '../../controller/credentials/sources.js';
import { compilePolicy } from '../../controller/policy/compile.js';
import { parsePolicyText } from '../../controller/policy/parse.js';
import { createLogger } from '../../controller/log.js';
import type { Plan } from '../../controller/policy/types.js';

/** Stands in for KernelHttp: records what would have been written to the maps. */
class RecordingKernelHttpMock {
  epoch = 0;
  dests: PinnedDestination[] = [];
  hosts: ServiceHosts[] = [];
  bindings = new Map<string, string>();
  writes: string[] = [];
  bumpEpoch(): number {
    return ++this.epoch;
  }
  idEpoch(): number {
    return this.epoch;
  }
  setDestinations(d: PinnedDestination[], hosts: ServiceHosts[] = []): void {
    this.dests = d;
    this.hosts = hosts;
  }
  version = 0;
  setBindings(bs: HttpBinding[]): number[] {
    this.bindings = new Map(bs.map((b) => [`${b.workloadId}:${b.serviceId}`, b.header ? `${b.header.name}: ${String(b.header.value)}` : 'withheld']));
    this.writes.push('setBindings');
    return bs.map(() => ++this.version);
  }
  setHeader(w: number, s: number, h: HeaderLine): number {
    this.bindings.set(`${w}:${s}`, `${h.name}: ${String(h.value)}`);
    this.writes.push(`setHeader ${w}:${s}`);
    return ++this.version;
  }
  withhold(w: number, s: number): number {
    this.bindings.set(`${w}:${s}`, 'withheld');
    this.writes.push(`withhold ${w}:${s}`);
    return ++this.version;
  }
}

const dir = mkdtempSync(path.join(tmpdir(), 'wirekey-kb-'));
const keyFile = path.join(dir, 'key');
const log = createLogger('error', () => undefined);
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const H = 'apiVersion: wirekey.dev/v1alpha1\n';
function plan(workloads: string[], extra: string[] = []): Plan {
  const docs = [
    `${H}kind: CredentialSource\nmetadata: {name: k}\nspec: {file: {path: ${keyFile}}}\n`,
    `${H}kind: Service\nmetadata: {name: inv}\nspec: {addresses: [10.0.0.0/24], port: 80, tls: false}\n`,
    ...extra,
    // Selector depth orders precedence, so listing more specific cgroups first renumbers.
    ...workloads.map((w) => `${H}kind: Workload\nmetadata: {name: ${w}}\nspec: {selector: {cgroup: /${w === 'a' ? 'x/y/z' : w}}}\n`),
    ...workloads.map((w) => `${H}kind: Binding\nmetadata: {name: b-${w}}\nspec: {workload: ${w}, service: inv, inject: {bearer: {credential: k}}}\n`),
  ];
  const parsed = parsePolicyText(docs.join('---\n'), 'p.yaml');
  expect(parsed.diagnostics).toEqual([]);
  return compilePolicy({ documents: parsed.documents });
}

describe('KernelBindings', () => {
  it("hands the kernel each plaintext service's hosts with its destinations; a service without hosts has none", async () => {
    writeFileSync(keyFile, 'secret-1', { mode: 0o600 });
    const kh = new RecordingKernelHttpMock();
    const kb = new KernelBindings(kh as unknown as KernelHttp, log);
    const listed = `${H}kind: Service\nmetadata: {name: listed}\nspec: {addresses: [10.1.0.1], hosts: [Api.Internal., b.internal], port: 8080, tls: false}\n`;
    const p = plan(['a'], [listed]);
    await kb.apply(p, await CredentialSources.build(p, CredentialSources.empty(), log));
    const listedId = kh.dests.find((d) => d.address === '10.1.0.1')?.serviceId;
    expect(listedId).toBeDefined();
    expect(kh.hosts).toEqual([{ serviceId: listedId, hosts: ['api.internal', 'b.internal'] }]);
  });

  it('writes every binding on apply, only changed lines on refresh, and withholds what cannot be read', async () => {
    writeFileSync(keyFile, 'one\n', { mode: 0o600 });
    const kh = new RecordingKernelHttpMock();
    const kb = new KernelBindings(kh as unknown as KernelHttp, log);
    const p = plan(['b']);
    // Every refresh looks at the file again (the agent's sources wait a second between looks).
    const creds = await CredentialSources.build(p, CredentialSources.empty(), log, { fileRecheckIntervalMs: 0 });
    await kb.apply(p, creds);
    expect(kh.dests).toEqual([{ address: '10.0.0.0/24', port: 80, serviceId: 1 }]);
    expect([...kh.bindings]).toEqual([['1:1', 'Authorization: Bearer one']]);
    kh.writes = [];
    await kb.refresh(p, creds);
    expect(kh.writes).toEqual([]);
    // Rotated by rename: a new inode, so the change shows whatever the timestamps' granularity.
    writeFileSync(`${keyFile}.new`, 'two\n', { mode: 0o600 });
    renameSync(`${keyFile}.new`, keyFile);
    await kb.refresh(p, creds);
    expect(kh.writes).toEqual(['setHeader 1:1']);
    expect(kh.bindings.get('1:1')).toBe('Authorization: Bearer two');
    rmSync(keyFile);
    await kb.refresh(p, creds);
    expect(kh.bindings.get('1:1')).toBe('withheld');
    await creds.close();
  });

  it('bumps the epoch when a reload gives a workload name another id, and not otherwise', async () => {
    writeFileSync(keyFile, 'one\n', { mode: 0o600 });
    const kh = new RecordingKernelHttpMock();
    const kb = new KernelBindings(kh as unknown as KernelHttp, log);
    const first = plan(['b', 'c']);
    const creds = await CredentialSources.build(first, CredentialSources.empty(), log);
    await kb.apply(first, creds);
    await kb.apply(plan(['b', 'c']), creds);
    expect(kh.epoch).toBe(0);
    // 'a' is more specific than b and c: it takes id 1 and moves them up.
    await kb.apply(plan(['a', 'b', 'c']), creds);
    expect(kh.epoch).toBe(1);
    // Removing the last workload renumbers nothing that stays.
    await kb.apply(plan(['a', 'b']), creds);
    expect(kh.epoch).toBe(1);
    await creds.close();
  });

  it('names usage entries by the epoch they were counted in, across a renumbering, and says which are current', async () => {
    writeFileSync(keyFile, 'one\n', { mode: 0o600 });
    const kh = new RecordingKernelHttpMock();
    const kb = new KernelBindings(kh as unknown as KernelHttp, log);
    const first = plan(['b', 'c']);
    const creds = await CredentialSources.build(first, CredentialSources.empty(), log);
    await kb.apply(first, creds);
    // b is 1, c is 2; header versions 1 and 2, epoch 0.
    expect(kb.usageNames({ workloadId: 1, serviceId: 1, headerVersion: 1, epoch: 0 })).toMatchObject({ workload: 'b', service: 'inv', credential: 'k', current: true });
    expect(kb.usageNames({ workloadId: 2, serviceId: 1, headerVersion: 2, epoch: 0 })).toMatchObject({ workload: 'c', current: true });
    await kb.apply(plan(['a', 'b', 'c']), creds);
    expect(kh.epoch).toBe(1);
    // Counted before the renumbering: still b and c, no longer current.
    expect(kb.usageNames({ workloadId: 1, serviceId: 1, headerVersion: 1, epoch: 0 })).toMatchObject({ workload: 'b', current: false });
    expect(kb.usageNames({ workloadId: 2, serviceId: 1, headerVersion: 2, epoch: 0 })).toMatchObject({ workload: 'c', current: false });
    // After it, id 1 is a, id 2 is b (versions 3, 4, 5 written by the apply).
    expect(kb.usageNames({ workloadId: 1, serviceId: 1, headerVersion: 3, epoch: 1 })).toMatchObject({ workload: 'a', current: true });
    expect(kb.usageNames({ workloadId: 2, serviceId: 1, headerVersion: 4, epoch: 1 })).toMatchObject({ workload: 'b', current: true });
    // A version since replaced is named, not current.
    expect(kb.usageNames({ workloadId: 2, serviceId: 1, headerVersion: 2, epoch: 1 })).toMatchObject({ workload: 'b', current: false });
    expect(kb.usageNames({ workloadId: 9, serviceId: 1, headerVersion: 1, epoch: 1 })).toBeUndefined();
    expect(kb.usageNames({ workloadId: 1, serviceId: 1, headerVersion: 1, epoch: 7 })).toBeUndefined();
    await creds.close();
  });
});
