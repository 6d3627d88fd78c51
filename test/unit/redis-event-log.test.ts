/**
 * The SSE event log on the Redis Stream (src/upstream/redis-event-log.ts) against a real
 * redis-server: stream id arithmetic, a reader that stops once nobody follows it and starts again
 * for the next client (missing nothing written meanwhile when that client resumes), and a replay
 * that honours the client's filter.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Redis } from 'ioredis';
import pino from 'pino';
import { canonicalStreamId, compareStreamIds, previousStreamId, RedisEventLog } from '../../src/upstream/redis-event-log.js';
import { streamFields } from '../../src/upstream/redis-stream.js';
import { toCloudEvent } from '../../src/core/cloudevents.js';
import { withDeadline } from '../helpers/pki.js';
import { startRedis } from '../helpers/redis.js';

test('stream ids: canonical form, order, predecessor', () => {
  assert.equal(canonicalStreamId('0001-02'), '1-2');
  assert.equal(canonicalStreamId('12'), undefined);
  assert.equal(canonicalStreamId('1-2-3'), undefined);
  assert.equal(canonicalStreamId('18446744073709551616-0'), undefined, 'beyond 64 bits');
  assert.ok(compareStreamIds('9-0', '10-0') < 0);
  assert.ok(compareStreamIds('10-2', '10-10') < 0);
  assert.equal(compareStreamIds('7-7', '7-7'), 0);
  assert.equal(previousStreamId('10-3'), '10-2');
  assert.equal(previousStreamId('10-0'), '9-18446744073709551615');
  assert.equal(previousStreamId('0-0'), '0-0');
});

test('the reader stops when its last client leaves and a resuming client misses nothing written meanwhile', async (t) => {
  const redis = await startRedis(t);
  if (!redis) return;
  const client = new Redis(redis.url);
  t.after(() => client.disconnect());
  const log = new RedisEventLog({ client, url: redis.url, idleStopMs: 20, blockMs: 100, log: pino({ level: 'silent' }) });
  t.after(() => log.close());
  const add = (deviceId: string, n: number) => client.xadd('iotgate:events', '*', ...streamFields(toCloudEvent('iotgate.shadow.updated', deviceId, { n })));
  const frames: string[] = [];
  const send = async (frame: string) => (frames.push(frame), true);

  const first = await log.open(undefined);
  const live = await first.replay({}, send);
  assert.ok(live);
  assert.equal(log.reading, true);
  const lastSeen = await add('d1', 1);
  first.release();
  await withDeadline(
    (async () => {
      while (log.reading) await new Promise((resolve) => setTimeout(resolve, 10));
    })(),
    5000,
    'the reader to stop once nobody follows it',
  );

  // Written while no reader runs; one of them for another device.
  await add('d1', 2);
  await add('d2', 3);
  await add('d1', 4);
  const again = await log.open(lastSeen as string);
  assert.equal(log.reading, true, 'started again');
  const start = await again.replay({ devices: new Set(['d1']) }, send);
  assert.ok(start);
  const replayed = frames.map((f) => (JSON.parse(f.slice(f.indexOf('data: ') + 6)) as { data: { n: number } }).data.n);
  assert.deepEqual(replayed, [2, 4], 'what came after its id, filtered, in order');
  again.release();
});
