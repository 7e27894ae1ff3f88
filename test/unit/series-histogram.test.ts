/**
 * SeriesHistogram (controller/metrics/series-histogram.ts) renders exactly
 * what prom-client's Histogram does for the same observations, labels
 * given in the same order: buckets, +Inf, _sum, _count, escaping.
 */
import { describe, expect, it } from 'vitest';
import { Histogram, Registry } from 'prom-client';
import { SeriesHistogram } from '../../controller/metrics/series-histogram.js';

const BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];
/** On a bound, between bounds, above every bound, zero, tiny. */
const VALUES = [0, 1e-9, 0.005, 0.0051, 0.3, 2.5, 10, 61, 100];
const SERIES: [string, string][] = [['a"b', 'c\\d'], ['w2', 's2\nx']];

function both() {
  const theirs = new Registry();
  const ours = new Registry();
  const opts = { name: 'x_seconds', help: 'help with "quotes" and a \\ backslash', labelNames: ['workload', 'service'] as const, buckets: BUCKETS };
  return { theirs, ours, h: new Histogram({ ...opts, registers: [theirs] }), s: new SeriesHistogram({ ...opts, registers: [ours] }) };
}

describe('SeriesHistogram', () => {
  it('renders the same text as prom-client\'s Histogram', async () => {
    const { theirs, ours, h, s } = both();
    for (const [workload, service] of SERIES) {
      const series = s.series({ workload, service });
      for (const v of VALUES) {
        h.labels(workload, service).observe(v);
        series.observe(v);
      }
    }
    expect(await ours.metrics()).toBe(await theirs.metrics());
  });

  it('one series per label set, whatever order the labels come in; reset zeroes them and they stay usable', async () => {
    const { theirs, ours, h, s } = both();
    const a = s.series({ workload: 'w', service: 's' });
    expect(s.series({ service: 's', workload: 'w' })).toBe(a);
    a.observe(0.2);
    s.reset();
    h.labels('w', 's').observe(0.2);
    h.reset();
    a.observe(0.02);
    h.labels('w', 's').observe(0.02);
    expect(await ours.metrics()).toBe(await theirs.metrics());
  });
});
