/**
 * The Redis Stream sink (src/upstream/redis-stream.ts) on its own: entry fields ↔ CloudEvent, and a
 * buffer that stays bounded while Redis is down (the oldest events are dropped and counted), then
 * drains in order when Redis is back. Uses a real redis-server (test/helpers/redis.ts).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { setImmediate as tick } from 'node:timers/promises';
import { Redis } from 'ioredis';
import { Registry } from 'prom-client';
import { toCloudEvent } from '../../src/core/cloudevents.js';
import { EventHub } from '../../src/core/event-hub.js';
import { EVENT_STREAM_KEY, RedisEventStream, eventFromFields, streamFields } from '../../src/upstream/redis-stream.js';
import { withDeadline } from '../helpers/pki.js';
import { startRedis } from '../helpers/redis.js';

test('stream fields are the CloudEvent attributes with data as JSON, and read back to the same event', () => {
  const event = toCloudEvent('iotgate.shadow.updated', 'd-1', { deviceId: 'd-1', version: 3, state: { reported: { a: [1, null] } } }, { time: 1_700_000_000_000 });
  const fields = streamFields(event);
  assert.deepEqual(
    fields.filter((_, i) => i % 2 === 0),
    ['specversion', 'id', 'type', 'source', 'subject', 'time', 'datacontenttype', 'data'],
  );
  assert.equal(fields[fields.length - 1], JSON.stringify(event.data));
  assert.deepEqual(eventFromFields(fields), event);
});

test('while Redis is down the buffer stays bounded (oldest dropped and counted); back up, the rest is written in order', async (t) => {
  const redis = await startRedis(t);
  if (!redis) return;
  const hub = new EventHub(null, { bufferSize: 1000 });
  const metrics = new Registry();
  const MAX_BUFFER = 10;
  const BATCH = 4;
  const sink = new RedisEventStream({ hub, url: redis.url, maxLen: 10_000, maxBuffer: MAX_BUFFER, batchMax: BATCH, metrics, closeTimeoutMs: 500 });
  t.after(() => sink.close());
  const reader = new Redis(redis.url);
  reader.on('error', () => undefined);
  t.after(() => reader.disconnect());

  const emit = (i: number) => hub.emit('iotgate.telemetry', 'd-1', { id: `e-${i}`, deviceId: 'd-1', n: i });
  emit(0);
  await withDeadline(sink.idle(), 5000, 'the first event written');
  assert.equal(await reader.xlen(EVENT_STREAM_KEY), 1);

  await redis.kill();
  let most = 0;
  for (let i = 1; i <= 200; i++) {
    emit(i);
    await tick();
    most = Math.max(most, sink.buffered);
  }
  assert.ok(most <= MAX_BUFFER + BATCH, `at most ${MAX_BUFFER} waiting and one batch on its way (saw ${most})`);
  const waiting = sink.buffered;
  assert.equal(sink.counts.dropped, 200 - waiting, 'every event not waiting was dropped');
  assert.match(await metrics.metrics(), new RegExp(`iotgate_event_stream_dropped_total\\{reason="buffer_full"\\} ${200 - waiting}\\b`));

  await redis.start();
  await withDeadline(sink.idle(), 15_000, 'the buffer written once Redis is back');
  const ids = (await reader.xrange(EVENT_STREAM_KEY, '-', '+')).map(([, fields]) => eventFromFields(fields).id);
  assert.equal(ids.length, 1 + waiting);
  // The batch that was on its way when Redis went down, then the newest events; all in order.
  const n = ids.map((id) => Number(id.slice(2)));
  assert.deepEqual(n, [...n].sort((a, b) => a - b), 'in order');
  assert.deepEqual(ids.slice(-MAX_BUFFER), Array.from({ length: MAX_BUFFER }, (_, k) => `e-${200 - MAX_BUFFER + 1 + k}`), 'the newest events kept');
  assert.equal(sink.counts.written, 1 + waiting);
});

test('an entry Redis refuses is tried a few times and dropped as rejected, without holding back the stream', async (t) => {
  const redis = await startRedis(t);
  if (!redis) return;
  const hub = new EventHub(null, { bufferSize: 1000 });
  const metrics = new Registry();
  const admin = new Redis(redis.url);
  t.after(() => admin.disconnect());
  // A key of the wrong type: every XADD to it is refused (WRONGTYPE).
  await admin.set('not-a-stream', 'x');
  const sink = new RedisEventStream({ hub, url: redis.url, key: 'not-a-stream', maxLen: 100, metrics, closeTimeoutMs: 500 });
  t.after(() => sink.close());
  for (let i = 0; i < 3; i++) hub.emit('iotgate.telemetry', 'd-1', { id: `r-${i}`, deviceId: 'd-1', n: i });
  await withDeadline(sink.idle(), 10_000, 'the refused events given up');
  assert.deepEqual(sink.counts, { written: 0, dropped: 3 });
  assert.match(await metrics.metrics(), /iotgate_event_stream_dropped_total\{reason="rejected"\} 3\b/);
});
