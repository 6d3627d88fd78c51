import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import protobuf from 'protobufjs';
import { SchemaRegistry } from '../../src/codecs/registry.js';
import type { DeviceTypeCodec } from '../../src/codecs/codec.js';
import { accepted, rejected } from '../helpers/codecs.js';

const SCHEMAS = join(import.meta.dirname, '..', '..', 'schemas');
const LIMITS = { maxBytes: 64 * 1024, maxDepth: 16 };
const registry = SchemaRegistry.loadSync(SCHEMAS, LIMITS);
const thermostat = registry.get('thermostat') as DeviceTypeCodec;

// The device side: protobufjs on the shipped .proto, loaded independently of the codec.
const deviceRoot = new protobuf.Root().loadSync(join(SCHEMAS, 'thermostat.proto'), { keepCase: true });
const Telemetry = deviceRoot.lookupType('iotgate.thermostat.Telemetry');
const Command = deviceRoot.lookupType('iotgate.thermostat.Command');
const CommandResponse = deviceRoot.lookupType('iotgate.thermostat.CommandResponse');

function encode(type: protobuf.Type, obj: Record<string, unknown>): Buffer {
  return Buffer.from(type.encode(type.fromObject(obj)).finish());
}

function varint(n: number): number[] {
  const out: number[] = [];
  for (; n > 0x7f; n >>>= 7) out.push((n & 0x7f) | 0x80);
  out.push(n);
  return out;
}


const FULL = {
  device_time: { seconds: 1714564800, nanos: 123_000_000 },
  temperature_c: 21.5,
  humidity_pct: 40,
  mode: 'MODE_HEAT',
  setpoint: { heat_c: 20, cool_c: 24.5, changed_at: { seconds: 1714560000, nanos: 0 } },
  zone_temperatures_c: { kitchen: 22.25, bedroom: 19.5 },
  battery: { level_pct: 87.5, charging: true },
  alarms: [
    { code: 'FILTER', severity: 'SEVERITY_WARNING', raised_at: { seconds: 1714500000, nanos: 500 } },
    { code: 'DOOR_OPEN', severity: 'SEVERITY_INFO' },
  ],
  cycle_count: '9007199254740993', // 2^53 + 1: not representable as a JS number
  firmware: '1.4.2',
};

test('thermostat round trip: map, oneof, nested, repeated, enum, int64 and Timestamps as canonical JSON', () => {
  const res = accepted(thermostat.decodeTelemetry(encode(Telemetry, FULL)));
  assert.deepStrictEqual(res.value, {
    device_time: '2024-05-01T12:00:00.123Z',
    temperature_c: 21.5,
    humidity_pct: 40,
    mode: 'MODE_HEAT',
    setpoint: { heat_c: 20, cool_c: 24.5, changed_at: '2024-05-01T10:40:00.000Z' },
    zone_temperatures_c: { kitchen: 22.25, bedroom: 19.5 },
    battery: { level_pct: 87.5, charging: true },
    power: 'battery',
    alarms: [
      { code: 'FILTER', severity: 'SEVERITY_WARNING', raised_at: '2024-04-30T18:00:00.000000500Z' },
      { code: 'DOOR_OPEN', severity: 'SEVERITY_INFO' },
    ],
    cycle_count: '9007199254740993',
    firmware: '1.4.2',
  });
  assert.equal(res.deviceTime, 1714564800123);
});

test('thermostat: the other oneof member, an explicit zero, absent fields', () => {
  const res = accepted(thermostat.decodeTelemetry(encode(Telemetry, { temperature_c: 0, mains: { voltage: 230 }, cycle_count: 1 })));
  assert.deepStrictEqual(res.value, { temperature_c: 0, mains: { voltage: 230 }, power: 'mains', cycle_count: '1' });
  assert.equal(res.deviceTime, null);
  // An empty message is an empty object (proto3 defaults are not invented).
  assert.deepStrictEqual(accepted(thermostat.decodeTelemetry(Buffer.alloc(0))).value, {});
});

test('truncated protobuf is undecodable with protobufjs reason', () => {
  const full = encode(Telemetry, FULL);
  const e = rejected(thermostat.decodeTelemetry(full.subarray(0, full.length - 3)), 'undecodable');
  assert.match(e.message, /^invalid protobuf iotgate\.thermostat\.Telemetry: index out of range/);
});

