/**
 * The ShadowStore contract on a real redis-server (one per file, a fresh key prefix per test), plus
 * what only a shared store shows: two gateways see each other's writes, a compareAndSet race
 * between them has exactly one winner, and documents survive a redis-server crash (AOF).
 */
import { once } from 'node:events';
import { describe, it, test } from 'node:test';
import assert from 'node:assert/strict';
import type { StoredShadow } from '../../src/core/shadow.js';
import { RedisKeys, RedisShadowStore, type RedisStores } from '../../src/stores/redis/index.js';
import { startRedis } from '../helpers/redis.js';
import { connect, redisForFile } from './redis-harness.js';
import { shadowStoreContract } from './shadow-store.js';

const doc = (version: number, desired: Record<string, unknown>): StoredShadow =>
  ({ state: { desired }, metadata: { desired: {} }, version, timestamp: 1 }) as StoredShadow;


const env = await redisForFile('redis shadow store');
if (env) {
  const { redis, shared } = env;
  let n = 0;
  shadowStoreContract('redis', async () => new RedisShadowStore(shared.client, new RedisKeys(`t${++n}:`)));

  describe('RedisShadowStore across gateways', () => {
    it("two gateways on one Redis see each other's writes", async (t) => {
      const prefix = `x${++n}:`;
      const a = await connect(redis.url, prefix, t);
      const b = await connect(redis.url, prefix, t);
      assert.equal(await a.shadows.compareAndSet('dev-1', '', null, doc(1, { heat: 20 })), true);
      assert.deepEqual(await b.shadows.get('dev-1', ''), doc(1, { heat: 20 }));
      assert.equal(await b.shadows.compareAndSet('dev-1', 'ota', null, doc(1, { fw: '2' })), true);
      assert.deepEqual(await a.shadows.names('dev-1'), ['ota']);
      assert.equal(await a.shadows.compareAndSet('dev-1', 'ota', null, doc(1, { fw: '3' })), false, "B's document exists for A too");
      await b.shadows.forgetDevice('dev-1');
      assert.equal(await a.shadows.get('dev-1', ''), null);
    });

    it('a compareAndSet race between two gateways has exactly one winner', async (t) => {
      const prefix = `x${++n}:`;
      const a = await connect(redis.url, prefix, t);
      const b = await connect(redis.url, prefix, t);
      assert.ok(await a.shadows.compareAndSet('dev-2', '', null, doc(1, { v: 0 })));
      const writers = Array.from({ length: 40 }, (_, i) => ((i % 2 ? a : b) as RedisStores).shadows.compareAndSet('dev-2', '', 1, doc(2, { v: i })));
      const results = await Promise.all(writers);
      assert.equal(results.filter(Boolean).length, 1);
      const winner = results.indexOf(true);
      assert.deepEqual(await b.shadows.get('dev-2', ''), doc(2, { v: winner }));
    });

    it('keeps the keys of a device under its hash tag', async () => {
      const prefix = `x${++n}:`;
      const store = new RedisShadowStore(shared.client, new RedisKeys(prefix));
      await store.compareAndSet('dev-3', 'cfg', null, doc(1, {}));
      assert.deepEqual((await shared.client.keys(`${prefix}*`)).sort(), [`${prefix}{dev-3}:shadow`, `${prefix}{dev-3}:shadow:version`]);
    });
  });

  describe('RedisShadowStore durability', () => {
    it('documents survive a redis-server crash and restart (AOF)', async (t) => {
      const own = await startRedis(t);
      if (!own) return;
      const stores = await connect(own.url, 'iotgate:', t);
      assert.ok(await stores.shadows.compareAndSet('dev-1', '', null, doc(1, { heat: 21 })));
      assert.ok(await stores.shadows.compareAndSet('dev-1', '', 1, doc(2, { heat: 22 })));
      const lost = once(stores.client, 'close');
      await own.kill();
      await lost;
      assert.equal(stores.isReady(), false);
      await assert.rejects(stores.shadows.get('dev-1', ''), { code: 'unavailable', status: 503 }, 'fails fast while Redis is down');
      await assert.rejects(stores.shadows.compareAndSet('dev-1', '', 2, doc(3, {})), { code: 'unavailable' });
      await own.start();
      await stores.ready();
      assert.deepEqual(await stores.shadows.get('dev-1', ''), doc(2, { heat: 22 }));
      assert.equal(await stores.shadows.compareAndSet('dev-1', '', 1, doc(2, {})), false, 'the version survived too');
    });
  });
}
