/**
 * Latency histogram in microseconds with log-linear buckets (HdrHistogram's idea, three significant
 * digits): exact below 1,024 µs, then 512 sub-buckets per power of two (< 0.2 % error), up to
 * about 12 days. Fixed memory, O(1) record, mergeable across processes as a plain array.
 */

const LINEAR = 1024;
const SUB_BITS = 9;
const SUB = 1 << SUB_BITS; // 512
const OCTAVES = 30;
const SIZE = LINEAR + OCTAVES * SUB;

function indexOf(us: number): number {
  const v = us <= 0 ? 0 : Math.floor(us);
  if (v < LINEAR) return v;
  const msb = 31 - Math.clz32(v); // v ≥ 1024 → msb ≥ 10
  if (msb >= 10 + OCTAVES) return SIZE - 1;
  const shift = msb - SUB_BITS; // ≥ 1
  return LINEAR + (shift - 1) * SUB + ((v >>> shift) - SUB);
}

/** The upper bound (µs) of bucket `i`: what a percentile reports (never under-states). */
function valueOf(i: number): number {
  if (i < LINEAR) return i;
  const shift = Math.floor((i - LINEAR) / SUB) + 1;
  const sub = ((i - LINEAR) % SUB) + SUB;
  return ((sub + 1) << shift) - 1;
}

export interface HistogramSnapshot {
  counts: number[];
  min: number;
  max: number;
  sum: number;
}

export class Histogram {
  private counts = new Float64Array(SIZE);
  count = 0;
  min = Infinity;
  max = 0;
  sum = 0;

  /** Records one latency in microseconds. */
  record(us: number): void {
    this.counts[indexOf(us)]! += 1;
    this.count++;
    this.sum += us;
    if (us < this.min) this.min = us;
    if (us > this.max) this.max = us;
  }

  reset(): void {
    this.counts.fill(0);
    this.count = 0;
    this.min = Infinity;
    this.max = 0;
    this.sum = 0;
  }

  /** The value (µs) at or below which `p` percent of the samples fall; NaN when empty. */
  percentile(p: number): number {
    if (this.count === 0) return Number.NaN;
    const rank = Math.max(1, Math.ceil((p / 100) * this.count));
    let seen = 0;
    for (let i = 0; i < SIZE; i++) {
      seen += this.counts[i] as number;
      if (seen >= rank) return Math.min(valueOf(i), this.max);
    }
    return this.max;
  }

  mean(): number {
    return this.count === 0 ? Number.NaN : this.sum / this.count;
  }

  /** Sparse form for IPC: [index, count] pairs. */
  snapshot(): HistogramSnapshot {
    const counts: number[] = [];
    for (let i = 0; i < SIZE; i++) {
      const c = this.counts[i] as number;
      if (c > 0) counts.push(i, c);
    }
    return { counts, min: this.count > 0 ? this.min : 0, max: this.max, sum: this.sum };
  }

  merge(s: HistogramSnapshot): void {
    for (let k = 0; k + 1 < s.counts.length; k += 2) {
      const c = s.counts[k + 1] as number;
      this.counts[s.counts[k] as number]! += c;
      this.count += c;
    }
    if (s.counts.length === 0) return;
    this.sum += s.sum;
    if (s.min < this.min) this.min = s.min;
    if (s.max > this.max) this.max = s.max;
  }

  static from(s: HistogramSnapshot): Histogram {
    const h = new Histogram();
    h.merge(s);
    return h;
  }
}
