/**
 * protocols/mqtt/write-batch.ts: the packets mqtt-packet writes to one connection in one
 * event-loop turn leave in one write, in order, before the turn's `setImmediate` continuations
 * (aedes closes a refused client in one: its CONNACK must still go out), and never make the
 * stream report back-pressure that is not there.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, connect as netConnect, type AddressInfo, type Socket } from 'node:net';
import { Writable, type Duplex } from 'node:stream';
import mqttPacket, { type Packet } from 'mqtt-packet';
import { batchWrites } from '../../protocols/mqtt/write-batch.js';

/** A sink that records each write the stream makes (one entry per `_writev`/`_write` call). */
function recordingSink(): { stream: Writable; writes: Buffer[][] } {
  const writes: Buffer[][] = [];
  const stream = new Writable({
    highWaterMark: 16 * 1024,
    writev(chunks, cb) {
      writes.push(chunks.map((c) => Buffer.from(c.chunk as Buffer)));
      cb();
    },
    write(chunk: Buffer, _enc, cb) {
      writes.push([Buffer.from(chunk)]);
      cb();
    },
  });
  return { stream, writes };
}

const puback = (messageId: number): Packet => ({ cmd: 'puback', messageId }) as Packet;
const publish = (payload: Buffer): Packet => ({ cmd: 'publish', topic: 't', payload, qos: 0, retain: false, dup: false }) as Packet;
const turn = () => new Promise<void>((resolve) => setImmediate(resolve));
const decode = (bytes: Buffer): Packet[] => {
  const out: Packet[] = [];
  const parser = mqttPacket.parser();
  parser.on('packet', (p) => out.push(p));
  parser.parse(bytes);
  return out;
};

/**
 * Writes PUBACK 1..n, each in a `setImmediate` of its own, all queued in one turn: as aedes
 * continues after its writes (in a `setImmediate`) for the messages of several clients.
 */
async function pubacksInImmediates(stream: Writable, n: number): Promise<void> {
  await new Promise<void>((resolve) => {
    for (let id = 1; id <= n; id++) {
      setImmediate(() => {
        mqttPacket.writeToStream(puback(id), stream);
        if (id === n) resolve();
      });
    }
  });
}

describe('batchWrites', () => {
  it('stock: one write per packet written in its own setImmediate (what this module is for)', async () => {
    const { stream, writes } = recordingSink();
    await pubacksInImmediates(stream, 5);
    await turn();
    assert.equal(writes.length, 5);
  });

  it('sends the packets of one turn in one write, in order', async () => {
    const { stream, writes } = recordingSink();
    batchWrites(stream as unknown as Duplex);
    await pubacksInImmediates(stream, 5);
    assert.equal(writes.length, 0, 'held until the turn ends');
    await turn();
    assert.equal(writes.length, 1);
    assert.deepEqual(
      decode(Buffer.concat(writes[0] as Buffer[])).map((p) => (p as { messageId?: number }).messageId),
      [1, 2, 3, 4, 5],
    );
    // A later turn gets a write of its own.
    await pubacksInImmediates(stream, 1);
    await turn();
    assert.equal(writes.length, 2);
  });

  it('several connections of one turn: each sends its packets in one write', async () => {
    const sinks = [recordingSink(), recordingSink(), recordingSink()];
    for (const { stream } of sinks) batchWrites(stream as unknown as Duplex);
    await new Promise<void>((resolve) => {
      for (let id = 1; id <= 12; id++) {
        setImmediate(() => {
          mqttPacket.writeToStream(puback(id), (sinks[id % 3] as { stream: Writable }).stream);
          if (id === 12) resolve();
        });
      }
    });
    await turn();
    for (const { writes } of sinks) {
      assert.equal(writes.length, 1);
      assert.equal(decode(Buffer.concat(writes[0] as Buffer[])).length, 4);
    }
  });

  it('leaves a stream with its own cork alone', async () => {
    const { stream, writes } = recordingSink();
    const own = () => undefined;
    stream.cork = own;
    batchWrites(stream as unknown as Duplex);
    assert.equal(stream.cork, own);
    mqttPacket.writeToStream(puback(1), stream);
    assert.ok(writes.length >= 1, 'written at once: nothing held');
  });

  it('releases early once 8 KiB are held, and never reports back-pressure for held bytes', async () => {
    const { stream, writes } = recordingSink();
    batchWrites(stream as unknown as Duplex);
    const results: boolean[] = [];
    await new Promise<void>((resolve) => {
      for (let n = 0; n < 40; n++) {
        setImmediate(() => {
          results.push(mqttPacket.writeToStream(publish(Buffer.alloc(1000, n)), stream));
          if (n === 39) resolve();
        });
      }
    });
    await turn();
    assert.ok(results.every(Boolean), 'write() returned false');
    assert.ok(writes.length >= 4 && writes.length <= 6, `${writes.length} writes for 40 KB`);
    const packets = decode(Buffer.concat(writes.flat()));
    assert.equal(packets.length, 40);
    packets.forEach((p, i) => assert.equal((p as { payload: Buffer }).payload[0], i));
  });

  it('end() sends what is held', async () => {
    const { stream, writes } = recordingSink();
    batchWrites(stream as unknown as Duplex);
    mqttPacket.writeToStream(puback(1), stream);
    await new Promise<void>((resolve) => process.nextTick(resolve));
    stream.end();
    await new Promise<void>((resolve) => stream.once('finish', resolve));
    assert.equal(decode(Buffer.concat(writes.flat())).length, 1);
  });

  it('destroy() sends what is held first (aedes destroys from a promise callback when a store fails)', async () => {
    const server = createServer((socket: Socket) => {
      batchWrites(socket);
      socket.once('data', () => {
        mqttPacket.writeToStream(puback(7), socket);
        void Promise.resolve().then(() => socket.destroy(new Error('the next message failed')));
      });
      socket.on('error', () => undefined);
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    try {
      const client = netConnect((server.address() as AddressInfo).port, '127.0.0.1', () => client.write('x'));
      const chunks: Buffer[] = [];
      client.on('data', (c: Buffer) => chunks.push(c));
      client.on('error', () => undefined);
      await new Promise<void>((resolve) => client.on('close', () => resolve()));
      const packets = decode(Buffer.concat(chunks));
      assert.deepEqual(packets.map((p) => [p.cmd, (p as { messageId?: number }).messageId]), [['puback', 7]]);
    } finally {
      server.close();
    }
  });

  it('leaves a stream that cannot write several chunks at once (no _writev) alone', () => {
    const stream = new Writable({ write: (_c, _e, cb) => cb() });
    batchWrites(stream as unknown as Duplex);
    assert.equal(stream.cork, Writable.prototype.cork);
  });

  it('a CONNACK written before a close in the next setImmediate reaches the client (aedes refusing a login)', async () => {
    const server = createServer((socket: Socket) => {
      batchWrites(socket);
      mqttPacket.writeToStream({ cmd: 'connack', returnCode: 5, sessionPresent: false } as Packet, socket);
      setImmediate(() => socket.destroy());
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    try {
      const client = netConnect((server.address() as AddressInfo).port, '127.0.0.1');
      const chunks: Buffer[] = [];
      client.on('data', (c: Buffer) => chunks.push(c));
      await new Promise<void>((resolve, reject) => {
        client.on('close', () => resolve());
        client.on('error', reject);
      });
      const packets = decode(Buffer.concat(chunks));
      assert.equal(packets.length, 1);
      assert.equal(packets[0]?.cmd, 'connack');
      assert.equal((packets[0] as { returnCode: number }).returnCode, 5);
    } finally {
      server.close();
    }
  });
});
