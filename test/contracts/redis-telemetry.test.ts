/**
 * The TelemetryStore contract on a real redis-server (one per file, a fresh key prefix per test),
 * plus: an awaited append is readable by another gateway at once, appends from clocks that
 * disagree are all kept, a device's history expires as a whole after retentionMs idle, and with an
 * event outbox each stored record's CloudEvent is written with it (and only then).
 */
import { after, describe, it, test } from 'node:test';
import assert from 'node:assert/strict';
import { RedisKeys, RedisTelemetryStore } from '../../src/stores/redis/index.js';
import type { TelemetryEventOutbox } from '../../src/stores/redis/telemetry.js';
import type { TelemetryRecord } from '../../src/core/model.js';
import { toCloudEvent } from '../../src/core/cloudevents.js';
import { eventFromFields, streamFields } from '../../src/upstream/redis-stream.js';
import { connect, redisForFile } from './redis-harness.js';
import { record, telemetryStoreContract } from './telemetry-store.js';

const retention = { retentionCount: 100, retentionMs: 3_600_000 };


const env = await redisForFile('redis telemetry store');
if (env) {
  const { redis, shared } = env;
  let n = 0;
  telemetryStoreContract('redis', async (r) => new RedisTelemetryStore(shared.client, new RedisKeys(`t${++n}:`), r));

  describe('RedisTelemetryStore', () => {
    it('an awaited append is in Redis: another gateway reads it at once', async (t) => {
      const prefix = `x${++n}:`;
      const a = await connect(redis.url, prefix, t);
      const b = await connect(redis.url, prefix, t);
      const now = Date.now();
      const appends = Array.from({ length: 50 }, (_, i) => a.telemetry.append(record('dev-1', now + i, { i })));
      await Promise.all(appends);
      assert.deepEqual((await b.telemetry.history('dev-1', { limit: 3 })).map((r) => r.data.i), [47, 48, 49]);
      assert.deepEqual((await b.telemetry.latest('dev-1'))?.data, { i: 49 });
      await b.telemetry.forget('dev-1');
      assert.equal(await a.telemetry.latest('dev-1'), null);
    });

    it('one refused record of a batch fails alone: the others of the same turn are stored and resolve', async () => {
      const keys = new RedisKeys(`x${++n}:`);
      const s = new RedisTelemetryStore(shared.client, keys, retention);
      // A key of the wrong type: XADD (and its fallback) are refused for that device only.
      await shared.client.set(keys.telemetry('broken'), 'not a stream');
      const now = Date.now();
      const [good, bad, alsoGood] = await Promise.allSettled([
        s.append(record('ok-1', now, { i: 1 })),
        s.append(record('broken', now, { i: 2 })),
        s.append(record('ok-2', now, { i: 3 })),
      ]);
      assert.equal(good.status, 'fulfilled');
      assert.equal(alsoGood.status, 'fulfilled');
      assert.equal(bad.status, 'rejected');
      assert.match(String((bad as PromiseRejectedResult).reason), /WRONGTYPE/);
      assert.deepEqual((await s.latest('ok-1'))?.data, { i: 1 });
      assert.deepEqual((await s.latest('ok-2'))?.data, { i: 3 });
    });

    it('keeps appends whose receivedAt is older than the newest (clocks of two gateways)', async () => {
      const s = new RedisTelemetryStore(shared.client, new RedisKeys(`x${++n}:`), retention);
      const now = Date.now();
      await s.append(record('dev-2', now, { i: 0 }));
      await s.append(record('dev-2', now - 50, { i: 1 }));
      await s.append(record('dev-2', now + 1, { i: 2 }));
      const all = await s.history('dev-2', { limit: 10 });
      assert.deepEqual(all.map((r) => r.data.i), [0, 1, 2], 'in append order');
      assert.equal(all[1]?.receivedAt, now - 50, 'each record keeps its own receivedAt');
    });

    it('bounds a device: exact count, and the whole history expires retentionMs after the last append', async () => {
      const keys = new RedisKeys(`x${++n}:`);
      const s = new RedisTelemetryStore(shared.client, keys, { retentionCount: 5, retentionMs: 60_000 });
      const now = Date.now();
      for (let i = 0; i < 12; i++) await s.append(record('dev-3', now + i, { i }));
      assert.equal(await shared.client.xlen(keys.telemetry('dev-3')), 5);
      const ttl = await shared.client.pttl(keys.telemetry('dev-3'));
      assert.ok(ttl > 50_000 && ttl <= 60_000, `pttl ${ttl}`);
    });

    it('trims by age within one batch: entries older than retentionMs below the newest go', async () => {
      const keys = new RedisKeys(`x${++n}:`);
      const s = new RedisTelemetryStore(shared.client, keys, { retentionCount: 100, retentionMs: 60_000 });
      const now = Date.now();
      // One turn, one script call: the old entry is added, then trimmed below the newest's bound.
      await Promise.all([s.append(record('dev-5', now - 120_000, { i: 0 })), s.append(record('dev-5', now, { i: 1 }))]);
      const ids = (await shared.client.xrange(keys.telemetry('dev-5'), '-', '+')).map(([id]) => id);
      assert.equal(ids.length, 1, `left: ${ids.join(', ')}`);
      assert.ok(ids[0]?.startsWith(`${now}-`));
    });

    it('appends after Redis lost its script cache (a restart, SCRIPT FLUSH): EVAL instead of EVALSHA', async () => {
      const s = new RedisTelemetryStore(shared.client, new RedisKeys(`x${++n}:`), retention);
      const now = Date.now();
      await s.append(record('dev-6', now, { i: 0 }));
      await shared.client.script('FLUSH');
      await Promise.all([s.append(record('dev-6', now + 1, { i: 1 })), s.append(record('dev-6', now + 2, { i: 2 }))]);
      assert.deepEqual((await s.history('dev-6', { limit: 10 })).map((r) => r.data.i), [0, 1, 2]);
    });

    describe('with an event outbox (the event stream writer hands it over)', () => {
      const outbox = (key: string) => {
        const seen = { written: 0, refused: [] as { eventId: string; err: string }[] };
        const box: TelemetryEventOutbox = {
          key,
          maxLen: 1000,
          written: (count) => (seen.written += count),
          refused: (eventId, err) => seen.refused.push({ eventId, err }),
        };
        return { box, seen };
      };

      it('writes the event of each stored record in the same call: the CloudEvent SSE shows, its data the stored JSON', async () => {
        const s = new RedisTelemetryStore(shared.client, new RedisKeys(`x${++n}:`), retention);
        const eventsKey = `x${n}:events`;
        const { box, seen } = outbox(eventsKey);
        s.writeEventsTo(box);
        const now = Date.now();
        const records = [record('ev-1', now, { i: 0 }), record('ev-2', now + 1, { i: 1 }), record('ev-1', now + 2, { i: 2 })];
        const json = await Promise.all(records.map((r) => s.append(r)));
        const entries = await shared.client.xrange(eventsKey, '-', '+');
        assert.equal(entries.length, 3);
        entries.forEach(([, fields], i) => {
          const r = records[i] as TelemetryRecord;
          assert.deepEqual(fields, streamFields(toCloudEvent('iotgate.telemetry', r.deviceId, r)));
          assert.equal(fields[fields.length - 1], json[i]);
        });
        assert.equal(seen.written, 3);
        assert.deepEqual(seen.refused, []);
      });

      it('a record not stored has no event; a refused event leaves its record stored and is reported', async () => {
        const keys = new RedisKeys(`x${++n}:`);
        const s = new RedisTelemetryStore(shared.client, keys, retention);
        const eventsKey = `x${n}:events`;
        const { box, seen } = outbox(eventsKey);
        s.writeEventsTo(box);
        await shared.client.set(keys.telemetry('broken'), 'not a stream');
        const now = Date.now();
        const [good, bad] = await Promise.allSettled([s.append(record('ok-1', now, { i: 1 })), s.append(record('broken', now, { i: 2 }))]);
        assert.equal(good.status, 'fulfilled');
        assert.equal(bad.status, 'rejected');
        const events = (await shared.client.xrange(eventsKey, '-', '+')).map(([, f]) => eventFromFields(f));
        assert.deepEqual(events.map((e) => e.subject), ['ok-1']);

        // The event stream's key holds something else: records are still stored, events reported.
        await shared.client.del(eventsKey);
        await shared.client.set(eventsKey, 'not a stream');
        const r = record('ok-2', now + 1, { i: 3 });
        await s.append(r);
        assert.deepEqual((await s.latest('ok-2'))?.data, { i: 3 });
        assert.equal(seen.refused.length, 1);
        assert.equal(seen.refused[0]?.eventId, r.id);
        assert.match(seen.refused[0]?.err ?? '', /WRONGTYPE/);
        assert.equal(seen.written, 1);
      });
    });

    it('keeps numbers and strings of the data exactly', async () => {
      const s = new RedisTelemetryStore(shared.client, new RedisKeys(`x${++n}:`), retention);
      const data = { big: 9007199254740991, pi: 3.141592653589793, tiny: 1e-300, s: 'é\u0000"', nested: { a: [1, null, { b: true }] } };
      const r = record('dev-4', Date.now(), data);
      await s.append(r);
      assert.deepEqual(await s.latest('dev-4'), r);
    });
  });
}
