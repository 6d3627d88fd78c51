/**
 * The route cache and rate-limit ports (src/routes/cache*.ts, limiter*.ts): one contract, run
 * against the in-memory implementations and against a real redis-server, where two connections
 * (two gateway processes) must see the same entries and draw from the same budget. Also the
 * route service falling back gracefully when its Redis is gone.
 */
import { after, before, describe, it, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { Redis } from 'ioredis';
import { pino } from 'pino';
import { Registry } from 'prom-client';
import { MemoryCacheBackend, RouteCache, type CacheBackend, type CachedResponse } from '../../src/routes/cache.js';
import { RedisCacheBackend, decodeRecord, encodeRecord } from '../../src/routes/cache-redis.js';
import { MemoryRouteLimiter, type RouteLimiter } from '../../src/routes/limiter.js';
import { RedisRouteLimiter } from '../../src/routes/limiter-redis.js';
import { RouteService } from '../../src/routes/service.js';
import { startRedis, type TestRedis } from '../helpers/redis.js';
import { hasTool } from '../helpers/tools.js';

if (!hasTool('redis-server') && process.env.CI === 'true') throw new Error('redis-server is required (CI=true)');

const response = (body: string, over: Partial<CachedResponse> = {}): CachedResponse => ({
  status: 200,
  headers: { 'content-type': 'text/plain', 'x-multi': ['a', 'b'] },
  body: Buffer.from(body),
  storedAt: Date.now(),
  initialAgeS: 3,
  ...over,
});

/** Resolves once `probe` returns true, polling (an expiry has no event to wait for). */
async function eventually(probe: () => Promise<boolean>, what: string): Promise<void> {
  const until = Date.now() + 5000;
  while (!(await probe())) {
    if (Date.now() > until) assert.fail(`${what} did not happen`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

interface Pair {
  /** Two handles on the same storage (for Redis: two connections, like two gateways). */
  cache: [CacheBackend, CacheBackend];
  limiter: [RouteLimiter, RouteLimiter];
}

function contract(name: string, open: () => Promise<Pair>, close: () => Promise<void>): void {
  describe(`route stores: ${name}`, () => {
    let p: Pair;
    before(async () => {
      p = await open();
    });
    after(close);

    it('a stored response comes back byte for byte, to the other handle too', async () => {
      const [a, b] = p.cache;
      const bin = Buffer.from([0, 255, 1, 254, 10, 13]);
      await new RouteCache(a).store('r:1', 'k', {}, [], response('x', { body: bin }), { ttlMs: 60_000, maxEntries: 10 });
      const got = await new RouteCache(b).lookup('r:1', 'k', {});
      assert.ok(got);
      assert.deepEqual(got.body, bin);
      assert.equal(got.status, 200);
      assert.deepEqual(got.headers, { 'content-type': 'text/plain', 'x-multi': ['a', 'b'] });
      assert.equal(got.initialAgeS, 3);
      assert.equal(await new RouteCache(b).lookup('r:1', 'other', {}), null);
      assert.equal(await new RouteCache(b).lookup('r:2', 'k', {}), null, 'namespaces are apart');
    });

    it('Vary: the variant is chosen by the request header values', async () => {
      const cache = new RouteCache(p.cache[0]);
      const limits = { ttlMs: 60_000, maxEntries: 10 };
      await cache.store('r:v', 'k', { 'accept-language': 'en' }, ['accept-language'], response('english'), limits);
      await cache.store('r:v', 'k', { 'accept-language': 'fr' }, ['accept-language'], response('french'), limits);
      const other = new RouteCache(p.cache[1]);
      assert.equal((await other.lookup('r:v', 'k', { 'accept-language': 'en' }))?.body.toString(), 'english');
      assert.equal((await other.lookup('r:v', 'k', { 'accept-language': 'fr' }))?.body.toString(), 'french');
      assert.equal(await other.lookup('r:v', 'k', { 'accept-language': 'de' }), null);
      assert.equal(await other.lookup('r:v', 'k', {}), null);
    });

    it('an entry is gone after its ttl', async () => {
      const cache = new RouteCache(p.cache[0]);
      await cache.store('r:t', 'k', {}, [], response('short'), { ttlMs: 50, maxEntries: 10 });
      assert.ok(await cache.lookup('r:t', 'k', {}));
      await eventually(async () => (await cache.lookup('r:t', 'k', {})) === null, 'expiry');
    });

    it('maxEntries bounds a namespace: the oldest entry goes first', async () => {
      const cache = new RouteCache(p.cache[0]);
      const limits = { ttlMs: 60_000, maxEntries: 2 };
      for (const k of ['e1', 'e2', 'e3']) await cache.store('r:m', k, {}, [], response(k), limits);
      assert.equal(await cache.lookup('r:m', 'e1', {}), null);
      assert.equal((await cache.lookup('r:m', 'e2', {}))?.body.toString(), 'e2');
      assert.equal((await cache.lookup('r:m', 'e3', {}))?.body.toString(), 'e3');
    });

    it('the limiter refuses the request over max, naming the limit; keys and namespaces have their own budgets; both handles share one', async () => {
      const [a, b] = p.limiter;
      const rule = { max: 2, windowMs: 60_000 };
      assert.equal(await a.take('rl:1', 'device:d1', rule), null);
      assert.equal(await b.take('rl:1', 'device:d1', rule), null);
      const refusal = await a.take('rl:1', 'device:d1', rule);
      assert.ok(refusal);
      assert.equal(refusal.limit, '2 requests per 1m');
      assert.equal(refusal.max, 2);
      assert.equal(refusal.windowMs, 60_000);
      assert.ok(refusal.retryAfterMs > 0 && refusal.retryAfterMs <= 30_000);
      assert.ok(await b.take('rl:1', 'device:d1', rule), 'the other handle sees the spent budget');
      assert.equal(await a.take('rl:1', 'device:d2', rule), null);
      assert.equal(await a.take('rl:2', 'device:d1', rule), null);
    });

    it('the budget refills with time', async () => {
      const rule = { max: 1, windowMs: 100 };
      const [a] = p.limiter;
      assert.equal(await a.take('rl:r', 'k', rule), null);
      assert.ok(await a.take('rl:r', 'k', rule));
      await eventually(async () => (await a.take('rl:r', 'k', rule)) === null, 'refill');
    });
  });
}

contract(
  'memory',
  async () => {
    const cache = new MemoryCacheBackend();
    const limiter = new MemoryRouteLimiter();
    return { cache: [cache, cache], limiter: [limiter, limiter] };
  },
  async () => undefined,
);

const SKIP_REDIS = !hasTool('redis-server') && 'redis-server is not installed';
let server: TestRedis | null = null;
const clients: Redis[] = [];
if (!SKIP_REDIS) {
  contract(
    'redis',
    async () => {
      server = await startRedis(null, { aof: false });
      const [c1, c2] = [new Redis(server!.url), new Redis(server!.url)];
      clients.push(c1, c2);
      return { cache: [new RedisCacheBackend(c1), new RedisCacheBackend(c2)], limiter: [new RedisRouteLimiter(c1), new RedisRouteLimiter(c2)] };
    },
    async () => {
      for (const c of clients) c.disconnect();
      await server?.dispose();
    },
  );
}

it('the record encoding round-trips and refuses garbage', () => {
  const r = { kind: 'response' as const, ...response('hello') };
  assert.deepEqual(decodeRecord(encodeRecord(r)), r);
  assert.deepEqual(decodeRecord(encodeRecord({ kind: 'vary', names: ['a'] })), { kind: 'vary', names: ['a'] });
  assert.equal(decodeRecord(Buffer.from('xx')), null);
  assert.equal(decodeRecord(Buffer.from([0, 0, 0, 9, 1])), null);
  assert.equal(decodeRecord(Buffer.concat([Buffer.from([0, 0, 0, 2]), Buffer.from('{]')])), null);
});

it('with its Redis gone, the route service answers fast: cache lookups fail (a miss), the limiter call fails (allowed by the proxy)', { skip: SKIP_REDIS }, async (t: TestContext) => {
  const redis = await startRedis(t, { aof: false });
  assert.ok(redis);
  const service = new RouteService({ routes: [], redisUrl: redis.url, log: pino({ level: 'silent' }), registry: new Registry() });
  t.after(() => service.close());
  assert.equal(service.storage, 'redis');
  assert.equal(await service.limiter.take('n', 'k', { max: 5, windowMs: 1000 }), null);
  await redis.kill();
  await assert.rejects(service.cache.lookup('ns', 'k', {}));
  await assert.rejects(service.limiter.take('n', 'k', { max: 5, windowMs: 1000 }));
});