test('garbage bytes are undecodable', () => {
  const e = rejected(thermostat.decodeTelemetry(Buffer.from([0x0f, 0xff, 0xff, 0xff])), 'undecodable');
  assert.match(e.message, /^invalid protobuf iotgate\.thermostat\.Telemetry: invalid wire type 7/);
  rejected(thermostat.decodeTelemetry(Buffer.from([0x5a, 0xff, 0xff, 0xff, 0xff, 0x0f])), 'undecodable');
});

test('oversized protobuf is too_large before decoding', () => {
  const big = encode(Telemetry, { firmware: 'x'.repeat(64 * 1024) });
  const e = rejected(thermostat.decodeTelemetry(big), 'too_large');
  assert.equal(e.message, `payload is ${big.length} bytes; the limit is 65536`);
  rejected(thermostat.decodeTelemetry(big, 'protobuf'), 'too_large');
  rejected(thermostat.decodeTelemetry(Buffer.from(`{"firmware":"${'x'.repeat(64 * 1024)}"}`)), 'too_large');
});

test('jsonFallback: a payload starting with "{" is JSON, validated against the .proto and normalised', () => {
  assert.equal(thermostat.encoding, 'protobuf');
  assert.equal(thermostat.jsonFallback, true);
  const json = '{"device_time": "2024-05-01T14:00:00+02:00", "temperature_c": 21.5, "mode": 3, "cycle_count": 42, "battery": {"level_pct": 50}, "alarms": [{"code": "X", "severity": "SEVERITY_CRITICAL"}]}';
  const res = accepted(thermostat.decodeTelemetry(Buffer.from(json)));
  // Same shape as from protobuf: int64 as string, enum by name, UTC Timestamp, the oneof named.
  assert.deepStrictEqual(res.value, {
    device_time: '2024-05-01T12:00:00.000Z',
    temperature_c: 21.5,
    mode: 'MODE_COOL',
    cycle_count: '42',
    battery: { level_pct: 50 },
    power: 'battery',
    alarms: [{ code: 'X', severity: 'SEVERITY_CRITICAL' }],
  });
  assert.equal(res.deviceTime, 1714564800000);
  // Leading whitespace is fine.
  accepted(thermostat.decodeTelemetry(Buffer.from('\r\n  {"firmware": "2.0"}')));
});

test('jsonFallback: JSON that does not fit the .proto is a schema violation', () => {
  const unknown = rejected(thermostat.decodeTelemetry(Buffer.from('{"temp": 21}')), 'schema_violation');
  assert.deepEqual(unknown, { code: 'schema_violation', message: '/temp is not an allowed property', path: '/temp' });
  const type = rejected(thermostat.decodeTelemetry(Buffer.from('{"setpoint": {"heat_c": "warm"}}')), 'schema_violation');
  assert.equal(type.path, '/setpoint/heat_c');
  const oneof = rejected(thermostat.decodeTelemetry(Buffer.from('{"mains": {"voltage": 230}, "battery": {"level_pct": 5}}')), 'schema_violation');
  assert.equal(oneof.path, '/battery');
  const enumName = rejected(thermostat.decodeTelemetry(Buffer.from('{"mode": "MODE_TURBO"}')), 'schema_violation');
  assert.equal(enumName.path, '/mode');
  const int64 = rejected(thermostat.decodeTelemetry(Buffer.from('{"cycle_count": "12abc"}')), 'schema_violation');
  assert.equal(int64.path, '/cycle_count');
  const ts = rejected(thermostat.decodeTelemetry(Buffer.from('{"device_time": 1714564800000}')), 'schema_violation');
  assert.equal(ts.path, '/device_time');
  rejected(thermostat.decodeTelemetry(Buffer.from('{"firmware": ')), 'undecodable');
  rejected(thermostat.decodeTelemetry(Buffer.from('{"a":'.repeat(17) + '1' + '}'.repeat(17))), 'too_deep');
});

test('jsonFallback heuristic: whitespace then "{" that is not JSON is tried as protobuf', () => {
  // 0x20 is the tag of field 4 (mode, varint) and 0x7b ('{') its value: valid protobuf.
  const bytes = Buffer.concat([Buffer.from([0x20, 0x7b]), encode(Telemetry, { firmware: '1.0' })]);
  const res = accepted(thermostat.decodeTelemetry(bytes));
  assert.deepStrictEqual(res.value, { mode: 123, firmware: '1.0' });
  // Neither JSON nor protobuf: the JSON error is reported.
  const e = rejected(thermostat.decodeTelemetry(Buffer.from(' {nope')), 'undecodable');
  assert.match(e.message, /^invalid JSON/);
});

