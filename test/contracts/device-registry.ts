/**
 * The DeviceRegistry contract (style rule 2): every implementation (memory, Redis) runs
 * this suite through `deviceRegistryContract(name, build)`.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import type { DeviceRegistry } from '../../src/core/ports.js';
import type { DeviceRecord } from '../../src/core/model.js';
import type { PresenceStore } from '../../src/core/ports.js';

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

/** Collects presenceHeldBy's batches. */
async function heldBy(r: PresenceStore, gateway: string): Promise<string[]> {
  const ids: string[] = [];
  for await (const batch of r.presenceHeldBy(gateway)) ids.push(...batch);
  return [...new Set(ids)].sort();
}

/**
 * The presence writes of a registry (src/core/presence.ts PresenceStore): a connect always takes
 * the presence over; an offline applies only while its owner (gateway + session, or any session of
 * a gateway for a reaper) still holds it.
 */
export function presenceStoreContract(name: string, build: () => Promise<DeviceRegistry & PresenceStore>): void {
  describe(`PresenceStore contract: ${name}`, () => {
    const fresh = async (t: { after: (fn: () => Promise<void>) => void }) => {
      const r = await build();
      t.after(() => r.close());
      return r;
    };
    const A1 = { gateway: 'gw-a', session: 's1' };
    const B2 = { gateway: 'gw-b', session: 's2' };

    it('a connect sets the presence fields and the version; an unknown id changes nothing', async (t) => {
      const r = await fresh(t);
      await r.create(device('p-1', { lastSeen: 3 }));
      assert.deepEqual(await r.writePresence('p-1', { online: true, owner: A1, protocol: 'mqtt', at: 100, minVersion: 0 }), { status: 'applied', version: 1, protocol: null });
      assert.deepEqual(await r.get('p-1'), device('p-1', { online: true, protocol: 'mqtt', connectedAt: 100, lastSeen: 100, presenceVersion: 1 }));
      assert.deepEqual(await r.writePresence('p-1', { online: true, owner: B2, protocol: 'coap', at: 200, minVersion: 0 }), { status: 'applied', version: 2, protocol: 'mqtt' });
      assert.deepEqual(await r.writePresence('ghost', { online: true, owner: A1, protocol: 'mqtt', at: 1, minVersion: 0 }), { status: 'unknown' });
      assert.deepEqual(await r.writePresence('ghost', { online: false, owner: A1, minVersion: 0 }), { status: 'unknown' });
      assert.equal(await r.get('ghost'), null, 'a presence write never creates a record');
    });

    it('the owner’s offline applies once; lastSeen is written only when given', async (t) => {
      const r = await fresh(t);
      await r.create(device('p-2'));
      await r.writePresence('p-2', { online: true, owner: A1, protocol: 'mqtts', at: 100, minVersion: 0 });
      assert.deepEqual(await r.writePresence('p-2', { online: false, owner: A1, lastSeen: 150, minVersion: 0 }), { status: 'applied', version: 2, protocol: 'mqtts' });
      assert.deepEqual(await r.get('p-2'), device('p-2', { online: false, protocol: null, connectedAt: 100, lastSeen: 150, presenceVersion: 2 }));
      assert.deepEqual(await r.writePresence('p-2', { online: false, owner: A1, lastSeen: 160, minVersion: 0 }), { status: 'not_owner' }, 'nobody holds an offline device');
      await r.writePresence('p-2', { online: true, owner: A1, protocol: 'mqtt', at: 200, minVersion: 0 });
      assert.equal((await r.writePresence('p-2', { online: false, owner: A1, minVersion: 0 })).status, 'applied');
      assert.equal((await r.get('p-2'))?.lastSeen, 200, 'an offline without lastSeen keeps the last one');
    });

    it('a late offline from the gateway the device left changes nothing', async (t) => {
      const r = await fresh(t);
      await r.create(device('p-3'));
      await r.writePresence('p-3', { online: true, owner: A1, protocol: 'mqtt', at: 100, minVersion: 0 });
      await r.writePresence('p-3', { online: true, owner: B2, protocol: 'mqtts', at: 200, minVersion: 0 });
      const before = await r.get('p-3');
      assert.deepEqual(await r.writePresence('p-3', { online: false, owner: A1, lastSeen: 300, minVersion: 0 }), { status: 'not_owner' });
      assert.deepEqual(await r.writePresence('p-3', { online: false, owner: { gateway: 'gw-a' }, minVersion: 0 }), { status: 'not_owner' }, 'nor does a reaper of the gateway it left');
      assert.deepEqual(await r.writePresence('p-3', { online: false, owner: { gateway: 'gw-b', session: 'older' }, minVersion: 0 }), { status: 'not_owner' }, 'nor an older session of the holding gateway');
      assert.deepEqual(await r.get('p-3'), before);
      assert.equal(before?.online, true);
      assert.equal(before?.protocol, 'mqtts');
      assert.equal((await r.writePresence('p-3', { online: false, owner: B2, minVersion: 0 })).status, 'applied', 'the holder’s offline applies');
    });

    it('a reaper (gateway without session) takes any session of that gateway; of many concurrent reapers exactly one applies', async (t) => {
      const r = await fresh(t);
      await r.create(device('p-4'));
      await r.writePresence('p-4', { online: true, owner: A1, protocol: 'mqtt', at: 100, minVersion: 0 });
      const results = await Promise.all(Array.from({ length: 8 }, () => r.writePresence('p-4', { online: false, owner: { gateway: 'gw-a' }, minVersion: 0 })));
      assert.equal(results.filter((x) => x.status === 'applied').length, 1);
      assert.equal(results.filter((x) => x.status === 'not_owner').length, 7);
      const rec = await r.get('p-4');
      assert.equal(rec?.online, false);
      assert.equal(rec?.presenceVersion, 2);
      assert.equal(rec?.lastSeen, 100, 'a reaper leaves lastSeen');
    });

    it('versions go above both the stored one and minVersion', async (t) => {
      const r = await fresh(t);
      await r.create(device('p-5', { presenceVersion: 7 }));
      assert.deepEqual(await r.writePresence('p-5', { online: true, owner: A1, protocol: 'mqtt', at: 1, minVersion: 3 }), { status: 'applied', version: 8, protocol: null });
      assert.deepEqual(await r.writePresence('p-5', { online: false, owner: A1, minVersion: 20 }), { status: 'applied', version: 21, protocol: 'mqtt' });
    });

    it('presenceHeldBy lists what a gateway may hold (a superset); forgetGateway drops the list', async (t) => {
      const r = await fresh(t);
      for (const id of ['h-1', 'h-2', 'h-3']) await r.create(device(id));
      for (const id of ['h-1', 'h-2', 'h-3']) await r.writePresence(id, { online: true, owner: A1, protocol: 'mqtt', at: 1, minVersion: 0 });
      await r.writePresence('h-2', { online: true, owner: B2, protocol: 'mqtt', at: 2, minVersion: 0 });
      await r.writePresence('h-3', { online: false, owner: A1, minVersion: 0 });
      const listed = await heldBy(r, 'gw-a');
      assert.ok(listed.includes('h-1') && !listed.includes('h-3'), `held by gw-a: ${JSON.stringify(listed)}`);
      assert.deepEqual(await heldBy(r, 'gw-b'), ['h-2']);
      assert.deepEqual(await heldBy(r, 'gw-none'), []);
      await r.forgetGateway('gw-a');
      assert.deepEqual(await heldBy(r, 'gw-a'), []);
      assert.equal((await r.get('h-1'))?.online, true, 'forgetting the list changes no record');
    });

    it('a deleted device loses its owner: created again, an old offline does not match', async (t) => {
      const r = await fresh(t);
      await r.create(device('p-6'));
      await r.writePresence('p-6', { online: true, owner: A1, protocol: 'mqtt', at: 1, minVersion: 0 });
      assert.equal(await r.delete('p-6'), true);
      assert.deepEqual(await r.writePresence('p-6', { online: false, owner: A1, minVersion: 0 }), { status: 'unknown' });
      await r.create(device('p-6'));
      assert.deepEqual(await r.writePresence('p-6', { online: false, owner: A1, minVersion: 0 }), { status: 'not_owner' });
    });
  });
}
