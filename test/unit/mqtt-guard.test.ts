/**
 * The byte-level frame guard (protocols/mqtt/guard.ts) driven chunk by chunk: it must follow the
 * MQTT fixed headers exactly however the bytes are split, and close the stream at the first
 * oversized, malformed or out-of-order packet without ever buffering.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { varint } from '../helpers/bytes.js';
import { PassThrough } from 'node:stream';
import mqttPacket from 'mqtt-packet';
import { CONNECT, DISCONNECT, guardStream, type GuardState } from '../../protocols/mqtt/guard.js';

const PINGREQ = 12;
const PUBLISH = 3;
const SUBSCRIBE = 8;

/** A stream stub with the guard attached; `feed` hands it chunks the way a socket's 'data' would. */
function guarded(maxPacketBytes: number): { stream: PassThrough; state: GuardState; feed(...chunks: Buffer[]): void; seen: Buffer[] } {
  const stream = new PassThrough();
  stream.on('error', () => undefined);
  const seen: Buffer[] = [];
  // Another reader on the same stream (as aedes is): the guard must not consume or alter data.
  stream.on('data', (c: Buffer) => seen.push(c));
  const state = guardStream(stream, maxPacketBytes);
  return {
    stream,
    state,
    seen,
    feed(...chunks) {
      for (const c of chunks) stream.emit('data', c);
    },
  };
}

/** Fixed header with an explicit remaining length (the body is not included). */
function header(type: number, remaining: number, flags = 0): Buffer {
  return Buffer.concat([Buffer.from([(type << 4) | flags]), varint(remaining)]);
}

const connect = mqttPacket.generate({ cmd: 'connect', clientId: 'dev-1', username: 'dev-1', password: Buffer.from('secret'), keepalive: 60, protocolVersion: 4 });
const publish = mqttPacket.generate({ cmd: 'publish', topic: 'devices/dev-1/telemetry', payload: Buffer.alloc(300, 7), qos: 1, messageId: 42, retain: false, dup: false });
const subscribe = mqttPacket.generate({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'devices/dev-1/#', qos: 1 }] });
const pingreq = mqttPacket.generate({ cmd: 'pingreq' });
const disconnect = mqttPacket.generate({ cmd: 'disconnect' });
const session = Buffer.concat([connect, publish, subscribe, pingreq, disconnect]);

