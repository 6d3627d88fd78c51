/**
 * protocols/mqtt/emitter.ts: aedes' publish queue (mqemitter 7.1) without its stack overflow and
 * O(n) shift. Stock mqemitter with a backlog of messages nobody subscribed to recurses once per
 * message and dies with RangeError; the hardened one finishes them in a loop, in order.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import mqemitter from 'mqemitter';
import { hardenEmitter, memoryEmitter, RingQueue } from '../../protocols/mqtt/emitter.js';

type Emitter = ReturnType<typeof mqemitter>;

/** Fills the emitter's queue behind one slow subscriber, then releases it. */
function backlog(mq: Emitter, n: number): Promise<number[]> {
  return new Promise((resolve, reject) => {
    let release!: () => void;
    mq.on('slow', (_m, done) => {
      release = done;
    });
    const finished: number[] = [];
    // concurrency 1: the first emit is in flight (never finished until released), the rest queue.
    mq.emit({ topic: 'slow' });
    for (let i = 0; i < n; i++) {
      mq.emit({ topic: `nobody/${i}` }, (err?: Error) => {
        if (err) reject(err);
        finished.push(i);
        if (finished.length === n) resolve(finished);
      });
    }
    try {
      release();
    } catch (err) {
      reject(err);
    }
  });
}

describe('hardenEmitter', () => {
  it('stock mqemitter overflows the stack on a backlog without subscribers (the bug this fixes)', async () => {
    await assert.rejects(backlog(mqemitter({ concurrency: 1 }), 200_000), RangeError);
  });

  it('the hardened emitter finishes 200,000 queued messages without subscribers, in order', async () => {
    const finished = await backlog(hardenEmitter(mqemitter({ concurrency: 1 })), 200_000);
    assert.equal(finished.length, 200_000);
    assert.ok(finished.every((v, i) => v === i), 'callbacks in emit order');
  });

  it('still delivers to subscribers (wildcards included) and respects concurrency', async () => {
    const mq = memoryEmitter(2);
    const got: string[] = [];
    mq.on('devices/+/telemetry', (m: { topic: string }, done: () => void) => {
      got.push(m.topic);
      setImmediate(done);
    });
    await Promise.all(
      ['devices/a/telemetry', 'devices/b/telemetry', 'other', 'devices/c/telemetry'].map(
        (topic) => new Promise<void>((resolve) => mq.emit({ topic }, () => resolve())),
      ),
    );
    assert.deepEqual(got, ['devices/a/telemetry', 'devices/b/telemetry', 'devices/c/telemetry']);
  });
});

describe('RingQueue', () => {
  it('is a FIFO across growth and wrap-around', () => {
    const q = new RingQueue<number>();
    const out: number[] = [];
    let next = 0;
    for (let round = 0; round < 50; round++) {
      for (let i = 0; i < 37; i++) q.push(next++);
      for (let i = 0; i < 20; i++) out.push(q.shift()!);
    }
    while (q.length > 0) out.push(q.shift()!);
    assert.equal(q.shift(), undefined);
    assert.deepEqual(out, Array.from({ length: next }, (_, i) => i));
  });
});
