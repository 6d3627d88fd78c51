/**
 * The telemetry pipeline over real sockets against one in-process gateway (issue 4 "Done when",
 * items 1-5; contract §4, §6, §8): JSON and protobuf telemetry over MQTT into history and latest,
 * the history query parameters, rejections on MQTT (errors topic, code 153 = 0x99, connection kept,
 * stored nowhere, forwarded nowhere, counted), device HTTP ingestion and its errors, and
 * `GET /v1/schemas`.
 *
 * "Stored nowhere" / "forwarded nowhere" is always shown after a later, accepted control message
 * from the same connection: its PUBACK (QoS 1) means it was stored, so a GET of the history after
 * it must show it and nothing refused before it; the admin subscriber received the control message,
 * so it would already have received a refused one that had been forwarded.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import protobuf from 'protobufjs';
import { call, metric, type JsonResponse } from '../helpers/http.js';
import { suiteGateway, type Teardown, type TestGateway } from '../helpers/gateway.js';
import { deviceLogin, onTopic, openSession, registerDevice, subscribeGranted, tcpUrl, type Device, type Message, type Session } from '../helpers/mqtt.js';
import { hasTool } from '../helpers/tools.js';

if (!hasTool('openssl') && process.env.CI === 'true') throw new Error('openssl is required (CI=true)');
const SKIP = !hasTool('openssl') && 'openssl is not installed (devices are registered with openssl CSRs)';

const gateway = suiteGateway();

const SCHEMAS_DIR = fileURLToPath(new URL('../../schemas/', import.meta.url));
/** MQTT 5 "Payload format invalid" (0x99), the code of a telemetry rejection on the errors topic. */
const PAYLOAD_FORMAT_INVALID = 153;
const PROBLEM = /^application\/problem\+json/;
const DEFAULT_TELEMETRY_BYTES = 65_536;

let seq = 0;
/** A device id unique within this file. */
const uid = (name: string): string => `tel-${name}-${++seq}`;

const telemetryTopic = (id: string) => `devices/${id}/telemetry`;
const errorsTopic = (id: string) => `devices/${id}/errors`;

interface TelemetryRecord {
  id: string;
  deviceId: string;
  type: string;
  protocol: string;
  receivedAt: number;
  deviceTime: number | null;
  data: Record<string, unknown>;
}

interface ErrorDoc {
  code: number;
  message: string;
  topic: string;
}

// ---------------------------------------------------------------------------------------------
// The thermostat message, built with protobufjs from the shipped .proto

const protoRoot = new protobuf.Root().loadSync(`${SCHEMAS_DIR}thermostat.proto`, { keepCase: true });
const Telemetry = protoRoot.lookupType('iotgate.thermostat.Telemetry');

