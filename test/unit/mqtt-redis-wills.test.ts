/**
 * The will keeper (protocols/mqtt/redis-wills.ts) against a real redis-server, with wills written
 * in aedes-persistence-redis' layout (`will:<broker>:<client>` + the list `will`): which brokers
 * count as dead, and that every will of a dead broker is published exactly once; `onGone` (the
 * presence reaper) runs for every dead broker before it is forgotten, and again until it succeeds.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { Redis } from 'ioredis';
import pino from 'pino';
import { BROKER_RUNS_KEY, BROKERS_KEY, CONNECTION_PREFIX, WillKeeper, willKey, type WillPacket } from '../../protocols/mqtt/redis-wills.js';
import { withDeadline } from '../helpers/pki.js';
import { startRedis, type TestRedis } from '../helpers/redis.js';

const log = pino({ level: 'silent' });
const BEAT = 100;

function connection(t: TestContext, redis: TestRedis, name?: string): Redis {
  const conn = new Redis(redis.url, name === undefined ? {} : { connectionName: name });
  conn.on('error', () => undefined);
  t.after(() => conn.disconnect());
  return conn;
}

/** A keeper whose wills are JSON (the real one decodes msgpack) and whose publishes are recorded. */
function keeper(t: TestContext, redis: TestRedis, brokerId: string, opts: { deadAfterMs?: number; onGone?: (brokerId: string) => Promise<void> } = {}) {
  const published: string[] = [];
  const k = new WillKeeper({
    redis: connection(t, redis, CONNECTION_PREFIX + brokerId),
    brokerId,
    decode: (buf) => JSON.parse(buf.toString('utf8')) as unknown,
    publish: async (will: WillPacket) => void published.push(will.payload.toString('utf8')),
    log,
    beatMs: BEAT,
    deadAfterMs: opts.deadAfterMs ?? 60_000,
    ...(opts.onGone && { onGone: opts.onGone }),
  });
  t.after(() => k.stop());
  return { keeper: k, published };
}

async function storeWill(db: Redis, brokerId: string, clientId: string): Promise<void> {
  const key = willKey(brokerId, clientId);
  await db.set(key, JSON.stringify({ topic: `devices/${clientId}/will`, payload: `${clientId} gone`, qos: 1, retain: false, brokerId, clientId }));
  await db.rpush('will', key);
}

async function runId(db: Redis): Promise<string> {
  return /run_id:(\w+)/.exec(await db.info('server'))?.[1] ?? '';
}

const until = (check: () => boolean, what: string) =>
  withDeadline(
    (async () => {
      while (!check()) await sleep(10);
    })(),
    5000,
    what,
  );

test('a gateway that stops leaves its wills to the others: each published once, and gone from Redis', async (t) => {
  const redis = await startRedis(t);
  if (!redis) return;
  const db = connection(t, redis);
  const a = keeper(t, redis, 'gw-a');
  await a.keeper.start();
  await storeWill(db, 'gw-a', 'd1');
  await storeWill(db, 'gw-a', 'd2');
  const b = keeper(t, redis, 'gw-b');
  await b.keeper.start();
  assert.deepEqual(b.published, [], 'a live gateway\u2019s wills are its own');

  await a.keeper.stop();
  await until(() => b.published.length === 2, 'both wills published by the other gateway');
  assert.deepEqual(b.published.sort(), ['d1 gone', 'd2 gone']);
  assert.equal(await db.exists(willKey('gw-a', 'd1'), willKey('gw-a', 'd2')), 0);
  assert.equal(await db.llen('will'), 0);
  assert.equal(await db.zscore(BROKERS_KEY, 'gw-a'), null, 'the stopped gateway is forgotten');
});

test('two gateways finding the same dead one: every will is published exactly once', async (t) => {
  const redis = await startRedis(t);
  if (!redis) return;
  const db = connection(t, redis);
  // A gateway that died long ago: its liveness expired.
  await db.zadd(BROKERS_KEY, String(Date.now() - 120_000), 'gw-dead');
  for (let i = 0; i < 50; i++) await storeWill(db, 'gw-dead', `d${i}`);
  const [b, c] = [keeper(t, redis, 'gw-b'), keeper(t, redis, 'gw-c')];
  await Promise.all([b.keeper.start(), c.keeper.start()]);
  await until(() => b.published.length + c.published.length === 50, 'the 50 wills');
  const all = [...b.published, ...c.published].sort();
  assert.equal(new Set(all).size, 50, 'no will twice');
  await sleep(3 * BEAT);
  assert.equal(b.published.length + c.published.length, 50, 'and none later');
});

