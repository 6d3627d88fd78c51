/**
 * API gateway routes with `redis.url` set (issue 10 items 4 and 5): two gateway processes' worth of
 * gateways on one real redis-server share the route cache (a response stored through one is a HIT
 * through the other) and the rate-limit budget (the second gateway refuses once the first spent it).
 */
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { build, type TestGateway } from '../helpers/gateway.js';
import { call } from '../helpers/http.js';
import { startRedis } from '../helpers/redis.js';
import { hasTool } from '../helpers/tools.js';
import { startUpstream } from '../helpers/upstream.js';

if (!hasTool('redis-server') && process.env.CI === 'true') throw new Error('redis-server is required (CI=true)');

const upstream = await startUpstream('shared');
after(() => upstream.close());

test('two gateways on one Redis share the route cache and the rate-limit budget', { skip: !hasTool('redis-server') && 'redis-server is not installed' }, async (t) => {
  const redis = await startRedis(null, { aof: false });
  assert.ok(redis);
  const routes = [
    { name: 'cached', prefix: '/cached', auth: 'none', upstreams: [upstream.url], cache: { ttlMs: 60_000, maxEntries: 10 } },
    { name: 'limited', prefix: '/limited', auth: 'none', upstreams: [upstream.url], rateLimit: { max: 2, windowMs: 60_000, per: 'route' } },
  ];
  const env = { IOTGATE_REDIS_URL: redis.url, IOTGATE_ROUTES: JSON.stringify(routes) };
  let a: TestGateway;
  let b: TestGateway;
  try {
    a = await build(t, env);
    b = await build(t, env);
  } finally {
    // After hooks run in order: registered last, the Redis goes away after the gateways stopped.
    t.after(() => redis.dispose());
  }

  const admin = await a.token('admin');
  assert.equal((await call(a.url, 'GET', '/v1/routes', { token: admin })).body.storage, 'redis');

  const miss = await call(a.url, 'GET', '/cached/doc');
  assert.equal(miss.headers.get('x-cache'), 'MISS');
  const hit = await call(b.url, 'GET', '/cached/doc');
  assert.equal(hit.headers.get('x-cache'), 'HIT', 'stored through gateway a, served by gateway b');
  assert.equal(hit.text, miss.text);
  assert.equal(upstream.requests.filter((r) => r.url === '/doc').length, 1);

  assert.equal((await call(a.url, 'GET', '/limited/x')).status, 200);
  assert.equal((await call(b.url, 'GET', '/limited/x')).status, 200);
  const refused = await call(a.url, 'GET', '/limited/x');
  assert.equal(refused.status, 429);
  assert.equal(refused.body.limit, '2 requests per 1m for all callers on route "limited"');
  assert.equal((await call(b.url, 'GET', '/limited/x')).status, 429);
});