function encodeThermostat(obj: Record<string, unknown>): Buffer {
  const bytes = Telemetry.encode(Telemetry.fromObject(obj)).finish();
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/** Every kind of field: Timestamp (top level, nested, repeated), optional doubles, enum, nested message, map, oneof, repeated, int64 above 2^53. */
const THERMOSTAT = {
  device_time: { seconds: 1714564800, nanos: 123_000_000 },
  temperature_c: 21.5,
  humidity_pct: 40,
  mode: 'MODE_HEAT',
  setpoint: { heat_c: 21, cool_c: 25.5, changed_at: { seconds: 1714464000, nanos: 0 } },
  zone_temperatures_c: { kitchen: 22.25, bedroom: 19.5 },
  battery: { level_pct: 87.5, charging: true },
  alarms: [
    { code: 'FILTER', severity: 'SEVERITY_WARNING', raised_at: { seconds: 1714560000, nanos: 5000 } },
    { code: 'LOW_BATTERY', severity: 'SEVERITY_CRITICAL' },
  ],
  cycle_count: '9007199254740993',
  firmware: '1.4.2',
};
/** docs/schemas.md: proto field names, int64 as a string, enum names, Timestamps as RFC 3339 UTC, the oneof named. */
const THERMOSTAT_JSON = {
  device_time: '2024-05-01T12:00:00.123Z',
  temperature_c: 21.5,
  humidity_pct: 40,
  mode: 'MODE_HEAT',
  setpoint: { heat_c: 21, cool_c: 25.5, changed_at: '2024-04-30T08:00:00.000Z' },
  zone_temperatures_c: { kitchen: 22.25, bedroom: 19.5 },
  battery: { level_pct: 87.5, charging: true },
  power: 'battery',
  alarms: [
    { code: 'FILTER', severity: 'SEVERITY_WARNING', raised_at: '2024-05-01T10:40:00.000005Z' },
    { code: 'LOW_BATTERY', severity: 'SEVERITY_CRITICAL' },
  ],
  cycle_count: '9007199254740993',
  firmware: '1.4.2',
};
const THERMOSTAT_DEVICE_TIME = Date.UTC(2024, 4, 1, 12, 0, 0, 123);

/** A JSON document that fits the .proto, in the forms canonicalisation changes (offset time, enum numbers, int64 number). */
const THERMOSTAT_FALLBACK = {
  device_time: '2024-05-01T14:00:00.123+02:00',
  temperature_c: 19,
  mode: 2,
  cycle_count: 42,
  mains: { voltage: 230 },
  zone_temperatures_c: { hall: 18 },
  alarms: [{ code: 'DOOR', severity: 3 }],
};
const THERMOSTAT_FALLBACK_JSON = {
  device_time: '2024-05-01T12:00:00.123Z',
  temperature_c: 19,
  mode: 'MODE_HEAT',
  cycle_count: '42',
  mains: { voltage: 230 },
  power: 'mains',
  zone_temperatures_c: { hall: 18 },
  alarms: [{ code: 'DOOR', severity: 'SEVERITY_CRITICAL' }],
};

/** {a: {a: ... 1}} with `levels` objects: the top-level object is level 1. */
function nested(levels: number): Record<string, unknown> {
  let doc: Record<string, unknown> = { a: 1 };
  for (let i = 1; i < levels; i++) doc = { a: doc };
  return doc;
}
/** 70 KiB: above the default 64 KiB telemetry limit, well below the 256 KiB MQTT packet limit. */
const OVERSIZED = Buffer.from(JSON.stringify({ blob: 'x'.repeat(70 * 1024) }));

// ---------------------------------------------------------------------------------------------
// Helpers

const readTokens = new WeakMap<TestGateway, Promise<string>>();
/** A telemetry:read service token (one per gateway). */
function readToken(gw: TestGateway): Promise<string> {
  let t = readTokens.get(gw);
  if (!t) readTokens.set(gw, (t = gw.token('telemetry:read')));
  return t;
}

async function history(gw: TestGateway, id: string, query = ''): Promise<JsonResponse> {
  return call(gw.url, 'GET', `/v1/devices/${encodeURIComponent(id)}/telemetry${query}`, { token: await readToken(gw) });
}

async function items(gw: TestGateway, id: string, query = ''): Promise<TelemetryRecord[]> {
  const res = await history(gw, id, query);
  assert.equal(res.status, 200, `GET telemetry${query}: ${res.text}`);
  return res.body.items as TelemetryRecord[];
}

async function latest(gw: TestGateway, id: string): Promise<JsonResponse> {
  return call(gw.url, 'GET', `/v1/devices/${encodeURIComponent(id)}/telemetry/latest`, { token: await readToken(gw) });
}

function assertProblem(res: JsonResponse, status: number, what: string): void {
  assert.equal(res.status, status, `${what}: ${res.text}`);
  assert.match(res.headers.get('content-type') ?? '', PROBLEM, `${what}: content type`);
  assert.equal(res.body.status, status, `${what}: problem status`);
  assert.equal(typeof res.body.type, 'string', `${what}: problem type`);
  assert.equal(typeof res.body.title, 'string', `${what}: problem title`);
  assert.equal(typeof res.body.detail, 'string', `${what}: problem detail`);
}

/** The value of a series in /metrics, e.g. `x_total{a="b"}` (0 when absent). */
const rejectedSeries = (protocol: string, reason: string) => `iotgate_telemetry_rejected_total{protocol="${protocol}",reason="${reason}"}`;

/** Resolves once Date.now() has moved past `ms` (so the next record gets a later receivedAt). */
async function clockPast(ms: number): Promise<void> {
  while (Date.now() <= ms) await new Promise((r) => setImmediate(r));
}

/** The ids of records the gateway fanned out (the pipeline's last stage), per device. */
function watchFanOut(t: Teardown, gw: TestGateway): Map<string, string[]> {
  const seen = new Map<string, string[]>();
  const listener = (r: { id: string; deviceId: string }) => seen.set(r.deviceId, [...(seen.get(r.deviceId) ?? []), r.id]);
  gw.gateway.bus.on('telemetry', listener);
  t.after(() => gw.gateway.bus.off('telemetry', listener));
  return seen;
}

/** An operator's MQTT session (service JWT with `admin`) subscribed to every device's telemetry. */
async function adminWatcher(t: Teardown, gw: TestGateway): Promise<Session> {
  const jwt = await gw.token('admin', { sub: 'ops' });
  const s = await openSession(t, tcpUrl(gw), { clientId: `ops-${++seq}`, username: 'service:ops', password: jwt });
  assert.deepEqual(await subscribeGranted(s.client, ['devices/+/telemetry'], 1), [1]);
  return s;
}

/** A device's token session over TCP (MQTT 3.1.1), subscribed to its errors topic. */
async function deviceSession(t: Teardown, gw: TestGateway, d: Device): Promise<Session & { closes: () => number }> {
  const s = await openSession(t, tcpUrl(gw), deviceLogin(d));
  let closes = 0;
  s.client.on('close', () => closes++);
  assert.deepEqual(await subscribeGranted(s.client, [errorsTopic(d.id)], 1), [1]);
  return { ...s, closes: () => closes };
}

const samePayload = (payload: Buffer) => (m: Message) => m.payload.equals(payload);

// =============================================================================================
// 1. JSON over MQTT into history and latest

test('JSON telemetry over MQTT (QoS 1) is stored with id, deviceId, type, protocol, receivedAt, deviceTime and data; an admin subscriber gets the original bytes', { skip: SKIP }, async (t) => {
  const gw = gateway();
  const d = await registerDevice(gw, uid('json'));
  const watcher = await adminWatcher(t, gw);
  const dev = await deviceSession(t, gw, d);

  const doc = { ts: 1714564800000, temperature: 21.5, tags: ['a', 'b'], nested: { x: { y: null } }, ok: true };
  // Not the gateway's own serialisation (indented, key order kept): the subscriber must get these bytes.
  const payload = Buffer.from(JSON.stringify(doc, null, 2));
  const before = Date.now();
  await dev.client.publishAsync(telemetryTopic(d.id), payload, { qos: 1 });
  const acked = Date.now();

  // The PUBACK came after the store took the message: no polling.
  const list = await items(gw, d.id);
  assert.equal(list.length, 1, JSON.stringify(list));
  const rec = list[0]!;
  assert.deepEqual(Object.keys(rec).sort(), ['data', 'deviceId', 'deviceTime', 'id', 'protocol', 'receivedAt', 'type']);
  assert.match(rec.id, /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/);
  assert.equal(rec.deviceId, d.id);
  assert.equal(rec.type, 'generic');
  assert.equal(rec.protocol, 'mqtt');
  assert.ok(rec.receivedAt >= before && rec.receivedAt <= acked, `receivedAt ${rec.receivedAt} within [${before}, ${acked}]`);
  assert.equal(rec.deviceTime, 1714564800000, 'deviceTime from the `ts` field');
  assert.deepEqual(rec.data, doc);

  const last = await latest(gw, d.id);
  assert.equal(last.status, 200, last.text);
  assert.deepEqual(last.body, { item: rec });

  const forwarded = await watcher.inbox.waitFor(onTopic(telemetryTopic(d.id)), 'the telemetry at the admin subscriber');
  assert.ok(forwarded.payload.equals(payload), `original payload forwarded, got ${forwarded.text}`);

  // A second message becomes the latest; an RFC 3339 `ts` is a device time too.
  const second = { ts: '2024-05-01T14:00:00+02:00', temperature: 22 };
  await dev.client.publishAsync(telemetryTopic(d.id), JSON.stringify(second), { qos: 1 });
  const both = await items(gw, d.id);
  assert.deepEqual(
    both.map((r) => r.data),
    [doc, second],
  );
  assert.equal(both[1]!.deviceTime, Date.UTC(2024, 4, 1, 12));
  assert.deepEqual((await latest(gw, d.id)).body, { item: both[1] });
  assert.equal(dev.closes(), 0);
});

test('history: limit gives the newest N oldest first; since/until take epoch ms and ISO 8601 and are inclusive', { skip: SKIP }, async (t) => {
  const gw = gateway();
  const d = await registerDevice(gw, uid('query'));
  const dev = await deviceSession(t, gw, d);
  for (let n = 0; n < 5; n++) {
    await dev.client.publishAsync(telemetryTopic(d.id), JSON.stringify({ n }), { qos: 1 });
    // The next message must get a later receivedAt than this one (stored before the PUBACK).
    await clockPast(Date.now());
  }
  const all = await items(gw, d.id);
  assert.deepEqual(
    all.map((r) => r.data.n),
    [0, 1, 2, 3, 4],
    'default: everything, oldest first',
  );
  for (let i = 1; i < all.length; i++) assert.ok(all[i]!.receivedAt > all[i - 1]!.receivedAt, 'distinct, increasing receivedAt');
  const at = all.map((r) => r.receivedAt);
  const iso = (ms: number) => new Date(ms).toISOString();
  /** The same instant written with a +02:00 offset. */
  const isoPlus2 = (ms: number) => `${new Date(ms + 2 * 3600_000).toISOString().slice(0, 23)}+02:00`;
  const ns = async (query: string) => (await items(gw, d.id, query)).map((r) => r.data.n);

  assert.deepEqual(await ns('?limit=3'), [2, 3, 4], 'limit=3: the newest 3, oldest first');
  assert.deepEqual(await ns('?limit=1'), [4]);
  assert.deepEqual(await ns('?limit=100'), [0, 1, 2, 3, 4]);
  assert.deepEqual(await ns(`?since=${at[1]}&until=${at[3]}`), [1, 2, 3], 'epoch ms, both ends inclusive');
  assert.deepEqual(await ns(`?since=${encodeURIComponent(iso(at[1]!))}&until=${encodeURIComponent(iso(at[3]!))}`), [1, 2, 3], 'ISO 8601 (Z)');
  assert.deepEqual(await ns(`?since=${encodeURIComponent(isoPlus2(at[2]!))}`), [2, 3, 4], 'ISO 8601 with an offset');
  assert.deepEqual(await ns(`?until=${at[1]}`), [0, 1], 'until only');
  assert.deepEqual(await ns(`?since=${at[4]! + 1}`), [], 'since after the newest');
  assert.deepEqual(await ns(`?since=${at[0]}&until=${at[3]}&limit=2`), [2, 3], 'window and limit: the newest 2 in the window');
  assert.deepEqual(await ns(`?since=${at[3]}&until=${at[1]}`), [], 'an empty window');

  const last = await latest(gw, d.id);
  assert.equal(last.status, 200, last.text);
  assert.equal((last.body.item as TelemetryRecord).data.n, 4);
});

test('history: a known device with no data is 200 with no items; an unknown device is 404; bad parameters are 400; read needs telemetry:read', { skip: SKIP }, async () => {
  const gw = gateway();
  const d = await registerDevice(gw, uid('empty'));
  const empty = await history(gw, d.id);
  assert.equal(empty.status, 200, empty.text);
  assert.deepEqual(empty.body, { items: [] });
  const none = await latest(gw, d.id);
  assert.equal(none.status, 200, none.text);
  assert.deepEqual(none.body, { item: null });

  assertProblem(await history(gw, 'tel-nosuch-device'), 404, 'history of an unknown device');
  assertProblem(await latest(gw, 'tel-nosuch-device'), 404, 'latest of an unknown device');

  for (const query of ['?since=yesterday', '?until=not-a-time', '?since=2024-13-45T00:00:00Z', '?limit=0', '?limit=abc']) {
    const res = await history(gw, d.id, query);
    assertProblem(res, 400, query);
  }
  const badSince = await history(gw, d.id, '?since=yesterday');
  assert.match(String(badSince.body.detail), /since/, 'the problem names the parameter');

  const path = `/v1/devices/${d.id}/telemetry`;
  assertProblem(await call(gw.url, 'GET', path), 401, 'no token');
  assertProblem(await call(gw.url, 'GET', path, { token: await gw.token('devices:read') }), 403, 'devices:read only');
  assertProblem(await call(gw.url, 'GET', `${path}/latest`, { token: d.token }), 401, 'a device token');
  assert.equal((await call(gw.url, 'GET', path, { token: await gw.token('admin') })).status, 200, 'admin implies telemetry:read');
});

// =============================================================================================
// 2. Protobuf over MQTT

test('protobuf thermostat telemetry over MQTT arrives as the canonical JSON; the same device may send JSON that fits the .proto', { skip: SKIP }, async (t) => {
  const gw = gateway();
  const d = await registerDevice(gw, uid('thermo'), 'ec', 'thermostat');
  const watcher = await adminWatcher(t, gw);
  const dev = await deviceSession(t, gw, d);

  const bytes = encodeThermostat(THERMOSTAT);
  await dev.client.publishAsync(telemetryTopic(d.id), bytes, { qos: 1 });
  const [rec] = await items(gw, d.id);
  assert.ok(rec, 'stored');
  assert.equal(rec.type, 'thermostat');
  assert.equal(rec.protocol, 'mqtt');
  assert.deepEqual(rec.data, THERMOSTAT_JSON);
  assert.equal(rec.deviceTime, THERMOSTAT_DEVICE_TIME, 'deviceTime = the device_time Timestamp');
  // Backends on the broker see what the device sent; the canonical JSON is the stored/evented form.
  const forwarded = await watcher.inbox.waitFor(onTopic(telemetryTopic(d.id)), 'the protobuf message at the admin subscriber');
  assert.ok(forwarded.payload.equals(bytes), 'the protobuf bytes are forwarded unchanged');

  // JSON fallback (types.yaml: thermostat jsonFallback): validated against the .proto, normalised.
  await dev.client.publishAsync(telemetryTopic(d.id), JSON.stringify(THERMOSTAT_FALLBACK), { qos: 1 });
  const list = await items(gw, d.id);
  assert.equal(list.length, 2);
  assert.deepEqual(list[1]!.data, THERMOSTAT_FALLBACK_JSON);
  assert.equal(list[1]!.deviceTime, THERMOSTAT_DEVICE_TIME);
  assert.deepEqual((await latest(gw, d.id)).body, { item: list[1] });
  assert.equal(dev.closes(), 0);
});

// =============================================================================================
// 3. Rejections over MQTT

test('rejections on MQTT: errors topic {code 153, message, topic}, connection kept, stored nowhere, forwarded nowhere, counted', { skip: SKIP }, async (t) => {
  const gw = gateway();
  const fannedOut = watchFanOut(t, gw);
  const watcher = await adminWatcher(t, gw);
  const kinds = ['generic', 'tracker', 'thermostat'] as const;
  const devices = {} as Record<(typeof kinds)[number], { d: Device; s: Session & { closes: () => number }; controls: unknown[] }>;
  for (const kind of kinds) {
    const d = await registerDevice(gw, uid(`rej-${kind}`), 'ec', kind);
    devices[kind] = { d, s: await deviceSession(t, gw, d), controls: [] };
  }
  /** A valid message of each type, as sent and as stored. */
  const control = (kind: (typeof kinds)[number], n: number): { payload: Buffer; data: Record<string, unknown> } => {
    if (kind === 'thermostat') return { payload: encodeThermostat({ firmware: `control-${n}` }), data: { firmware: `control-${n}` } };
    const data = kind === 'tracker' ? { lat: 48.85, lon: 2.29, control: n } : { control: n };
    return { payload: Buffer.from(JSON.stringify(data)), data };
  };

  const thermo = encodeThermostat(THERMOSTAT);
  const cases: { name: string; kind: (typeof kinds)[number]; payload: Buffer; reason: string; message: RegExp }[] = [
    { name: 'invalid JSON', kind: 'generic', payload: Buffer.from('{"temperature": 21.5,'), reason: 'undecodable', message: /^invalid JSON: / },
    { name: 'a JSON array', kind: 'generic', payload: Buffer.from('[1, 2, 3]'), reason: 'schema_violation', message: /^telemetry must be a JSON object, got an array$/ },
    { name: 'a tracker schema violation (lat 200)', kind: 'tracker', payload: Buffer.from('{"lat": 200, "lon": 2}'), reason: 'schema_violation', message: /^\/lat must be <= 90/ },
    { name: 'a missing required tracker field', kind: 'tracker', payload: Buffer.from('{"lat": 10}'), reason: 'schema_violation', message: /^\/lon is required/ },
    {
      name: 'truncated protobuf',
      kind: 'thermostat',
      payload: thermo.subarray(0, thermo.length - 3),
      reason: 'undecodable',
      message: /^invalid protobuf iotgate\.thermostat\.Telemetry: index out of range/,
    },
    { name: 'garbage bytes to the thermostat', kind: 'thermostat', payload: Buffer.from('deadbeefcafebabe', 'hex'), reason: 'undecodable', message: /^invalid protobuf iotgate\.thermostat\.Telemetry: / },
    { name: 'JSON fallback with a field the .proto does not have', kind: 'thermostat', payload: Buffer.from('{"temp": 21}'), reason: 'schema_violation', message: /^\/temp is not an allowed property/ },
    { name: 'an oversized document (70 KiB)', kind: 'generic', payload: OVERSIZED, reason: 'too_large', message: new RegExp(`^payload is ${OVERSIZED.length} bytes; the limit is ${DEFAULT_TELEMETRY_BYTES}$`) },
    {
      name: 'a too-deep document (17 levels)',
      kind: 'generic',
      payload: Buffer.from(JSON.stringify(nested(17))),
      reason: 'too_deep',
      message: /^(\/a){16}: document nests deeper than the limit of 16 levels$/,
    },
  ];

  let n = 0;
  for (const c of cases) {
    await t.test(c.name, async () => {
      const { d, s, controls } = devices[c.kind];
      const series = rejectedSeries('mqtt', c.reason);
      const counted = await metric(gw, series);
      const errorsBefore = s.inbox.all(onTopic(errorsTopic(d.id))).length;

      await s.client.publishAsync(telemetryTopic(d.id), c.payload, { qos: 1 });
      const errMsg = await s.inbox.waitFor(
        (m) => m.topic === errorsTopic(d.id) && s.inbox.all(onTopic(errorsTopic(d.id))).indexOf(m) === errorsBefore,
        `the error document for ${c.name}`,
      );
      const doc = JSON.parse(errMsg.text) as ErrorDoc;
      assert.deepEqual(Object.keys(doc).sort(), ['code', 'message', 'topic']);
      assert.equal(doc.code, PAYLOAD_FORMAT_INVALID);
      assert.equal(doc.topic, telemetryTopic(d.id));
      assert.match(doc.message, c.message);

      // A later valid message on the same connection is accepted and stored (PUBACK = stored)...
      const ctl = control(c.kind, ++n);
      await s.client.publishAsync(telemetryTopic(d.id), ctl.payload, { qos: 1 });
      controls.push(ctl.data);
      // ...and the history holds the controls only: the refused message was stored nowhere.
      const stored = await items(gw, d.id);
      assert.deepEqual(
        stored.map((r) => r.data),
        controls,
      );
      assert.deepEqual(fannedOut.get(d.id), stored.map((r) => r.id), 'only accepted records were fanned out');
      // The admin subscriber got the control, and (forwarding being in order) never the refused one.
      await watcher.inbox.waitFor((m) => m.topic === telemetryTopic(d.id) && m.payload.equals(ctl.payload), 'the control message at the admin subscriber');
      assert.equal(watcher.inbox.all(samePayload(c.payload)).length, 0, 'the refused payload was not forwarded');

      assert.equal(await metric(gw, series), counted + 1, `${series} counts it`);
      assert.ok(s.client.connected, 'still connected');
      assert.equal(s.closes(), 0, 'the connection never closed');
    });
  }
  // Every error went to the device that sent the bad message, none to the others.
  for (const kind of kinds) {
    const { d, s } = devices[kind];
    assert.equal(s.inbox.all(onTopic(errorsTopic(d.id))).length, cases.filter((c) => c.kind === kind).length, `${kind}: one error per refusal`);
  }
});

// =============================================================================================
// 4. Device HTTP ingestion

test('device HTTP ingestion: POST /v1/devices/{id}/telemetry with the device token (JSON, protobuf) → 202, same pipeline; every refusal is a problem and stored nowhere', { skip: SKIP }, async (t) => {
  const gw = gateway();
  const fannedOut = watchFanOut(t, gw);
  const [g, th, tr, other, gone] = await Promise.all([
    registerDevice(gw, uid('http-generic')),
    registerDevice(gw, uid('http-thermo'), 'ec', 'thermostat'),
    registerDevice(gw, uid('http-tracker'), 'ec', 'tracker'),
    registerDevice(gw, uid('http-other')),
    registerDevice(gw, uid('http-gone')),
  ]);
  const post = (d: Pick<Device, 'id'>, token: string | undefined, body: string | Uint8Array, contentType = 'application/json') =>
    call(gw.url, 'POST', `/v1/devices/${d.id}/telemetry`, {
      ...(token !== undefined && { token }),
      rawBody: body,
      headers: { 'content-type': contentType },
    });
  /** What the store holds for each device, as accepted by the tests below. */
  const accepted = new Map<string, { id: string; data: unknown }[]>();
  const expectAccepted = async (d: Device, res: JsonResponse, data: unknown) => {
    assert.equal(res.status, 202, res.text);
    assert.deepEqual(Object.keys(res.body).sort(), ['id', 'receivedAt']);
    accepted.set(d.id, [...(accepted.get(d.id) ?? []), { id: String(res.body.id), data }]);
    const stored = await items(gw, d.id);
    assert.deepEqual(
      stored.map((r) => ({ id: r.id, data: r.data })),
      accepted.get(d.id),
    );
    const rec = stored[stored.length - 1]!;
    assert.equal(rec.protocol, 'http');
    assert.equal(rec.receivedAt, res.body.receivedAt);
    assert.equal(rec.deviceId, d.id);
    return rec;
  };

  await t.test('JSON → 202 {id, receivedAt}, in history with protocol http', async () => {
    const doc = { ts: 1714564800000, temperature: 20.5 };
    const rec = await expectAccepted(g, await post(g, g.token, JSON.stringify(doc)), doc);
    assert.equal(rec.type, 'generic');
    assert.equal(rec.deviceTime, 1714564800000);
    assert.deepEqual((await latest(gw, g.id)).body, { item: rec });
  });

  await t.test('application/x-protobuf for a thermostat → 202, decoded to the canonical JSON', async () => {
    const rec = await expectAccepted(th, await post(th, th.token, encodeThermostat(THERMOSTAT), 'application/x-protobuf'), THERMOSTAT_JSON);
    assert.equal(rec.type, 'thermostat');
    assert.equal(rec.deviceTime, THERMOSTAT_DEVICE_TIME);
  });

  await t.test(
    'the media type is case-insensitive (RFC 9110 §8.3.1): Application/X-Protobuf → 202, decoded as protobuf',
    async () => {
      await expectAccepted(th, await post(th, th.token, encodeThermostat(THERMOSTAT), 'Application/X-Protobuf'), THERMOSTAT_JSON);
    },
  );

  await t.test('application/json for a thermostat → 202, normalised like the protobuf form', async () => {
    await expectAccepted(th, await post(th, th.token, JSON.stringify(THERMOSTAT_FALLBACK)), THERMOSTAT_FALLBACK_JSON);
  });

  await t.test('tracker JSON within its schema → 202', async () => {
    const doc = { lat: 48.8584, lon: 2.2945, ts: '2024-05-01T12:00:00Z' };
    const rec = await expectAccepted(tr, await post(tr, tr.token, JSON.stringify(doc)), doc);
    assert.equal(rec.deviceTime, Date.UTC(2024, 4, 1, 12));
  });

  const refusals: { name: string; device: Device; body: string | Uint8Array; contentType?: string; status: number; reason: string; errorPath?: string; detail: RegExp }[] = [
    { name: 'invalid JSON → 400', device: g, body: '{"temperature": ', status: 400, reason: 'undecodable', detail: /^invalid JSON: / },
    { name: 'a JSON array → 400', device: g, body: '[1, 2]', status: 400, reason: 'schema_violation', errorPath: 'body', detail: /must be a JSON object/ },
    { name: 'a tracker schema violation → 400 with errors[].path', device: tr, body: '{"lat": 200, "lon": 2}', status: 400, reason: 'schema_violation', errorPath: 'body.lat', detail: /\/lat must be <= 90/ },
    { name: 'truncated protobuf → 400', device: th, body: encodeThermostat(THERMOSTAT).subarray(0, 20), contentType: 'application/x-protobuf', status: 400, reason: 'undecodable', detail: /^invalid protobuf / },
    { name: 'an oversized document → 413', device: g, body: OVERSIZED, status: 413, reason: 'too_large', detail: /limit is 65536/ },
    { name: 'a too-deep document → 400', device: g, body: JSON.stringify(nested(17)), status: 400, reason: 'too_deep', errorPath: `body${'.a'.repeat(16)}`, detail: /deeper than the limit of 16/ },
  ];
  for (const r of refusals) {
    await t.test(r.name, async () => {
      const series = rejectedSeries('http', r.reason);
      const counted = await metric(gw, series);
      const res = await post(r.device, r.device.token, r.body, r.contentType);
      assertProblem(res, r.status, r.name);
      assert.match(String(res.body.detail), r.detail);
      assert.equal(res.body.reason, r.reason);
      if (r.errorPath !== undefined) {
        const errors = res.body.errors as { path: string; message: string }[];
        assert.equal(errors?.[0]?.path, r.errorPath, JSON.stringify(res.body));
        assert.equal(typeof errors[0]?.message, 'string');
      }
      assert.equal(await metric(gw, series), counted + 1, `${series} counts it`);
    });
  }

  await t.test('authentication and media type: 401 without a token, with a service JWT (even admin) or a revoked token; 403 with another device\'s token; 415 for text/plain', async () => {
    const body = JSON.stringify({ v: 1 });
    assertProblem(await post(g, undefined, body), 401, 'no token');
    assertProblem(await post(g, await gw.token('admin'), body), 401, 'an admin service JWT');
    assertProblem(await post(g, await gw.token('telemetry:read'), body), 401, 'a telemetry:read service JWT');
    assertProblem(await post(g, 'not-a-token', body), 401, 'garbage token');
    assertProblem(await post(g, other.token, body), 403, "another device's token");
    assertProblem(await post(g, g.token, body, 'text/plain'), 415, 'text/plain');

    // Before revocation the token works; after DELETE (revoke and forget) it is refused.
    await expectAccepted(gone, await post(gone, gone.token, body), { v: 1 });
    const del = await call(gw.url, 'DELETE', `/v1/devices/${gone.id}`, { token: await gw.token('devices:write') });
    assert.equal(del.status, 204, del.text);
    assertProblem(await post(gone, gone.token, body), 401, 'a revoked device token');
  });

  await t.test('nothing refused was stored or fanned out', async () => {
    for (const d of [g, th, tr, other]) {
      const stored = await items(gw, d.id);
      const expected = accepted.get(d.id) ?? [];
      assert.deepEqual(
        stored.map((r) => ({ id: r.id, data: r.data })),
        expected,
        `${d.id}: only accepted messages are stored`,
      );
      assert.deepEqual(fannedOut.get(d.id) ?? [], expected.map((x) => x.id), `${d.id}: only accepted messages were fanned out`);
    }
  });
});

// =============================================================================================
// 5. GET /v1/schemas

test('GET /v1/schemas lists the loaded types with their encodings; /v1/schemas/{type} shows the .proto source and the JSON Schema; unknown → 404', async () => {
  const gw = gateway();
  const token = await gw.token('devices:read');
  const list = await call(gw.url, 'GET', '/v1/schemas', { token });
  assert.equal(list.status, 200, list.text);
  const byType = new Map((list.body.items as { type: string }[]).map((x) => [x.type, x]));
  assert.deepEqual(byType.get('generic'), { type: 'generic', encoding: 'json', jsonFallback: false, messages: ['Telemetry'] });
  assert.deepEqual(byType.get('thermostat'), { type: 'thermostat', encoding: 'protobuf', jsonFallback: true, messages: ['Telemetry', 'Command', 'CommandResponse'] });
  assert.deepEqual(byType.get('tracker'), { type: 'tracker', encoding: 'json', jsonFallback: false, messages: ['Telemetry'] });

  const thermo = await call(gw.url, 'GET', '/v1/schemas/thermostat', { token });
  assert.equal(thermo.status, 200, thermo.text);
  assert.equal(thermo.body.type, 'thermostat');
  assert.equal(thermo.body.encoding, 'protobuf');
  assert.equal(thermo.body.jsonFallback, true);
  assert.equal(thermo.body.proto, await readFile(`${SCHEMAS_DIR}thermostat.proto`, 'utf8'), 'the .proto source as shipped');
  const derived = thermo.body.jsonSchema as { $comment?: string };
  assert.match(String(derived?.$comment), /derived from thermostat\.proto/);

  const tracker = await call(gw.url, 'GET', '/v1/schemas/tracker', { token });
  assert.equal(tracker.status, 200, tracker.text);
  assert.deepEqual(tracker.body.jsonSchema, JSON.parse(await readFile(`${SCHEMAS_DIR}tracker.schema.json`, 'utf8')));
  assert.equal(tracker.body.proto, undefined);

  const missing = await call(gw.url, 'GET', '/v1/schemas/nosuch', { token });
  assertProblem(missing, 404, '/v1/schemas/nosuch');
  assert.match(String(missing.body.detail), /nosuch/);

  assertProblem(await call(gw.url, 'GET', '/v1/schemas'), 401, 'no token');
  assertProblem(await call(gw.url, 'GET', '/v1/schemas/thermostat', { token: await gw.token('telemetry:read') }), 403, 'without devices:read');
});
