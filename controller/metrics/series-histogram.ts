/**
 * A histogram observed with plain arithmetic, for the proxy's per-request
 * path. prom-client's Histogram checks and hashes the labels at every
 * observation, even through a labelled child; here a series is looked up
 * once per label set and an observation is a bucket search and two adds.
 * It registers with a prom-client Registry like any metric and renders
 * the same text: cumulative `le` buckets, `+Inf`, then `_sum` and `_count`
 * per series, `le` first among the labels.
 */
import type { Metric, Registry } from 'prom-client';

/** One label set's counts. */
export class HistogramSeries {
  readonly labels: Readonly<Record<string, string>>;
  /** Observations per finite bucket (not cumulative); one above every bound only counts in `count`. */
  readonly counts: Float64Array;
  sum = 0;
  count = 0;
  readonly #bounds: readonly number[];

  constructor(labels: Record<string, string>, bounds: readonly number[]) {
    this.labels = labels;
    this.#bounds = bounds;
    this.counts = new Float64Array(bounds.length);
  }

  observe(value: number): void {
    const bounds = this.#bounds;
    let i = 0;
    while (i < bounds.length && value > (bounds[i] as number)) i++;
    if (i < bounds.length) this.counts[i] = (this.counts[i] as number) + 1;
    this.sum += value;
    this.count++;
  }
}

interface Sample {
  labels: Record<string, string | number>;
  value: number;
  metricName: string;
}

export class SeriesHistogram<L extends string> {
  readonly name: string;
  readonly help: string;
  readonly type = 'histogram';
  readonly aggregator = 'sum';
  readonly #labelNames: readonly L[];
  readonly #bounds: readonly number[];
  readonly #series = new Map<string, HistogramSeries>();

  constructor(opts: { name: string; help: string; labelNames: readonly L[]; buckets: readonly number[]; registers: Registry[] }) {
    this.name = opts.name;
    this.help = opts.help;
    this.#labelNames = opts.labelNames;
    this.#bounds = [...opts.buckets].sort((a, b) => a - b);
    // The registry only calls name, get() and reset() of what it holds.
    for (const r of opts.registers) r.registerMetric(this as unknown as Metric);
  }

  /** The series of `labels` (created at its first use); keep it, and observe() into it. */
  series(labels: Record<L, string>): HistogramSeries {
    const key = this.#labelNames.map((n) => labels[n]).join('\0');
    let s = this.#series.get(key);
    if (!s) {
      const ordered: Record<string, string> = {};
      for (const n of this.#labelNames) ordered[n] = labels[n];
      s = new HistogramSeries(ordered, this.#bounds);
      this.#series.set(key, s);
    }
    return s;
  }

  /** What the registry renders, in prom-client's shape. */
  async get(): Promise<{ name: string; help: string; type: 'histogram'; aggregator: 'sum'; values: Sample[] }> {
    const values: Sample[] = [];
    const bucket = `${this.name}_bucket`;
    for (const s of this.#series.values()) {
      let acc = 0;
      this.#bounds.forEach((le, i) => {
        acc += s.counts[i] as number;
        values.push({ labels: { le, ...s.labels }, value: acc, metricName: bucket });
      });
      values.push(
        { labels: { le: '+Inf', ...s.labels }, value: s.count, metricName: bucket },
        { labels: { ...s.labels }, value: s.sum, metricName: `${this.name}_sum` },
        { labels: { ...s.labels }, value: s.count, metricName: `${this.name}_count` },
      );
    }
    return { name: this.name, help: this.help, type: 'histogram', aggregator: 'sum', values };
  }

  /** Zeroes every series (they stay valid for whoever holds them). */
  reset(): void {
    for (const s of this.#series.values()) {
      s.counts.fill(0);
      s.sum = 0;
      s.count = 0;
    }
  }
}
