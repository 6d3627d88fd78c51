/**
 * The protobuf decode hot path that the benchmark profile led to (src/codecs/protobuf.ts,
 * proto-json.ts): the device time is taken from the decoded Timestamp before it becomes a string,
 * and Timestamps are found through a per-type plan. Both must give exactly what the definitions
 * give: `deviceTimeOf` of the canonical RFC 3339 string, and `timestampToIso` of every Timestamp.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { test } from 'node:test';
import fc from 'fast-check';
import protobuf from 'protobufjs';
import type { DeviceTypeCodec } from '../../src/codecs/codec.js';
import { deviceTimeOf, timestampToIso } from '../../src/codecs/document.js';
import { SchemaRegistry } from '../../src/codecs/registry.js';

const SCHEMAS = join(import.meta.dirname, '..', '..', 'schemas');
const thermostat = SchemaRegistry.loadSync(SCHEMAS, { maxBytes: 65_536, maxDepth: 16 }).get('thermostat') as DeviceTypeCodec;
const Telemetry = new protobuf.Root().loadSync(join(SCHEMAS, 'thermostat.proto'), { keepCase: true }).lookupType('iotgate.thermostat.Telemetry');

const timestamp = fc.record({
  // around the sane window [2000, 2100) and far outside it, valid and invalid
  seconds: fc.oneof(fc.integer({ min: 900_000_000, max: 4_200_000_000 }), fc.integer({ min: -62_135_596_800, max: 253_402_300_799 }), fc.constantFrom(0, 946_684_800, 4_102_444_799, 4_102_444_800)),
  nanos: fc.oneof(fc.integer({ min: 0, max: 999_999_999 }), fc.constantFrom(0, 999_999, 1_000_000, 999_999_999)),
});

test('device time and Timestamps of protobuf telemetry equal their definitions', () => {
  fc.assert(
    fc.property(
      fc.option(timestamp, { nil: undefined }),
      fc.option(timestamp, { nil: undefined }),
      fc.array(fc.option(timestamp, { nil: undefined }), { maxLength: 3 }),
      (deviceTime, changedAt, alarms) => {
        const msg: Record<string, unknown> = {
          temperature_c: 20,
          ...(deviceTime && { device_time: deviceTime }),
          setpoint: { heat_c: 19, ...(changedAt && { changed_at: changedAt }) },
          alarms: alarms.map((a, i) => ({ code: `A${i}`, ...(a && { raised_at: a }) })),
        };
        const res = thermostat.decodeTelemetry(Buffer.from(Telemetry.encode(Telemetry.fromObject(msg)).finish()));
        assert.ok(res.ok, JSON.stringify(res));
        const v = res.value as { device_time?: string; setpoint: { changed_at?: string }; alarms?: { raised_at?: string }[] };
        const iso = (t: { seconds: number; nanos: number } | undefined) => (t && (t.seconds !== 0 || t.nanos !== 0) ? timestampToIso(t.seconds, t.nanos) : undefined);
        // proto3 drops an all-zero Timestamp's fields, but the message itself is present: 1970.
        const isoOrEpoch = (t: { seconds: number; nanos: number } | undefined) => (t ? (iso(t) ?? timestampToIso(0, 0)) : undefined);
        assert.equal(v.device_time, isoOrEpoch(deviceTime));
        assert.equal(v.setpoint.changed_at, isoOrEpoch(changedAt));
        assert.deepEqual(
          (v.alarms ?? []).map((a) => a.raised_at),
          alarms.map((a) => isoOrEpoch(a)),
        );
        assert.equal(res.deviceTime, v.device_time === undefined ? null : deviceTimeOf(v.device_time));
      },
    ),
    { numRuns: 500 },
  );
});

test('timestampToIso formats exactly like Date#toISOString over the whole Timestamp range', () => {
  const reference = (s: number, n: number) => {
    const frac = n % 1_000_000 === 0 ? String(n / 1_000_000).padStart(3, '0') : n % 1000 === 0 ? String(n / 1000).padStart(6, '0') : String(n).padStart(9, '0');
    return `${new Date(s * 1000).toISOString().slice(0, 19)}.${frac}Z`;
  };
  const edges = [-62_135_596_800, -62_135_596_799, -1, 0, 1, 68_256_000, 951_782_400, 951_868_799, 1_795_323_017, 4_102_444_799, 253_402_300_799];
  for (const s of edges) assert.equal(timestampToIso(s, 0), reference(s, 0), String(s));
  fc.assert(
    fc.property(fc.integer({ min: -62_135_596_800, max: 253_402_300_799 }), fc.integer({ min: 0, max: 999_999_999 }), (s, n) => {
      assert.equal(timestampToIso(s, n), reference(s, n));
    }),
    { numRuns: 20_000 },
  );
  assert.equal(timestampToIso(-62_135_596_801, 0), null);
  assert.equal(timestampToIso(253_402_300_800, 0), null);
});