test('a killed gateway (its named connection gone) is dead after two looks; one not seen since Redis restarted is not', async (t) => {
  const redis = await startRedis(t);
  if (!redis) return;
  const db = connection(t, redis);
  const current = await runId(db);
  // Both refreshed their liveness just now and have no connection: one on this Redis run, one on
  // an earlier run (it may still be reconnecting after a Redis restart).
  await db.zadd(BROKERS_KEY, String(Date.now()), 'gw-killed', String(Date.now()), 'gw-old-run');
  await db.hset(BROKER_RUNS_KEY, 'gw-killed', current, 'gw-old-run', 'an-earlier-run');
  await storeWill(db, 'gw-killed', 'k1');
  await storeWill(db, 'gw-old-run', 'o1');
  const b = keeper(t, redis, 'gw-b');
  await b.keeper.start();
  assert.deepEqual(b.published, [], 'not after one look');
  await until(() => b.published.length === 1, 'the killed gateway\u2019s will');
  assert.deepEqual(b.published, ['k1 gone']);
  await sleep(5 * BEAT);
  assert.deepEqual(b.published, ['k1 gone'], 'the gateway of the earlier run waits for its liveness to expire');
});

test('a device connecting again: its will left by a dead gateway is published first; one held by a live gateway is left to it', async (t) => {
  const redis = await startRedis(t);
  if (!redis) return;
  const db = connection(t, redis);
  const current = await runId(db);
  // gw-live: refreshed, on this run, and its named connection is open.
  connection(t, redis, `${CONNECTION_PREFIX}gw-live`);
  await db.zadd(BROKERS_KEY, String(Date.now()), 'gw-live', String(Date.now()), 'gw-killed');
  await db.hset(BROKER_RUNS_KEY, 'gw-live', current, 'gw-killed', current);
  await storeWill(db, 'gw-live', 'd-live');
  await storeWill(db, 'gw-killed', 'd-back');
  const b = keeper(t, redis, 'gw-b');
  await b.keeper.start();

  await b.keeper.onConnect('d-back');
  assert.deepEqual(b.published, ['d-back gone'], 'published at the reconnect, before the reaper\u2019s second look');
  await b.keeper.onConnect('d-live');
  assert.deepEqual(b.published, ['d-back gone'], 'the live gateway publishes its own when it closes the old connection');
  assert.equal(await db.exists(willKey('gw-live', 'd-live')), 1);
});

test('onGone runs for a dead gateway after its wills and before it is forgotten; a failure leaves it for the next pass', async (t) => {
  const redis = await startRedis(t);
  if (!redis) return;
  const db = connection(t, redis);
  await db.zadd(BROKERS_KEY, String(Date.now() - 120_000), 'gw-dead');
  await storeWill(db, 'gw-dead', 'd1');
  const calls: { brokerId: string; registered: boolean; willsLeft: number }[] = [];
  let failures = 1;
  const b = keeper(t, redis, 'gw-b', {
    onGone: async (brokerId) => {
      calls.push({ brokerId, registered: (await db.zscore(BROKERS_KEY, brokerId)) !== null, willsLeft: await db.llen('will') });
      if (failures-- > 0) throw new Error('store down');
    },
  });
  await b.keeper.start(); // its first pass finds gw-dead, and onGone fails
  await until(() => calls.length === 2, 'onGone again at the next pass');
  assert.deepEqual(calls, [
    { brokerId: 'gw-dead', registered: true, willsLeft: 0 },
    { brokerId: 'gw-dead', registered: true, willsLeft: 0 },
  ]);
  assert.deepEqual(b.published, ['d1 gone'], 'the will once');
  await withDeadline(
    (async () => {
      while ((await db.zscore(BROKERS_KEY, 'gw-dead')) !== null) await sleep(10);
    })(),
    5000,
    'the dead gateway to be forgotten once onGone succeeded',
  );
  await sleep(3 * BEAT);
  assert.equal(calls.length, 2, 'and not called again');
  assert.ok(!calls.some((c) => c.brokerId === 'gw-b'), 'never for itself');
});
