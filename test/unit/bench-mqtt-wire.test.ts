/**
 * The benchmark's hand-made MQTT 3.1.1 codec (bench/lib/mqtt-wire.ts) against mqtt-packet, the
 * parser aedes uses: what we encode parses to the same packet there, and what it generates our
 * reader reads back, however the bytes are cut into chunks.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { generate, parser, type Packet } from 'mqtt-packet';
import { encodeConnect, encodePublish, encodePuback, encodeSubscribe, MqttReader, publishTemplate, PINGREQ, DISCONNECT } from '../../bench/lib/mqtt-wire.js';

function parseWithMqttPacket(buf: Buffer): Packet[] {
  const p = parser({ protocolVersion: 4 });
  const out: Packet[] = [];
  p.on('packet', (pk: Packet) => out.push(pk));
  p.on('error', (err: Error) => assert.fail(err));
  p.parse(buf);
  return out;
}

test('CONNECT with and without credentials parses as mqtt-packet reads it', () => {
  const [a] = parseWithMqttPacket(encodeConnect({ clientId: 'dev-1', username: 'dev-1', password: 'dt1.x.y.z', keepaliveSeconds: 30 }));
  assert.equal(a?.cmd, 'connect');
  const c = a as Packet & { clientId: string; username: string; password: Buffer; keepalive: number; clean: boolean; protocolVersion: number };
  assert.equal(c.clientId, 'dev-1');
  assert.equal(c.username, 'dev-1');
  assert.equal(c.password.toString(), 'dt1.x.y.z');
  assert.equal(c.keepalive, 30);
  assert.equal(c.clean, true);
  assert.equal(c.protocolVersion, 4);
  const [b] = parseWithMqttPacket(encodeConnect({ clientId: 'anon', clean: false }));
  assert.equal((b as Packet & { username?: string }).username, undefined);
  assert.equal((b as Packet & { clean: boolean }).clean, false);
});

test('SUBSCRIBE, PUBACK, PINGREQ and DISCONNECT parse as mqtt-packet reads them', () => {
  const packets = parseWithMqttPacket(
    Buffer.concat([
      encodeSubscribe(7, [
        { topic: 'devices/+/telemetry', qos: 1 },
        { topic: 'devices/d/errors', qos: 0 },
      ]),
      encodePuback(65535),
      PINGREQ,
      DISCONNECT,
    ]),
  );
  assert.deepEqual(
    packets.map((p) => p.cmd),
    ['subscribe', 'puback', 'pingreq', 'disconnect'],
  );
  const sub = packets[0] as Packet & { messageId: number; subscriptions: { topic: string; qos: number }[] };
  assert.equal(sub.messageId, 7);
  assert.deepEqual(
    sub.subscriptions.map((s) => [s.topic, s.qos]),
    [
      ['devices/+/telemetry', 1],
      ['devices/d/errors', 0],
    ],
  );
  assert.equal((packets[1] as Packet & { messageId: number }).messageId, 65535);
});

test('PUBLISH templates at QoS 0 and 1, any payload size, parse as mqtt-packet reads them', () => {
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 20_000 }), fc.constantFrom<0 | 1>(0, 1), fc.integer({ min: 1, max: 65535 }), (bytes, qos, mid) => {
      const payload = Buffer.from(bytes);
      const tpl = publishTemplate('devices/dev-ü/telemetry', payload, qos);
      if (qos === 1) tpl.bytes.writeUInt16BE(mid, tpl.messageIdOffset);
      assert.ok(tpl.bytes.subarray(tpl.payloadOffset).equals(payload));
      const [p] = parseWithMqttPacket(tpl.bytes) as (Packet & { topic: string; payload: Buffer; qos: number; messageId?: number })[];
      assert.equal(p?.topic, 'devices/dev-ü/telemetry');
      assert.equal(p?.qos, qos);
      assert.ok(Buffer.from(p.payload).equals(payload));
      if (qos === 1) assert.equal(p.messageId, mid);
    }),
    { numRuns: 200 },
  );
});

interface Seen {
  kind: string;
  detail: unknown;
}

function readAll(chunks: Buffer[]): Seen[] {
  const seen: Seen[] = [];
  const reader = new MqttReader({
    connack: (rc, sp) => seen.push({ kind: 'connack', detail: [rc, sp] }),
    suback: (id, granted) => seen.push({ kind: 'suback', detail: [id, granted] }),
    publish: (buf, ts, te, ps, pe, qos, mid) => seen.push({ kind: 'publish', detail: [buf.toString('utf8', ts, te), buf.subarray(ps, pe).toString('hex'), qos, mid] }),
    puback: (id) => seen.push({ kind: 'puback', detail: id }),
    pingresp: () => seen.push({ kind: 'pingresp', detail: null }),
    error: (message) => seen.push({ kind: 'error', detail: message }),
  });
  for (const c of chunks) reader.push(c);
  return seen;
}

test('the reader reads what mqtt-packet generates, however the stream is cut', () => {
  const stream = Buffer.concat([
    generate({ cmd: 'connack', returnCode: 0, sessionPresent: true }),
    generate({ cmd: 'suback', messageId: 3, granted: [1, 0, 128] }),
    generate({ cmd: 'publish', topic: 'devices/a/telemetry', payload: Buffer.from('{"t":1}'), qos: 0, retain: false, dup: false }),
    generate({ cmd: 'publish', topic: 'devices/b/telemetry', payload: Buffer.alloc(300, 7), qos: 1, messageId: 42, retain: false, dup: false }),
    generate({ cmd: 'puback', messageId: 9 }),
    generate({ cmd: 'pingresp' }),
    generate({ cmd: 'publish', topic: 'x', payload: Buffer.alloc(20_000, 1), qos: 1, messageId: 65535, retain: false, dup: false }),
  ]);
  const expected = readAll([stream]);
  assert.deepEqual(
    expected.map((s) => s.kind),
    ['connack', 'suback', 'publish', 'publish', 'puback', 'pingresp', 'publish'],
  );
  assert.deepEqual(expected[0]?.detail, [0, true]);
  assert.deepEqual(expected[1]?.detail, [3, [1, 0, 128]]);
  assert.deepEqual(expected[2]?.detail, ['devices/a/telemetry', Buffer.from('{"t":1}').toString('hex'), 0, 0]);
  assert.deepEqual((expected[3]?.detail as unknown[]).slice(2), [1, 42]);
  assert.equal(expected[4]?.detail, 9);
  fc.assert(
    fc.property(fc.array(fc.integer({ min: 1, max: stream.length }), { maxLength: 40 }), (cuts) => {
      const points = [...new Set(cuts)].sort((a, b) => a - b);
      const chunks: Buffer[] = [];
      let at = 0;
      for (const p of points) {
        chunks.push(stream.subarray(at, p));
        at = p;
      }
      chunks.push(stream.subarray(at));
      assert.deepEqual(readAll(chunks), expected);
    }),
    { numRuns: 300 },
  );
});

test('encodePublish writes the packet id', () => {
  const [p] = parseWithMqttPacket(encodePublish('t/1', Buffer.from('x'), 1, 513)) as (Packet & { messageId: number })[];
  assert.equal(p?.messageId, 513);
});