test('an explicit content type wins over the encoding and the sniffing', () => {
  const json = Buffer.from('{"firmware": "2.0"}');
  const asProto = rejected(thermostat.decodeTelemetry(json, 'protobuf'), 'undecodable');
  assert.match(asProto.message, /^invalid protobuf/);
  assert.deepStrictEqual(accepted(thermostat.decodeTelemetry(json, 'json')).value, { firmware: '2.0' });
  const proto = encode(Telemetry, { firmware: '2.0' });
  rejected(thermostat.decodeTelemetry(proto, 'json'), 'undecodable');
  assert.deepStrictEqual(accepted(thermostat.decodeTelemetry(proto, 'protobuf')).value, { firmware: '2.0' });
});

test('commands: encodeCommand builds the protobuf Command, decodeCommandResponse reads the answer', () => {
  assert.ok(thermostat.encodeCommand && thermostat.decodeCommandResponse);
  const bytes = thermostat.encodeCommand({ id: 'c-1', name: 'setTemp', params: { heat_c: 21, label: 'eco', nested: { a: 1 } }, expiresAt: 1714564800123 });
  const cmd = Command.toObject(Command.decode(bytes), { longs: String });
  assert.deepStrictEqual(cmd, { id: 'c-1', name: 'setTemp', params: { heat_c: '21', label: 'eco', nested: '{"a":1}' }, expires_at: '1714564800123' });

  const ok = thermostat.decodeCommandResponse(encode(CommandResponse, { status: 200, payload_json: '{"applied":true}' }));
  assert.deepStrictEqual(ok, { ok: true, value: { status: 200, payload: { applied: true } } });
  const empty = thermostat.decodeCommandResponse(encode(CommandResponse, { status: 204 }));
  assert.deepStrictEqual(empty, { ok: true, value: { status: 204, payload: null } });
  const bad = thermostat.decodeCommandResponse(encode(CommandResponse, { status: 200, payload_json: '{oops' }));
  assert.ok(!bad.ok && bad.error.code === 'undecodable' && bad.error.path === '/payload_json');
  const truncated = thermostat.decodeCommandResponse(Buffer.from([0x12, 0x05, 0x41]));
  assert.ok(!truncated.ok && truncated.error.code === 'undecodable');
});

test('describe(): messages, proto source and the derived JSON Schema', () => {
  const d = thermostat.describe();
  assert.equal(d.type, 'thermostat');
  assert.equal(d.encoding, 'protobuf');
  assert.equal(d.jsonFallback, true);
  assert.deepEqual(d.messages, ['Telemetry', 'Command', 'CommandResponse']);
  assert.deepEqual(d.files, ['thermostat.proto']);
  assert.match(d.proto ?? '', /package iotgate\.thermostat;/);
  const schema = d.jsonSchema as Record<string, unknown>;
  assert.equal(schema['$ref'], '#/$defs/iotgate.thermostat.Telemetry');
  assert.match(String(schema['$comment']), /derived from thermostat\.proto/);
});

// A custom type with a recursive message, Timestamps in maps and repeated fields, and bytes.
const TREE_PROTO = `syntax = "proto3";
package iotgate.tree;
import "google/protobuf/timestamp.proto";
message Node {
  string name = 1;
  Node child = 2;
  map<string, google.protobuf.Timestamp> seen = 3;
}
message Telemetry {
  Node root = 1;
  repeated google.protobuf.Timestamp history = 2;
  bytes blob = 3;
  google.protobuf.Timestamp at = 4;
  uint64 big = 5;
}
`;

