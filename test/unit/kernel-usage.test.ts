/**
 * KernelUsage: the kernel's running totals per (binding, header version,
 * epoch) become metric increments at every read and `usage` audit lines at
 * every summary, each request counted once; entries that can no longer
 * count are deleted once quiet. The kernel side is a stand-in: the real
 * per-CPU map is exercised by test/kernel/http-inject.test.ts, the whole
 * path by test/e2e/kernel-usage.test.ts.
 */
import { describe, expect, it } from 'vitest';
import { KernelUsage } from '../../controller/agent/kernel-usage.js';
import type { HttpUsageRecord } from '../../controller/datapath/kernel-http.js';
import type { UsageNames } from '../../controller/agent/kernel-bindings.js';

const key = (r: Pick<HttpUsageRecord, 'workloadId' | 'serviceId' | 'headerVersion' | 'epoch'>) => `${r.workloadId}:${r.serviceId}:${r.headerVersion}:${r.epoch}`;

class FakeUsage {
  entries = new Map<string, HttpUsageRecord>();
  forgotten: string[] = [];
  count(workloadId: number, headerVersion: number, n: number, epoch = 0): void {
    const k = key({ workloadId, serviceId: 1, headerVersion, epoch });
    const e = this.entries.get(k);
    const now = process.hrtime.bigint();
    if (e) {
      e.requests += BigInt(n);
      e.lastNs = now;
    } else {
      this.entries.set(k, { workloadId, serviceId: 1, headerVersion, epoch, requests: BigInt(n), firstNs: now, lastNs: now });
    }
  }
  usage(): HttpUsageRecord[] {
    return [...this.entries.values()].map((e) => ({ ...e }));
  }
  forgetUsage(e: Pick<HttpUsageRecord, 'workloadId' | 'serviceId' | 'headerVersion' | 'epoch'>): void {
    this.forgotten.push(key(e));
    this.entries.delete(key(e));
  }
}

function setUp(current: (r: HttpUsageRecord) => boolean = () => true) {
  const kernel = new FakeUsage();
  const counted: [string, string, number][] = [];
  const names = (r: HttpUsageRecord): UsageNames | undefined =>
    r.workloadId === 1 ? { workload: 'app', service: 'plain', credential: 'tok', credentialVersion: String(r.headerVersion), current: current(r) } : undefined;
  const usage = new KernelUsage(kernel, { names, counted: (w, s, n) => counted.push([w, s, n]) });
  return { kernel, counted, usage };
}

describe('KernelUsage', () => {
  it('counts what each read adds, once, and summarises the requests since the last line', () => {
    const { kernel, counted, usage } = setUp();
    kernel.count(1, 1, 5);
    expect(usage.collect()).toBe(5);
    expect(usage.collect()).toBe(0);
    kernel.count(1, 1, 3);
    const lines = usage.summarize();
    expect(counted).toEqual([['app', 'plain', 5], ['app', 'plain', 3]]);
    expect(lines).toEqual([expect.objectContaining({ decision: 'usage', datapath: 'kernel', workload: 'app', service: 'plain', credential: 'tok', credentialVersion: '1', requests: 8 })]);
    expect(Date.parse(lines[0]?.firstSeen as string)).toBeLessThanOrEqual(Date.parse(lines[0]?.lastSeen as string));
    // Nothing new: no line.
    expect(usage.summarize()).toEqual([]);
    kernel.count(1, 1, 2);
    expect(usage.summarize().map((l) => l.requests)).toEqual([2]);
  });

  it('names ids no plan names by number', () => {
    const { kernel, counted, usage } = setUp();
    kernel.count(4, 2, 1);
    expect(usage.summarize()).toEqual([expect.objectContaining({ workload: '#4', service: '#1', requests: 1 })]);
    expect(counted).toEqual([['#4', '#1', 1]]);
  });

  it('deletes an entry that is no longer current once a summary found it quiet, and counts a new one made under its key from zero', () => {
    const { kernel, usage } = setUp((r) => r.headerVersion === 2);
    kernel.count(1, 1, 4);
    kernel.count(1, 2, 1);
    expect(usage.summarize().map((l) => [l.credentialVersion, l.requests])).toEqual([['1', 4], ['2', 1]]);
    // Quiet once: kept. Quiet at the next summary too: deleted. The current one stays.
    expect(usage.summarize()).toEqual([]);
    expect(kernel.forgotten).toEqual([]);
    expect(usage.summarize()).toEqual([]);
    expect(kernel.forgotten).toEqual(['1:1:1:0']);
    // A late request under the deleted key: a new entry, counted whole.
    kernel.count(1, 1, 1);
    expect(usage.summarize().map((l) => [l.credentialVersion, l.requests])).toEqual([['1', 1]]);
  });

  it('an entry that counts again is not deleted', () => {
    const { kernel, usage } = setUp(() => false);
    kernel.count(1, 1, 1);
    usage.summarize();
    usage.summarize(); // quiet once
    kernel.count(1, 1, 1);
    expect(usage.summarize().map((l) => l.requests)).toEqual([1]);
    expect(usage.summarize()).toEqual([]);
    expect(kernel.forgotten).toEqual([]);
  });

  it('a binding a reload removed keeps the names it was counted under, and its entry goes once quiet', () => {
    const kernel = new FakeUsage();
    let bound = true;
    const names = (r: HttpUsageRecord): UsageNames | undefined =>
      bound ? { workload: 'app', service: 'plain', credential: 'tok', current: r.headerVersion === 1 } : undefined;
    const usage = new KernelUsage(kernel, { names, counted: () => {} });
    kernel.count(1, 1, 2);
    expect(usage.summarize().map((l) => l.requests)).toEqual([2]);
    bound = false;
    kernel.count(1, 1, 1); // a request counted just before the removal took effect
    expect(usage.summarize()).toEqual([expect.objectContaining({ workload: 'app', requests: 1 })]);
    usage.summarize();
    usage.summarize();
    expect(kernel.forgotten).toEqual(['1:1:1:0']);
  });
});
