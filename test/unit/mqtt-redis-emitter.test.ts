/**
 * The local-first Redis bus emitter (protocols/mqtt/redis-emitter.ts) against a real redis-server:
 * local subscribers get a message at once and once (their own frames come back from Redis and are
 * skipped), the other gateway gets every message with its payload, the messages of one turn travel
 * in one frame, and while Redis is down messages are dropped and counted instead of queued.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import pino from 'pino';
import { redisBusEmitter, type RedisBusEmitter } from '../../protocols/mqtt/redis-emitter.js';
import { withDeadline } from '../helpers/pki.js';
import { startRedis, type TestRedis } from '../helpers/redis.js';

const log = pino({ level: 'silent' });

function emitter(t: TestContext, redis: TestRedis, brokerId: string, peers?: () => boolean): RedisBusEmitter {
  const mq = redisBusEmitter({ url: redis.url, brokerId, log, ...(peers && { peers }) });
  t.after(() => new Promise<void>((resolve) => mq.close(resolve)));
  return mq;
}

function collect(mq: RedisBusEmitter, filter: string): { topic: string; payload: string }[] {
  const got: { topic: string; payload: string }[] = [];
  mq.on(filter, (packet, done) => {
    got.push({ topic: packet.topic, payload: Buffer.from(packet.payload).toString('utf8') });
    done();
  });
  return got;
}

async function until(what: string, check: () => boolean): Promise<void> {
  await withDeadline(
    (async () => {
      while (!check()) await new Promise((resolve) => setImmediate(resolve));
    })(),
    5000,
    what,
  );
}

test('local subscribers first and once; the other gateway gets every message, batched per turn', async (t) => {
  const redis = await startRedis(t);
  if (!redis) return;
  const a = emitter(t, redis, 'gw-a');
  const b = emitter(t, redis, 'gw-b');
  await Promise.all([a.ready(), b.ready()]);
  const onA = collect(a, 'devices/+/telemetry');
  const onB = collect(b, 'devices/+/telemetry');

  let acked = 0;
  for (let i = 0; i < 100; i++) a.emit({ topic: `devices/d${i}/telemetry`, payload: Buffer.from(`m${i}`) }, () => acked++);
  // Delivered locally before anything went to Redis.
  assert.equal(onA.length, 100);
  assert.equal(acked, 100);

  await until('the 100 messages on gateway b', () => onB.length === 100);
  assert.deepEqual(onB, onA, 'same topics and payloads, same order');
  assert.equal(a.stats.framesSent, 1, 'the messages of one turn travel in one frame');
  assert.equal(a.stats.messagesSent, 100);

  // b's own message reaches a; a's frames coming back to a were skipped (a still has 100 + 1).
  b.emit({ topic: 'devices/x/telemetry', payload: Buffer.from('from-b') });
  await until('the message of b on a', () => onA.length === 101);
  assert.equal(onB.length, 101);
  assert.equal(onA.filter((m) => m.payload === 'from-b').length, 1);
  assert.equal(onB.filter((m) => m.payload === 'from-b').length, 1, 'b does not get its own message twice');
  assert.equal(a.stats.messagesReceived, 1);
});

test('while Redis is down, messages still reach local subscribers and the rest is dropped and counted', async (t) => {
  const redis = await startRedis(t);
  if (!redis) return;
  const a = emitter(t, redis, 'gw-a');
  await a.ready();
  const local = collect(a, 'x/#');
  await redis.stop();
  await until('the publisher connection sees Redis gone', () => a.pubConn.status !== 'ready');
  for (let i = 0; i < 10; i++) a.emit({ topic: `x/${i}`, payload: Buffer.from('p') });
  assert.equal(local.length, 10);
  await until('the messages counted as dropped', () => a.stats.messagesDropped === 10);
  assert.equal(a.stats.messagesSent, 0);
});

test('a gateway alone sends nothing; one that starts announces itself and is forwarded to at once', async (t) => {
  const redis = await startRedis(t);
  if (!redis) return;
  // The keeper of each sees no other live gateway (as right after B's start, before A's next pass).
  const a = emitter(t, redis, 'gw-a', () => false);
  await a.ready();
  const onA = collect(a, 'devices/+/telemetry');
  a.emit({ topic: 'devices/d1/telemetry', payload: Buffer.from('alone') });
  assert.equal(onA.length, 1, 'local subscribers still get it');
  await new Promise((resolve) => setImmediate(resolve));
  assert.equal(a.stats.framesSent, 0, 'nobody to forward to');

  const b = emitter(t, redis, 'gw-b', () => false);
  await b.ready();
  await until('A to hear B announce itself', () => a.stats.framesReceived === 1);
  const onB = collect(b, 'devices/+/telemetry');
  a.emit({ topic: 'devices/d1/telemetry', payload: Buffer.from('hello-b') });
  await until('B to get what A publishes now', () => onB.some((m) => m.payload === 'hello-b'));
  assert.ok(a.stats.framesSent > 0);
});