async function treeRegistry(t: { after: (fn: () => Promise<void>) => void }, types = ''): Promise<SchemaRegistry> {
  const dir = await mkdtemp(join(tmpdir(), 'iotgate-codecs-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  await writeFile(join(dir, 'tree.proto'), TREE_PROTO);
  if (types) await writeFile(join(dir, 'types.yaml'), types);
  return SchemaRegistry.load(dir, LIMITS);
}

test('Timestamps anywhere (nested, map values, repeated) become ISO; bytes are base64; uint64 a string', async (t) => {
  const r = await treeRegistry(t);
  const codec = r.get('tree') as DeviceTypeCodec;
  assert.equal(codec.encoding, 'protobuf');
  assert.equal(codec.jsonFallback, false);
  const Root = new protobuf.Root();
  protobuf.parse(TREE_PROTO, Root, { keepCase: true });
  Root.addJSON(protobuf.common.get('google/protobuf/timestamp.proto')?.nested ?? {});
  const T = Root.lookupType('iotgate.tree.Telemetry');
  const bytes = encode(T, {
    root: { name: 'a', child: { name: 'b', seen: { x: { seconds: 0, nanos: 1000 }, y: { seconds: 1714564800 } } } },
    history: [{ seconds: 1714564800, nanos: 5 }, {}],
    blob: Buffer.from('hello'),
    at: { seconds: 1714564801 },
    big: '18446744073709551615',
  });
  const res = accepted(codec.decodeTelemetry(bytes));
  assert.deepStrictEqual(res.value, {
    root: { name: 'a', child: { name: 'b', seen: { x: '1970-01-01T00:00:00.000001Z', y: '2024-05-01T12:00:00.000Z' } } },
    history: ['2024-05-01T12:00:00.000000005Z', '1970-01-01T00:00:00.000Z'],
    blob: 'aGVsbG8=',
    at: '2024-05-01T12:00:01.000Z',
    big: '18446744073709551615',
  });
  // The device time is the first top-level Timestamp field present (repeated ones do not count).
  assert.equal(res.deviceTime, 1714564801000);

  // An out-of-range Timestamp (nanos beyond 999,999,999) is a schema violation at its path.
  const invalid = encode(T, { root: { child: { seen: { z: { seconds: 1, nanos: 1_500_000_000 } } } } });
  const e = rejected(codec.decodeTelemetry(invalid), 'schema_violation');
  assert.equal(e.path, '/root/child/seen/z');
  assert.match(e.message, /not a valid google\.protobuf\.Timestamp/);
});

test('too deep: nested protobuf messages are held to the depth limit', async (t) => {
  const r = await treeRegistry(t);
  const codec = r.get('tree') as DeviceTypeCodec;
  const Root = new protobuf.Root();
  protobuf.parse(TREE_PROTO, Root, { keepCase: true });
  Root.addJSON(protobuf.common.get('google/protobuf/timestamp.proto')?.nested ?? {});
  const T = Root.lookupType('iotgate.tree.Telemetry');
  const chain = (levels: number): Record<string, unknown> => {
    let node: Record<string, unknown> = { name: 'leaf' };
    for (let i = 1; i < levels; i++) node = { child: node };
    return node;
  };
  // Telemetry is level 1, root level 2: 15 nodes fit in 16 levels, 16 do not.
  accepted(codec.decodeTelemetry(encode(T, { root: chain(15) })));
  const e = rejected(codec.decodeTelemetry(encode(T, { root: chain(16) })), 'too_deep');
  assert.equal(e.path, `/root${'/child'.repeat(15)}`);
  assert.match(e.message, /limit of 16/);
  // Deeper than protobufjs' own recursion limit (100), built by hand: still too_deep, not a crash.
  let node: number[] = [];
  for (let i = 0; i < 150; i++) node = [0x12, ...varint(node.length), ...node]; // Node.child = 2, LEN
  const way = Buffer.from([0x0a, ...varint(node.length), ...node]); // Telemetry.root = 1, LEN
  const e2 = rejected(codec.decodeTelemetry(way), 'too_deep');
  assert.match(e2.message, /max depth exceeded/);
});

test('without jsonFallback a JSON-looking payload is decoded as protobuf (and fails)', async (t) => {
  const r = await treeRegistry(t, 'tree: {encoding: protobuf}\n');
  const codec = r.get('tree') as DeviceTypeCodec;
  rejected(codec.decodeTelemetry(Buffer.from('{"root": {}}')), 'undecodable');
  // ...unless the transport says it is JSON.
  assert.deepStrictEqual(accepted(codec.decodeTelemetry(Buffer.from('{"root": {"name": "n"}, "big": 7}'), 'json')).value, {
    root: { name: 'n' },
    big: '7',
  });
});

test('a .proto type with encoding json decodes JSON by default, protobuf on request', async (t) => {
  const r = await treeRegistry(t, 'tree: {encoding: json}\n');
  const codec = r.get('tree') as DeviceTypeCodec;
  assert.equal(codec.encoding, 'json');
  assert.deepStrictEqual(accepted(codec.decodeTelemetry(Buffer.from('{"at": "2024-05-01T12:00:00Z"}'))).value, { at: '2024-05-01T12:00:00.000Z' });
  assert.equal(accepted(codec.decodeTelemetry(Buffer.from('{"at": "2024-05-01T12:00:00Z"}'))).deviceTime, 1714564800000);
  assert.deepStrictEqual(accepted(codec.decodeTelemetry(Buffer.alloc(0), 'protobuf')).value, {});
  assert.equal(codec.encodeCommand, undefined);
  assert.equal(codec.decodeCommandResponse, undefined);
});
