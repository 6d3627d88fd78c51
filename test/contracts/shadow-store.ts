/** The ShadowStore contract: every implementation runs `shadowStoreContract(name, build)`. */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import type { ShadowStore } from '../../src/core/ports.js';
import type { StoredShadow } from '../../src/core/shadow.js';

const doc = (version: number, desired: Record<string, unknown> = { v: version }): StoredShadow =>
  ({ state: { desired }, metadata: { desired: { v: { timestamp: 1 } } }, version, timestamp: 1 }) as StoredShadow;

export function shadowStoreContract(name: string, build: () => Promise<ShadowStore>): void {
  describe(`ShadowStore contract: ${name}`, () => {
    const open = async (t: { after: (fn: () => Promise<void>) => void }) => {
      const s = await build();
      t.after(() => s.close());
      return s;
    };

    it('creates with expected null, then writes only on the current version', async (t) => {
      const s = await open(t);
      assert.equal(await s.get('d1', ''), null);
      assert.equal(await s.compareAndSet('d1', '', 3, doc(1)), false, 'no document: only null matches');
      assert.equal(await s.compareAndSet('d1', '', null, doc(1)), true);
      assert.equal(await s.compareAndSet('d1', '', null, doc(1, { other: 1 })), false, 'exists: null no longer matches');
      assert.deepEqual(await s.get('d1', ''), doc(1));
      assert.equal(await s.compareAndSet('d1', '', 0, doc(2)), false);
      assert.equal(await s.compareAndSet('d1', '', 1, doc(2)), true);
      assert.equal((await s.get('d1', ''))?.version, 2);
    });

    it('keeps named shadows independent and lists their names', async (t) => {
      const s = await open(t);
      await s.compareAndSet('d2', '', null, doc(1));
      await s.compareAndSet('d2', 'ota', null, doc(1, { fw: 'a' }));
      await s.compareAndSet('d2', 'config', null, doc(1, { c: 1 }));
      assert.deepEqual(await s.names('d2'), ['config', 'ota']);
      assert.deepEqual((await s.get('d2', 'ota'))?.state.desired, { fw: 'a' });
      assert.deepEqual(await s.names('other'), []);
    });

    it('returns copies', async (t) => {
      const s = await open(t);
      await s.compareAndSet('d3', '', null, doc(1));
      const got = await s.get('d3', '');
      (got?.state.desired as Record<string, unknown>).v = 99;
      assert.deepEqual((await s.get('d3', ''))?.state.desired, { v: 1 });
    });

    it('concurrent writers on one version: exactly one wins', async (t) => {
      const s = await open(t);
      await s.compareAndSet('d4', '', null, doc(1));
      const results = await Promise.all(Array.from({ length: 20 }, (_, i) => s.compareAndSet('d4', '', 1, doc(2, { i }))));
      assert.equal(results.filter(Boolean).length, 1);
    });

    it('forgets a device', async (t) => {
      const s = await open(t);
      await s.compareAndSet('d5', '', null, doc(1));
      await s.compareAndSet('d5', 'n', null, doc(1));
      await s.forgetDevice('d5');
      assert.equal(await s.get('d5', ''), null);
      assert.deepEqual(await s.names('d5'), []);
    });
  });
}
