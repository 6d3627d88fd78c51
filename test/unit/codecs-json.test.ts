import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { SchemaRegistry } from '../../src/codecs/registry.js';
import type { DecodeResult, DeviceTypeCodec } from '../../src/codecs/codec.js';
import { accepted, rejected } from '../helpers/codecs.js';

const SCHEMAS = join(import.meta.dirname, '..', '..', 'schemas');
const LIMITS = { maxBytes: 64 * 1024, maxDepth: 16 };
const registry = SchemaRegistry.loadSync(SCHEMAS, LIMITS);

function codec(type: string, r = registry): DeviceTypeCodec {
  const c = r.get(type);
  assert.ok(c, `type ${type} is loaded`);
  return c;
}

function decode(type: string, payload: string | Buffer, r = registry): DecodeResult {
  return codec(type, r).decodeTelemetry(typeof payload === 'string' ? Buffer.from(payload) : payload);
}


test('generic accepts any JSON object and returns it as parsed', () => {
  const doc = { temp: 21.5, nested: { a: [1, 2, { b: null }] }, s: 'x' };
  const res = accepted(decode('generic', JSON.stringify(doc)));
  assert.deepEqual(res.value, doc);
  assert.equal(res.deviceTime, null);
  assert.equal(codec('generic').encoding, 'json');
  assert.equal(codec('generic').jsonFallback, false);
});

test('deviceTime: ts or timestamp, epoch ms or RFC 3339, only when sane', () => {
  assert.equal(accepted(decode('generic', '{"ts": 1714564800123}')).deviceTime, 1714564800123);
  assert.equal(accepted(decode('generic', '{"ts": "2024-05-01T12:00:00.123Z"}')).deviceTime, 1714564800123);
  assert.equal(accepted(decode('generic', '{"timestamp": "2024-05-01T14:00:00+02:00"}')).deviceTime, 1714564800000);
  assert.equal(accepted(decode('generic', '{"ts": "garbage", "timestamp": 1714564800000}')).deviceTime, 1714564800000);
  // Epoch seconds (1970 as ms), a local time without zone, a non-date and a far-future value are not device times.
  assert.equal(accepted(decode('generic', '{"ts": 1714564800}')).deviceTime, null);
  assert.equal(accepted(decode('generic', '{"ts": "2024-05-01T12:00:00"}')).deviceTime, null);
  assert.equal(accepted(decode('generic', '{"ts": "yesterday"}')).deviceTime, null);
  assert.equal(accepted(decode('generic', '{"ts": 99999999999999}')).deviceTime, null);
  assert.equal(accepted(decode('generic', '{"ts": {"s": 1}}')).deviceTime, null);
});

test('invalid JSON is undecodable, with the parser reason', () => {
  const e = rejected(decode('generic', '{"temp": 21.5,'), 'undecodable');
  assert.match(e.message, /^invalid JSON: .+/);
  assert.match(e.message, /JSON/);
  const e2 = rejected(decode('generic', '{"a" 1}'), 'undecodable');
  assert.match(e2.message, /Expected ':'/);
  rejected(decode('generic', ''), 'undecodable');
});

test('bytes that are not UTF-8 are undecodable; a UTF-8 BOM is accepted', () => {
  const e = rejected(decode('generic', Buffer.from([0x7b, 0x22, 0x61, 0x22, 0x3a, 0x22, 0xff, 0xfe, 0x22, 0x7d])), 'undecodable');
  assert.match(e.message, /UTF-8/);
  const bom = Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), Buffer.from('{"a":1}')]);
  assert.deepEqual(accepted(decode('generic', bom)).value, { a: 1 });
});

test('telemetry must be a JSON object: arrays, null and scalars are schema violations', () => {
  for (const [payload, kind] of [
    ['[1, 2, 3]', 'an array'],
    ['null', 'null'],
    ['42', 'a number'],
    ['"hello"', 'a string'],
    ['true', 'a boolean'],
  ] as const) {
    const e = rejected(decode('generic', payload), 'schema_violation');
    assert.equal(e.message, `telemetry must be a JSON object, got ${kind}`);
  }
  rejected(decode('tracker', '[{"lat": 1, "lon": 2}]'), 'schema_violation');
});

