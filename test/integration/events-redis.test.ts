/**
 * SSE on the Redis Stream `iotgate:events` (contract §9, issue 8 item 4), with a real redis-server
 * and two in-process gateways sharing it: an SSE client of either gateway sees the events of both,
 * and resumes with its Last-Event-ID (a stream entry id) on either, from the reader's ring or, older,
 * from the stream itself; a trimmed or foreign id gets an `iotgate.gap` notice first.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Redis } from 'ioredis';
import { compareStreamIds } from '../../src/upstream/redis-event-log.js';
import { EVENT_STREAM_KEY } from '../../src/upstream/redis-stream.js';
import { build, type TestGateway } from '../helpers/gateway.js';
import { registerDevice } from '../helpers/mqtt.js';
import { redisOn, stack, type Teardown } from '../helpers/redis.js';
import { openEvents, type EventStream, type SseEvent } from '../helpers/sse.js';

const SHADOW = 'iotgate.shadow.updated';
const STREAM_ID = /^\d+-\d+$/;

async function patchShadow(gw: TestGateway, token: string, deviceId: string, n: number): Promise<void> {
  const res = await fetch(`${gw.url}/v1/devices/${deviceId}/shadow`, {
    method: 'PATCH',
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
    body: JSON.stringify({ state: { desired: { n } } }),
  });
  assert.equal(res.status, 200, await res.text());
}

const version = (e: SseEvent) => (e.data.data as { version: number }).version;

/** Waits for the shadow event of `v` and returns every shadow version seen so far, in order. */
async function versionsUpTo(sse: EventStream, v: number): Promise<number[]> {
  await sse.next((e) => e.event === SHADOW && version(e) === v, `shadow version ${v}`);
  return sse.events.filter((e) => e.event === SHADOW).map(version);
}

const range = (from: number, to: number) => Array.from({ length: to - from + 1 }, (_, i) => from + i);

async function twoGateways(t: Parameters<typeof stack>[0], teardown: Teardown) {
  const redis = await redisOn(t, teardown);
  if (!redis) return null;
  // A ring of 5 entries, so resumes reach past it into the stream.
  const env = { IOTGATE_REDIS_URL: redis.url, IOTGATE_LOG_LEVEL: 'info', IOTGATE_EVENTS_BUFFER_SIZE: '5' };
  const a = await build(teardown, env);
  const b = await build(teardown, env);
  return { redis, a, b };
}

test('SSE with Redis: one gateway shows the events of another, and a client resumes on either without loss or repeats', async (t) => {
  const teardown = stack(t);
  const gws = await twoGateways(t, teardown);
  if (!gws) return;
  const { a, b } = gws;
  const device = await registerDevice(a, `sse-fleet-${process.pid}`);
  const writeA = await a.token('shadow:write');
  const query = `types=${SHADOW}&devices=${device.id}`;

  // Events made through A reach an SSE client of B, with stream entry ids.
  const onB = await openEvents(t, b, query, await b.token('telemetry:read'));
  for (const n of range(1, 3)) await patchShadow(a, writeA, device.id, n);
  assert.deepEqual(await versionsUpTo(onB, 3), [1, 2, 3]);
  for (const e of onB.events) assert.match(e.id, STREAM_ID);
  const afterFirst = onB.events[0]?.id as string;
  onB.close();

  // Resumed on A, whose reader starts only now: versions 2 and 3 come from the stream, then live.
  const onA = await openEvents(t, a, `${query}&lastEventId=${afterFirst}`, await a.token('telemetry:read'));
  assert.deepEqual(await versionsUpTo(onA, 3), [2, 3]);
  await patchShadow(b, await b.token('shadow:write'), device.id, 4);
  assert.deepEqual(await versionsUpTo(onA, 4), [2, 3, 4]);
  const afterFourth = onA.events.at(-1)?.id as string;
  const ids = onA.events.map((e) => e.id);
  assert.deepEqual(ids, [...ids].sort(compareStreamIds), 'ids in stream order');
  onA.close();

  // Twelve more while nobody of B listens; B's reader still runs and its ring (5) holds the last five.
  for (const n of range(5, 16)) await patchShadow(a, writeA, device.id, n);
  const resumed = await openEvents(t, b, `${query}&lastEventId=${afterFourth}`, await b.token('telemetry:read'));
  assert.deepEqual(await versionsUpTo(resumed, 16), range(5, 16), 'older than the ring: read from the stream, then the ring, each once');
  await patchShadow(a, writeA, device.id, 17);
  assert.deepEqual(await versionsUpTo(resumed, 17), range(5, 17));
  assert.equal(new Set(resumed.events.map((e) => e.id)).size, resumed.events.length, 'no id twice');
});

test('SSE with Redis: trimmed and foreign ids get a gap notice, malformed ones a 400', async (t) => {
  const teardown = stack(t);
  const gws = await twoGateways(t, teardown);
  if (!gws) return;
  const { redis, a } = gws;
  const device = await registerDevice(a, `sse-gap-${process.pid}`);
  const write = await a.token('shadow:write');
  const read = await a.token('telemetry:read');
  const query = `types=${SHADOW}&devices=${device.id}`;

  const live = await openEvents(t, a, query, read);
  await patchShadow(a, write, device.id, 1);
  const old = (await live.next((e) => e.event === SHADOW, 'first shadow event')).id;
  live.close();

  // Everything up to now is trimmed away; one event after it stays.
  const admin = new Redis(redis.url);
  teardown.after(() => admin.disconnect());
  await admin.xtrim(EVENT_STREAM_KEY, 'MAXLEN', 0);
  await patchShadow(a, write, device.id, 2);
  const expired = await openEvents(t, a, `${query}&lastEventId=${old}`, read);
  const gap = await expired.next((e) => e.event === 'iotgate.gap', 'the gap notice');
  assert.equal(expired.events[0], gap, 'the notice comes first');
  assert.equal(gap.data.reason, 'expired');
  assert.equal(gap.data.lastEventId, old);
  assert.equal(gap.id, gap.data.resumedAfter, 'the notice moves Last-Event-ID past the hole');
  assert.deepEqual(await versionsUpTo(expired, 2), [2], 'then what the stream still holds');
  expired.close();

  // An id newer than anything the stream generated (another Redis): a notice, then live events.
  const foreign = await openEvents(t, a, `${query}&lastEventId=99999999999999-0`, read);
  const unknown = await foreign.next((e) => e.event === 'iotgate.gap', 'the gap notice');
  assert.equal(unknown.data.reason, 'unknown');
  await patchShadow(a, write, device.id, 3);
  assert.deepEqual(await versionsUpTo(foreign, 3), [3]);
  foreign.close();

  // The memory hub's sequence numbers are not ids of this stream.
  const res = await fetch(`${a.url}/v1/events?lastEventId=12`, { headers: { authorization: `Bearer ${read}` } });
  assert.equal(res.status, 400);
  const problem = (await res.json()) as { detail: string };
  assert.match(problem.detail, /querystring\.lastEventId: .*Redis Stream entry id/);

  // Redis down: a resume cannot be served and says so at once.
  await redis.stop();
  const down = await fetch(`${a.url}/v1/events?lastEventId=${old}`, { headers: { authorization: `Bearer ${read}` } });
  assert.equal(down.status, 503);
  await down.body?.cancel();
});
