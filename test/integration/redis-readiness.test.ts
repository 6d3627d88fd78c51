/**
 * `/readyz` with Redis (issue 8 item 6) watches the broker's own connections too (persistence,
 * the bus between gateways, the will keeper), not only the stores': Redis stopped makes both
 * components fail, and started again the gateway is ready again by itself.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { build } from '../helpers/gateway.js';
import { redisOn, stack } from '../helpers/redis.js';
import { withDeadline } from '../helpers/pki.js';

interface Health {
  status: string;
  components: Record<string, { status: string; detail?: string }>;
}

async function readyz(url: string): Promise<{ code: number; body: Health }> {
  const res = await fetch(`${url}/readyz`);
  return { code: res.status, body: (await res.json()) as Health };
}

async function waitFor(url: string, code: number, what: string): Promise<Health> {
  return withDeadline(
    (async () => {
      for (;;) {
        const r = await readyz(url);
        if (r.code === code) return r.body;
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
    })(),
    15_000,
    what,
  );
}

test('/readyz follows the broker connections to Redis: failing while it is down, ok again after', async (t) => {
  const teardown = stack(t);
  const redis = await redisOn(t, teardown);
  if (!redis) return;
  const gw = await build(teardown, { IOTGATE_REDIS_URL: redis.url, IOTGATE_LOG_LEVEL: 'info' });

  const up = await readyz(gw.url);
  assert.equal(up.code, 200);
  assert.deepEqual(up.body.components['broker'], { status: 'ok', detail: 'redis' });

  await redis.stop();
  const down = await waitFor(gw.url, 503, '/readyz 503 with Redis stopped');
  await withDeadline(
    (async () => {
      while ((await readyz(gw.url)).body.components['broker']?.status !== 'failing') await new Promise((resolve) => setTimeout(resolve, 100));
    })(),
    10_000,
    'the broker component failing',
  );
  assert.equal(down.components['store']?.status, 'failing');
  const broker = (await readyz(gw.url)).body.components['broker'];
  assert.match(broker?.detail ?? '', /^redis .*(persistence|bus|keeper)/);

  await redis.start();
  const again = await waitFor(gw.url, 200, '/readyz 200 after Redis is back');
  assert.equal(again.components['broker']?.status, 'ok');
});