test('size limit: raw bytes above maxBytes are too_large, at the limit accepted', () => {
  const small = SchemaRegistry.loadSync(SCHEMAS, { maxBytes: 32, maxDepth: 16 });
  const exact = `{"s":"${'x'.repeat(32 - 8)}"}`;
  assert.equal(Buffer.byteLength(exact), 32);
  accepted(decode('generic', exact, small));
  const e = rejected(decode('generic', `{"s":"${'x'.repeat(25)}"}`, small), 'too_large');
  assert.equal(e.message, 'payload is 33 bytes; the limit is 32');
  // The size check comes first: an oversized invalid document is too_large, not undecodable.
  rejected(decode('generic', '{'.repeat(100), small), 'too_large');
  rejected(decode('generic', Buffer.alloc(64 * 1024 + 1, 0x20)), 'too_large');
});

function nested(levels: number): string {
  // `levels` objects inside each other: {"a":{"a":...{}}}
  return '{"a":'.repeat(levels - 1) + '{}' + '}'.repeat(levels - 1);
}

test('depth limit: 16 levels accepted, 17 too_deep with the limit and the path', () => {
  accepted(decode('generic', nested(16)));
  const e = rejected(decode('generic', nested(17)), 'too_deep');
  assert.equal(e.message, 'document nests deeper than the limit of 16 levels');
  assert.equal(e.path, '/a'.repeat(16));
  // Arrays count as levels too.
  accepted(decode('generic', `{"a":${'['.repeat(15)}${']'.repeat(15)}}`));
  const arr = rejected(decode('generic', `{"a":${'['.repeat(16)}${']'.repeat(16)}}`), 'too_deep');
  assert.equal(arr.path, `/a${'/0'.repeat(15)}`);
});

test('a hostile, very deep document is rejected without blowing the stack', () => {
  const big = SchemaRegistry.loadSync(SCHEMAS, { maxBytes: 1024 * 1024, maxDepth: 16 });
  const levels = 200_000;
  const e = rejected(decode('generic', `{"a":${'['.repeat(levels)}${']'.repeat(levels)}}`, big), 'too_deep');
  assert.match(e.message, /limit of 16/);
});

test('tracker: a valid fix is accepted with its device time', () => {
  const res = accepted(decode('tracker', '{"lat": 48.8584, "lon": 2.2945, "speed": 3.5, "heading": 270, "battery": 81, "ts": "2024-05-01T12:00:00Z"}'));
  assert.deepEqual(res.value, { lat: 48.8584, lon: 2.2945, speed: 3.5, heading: 270, battery: 81, ts: '2024-05-01T12:00:00Z' });
  assert.equal(res.deviceTime, Date.UTC(2024, 4, 1, 12));
  assert.equal(accepted(decode('tracker', '{"lat": 0, "lon": 0, "ts": 1714564800000}')).deviceTime, 1714564800000);
});

test('tracker: schema violations name the path and the rule', () => {
  const lat = rejected(decode('tracker', '{"lat": 200, "lon": 2}'), 'schema_violation');
  assert.equal(lat.path, '/lat');
  assert.equal(lat.message, '/lat must be <= 90');

  const lon = rejected(decode('tracker', '{"lat": 1}'), 'schema_violation');
  assert.equal(lon.path, '/lon');
  assert.equal(lon.message, '/lon is required');

  const heading = rejected(decode('tracker', '{"lat": 1, "lon": 2, "heading": 360}'), 'schema_violation');
  assert.equal(heading.path, '/heading');

  const type = rejected(decode('tracker', '{"lat": "north", "lon": 2}'), 'schema_violation');
  assert.deepEqual(type, { code: 'schema_violation', message: '/lat must be number', path: '/lat' });

  const ts = rejected(decode('tracker', '{"lat": 1, "lon": 2, "ts": true}'), 'schema_violation');
  assert.deepEqual(ts, { code: 'schema_violation', message: '/ts must be integer or must be string', path: '/ts' });

  const format = rejected(decode('tracker', '{"lat": 1, "lon": 2, "ts": "2024-13-01T00:00:00Z"}'), 'schema_violation');
  assert.equal(format.path, '/ts');
});

test('a JSON type refuses an explicit protobuf content type', () => {
  const res = codec('tracker').decodeTelemetry(Buffer.from([0x08, 0x01]), 'protobuf');
  const e = rejected(res, 'unsupported_content_type');
  assert.match(e.message, /tracker/);
  accepted(codec('tracker').decodeTelemetry(Buffer.from('{"lat":1,"lon":2}'), 'json'));
});

test('the validator does not modify the document', () => {
  const payload = '{"lat": 1.5, "lon": 2.5, "extra": {"k": [1, "2"]}}';
  assert.deepEqual(accepted(decode('tracker', payload)).value, JSON.parse(payload));
});