describe('guardStream', () => {
  it('accepts a session fed in one chunk and records DISCONNECT as the last type', () => {
    const g = guarded(1024);
    g.feed(session);
    assert.equal(g.state.violation, null);
    assert.equal(g.state.lastType, DISCONNECT);
    assert.equal(g.stream.destroyed, false);
    assert.deepEqual(Buffer.concat(g.seen), session, 'other readers see every byte unchanged');
  });

  it('follows packets split across two chunks at every byte boundary', () => {
    for (let cut = 0; cut <= session.length; cut++) {
      const g = guarded(1024);
      g.feed(session.subarray(0, cut), session.subarray(cut));
      assert.equal(g.state.violation, null, `split at ${cut}`);
      assert.equal(g.state.lastType, DISCONNECT, `split at ${cut}`);
      assert.equal(g.stream.destroyed, false, `split at ${cut}`);
    }
  });

  it('follows packets fed one byte at a time, with the right last type after every packet', () => {
    const g = guarded(1024);
    const ends = [
      [connect.length, CONNECT],
      [connect.length + publish.length, PUBLISH],
      [connect.length + publish.length + subscribe.length, SUBSCRIBE],
      [connect.length + publish.length + subscribe.length + pingreq.length, PINGREQ],
      [session.length, DISCONNECT],
    ] as const;
    for (let i = 0; i < session.length; i++) {
      g.feed(session.subarray(i, i + 1));
      const end = ends.find(([at]) => at === i + 1);
      if (end) assert.equal(g.state.lastType, end[1], `after byte ${i}`);
    }
    assert.equal(g.state.violation, null);
    assert.equal(g.stream.destroyed, false);
  });

  it('follows many packets in one chunk and a packet spread over three chunks', () => {
    const many = Buffer.concat([connect, ...Array.from({ length: 50 }, () => Buffer.concat([publish, pingreq])), subscribe]);
    const g = guarded(1024);
    g.feed(many);
    assert.equal(g.state.lastType, SUBSCRIBE);
    const g2 = guarded(1024);
    g2.feed(connect, publish.subarray(0, 1), publish.subarray(1, 2), publish.subarray(2), pingreq);
    assert.equal(g2.state.lastType, PINGREQ);
    assert.equal(g2.state.violation, null);
  });

  it('ignores empty chunks', () => {
    const g = guarded(1024);
    g.feed(Buffer.alloc(0), connect, Buffer.alloc(0), pingreq, Buffer.alloc(0));
    assert.equal(g.state.lastType, PINGREQ);
    assert.equal(g.state.violation, null);
  });

  it('decodes remaining lengths of 1 to 4 bytes at every encoding boundary', () => {
    const max = 300 * 1024 * 1024;
    const body = Buffer.alloc(1024 * 1024);
    for (const [remaining, lengthBytes] of [
      [0, 1],
      [1, 1],
      [127, 1],
      [128, 2],
      [16_383, 2],
      [16_384, 3],
      [2_097_151, 3],
      [2_097_152, 4],
      [268_435_455, 4],
    ] as const) {
      const h = header(PUBLISH, remaining, 2);
      assert.equal(h.length, 1 + lengthBytes, `encoding of ${remaining}`);
      const g = guarded(max);
      g.feed(connect, h);
      for (let left = remaining; left > 0; left -= body.length) g.feed(body.subarray(0, Math.min(left, body.length)));
      assert.equal(g.state.lastType, PUBLISH, `${remaining}`);
      // If the length was misread, this byte would be taken as body (or the next header).
      g.feed(pingreq);
      assert.equal(g.state.lastType, PINGREQ, `the header after a body of ${remaining} bytes`);
      assert.equal(g.state.violation, null, `${remaining}`);
    }
  });

  it('decodes a length whose bytes arrive in separate chunks', () => {
    const h = header(PUBLISH, 2_097_152, 0); // 4 length bytes
    const g = guarded(3 * 1024 * 1024);
    g.feed(connect);
    for (const b of h) g.feed(Buffer.from([b]));
    g.feed(Buffer.alloc(2_097_151));
    g.feed(Buffer.concat([Buffer.alloc(1), pingreq]));
    assert.equal(g.state.lastType, PINGREQ);
    assert.equal(g.state.violation, null);
  });

  it('closes on a 5-byte (malformed) remaining length', () => {
    const g = guarded(Number.MAX_SAFE_INTEGER);
    g.feed(connect, Buffer.from([0x30, 0xff, 0xff, 0xff, 0xff, 0x7f]));
    assert.equal(g.state.violation, 'malformed remaining length');
    assert.equal(g.stream.destroyed, true);
  });

  it('closes on a malformed length split across chunks', () => {
    const g = guarded(Number.MAX_SAFE_INTEGER);
    g.feed(connect, Buffer.from([0x30, 0x80]), Buffer.from([0x80, 0x80]), Buffer.from([0x80]));
    assert.equal(g.state.violation, 'malformed remaining length');
    assert.equal(g.stream.destroyed, true);
  });

  it('allows a packet of exactly the limit and closes at one byte more, before any body arrives', () => {
    const max = 1000;
    const exact = header(PUBLISH, max - 3); // 1 type byte + 2 length bytes + body = max
    const g = guarded(max);
    g.feed(connect, exact, Buffer.alloc(max - 3), pingreq);
    assert.equal(g.state.violation, null);
    assert.equal(g.state.lastType, PINGREQ);

    const over = header(PUBLISH, max - 2);
    const g2 = guarded(max);
    g2.feed(connect, over);
    assert.equal(g2.state.violation, `packet of ${max + 1} bytes exceeds the limit of ${max}`);
    assert.equal(g2.stream.destroyed, true);
  });

  it('closes an oversized CONNECT as soon as its length is known', () => {
    const g = guarded(262_144);
    g.feed(header(CONNECT, 200 * 1024 * 1024));
    assert.match(g.state.violation ?? '', /exceeds the limit of 262144/);
    assert.equal(g.stream.destroyed, true);
    assert.equal(g.state.lastType, CONNECT);
  });

  it('counts the fixed header in the limit', () => {
    const g = guarded(2);
    g.feed(header(CONNECT, 0));
    assert.equal(g.state.violation, null, 'a 2-byte packet fits a 2-byte limit');
    g.feed(Buffer.from([0x30, 0x01]));
    assert.match(g.state.violation ?? '', /packet of 3 bytes exceeds the limit of 2/);
  });

  it('closes when the first packet is not CONNECT', () => {
    for (const first of [publish, pingreq, subscribe, disconnect, Buffer.from([0x20, 0x02, 0x00, 0x00]), Buffer.from([0xf0, 0x00])]) {
      const g = guarded(1024);
      g.feed(first);
      assert.equal(g.state.violation, 'the first packet is not CONNECT', first.toString('hex'));
      assert.equal(g.stream.destroyed, true);
      assert.equal(g.state.lastType, 0, 'nothing was accepted');
    }
  });

  it('closes on reserved packet type 0, first or later', () => {
    const g = guarded(1024);
    g.feed(Buffer.from([0x00, 0xff, 0xff]));
    assert.ok(g.state.violation, 'type 0 first');
    const g2 = guarded(1024);
    g2.feed(connect, Buffer.from([0x00, 0x00]));
    assert.equal(g2.state.violation, 'packet type 0 is reserved');
    assert.equal(g2.stream.destroyed, true);
  });

  it('stops inspecting after a violation', () => {
    const g = guarded(1024);
    g.feed(connect, Buffer.from([0x00]));
    const { violation, lastType } = g.state;
    g.feed(pingreq, header(PUBLISH, 5000));
    assert.equal(g.state.violation, violation);
    assert.equal(g.state.lastType, lastType);
    assert.equal(g.stream.listeners('data').length, 1, 'only the other reader is left');
  });

  it('works on a real flowing stream (data written, not emitted by hand)', async () => {
    const stream = new PassThrough();
    stream.on('error', () => undefined);
    const state = guardStream(stream, 64);
    const closed = new Promise<void>((resolve) => stream.once('close', () => resolve()));
    stream.write(connect.subarray(0, 3));
    stream.write(connect.subarray(3));
    stream.write(header(PUBLISH, 500));
    await closed;
    assert.match(state.violation ?? '', /exceeds the limit of 64/);
  });
});
