/**
 * The DeviceRegistry contract on a real redis-server (one per file, a fresh key prefix per test),
 * plus two gateways sharing the registry, and the fleet index kept apart from the device keys.
 */
import { describe, it, test } from 'node:test';
import assert from 'node:assert/strict';
import { RedisDeviceRegistry, RedisKeys } from '../../src/stores/redis/index.js';
import { connect, redisForFile } from './redis-harness.js';
import { device, deviceRegistryContract, presenceStoreContract } from './device-registry.js';



const env = await redisForFile('redis device registry');
if (env) {
  const { redis, shared } = env;
  let n = 0;
  deviceRegistryContract('redis', async () => new RedisDeviceRegistry(shared.client, new RedisKeys(`t${++n}:`)));
  presenceStoreContract('redis', async () => new RedisDeviceRegistry(shared.client, new RedisKeys(`t${++n}:`)));

  describe('RedisDeviceRegistry', () => {
    it("two gateways on one Redis see each other's writes", async (t) => {
      const prefix = `x${++n}:`;
      const a = await connect(redis.url, prefix, t);
      const b = await connect(redis.url, prefix, t);
      assert.equal(await a.registry.create(device('dev-1')), true);
      assert.equal(await b.registry.create(device('dev-1')), false);
      const online = await b.registry.update('dev-1', { online: true, protocol: 'mqtts', connectedAt: 7, presenceVersion: 3 });
      assert.deepEqual(await a.registry.get('dev-1'), online);
      assert.deepEqual((await a.registry.list({ limit: 10, online: true })).items, [online]);
      assert.equal(await a.registry.delete('dev-1'), true);
      assert.equal(await b.registry.get('dev-1'), null);
      assert.deepEqual(await b.registry.list({ limit: 10 }), { items: [], nextCursor: null });
    });

    it('an update removes a property set to undefined, and never touches the id', async () => {
      const r = new RedisDeviceRegistry(shared.client, new RedisKeys(`x${++n}:`));
      await r.create(device('u', { presenceVersion: 2 }));
      const next = await r.update('u', { presenceVersion: undefined, lastSeen: 9, ...({ id: 'other' } as object) });
      assert.deepEqual(next, device('u', { lastSeen: 9 }));
      assert.equal(await r.get('other'), null);
    });

    it('pages through many devices with filters, skipping index entries without a record', async () => {
      const keys = new RedisKeys(`x${++n}:`);
      const r = new RedisDeviceRegistry(shared.client, keys);
      const ids = Array.from({ length: 250 }, (_, i) => `d-${String(i).padStart(3, '0')}`);
      await Promise.all(ids.map((id, i) => r.create(device(id, { online: i % 7 === 0 }))));
      // A stale index entry (a crash between the two writes) is skipped, not returned as null.
      await shared.client.zadd(keys.deviceIndex(), 0, 'd-0005x');
      const seen: string[] = [];
      let cursor: string | undefined;
      for (let pages = 0; pages < 20; pages++) {
        const page = await r.list({ limit: 8, online: true, ...(cursor !== undefined && { cursor }) });
        seen.push(...page.items.map((d) => d.id));
        if (page.nextCursor === null) break;
        cursor = page.nextCursor;
      }
      assert.deepEqual(seen, ids.filter((_, i) => i % 7 === 0));
      assert.equal((await r.list({ limit: 1000 })).items.length, 250);
    });

    it('presence: the owner under the device hash tag, each gateway’s list apart; a late offline through another connection loses', async (t) => {
      const prefix = `x${++n}:`;
      const a = await connect(redis.url, prefix, t);
      const b = await connect(redis.url, prefix, t);
      await a.registry.create(device('dev-p'));
      await a.registry.writePresence('dev-p', { online: true, owner: { gateway: 'gw-a', session: 's1' }, protocol: 'mqtt', at: 5, minVersion: 0 });
      assert.deepEqual(await shared.client.hgetall(`${prefix}{dev-p}:presence`), { gateway: 'gw-a', session: 's1' });
      await b.registry.writePresence('dev-p', { online: true, owner: { gateway: 'gw-b', session: 's9' }, protocol: 'mqtts', at: 6, minVersion: 0 });
      assert.deepEqual(await a.registry.writePresence('dev-p', { online: false, owner: { gateway: 'gw-a', session: 's1' }, lastSeen: 7, minVersion: 0 }), { status: 'not_owner' });
      assert.equal((await b.registry.get('dev-p'))?.online, true);
      assert.deepEqual(
        (await shared.client.keys(`${prefix}*`)).sort(),
        [`${prefix}devices`, `${prefix}presence:gw-a`, `${prefix}presence:gw-b`, `${prefix}{dev-p}:device`, `${prefix}{dev-p}:presence`],
      );
      assert.equal(await a.registry.delete('dev-p'), true);
      assert.equal(await shared.client.exists(`${prefix}{dev-p}:presence`), 0, 'deleted with the device');
    });

    it('keeps the record under the device hash tag and the index apart', async () => {
      const prefix = `x${++n}:`;
      const r = new RedisDeviceRegistry(shared.client, new RedisKeys(prefix));
      await r.create(device('dev-9'));
      assert.deepEqual((await shared.client.keys(`${prefix}*`)).sort(), [`${prefix}devices`, `${prefix}{dev-9}:device`]);
    });
  });
}
