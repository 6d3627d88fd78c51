/**
 * The DeviceRegistry contract (style rule 2): every implementation (memory, Redis) runs
 * this suite through `deviceRegistryContract(name, build)`.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import type { DeviceRegistry } from '../../src/core/ports.js';
import type { DeviceRecord } from '../../src/core/model.js';

export function device(id: string, over: Partial<DeviceRecord> = {}): DeviceRecord {
  return {
    id,
    type: 'generic',
    createdAt: 1_700_000_000_000,
    online: false,
    protocol: null,
    lastSeen: null,
    connectedAt: null,
    certificate: { serial: 'ABCDEF0123', notAfter: '2030-01-01T00:00:00.000Z' },
    firmware: null,
    ...over,
  };
}

export function deviceRegistryContract(name: string, build: () => Promise<DeviceRegistry>): void {
  describe(`DeviceRegistry contract: ${name}`, () => {
    const fresh = async (t: { after: (fn: () => Promise<void>) => void }) => {
      const r = await build();
      t.after(() => r.close());
      return r;
    };

    it('creates, reads back an equal copy, and refuses a duplicate id', async (t) => {
      const r = await fresh(t);
      const rec = device('a-1', { type: 'thermostat' });
      assert.equal(await r.create(rec), true);
      assert.deepEqual(await r.get('a-1'), rec);
      assert.equal(await r.create(device('a-1', { type: 'other' })), false);
      assert.equal((await r.get('a-1'))?.type, 'thermostat', 'a refused create changes nothing');
      assert.equal(await r.get('missing'), null);
    });

    it('returns copies: mutating a result does not change the store', async (t) => {
      const r = await fresh(t);
      await r.create(device('c-1'));
      const got = await r.get('c-1');
      assert.ok(got);
      got.online = true;
      got.certificate!.serial = 'CHANGED';
      assert.equal((await r.get('c-1'))?.online, false);
      assert.equal((await r.get('c-1'))?.certificate?.serial, 'ABCDEF0123');
    });

    it('updates part of a record and keeps the rest; unknown id gives null', async (t) => {
      const r = await fresh(t);
      await r.create(device('u-1'));
      const next = await r.update('u-1', { online: true, protocol: 'mqtt', lastSeen: 5, connectedAt: 4 });
      assert.equal(next?.online, true);
      assert.equal(next?.protocol, 'mqtt');
      assert.equal(next?.type, 'generic');
      assert.deepEqual(await r.get('u-1'), next);
      assert.equal(await r.update('nope', { online: true }), null);
      assert.equal(await r.get('nope'), null, 'update never creates');
    });

    it('deletes', async (t) => {
      const r = await fresh(t);
      await r.create(device('d-1'));
      assert.equal(await r.delete('d-1'), true);
      assert.equal(await r.delete('d-1'), false);
      assert.equal(await r.get('d-1'), null);
      assert.equal(await r.create(device('d-1')), true, 'a deleted id can be created again');
    });

    it('lists in id order, pages with a cursor, and filters by type and online', async (t) => {
      const r = await fresh(t);
      const ids = ['b', 'a', 'e', 'c', 'd', 'f:1', 'f.0'];
      for (const [i, id] of ids.entries()) {
        await r.create(device(id, { type: i % 2 ? 'odd' : 'even', online: id < 'c' }));
      }
      const sorted = [...ids].sort();
      const seen: string[] = [];
      let cursor: string | undefined;
      for (let pages = 0; pages < 10; pages++) {
        const page = await r.list({ limit: 3, ...(cursor !== undefined && { cursor }) });
        assert.ok(page.items.length <= 3);
        seen.push(...page.items.map((d) => d.id));
        if (page.nextCursor === null) break;
        cursor = page.nextCursor;
      }
      assert.deepEqual(seen, sorted);
      const even = await r.list({ limit: 100, type: 'even' });
      assert.deepEqual(even.items.map((d) => d.id), sorted.filter((id) => ids.indexOf(id) % 2 === 0));
      assert.equal(even.nextCursor, null);
      const online = await r.list({ limit: 100, online: true });
      assert.deepEqual(online.items.map((d) => d.id), ['a', 'b']);
      const exact = await r.list({ limit: sorted.length });
      assert.equal(exact.items.length, sorted.length);
      assert.equal(exact.nextCursor, null, 'no empty last page when the page is exactly full');
    });

    it('concurrent creates of one id: exactly one wins, and its record is stored', async (t) => {
      const r = await fresh(t);
      const results = await Promise.all(Array.from({ length: 10 }, (_, i) => r.create(device('same', { type: `t${i}` }))));
      assert.equal(results.filter(Boolean).length, 1);
      assert.equal((await r.get('same'))?.type, `t${results.indexOf(true)}`);
    });

    it('rejects a cursor it did not issue', async (t) => {
      const r = await fresh(t);
      await assert.rejects(r.list({ limit: 10, cursor: '%%%not-a-cursor' }), (e: Error & { code?: string }) => e.code === 'bad_request');
    });
  });
}
