/**
 * The CommandStore contract on a real redis-server (one per file, a fresh key prefix per test),
 * plus two gateways sharing the store (creates, the queue bound and a transition race across
 * connections), and records and queues surviving a redis-server crash (AOF).
 */
import { once } from 'node:events';
import { describe, it, test } from 'node:test';
import assert from 'node:assert/strict';
import type { CommandRecord, CommandState } from '../../src/core/commands.js';
import { RedisCommandStore, RedisKeys, type RedisStores } from '../../src/stores/redis/index.js';
import { startRedis } from '../helpers/redis.js';
import { connect, redisForFile } from './redis-harness.js';
import { command, commandStoreContract } from './command-store.js';

const BIG = { maxUndelivered: 1000 };


const env = await redisForFile('redis command store');
if (env) {
  const { redis, shared } = env;
  let n = 0;
  commandStoreContract('redis', async (opts) => new RedisCommandStore(shared.client, new RedisKeys(`t${++n}:`), opts));

  describe('RedisCommandStore across gateways', () => {
    it("two gateways on one Redis see each other's writes", async (t) => {
      const prefix = `x${++n}:`;
      const a = await connect(redis.url, prefix, t);
      const b = await connect(redis.url, prefix, t);
      const r = command('dev-1', { idempotencyKey: 'k' });
      assert.equal((await a.commands.create(r, BIG)).kind, 'created');
      assert.deepEqual(await b.commands.create(command('dev-1', { idempotencyKey: 'k' }), BIG), { kind: 'existing', record: r });
      const sent = await b.commands.transition('dev-1', r.id, ['queued'], { state: 'sent', updatedAt: r.createdAt + 1 });
      assert.deepEqual(await a.commands.get('dev-1', r.id), sent);
      assert.deepEqual(await a.commands.openAll(), [sent]);
      await a.commands.forgetDevice('dev-1');
      assert.deepEqual(await b.commands.open('dev-1'), []);
      assert.deepEqual(await b.commands.openAll(), []);
    });

    it('a transition race between two gateways: exactly one moves the command', async (t) => {
      const prefix = `x${++n}:`;
      const a = await connect(redis.url, prefix, t);
      const b = await connect(redis.url, prefix, t);
      const r = command('dev-2');
      await a.commands.create(r, BIG);
      await a.commands.transition('dev-2', r.id, ['queued'], { state: 'delivered', updatedAt: 1 });
      const targets: CommandState[] = ['succeeded', 'failed', 'canceled', 'timed_out'];
      const results = await Promise.all(
        Array.from({ length: 40 }, (_, i) =>
          ((i % 2 ? a : b) as RedisStores).commands.transition('dev-2', r.id, ['delivered'], {
            state: targets[i % targets.length] as CommandState,
            updatedAt: 100 + i,
            response: { status: 200, payload: { i } },
          }),
        ),
      );
      const winners = results.filter((x): x is CommandRecord => x !== null);
      assert.equal(winners.length, 1);
      assert.deepEqual(await b.commands.get('dev-2', r.id), winners[0]);
    });

    it('the queue bound holds across gateways creating at once', async (t) => {
      const prefix = `x${++n}:`;
      const a = await connect(redis.url, prefix, t);
      const b = await connect(redis.url, prefix, t);
      const results = await Promise.all(Array.from({ length: 30 }, (_, i) => ((i % 2 ? a : b) as RedisStores).commands.create(command('dev-3'), { maxUndelivered: 7 })));
      assert.equal(results.filter((r) => r.kind === 'created').length, 7);
      assert.equal((await a.commands.open('dev-3')).length, 7);
    });

    it('keeps numbers in params exactly (no Lua JSON round trip)', async () => {
      const s = new RedisCommandStore(shared.client, new RedisKeys(`x${++n}:`));
      const r = command('dev-4', { params: { big: 9007199254740991, pi: 3.141592653589793, tiny: 1e-300, s: 'é\u0000"' } });
      await s.create(r, BIG);
      const done = await s.transition('dev-4', r.id, ['queued'], { state: 'succeeded', updatedAt: 5, response: { status: 200, payload: { x: 0.1 + 0.2 } } });
      assert.deepEqual(done, { ...r, state: 'succeeded', updatedAt: 5, response: { status: 200, payload: { x: 0.1 + 0.2 } } });
      assert.deepEqual(await s.get('dev-4', r.id), done);
    });

    it('keeps every key of a device under its hash tag; the openAll index apart', async () => {
      const prefix = `x${++n}:`;
      const s = new RedisCommandStore(shared.client, new RedisKeys(prefix), { historyMax: 10 });
      const [a, b] = [command('dev-5', { idempotencyKey: 'k' }), command('dev-5')];
      for (const r of [a, b]) await s.create(r, BIG);
      await s.transition('dev-5', (a as CommandRecord).id, ['queued'], { state: 'canceled', updatedAt: 2 });
      for (const key of await shared.client.keys(`${prefix}*`)) {
        assert.ok(key.startsWith(`${prefix}{dev-5}:cmd`) || key === `${prefix}commands:devices`, key);
      }
    });
  });

  describe('RedisCommandStore durability', () => {
    it('records, the queue and idempotency keys survive a redis-server crash and restart (AOF)', async (t) => {
      const own = await startRedis(t);
      if (!own) return;
      const stores = await connect(own.url, 'iotgate:', t);
      const queued = command('dev-1', { idempotencyKey: 'k1' });
      const done = command('dev-1');
      for (const r of [queued, done]) assert.equal((await stores.commands.create(r, { maxUndelivered: 2 })).kind, 'created');
      const finished = await stores.commands.transition('dev-1', done.id, ['queued'], { state: 'succeeded', updatedAt: 9, response: { status: 200, payload: 'ok' } });
      const lost = once(stores.client, 'close');
      await own.kill();
      await lost;
      await assert.rejects(stores.commands.open('dev-1'), { code: 'unavailable', status: 503 }, 'fails fast while Redis is down');
      await assert.rejects(stores.commands.create(command('dev-1'), BIG), { code: 'unavailable' });
      await own.start();
      await stores.ready();
      assert.deepEqual(await stores.commands.get('dev-1', done.id), finished);
      assert.deepEqual(await stores.commands.open('dev-1'), [queued]);
      assert.deepEqual(await stores.commands.openAll(), [queued]);
      assert.deepEqual(await stores.commands.create(command('dev-1', { idempotencyKey: 'k1' }), BIG), { kind: 'existing', record: queued });
      // Creation order and the queue bound carry on where they were.
      const next = command('dev-1');
      assert.equal((await stores.commands.create(next, { maxUndelivered: 2 })).kind, 'created');
      assert.deepEqual(await stores.commands.create(command('dev-1'), { maxUndelivered: 2 }), { kind: 'full', undelivered: 2 });
      assert.deepEqual((await stores.commands.list('dev-1', { limit: 10 })).items.map((r) => r.id), [queued.id, done.id, next.id]);
    });
  });
}
