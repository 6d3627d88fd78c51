/**
 * Events to the Redis Stream `iotgate:events` (contract §9, issue 8 item 4) against a real
 * redis-server and an in-process gateway: a consumer group (XGROUP CREATE / XREADGROUP / XACK), as
 * an upstream service would run it, reads every event of an MQTT device's connect, telemetry and
 * shadow update, each entry being the CloudEvent that SSE shows (same id, same document).
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { Redis } from 'ioredis';
import { eventFromFields, EVENT_STREAM_KEY } from '../../src/upstream/redis-stream.js';
import { build, type Teardown } from '../helpers/gateway.js';
import { deviceLogin, openSession, registerDevice, tcpUrl, withDeadline } from '../helpers/mqtt.js';
import { redisOn, stack, type TestRedis } from '../helpers/redis.js';
import { openEvents } from '../helpers/sse.js';
import { metric } from '../helpers/http.js';
import { requireTool } from '../helpers/tools.js';



type StreamReply = [key: string, entries: [id: string, fields: string[]][]][] | null;

test('a consumer group reads every event of a device (connect, telemetry, shadow update) as SSE shows it', async (t) => {
  const teardown = stack(t);
  const redis = await redisOn(t, teardown);
  if (!redis) return;
  const gw = await build(teardown, { IOTGATE_REDIS_URL: redis.url, IOTGATE_LOG_LEVEL: 'info', IOTGATE_EVENTS_STREAM_MAX_LEN: '1000' });
  const reader = new Redis(redis.url);
  reader.on('error', () => undefined);
  teardown.after(() => reader.disconnect());

  // The upstream service's group exists before the events: it reads from the group's start.
  await reader.xgroup('CREATE', EVENT_STREAM_KEY, 'billing', '$', 'MKSTREAM');
  const device = await registerDevice(gw, `stream-${process.pid}`);
  const sse = await openEvents(t, gw, `devices=${device.id}`, await gw.token('telemetry:read'));

  const s = await openSession(t, tcpUrl(gw), deviceLogin(device));
  await s.client.publishAsync(`devices/${device.id}/telemetry`, JSON.stringify({ temp: 21.5 }), { qos: 1 });
  await s.client.publishAsync(`devices/${device.id}/shadow/update`, JSON.stringify({ state: { reported: { fan: 'on' } } }), { qos: 1 });
  const wanted = ['iotgate.device.connected', 'iotgate.telemetry', 'iotgate.shadow.updated'];
  for (const type of wanted) await sse.next((e) => e.event === type, `${type} on SSE`);

  // XREADGROUP as a consumer would: new entries (>), then acknowledged.
  const read: { id: string; event: ReturnType<typeof eventFromFields> }[] = [];
  await withDeadline(
    (async () => {
      while (!wanted.every((type) => read.some((r) => r.event.type === type && r.event.subject === device.id))) {
        const reply = (await reader.xreadgroup('GROUP', 'billing', 'worker-1', 'COUNT', '100', 'BLOCK', '1000', 'STREAMS', EVENT_STREAM_KEY, '>')) as StreamReply;
        for (const [, entries] of reply ?? []) for (const [id, fields] of entries) read.push({ id, event: eventFromFields(fields) });
      }
    })(),
    10_000,
    'the events in the stream',
  );
  const ids = read.map((r) => r.id);
  assert.equal(await reader.xack(EVENT_STREAM_KEY, 'billing', ...ids), ids.length);
  const pending = (await reader.xpending(EVENT_STREAM_KEY, 'billing')) as [number, ...unknown[]];
  assert.equal(pending[0], 0, 'nothing left pending once acknowledged');

  const mine = read.filter((r) => r.event.subject === device.id);
  for (const type of wanted) {
    const fromSse = sse.events.filter((e) => e.event === type).map((e) => e.data);
    const fromStream = mine.filter((r) => r.event.type === type).map((r) => r.event);
    assert.deepEqual(fromStream, fromSse, `${type}: the stream entries are the CloudEvents SSE showed (ids included)`);
  }
  // The telemetry event was written by the telemetry store with its record, and is counted too.
  assert.ok((await metric(gw, 'iotgate_event_stream_written_total')) >= mine.length, 'every event written is counted');
  // Fields as documented (docs/operations.md): the CloudEvents attributes, data as JSON text.
  const raw = (await reader.xrange(EVENT_STREAM_KEY, '-', '+')).find(([, f]) => f.includes('iotgate.telemetry'));
  assert.deepEqual(
    raw?.[1].filter((_, i) => i % 2 === 0),
    ['specversion', 'id', 'type', 'source', 'subject', 'time', 'datacontenttype', 'data'],
  );
  assert.deepEqual((JSON.parse(raw?.[1][15] ?? 'null') as { data?: unknown }).data, { temp: 21.5 });
});

test('the stream is trimmed to about events.streamMaxLen', async (t) => {
  const teardown = stack(t);
  const redis = await redisOn(t, teardown);
  if (!redis) return;
  const gw = await build(teardown, { IOTGATE_REDIS_URL: redis.url, IOTGATE_LOG_LEVEL: 'info', IOTGATE_EVENTS_STREAM_MAX_LEN: '50' });
  const reader = new Redis(redis.url);
  reader.on('error', () => undefined);
  teardown.after(() => reader.disconnect());

  for (let i = 0; i < 600; i++) gw.gateway.events.emit('iotgate.telemetry', 'trim-test', { id: `t-${i}`, deviceId: 'trim-test', n: i });
  await withDeadline(
    (async () => {
      for (;;) {
        const last = await reader.xrevrange(EVENT_STREAM_KEY, '+', '-', 'COUNT', '1');
        if (last[0]?.[1].includes('t-599')) return;
        await new Promise((r) => setImmediate(r));
      }
    })(),
    10_000,
    'the last event in the stream',
  );
  const len = await reader.xlen(EVENT_STREAM_KEY);
  // MAXLEN ~ trims whole stream nodes (100 entries by default): at least 50 kept, far fewer than 600.
  assert.ok(len >= 50 && len < 50 + 100, `XLEN ${len}`);
});
