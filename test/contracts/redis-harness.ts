/**
 * What every Redis contract file shares: one redis-server per file and a store set on it, or a
 * test that skips (fails under CI=true) when redis-server is missing.
 */
import { after, test } from 'node:test';
import { pino } from 'pino';
import { createRedisStores, type RedisStores } from '../../src/stores/redis/index.js';
import { startRedis, type TestRedis } from '../helpers/redis.js';
import { hasTool, requireTool } from '../helpers/tools.js';

export const silent = pino({ level: 'silent' });

/** A store set on `url` with its own key prefix, ready; closed with `t` when given. */
export async function connect(url: string, keyPrefix: string, t?: { after: (fn: () => Promise<void>) => void }): Promise<RedisStores> {
  const stores = createRedisStores(url, { historyMax: 100, telemetry: { retentionCount: 100, retentionMs: 3_600_000 }, keyPrefix, log: silent });
  if (t) t.after(() => stores.close());
  await stores.ready();
  return stores;
}

/** The file's redis-server and a shared store set, stopped after the file; null when skipped. */
export async function redisForFile(name: string): Promise<{ redis: TestRedis; shared: RedisStores } | null> {
  const redis = hasTool('redis-server') ? await startRedis(null) : null;
  if (!redis) {
    test(name, (t) => void requireTool(t, 'redis-server'));
    return null;
  }
  const shared = await connect(redis.url, 'unused:');
  after(async () => {
    await shared.close();
    await redis.dispose();
  });
  return { redis, shared };
}
