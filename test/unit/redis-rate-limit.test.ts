/**
 * Shared rate limits (src/stores/redis/rate-limit.ts) on a real redis-server: several limiters
 * (one per gateway, each on its own connection) hold the fleet to the limit within the documented
 * overshoot, a refusal reads like the in-memory one, and consumption reaches Redis in batches.
 * A fake clock drives the buckets; flushes are awaited with flushNow() instead of timers.
 */
import { once } from 'node:events';
import { after, describe, it, test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { pino } from 'pino';
import { RateLimiter, type RateRefusal, type RateRule } from '../../src/core/rate-limit.js';
import { createRedisStores, RedisRateLimiter, type RedisStores } from '../../src/stores/redis/index.js';
import { startRedis } from '../helpers/redis.js';
import { hasTool, requireTool } from '../helpers/tools.js';

const silent = pino({ level: 'silent' });
const T0 = 1_700_000_000_000;
const RULE: RateRule = { unit: 'messages', windows: [{ limit: 20, windowMs: 10_000 }] };

async function gateway(t: TestContext, url: string, prefix: string): Promise<RedisStores> {
  const stores = createRedisStores(url, { historyMax: 10, telemetry: { retentionCount: 10, retentionMs: 60_000 }, keyPrefix: prefix, log: silent, rateFlushMs: 3_600_000 });
  t.after(() => stores.close());
  await stores.ready();
  return stores;
}

/** A limiter on a fake clock, flushed only when the test says so. */
function limiter(stores: RedisStores, rule: RateRule, clock: { now: number }): RedisRateLimiter {
  return new RedisRateLimiter(stores.client, stores.keys, rule, { flushMs: 3_600_000, clock: () => clock.now });
}

const takeN = (l: { take: (k: string, a?: number) => RateRefusal | null }, key: string, n: number) => {
  let ok = 0;
  for (let i = 0; i < n; i++) if (l.take(key) === null) ok++;
  return ok;
};

const redis = hasTool('redis-server') ? await startRedis(null) : null;
if (!redis) {
  test('shared rate limits', (t) => void requireTool(t, 'redis-server'));
} else {
  after(() => redis.dispose());
  let n = 0;

  describe('RedisRateLimiter', () => {
    it('two gateways together refuse beyond the limit, within one flush of overshoot', async (t) => {
      const prefix = `r${++n}:`;
      const clock = { now: T0 };
      const ga = await gateway(t, redis.url, prefix);
      const a = limiter(ga, RULE, clock);
      const b = limiter(await gateway(t, redis.url, prefix), RULE, clock);
      t.after(() => (a.close(), b.close()));

      assert.equal(takeN(a, 'dev-1', 10), 10);
      await a.flushNow();
      // B's first take is decided before B has ever looked: a fresh bucket lets it through.
      assert.equal(b.take('dev-1'), null);
      await b.flushNow(); // pushes 1, learns A's 10
      assert.equal(takeN(b, 'dev-1', 20), 9, 'B stops at the fleet limit: 10 (A) + 10 (B)');
      // A has not seen B's last takes: what it admits until it does is the overshoot.
      assert.equal(a.take('dev-1'), null);
      await b.flushNow(); // B pushes its 9 ...
      await a.flushNow(); // ... and A pulls them: two flushes from B's take to A's knowing
      assert.notEqual(a.take('dev-1'), null, 'A knows about B now');
      assert.notEqual(b.take('dev-1'), null);
      const counter = await ga.client.get(ga.keys.rate('dev-1', 'messages', 20, 10_000, Math.floor(T0 / 10_000) * 10_000));
      assert.equal(counter, '21', 'the fleet counter holds what was admitted: the limit + one take of overshoot');
    });

    it('three gateways taking in rounds stay within limit + (N−1) × two flush intervals of takes', async (t) => {
      const prefix = `r${++n}:`;
      const clock = { now: T0 };
      const limit = 60;
      const rule: RateRule = { unit: 'requests', windows: [{ limit, windowMs: 60_000 }] };
      const gws: RedisRateLimiter[] = [];
      for (let i = 0; i < 3; i++) gws.push(limiter(await gateway(t, redis.url, prefix), rule, clock));
      t.after(() => gws.forEach((g) => g.close()));
      const perRound = 4;
      let admitted = 0;
      for (let round = 0; round < 30; round++) {
        for (const g of gws) admitted += takeN(g, 'svc', perRound);
        await Promise.all(gws.map((g) => g.flushNow())); // one flush interval
        clock.now += 10; // 0.01 tokens of refill per round: negligible, but time moves on
      }
      const bound = limit + (gws.length - 1) * 2 * perRound;
      assert.ok(admitted >= limit, `admitted ${admitted} < limit ${limit}`);
      assert.ok(admitted <= bound, `admitted ${admitted} > documented bound ${bound}`);
      // Without sharing, each gateway would have admitted the limit on its own.
      assert.ok(admitted < gws.length * limit);
    });

    it('a refusal names the limit and window exactly like the in-memory limiter', async (t) => {
      const clock = { now: T0 };
      const rule: RateRule = { unit: 'bytes', windows: [{ limit: 1000, windowMs: 1000 }, { limit: 5000, windowMs: 60_000 }] };
      const shared = limiter(await gateway(t, redis.url, `r${++n}:`), rule, clock);
      const memory = new RateLimiter(rule);
      t.after(() => (shared.close(), memory.close()));
      const steps: [number, number][] = [[600, 0], [600, 0], [300, 100], [1001, 100], [500, 700], [1000, 2000], [1000, 3000], [1000, 4000], [1000, 5000], [1000, 6000], [1000, 7000]];
      const refusals: RateRefusal[] = [];
      for (const [amount, dt] of steps) {
        clock.now = T0 + dt;
        const got = shared.take('dev-1', amount, clock.now);
        assert.deepEqual(got, memory.take('dev-1', amount, clock.now), `take ${amount} at +${dt}`);
        if (got) refusals.push(got);
        await shared.flushNow(); // alone on the key: the fleet totals change nothing
      }
      assert.deepEqual(
        refusals.map((r) => r.limit),
        ['1000 bytes per 1s', '1000 bytes per 1s', '5000 bytes per 1m', '5000 bytes per 1m'],
      );
      assert.deepEqual(refusals[2], { limit: '5000 bytes per 1m', window: '1m', max: 5000, windowMs: 60_000, retryAfterMs: 10_800 });
    });

    it('sends consumption on its own timer, in window-aligned counters that expire', async (t) => {
      const prefix = `r${++n}:`;
      const stores = createRedisStores(redis.url, { historyMax: 10, telemetry: { retentionCount: 10, retentionMs: 60_000 }, keyPrefix: prefix, log: silent, rateFlushMs: 20 });
      t.after(() => stores.close());
      await stores.ready();
      const l = stores.rateLimiter(RULE);
      assert.equal(takeN(l, 'dev-7', 5), 5);
      const now = Date.now();
      const key = stores.keys.rate('dev-7', 'messages', 20, 10_000, Math.floor(now / 10_000) * 10_000);
      // Wait for the flush timer (no fixed sleep: until the counter shows up, at most 5 s).
      for (const deadline = Date.now() + 5000; (await stores.client.get(key)) !== '5'; ) {
        assert.ok(Date.now() < deadline, 'the timer never flushed');
        await new Promise((r) => setImmediate(r));
      }
      const ttl = await stores.client.pttl(key);
      assert.ok(ttl > 10_000 && ttl <= 20_000, `pttl ${ttl}`);
      assert.ok(key.startsWith(`${prefix}{dev-7}:rate:`), key);
    });

    it('limits locally while Redis is down and sends what it took once Redis is back', async (t) => {
      const own = await startRedis(t);
      if (!own) return;
      const clock = { now: T0 };
      const stores = await gateway(t, own.url, 'iotgate:');
      const l = limiter(stores, RULE, clock);
      t.after(() => l.close());
      const lost = once(stores.client, 'close');
      await own.kill();
      await lost;
      assert.equal(takeN(l, 'dev-1', 25), 20, 'the local bucket still decides');
      await l.flushNow(); // nothing to do while down, and no throw
      await own.start();
      await stores.ready();
      await l.flushNow();
      assert.equal(await stores.client.get(stores.keys.rate('dev-1', 'messages', 20, 10_000, Math.floor(T0 / 10_000) * 10_000)), '20');
    });

    it('forget sends what the key had taken; a rule without windows is disabled', async (t) => {
      const clock = { now: T0 };
      const stores = await gateway(t, redis.url, `r${++n}:`);
      const l = limiter(stores, RULE, clock);
      t.after(() => l.close());
      assert.equal(takeN(l, 'dev-2', 3), 3);
      l.forget('dev-2');
      await l.flushNow();
      assert.equal(await stores.client.get(stores.keys.rate('dev-2', 'messages', 20, 10_000, Math.floor(T0 / 10_000) * 10_000)), '3');
      const off = stores.rateLimiter({ unit: 'messages', windows: [{ limit: 0, windowMs: 1000 }] });
      assert.equal(off.enabled, false);
      assert.equal(off.take('x', 1e9), null);
    });
  });
}
