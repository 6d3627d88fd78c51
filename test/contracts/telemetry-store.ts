/** The TelemetryStore contract: every implementation runs `telemetryStoreContract(name, build)`. */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import type { TelemetryStore } from '../../src/core/ports.js';
import type { TelemetryRecord } from '../../src/core/model.js';

export type BuildTelemetryStore = (retention: { retentionCount: number; retentionMs: number }) => Promise<TelemetryStore>;

let n = 0;
export function record(deviceId: string, receivedAt: number, data: Record<string, unknown> = { n: ++n }): TelemetryRecord {
  return { id: `r-${++n}`, deviceId, type: 'generic', protocol: 'mqtt', receivedAt, deviceTime: null, data };
}

export function telemetryStoreContract(name: string, build: BuildTelemetryStore): void {
  describe(`TelemetryStore contract: ${name}`, () => {
    const open = async (t: { after: (fn: () => Promise<void>) => void }, retention = { retentionCount: 100, retentionMs: 3_600_000 }) => {
      const store = await build(retention);
      t.after(() => store.close());
      return store;
    };

    it('keeps history per device, newest last; latest is the newest', async (t) => {
      const s = await open(t);
      const now = Date.now();
      for (let i = 0; i < 5; i++) await s.append(record('a', now - 5000 + i * 1000, { i }));
      await s.append(record('b', now, { other: true }));
      const all = await s.history('a', { limit: 100 });
      assert.deepEqual(all.map((r) => r.data.i), [0, 1, 2, 3, 4]);
      assert.deepEqual((await s.latest('a'))?.data, { i: 4 });
      assert.deepEqual((await s.history('b', { limit: 10 })).map((r) => r.data), [{ other: true }]);
      assert.deepEqual(await s.history('nobody', { limit: 10 }), []);
      assert.equal(await s.latest('nobody'), null);
    });

    it('limit returns the newest N, oldest first; since and until are inclusive', async (t) => {
      const s = await open(t);
      const base = Date.now() - 10_000;
      for (let i = 0; i < 10; i++) await s.append(record('d', base + i * 1000, { i }));
      assert.deepEqual((await s.history('d', { limit: 3 })).map((r) => r.data.i), [7, 8, 9]);
      assert.deepEqual((await s.history('d', { limit: 100, since: base + 2000, until: base + 4000 })).map((r) => r.data.i), [2, 3, 4]);
      assert.deepEqual((await s.history('d', { limit: 2, until: base + 5000 })).map((r) => r.data.i), [4, 5]);
      assert.deepEqual(await s.history('d', { limit: 5, since: base + 60_000 }), []);
    });

    it('retention by count drops the oldest', async (t) => {
      const s = await open(t, { retentionCount: 3, retentionMs: 3_600_000 });
      const now = Date.now();
      for (let i = 0; i < 7; i++) await s.append(record('c', now + i, { i }));
      assert.deepEqual((await s.history('c', { limit: 100 })).map((r) => r.data.i), [4, 5, 6]);
    });

    it('retention by age drops what is too old', async (t) => {
      const s = await open(t, { retentionCount: 100, retentionMs: 60_000 });
      const now = Date.now();
      await s.append(record('e', now - 120_000, { old: true }));
      await s.append(record('e', now, { fresh: true }));
      assert.deepEqual((await s.history('e', { limit: 100 })).map((r) => r.data), [{ fresh: true }]);
    });

    it('forget removes a device', async (t) => {
      const s = await open(t);
      await s.append(record('f', Date.now()));
      await s.forget('f');
      assert.deepEqual(await s.history('f', { limit: 10 }), []);
      assert.equal(await s.latest('f'), null);
    });
  });
}
