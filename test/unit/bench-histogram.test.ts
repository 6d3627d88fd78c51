/** The benchmark's latency histogram (bench/lib/histogram.ts): percentiles within its precision. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { Histogram } from '../../bench/lib/histogram.js';

function exact(values: number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.max(0, Math.ceil((p / 100) * sorted.length) - 1)] as number;
}

test('percentiles are exact below 1,024 µs and within 0.2 % above, never under-stated', () => {
  fc.assert(
    fc.property(fc.array(fc.integer({ min: 0, max: 60_000_000 }), { minLength: 1, maxLength: 2000 }), fc.constantFrom(50, 90, 99, 99.9, 100), (values, p) => {
      const h = new Histogram();
      for (const v of values) h.record(v);
      const want = exact(values, p);
      const got = h.percentile(p);
      if (want < 1024) assert.equal(got, want);
      else {
        assert.ok(got >= want, `p${p}: ${got} < ${want}`);
        assert.ok(got <= want * 1.002 + 1, `p${p}: ${got} > ${want} + 0.2 %`);
      }
    }),
    { numRuns: 300 },
  );
});

test('count, min, max and mean; an empty histogram has no percentiles', () => {
  const h = new Histogram();
  assert.ok(Number.isNaN(h.percentile(99)));
  for (const v of [5, 10, 15]) h.record(v);
  assert.equal(h.count, 3);
  assert.equal(h.min, 5);
  assert.equal(h.max, 15);
  assert.equal(h.mean(), 10);
  h.reset();
  assert.equal(h.count, 0);
});

test('snapshots survive JSON and merge into the same distribution', () => {
  fc.assert(
    fc.property(fc.array(fc.integer({ min: 0, max: 5_000_000 }), { maxLength: 500 }), fc.array(fc.integer({ min: 0, max: 5_000_000 }), { maxLength: 500 }), (a, b) => {
      const ha = new Histogram();
      const hb = new Histogram();
      const all = new Histogram();
      for (const v of a) (ha.record(v), all.record(v));
      for (const v of b) (hb.record(v), all.record(v));
      const merged = Histogram.from(JSON.parse(JSON.stringify(ha.snapshot())) as ReturnType<Histogram['snapshot']>);
      merged.merge(JSON.parse(JSON.stringify(hb.snapshot())) as ReturnType<Histogram['snapshot']>);
      assert.equal(merged.count, all.count);
      for (const p of [50, 99, 99.9]) assert.equal(merged.percentile(p), all.percentile(p));
      if (all.count > 0) {
        assert.equal(merged.min, all.min);
        assert.equal(merged.max, all.max);
      }
    }),
    { numRuns: 200 },
  );
});
