import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SchemaLoadError, SchemaRegistry, listDeviceTypes } from '../../src/codecs/registry.js';

const SCHEMAS = join(import.meta.dirname, '..', '..', 'schemas');
const LIMITS = { maxBytes: 64 * 1024, maxDepth: 16 };

/** A temp schemas dir with these files, removed after the test. */
async function schemasDir(t: TestContext, files: Record<string, string>): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'iotgate-schemas-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  for (const [name, text] of Object.entries(files)) await writeFile(join(dir, name), text);
  return dir;
}

async function loadError(dir: string): Promise<SchemaLoadError> {
  try {
    await SchemaRegistry.load(dir, LIMITS);
  } catch (e) {
    assert.ok(e instanceof SchemaLoadError, `expected SchemaLoadError, got ${String(e)}`);
    assert.throws(() => SchemaRegistry.loadSync(dir, LIMITS), SchemaLoadError, 'loadSync fails the same way');
    return e;
  }
  assert.fail('expected the schemas to be refused');
}

const GOOD_PROTO = `syntax = "proto3";
package iotgate.meter;
message Telemetry {
  double kwh = 1;
}
`;

test('the shipped schemas load: generic, thermostat (protobuf + JSON fallback), tracker (JSON)', async () => {
  const r = await SchemaRegistry.load(SCHEMAS, LIMITS);
  assert.deepEqual(r.types(), ['generic', 'thermostat', 'tracker']);
  assert.deepEqual(r.ignoredFiles, []);
  for (const t of r.types()) assert.ok(r.has(t) && r.get(t)?.type === t);
  assert.equal(r.has('nope'), false);
  assert.equal(r.get('nope'), undefined);
  assert.equal(r.describe('nope'), undefined);

  const th = r.describe('thermostat');
  assert.equal(th?.encoding, 'protobuf');
  assert.equal(th?.jsonFallback, true);
  const tr = r.describe('tracker');
  assert.deepEqual({ encoding: tr?.encoding, jsonFallback: tr?.jsonFallback, messages: tr?.messages, files: tr?.files }, {
    encoding: 'json',
    jsonFallback: false,
    messages: ['Telemetry'],
    files: ['tracker.schema.json'],
  });
  assert.deepEqual((tr?.jsonSchema as { required: string[] }).required, ['lat', 'lon']);
  assert.equal(tr?.proto, undefined);
  assert.deepEqual(r.describeAll().map((d) => d.type), ['generic', 'thermostat', 'tracker']);

  // The synchronous type list (CLI, gateway) agrees with the registry.
  assert.deepEqual([...listDeviceTypes(SCHEMAS)].sort(), r.types());
  assert.deepEqual(SchemaRegistry.loadSync(SCHEMAS, LIMITS).types(), r.types());
});

test('generic always exists; encodings default from the files; odd file names are ignored', async (t) => {
  const dir = await schemasDir(t, {
    'meter.proto': GOOD_PROTO,
    'probe.schema.json': '{"type": "object", "required": ["v"], "properties": {"v": {"type": "number"}}}',
    'both.proto': GOOD_PROTO.replace('iotgate.meter', 'iotgate.both'),
    'both.schema.json': '{"type": "object", "properties": {"kwh": {"type": "number", "maximum": 100}}}',
    'Bad.proto': 'not even parsed',
    '9lives.schema.json': '{',
    'README.md': '# notes',
    'notes.txt': 'x',
  });
  const r = await SchemaRegistry.load(dir, LIMITS);
  assert.deepEqual(r.types(), ['both', 'generic', 'meter', 'probe']);
  assert.deepEqual(r.ignoredFiles, ['9lives.schema.json', 'Bad.proto']);
  assert.deepEqual([...listDeviceTypes(dir)].sort(), r.types());
  assert.equal(r.get('meter')?.encoding, 'protobuf');
  assert.equal(r.get('probe')?.encoding, 'json');
  assert.equal(r.get('both')?.encoding, 'protobuf');
  const generic = r.describe('generic');
  assert.deepEqual({ encoding: generic?.encoding, files: generic?.files }, { encoding: 'json', files: [] });
  assert.ok(r.get('generic')?.decodeTelemetry(Buffer.from('{"any": 1}')).ok);

  // A .schema.json next to a .proto also validates what the protobuf decodes to.
  const both = r.get('both');
  const over = both?.decodeTelemetry(Buffer.from([0x09, ...new Uint8Array(new Float64Array([150]).buffer)]));
  assert.ok(over && !over.ok && over.error.path === '/kwh', JSON.stringify(over));
  const probe = r.get('probe')?.decodeTelemetry(Buffer.from('{}'));
  assert.ok(probe && !probe.ok && probe.error.path === '/v');
});

test('a names-a-type .proto with a syntax error names the file and the line', async (t) => {
  const dir = await schemasDir(t, {
    'meter.proto': 'syntax = "proto3";\npackage iotgate.meter;\n\nmessage Telemetry {\n  double kwh = ;\n}\n',
  });
  const e = await loadError(dir);
  assert.equal(e.file, join(dir, 'meter.proto'));
  assert.equal(e.line, 5);
  assert.match(e.reason, /illegal/);
  assert.match(e.message, new RegExp(`^${join(dir, 'meter.proto').replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} line 5: illegal`));
});

test('a .proto must define Telemetry in package iotgate.<type>', async (t) => {
  const noTelemetry = await loadError(await schemasDir(t, { 'meter.proto': 'syntax = "proto3";\npackage iotgate.meter;\nmessage Reading { double kwh = 1; }\n' }));
  assert.match(noTelemetry.message, /meter\.proto: no message Telemetry in package iotgate\.meter/);

  const wrongPackage = await loadError(await schemasDir(t, { 'meter.proto': GOOD_PROTO.replace('iotgate.meter', 'acme.meter') }));
  assert.equal(wrongPackage.line, 2);
  assert.match(wrongPackage.reason, /package is "acme\.meter".*package iotgate\.meter;/);

  const dashed = await SchemaRegistry.load(await schemasDir(t, { 'smart-meter.proto': GOOD_PROTO.replace('iotgate.meter', 'iotgate.smart_meter') }), LIMITS);
  assert.ok(dashed.has('smart-meter'), 'dashes in type names are underscores in the package');
});

test('unresolvable types and unsupported imports name the line', async (t) => {
  const unresolved = await loadError(
    await schemasDir(t, { 'meter.proto': 'syntax = "proto3";\npackage iotgate.meter;\nmessage Telemetry {\n  Unit unit = 1;\n}\n' }),
  );
  assert.equal(unresolved.line, 4);
  assert.match(unresolved.reason, /Unit/);

  const imported = await loadError(
    await schemasDir(t, { 'meter.proto': 'syntax = "proto3";\npackage iotgate.meter;\nimport "common/units.proto";\nmessage Telemetry { double kwh = 1; }\n' }),
  );
  assert.equal(imported.line, 3);
  assert.match(imported.reason, /cannot import "common\/units\.proto"/);

  const noImport = await loadError(
    await schemasDir(t, { 'meter.proto': 'syntax = "proto3";\npackage iotgate.meter;\nmessage Telemetry {\n  google.protobuf.Timestamp at = 1;\n}\n' }),
  );
  assert.equal(noImport.line, 4);
  assert.match(noImport.reason, /add: import "google\/protobuf\/timestamp\.proto"/);

  const duplicate = await loadError(
    await schemasDir(t, { 'meter.proto': 'syntax = "proto3";\npackage iotgate.meter;\nmessage Telemetry {\n  double kwh = 1;\n  double kw = 1;\n}\n' }),
  );
  assert.equal(duplicate.line, 5);
  assert.match(duplicate.reason, /duplicate id 1/);
});

test('Command and CommandResponse, when present, need their contract fields', async (t) => {
  const cmd = await loadError(await schemasDir(t, { 'meter.proto': `${GOOD_PROTO}message Command { int32 id = 1; string name = 2; }\n` }));
  assert.match(cmd.reason, /Command needs a field "string id"/);
  const resp = await loadError(await schemasDir(t, { 'meter.proto': `${GOOD_PROTO}message CommandResponse { string payload_json = 1; }\n` }));
  assert.match(resp.reason, /CommandResponse needs a field "int32 status"/);
});

test('a .schema.json with invalid JSON names the file and the line', async (t) => {
  const dir = await schemasDir(t, {
    'probe.schema.json': '{\n  "type": "object",\n  "properties": {\n    "v": {"type": "number"},\n  }\n}\n',
  });
  const e = await loadError(dir);
  assert.equal(e.file, join(dir, 'probe.schema.json'));
  assert.equal(e.line, 5);
  assert.match(e.reason, /^invalid JSON: /);
  assert.match(e.message, /probe\.schema\.json line 5: invalid JSON/);

  const truncated = await loadError(await schemasDir(t, { 'probe.schema.json': '{\n  "type": "object",\n  "properties": {\n' }));
  assert.equal(truncated.line, 3);
  assert.match(truncated.reason, /^invalid JSON: /);
});

test('an invalid JSON Schema names the file, the keyword and the reason', async (t) => {
  const badType = await loadError(
    await schemasDir(t, { 'probe.schema.json': '{\n  "type": "object",\n  "properties": {\n    "v": {"type": "numbr"}\n  }\n}\n' }),
  );
  assert.equal(badType.line, 4);
  assert.match(badType.reason, /^invalid JSON Schema: keyword "type" at \/properties\/v\/type must be/);

  const unknownKeyword = await loadError(
    await schemasDir(t, { 'probe.schema.json': '{\n  "type": "object",\n  "properties": {\n    "v": {"type": "number",\n      "minimun": 3}\n  }\n}\n' }),
  );
  assert.equal(unknownKeyword.line, 5);
  assert.match(unknownKeyword.reason, /unknown keyword: "minimun"/);

  const unknownFormat = await loadError(await schemasDir(t, { 'probe.schema.json': '{"type": "string", "format": "hostname-ish"}' }));
  assert.match(unknownFormat.reason, /unknown format "hostname-ish"/);

  const draft7 = await loadError(await schemasDir(t, { 'probe.schema.json': '{\n"$schema": "http://json-schema.org/draft-07/schema#",\n"type": "object"}' }));
  assert.equal(draft7.line, 2);
  assert.match(draft7.reason, /unsupported \$schema/);

  const notObject = await loadError(await schemasDir(t, { 'probe.schema.json': '[]' }));
  assert.match(notObject.reason, /must be a JSON object/);
});

test('types.yaml: unknown encoding, unknown type, unknown key and impossible settings are errors with their line', async (t) => {
  const encoding = await loadError(await schemasDir(t, { 'meter.proto': GOOD_PROTO, 'types.yaml': '# types\ngeneric: {encoding: json}\nmeter: {encoding: avro}\n' }));
  assert.equal(encoding.file.endsWith('types.yaml'), true);
  assert.equal(encoding.line, 3);
  assert.match(encoding.reason, /"meter": unknown encoding "avro" \(expected json or protobuf\)/);

  const type = await loadError(await schemasDir(t, { 'types.yaml': 'generic: {encoding: json}\nlamp: {encoding: json}\n' }));
  assert.equal(type.line, 2);
  assert.match(type.reason, /unknown device type "lamp"/);

  const key = await loadError(await schemasDir(t, { 'meter.proto': GOOD_PROTO, 'types.yaml': 'meter:\n  encoding: protobuf\n  jsonFalback: true\n' }));
  assert.equal(key.line, 3);
  assert.match(key.reason, /unknown key "jsonFalback"/);

  const noProto = await loadError(await schemasDir(t, { 'probe.schema.json': '{"type": "object"}', 'types.yaml': 'probe: {encoding: protobuf}\n' }));
  assert.equal(noProto.line, 1);
  assert.match(noProto.reason, /encoding protobuf needs a probe\.proto/);

  const fallback = await loadError(await schemasDir(t, { 'types.yaml': 'generic: {encoding: json, jsonFallback: true}\n' }));
  assert.match(fallback.reason, /jsonFallback applies to encoding protobuf only/);

  const yaml = await loadError(await schemasDir(t, { 'types.yaml': 'generic: {encoding: json\nother: [\n' }));
  assert.match(yaml.reason, /^invalid YAML/);
  assert.equal(typeof yaml.line, 'number');

  // An empty types.yaml (or only comments) is fine; null entries take the defaults.
  const r = await SchemaRegistry.load(await schemasDir(t, { 'meter.proto': GOOD_PROTO, 'types.yaml': '# nothing yet\nmeter:\n' }), LIMITS);
  assert.equal(r.get('meter')?.encoding, 'protobuf');
});

test('a missing schemas dir and bad limits are refused', async (t) => {
  const dir = await schemasDir(t, {});
  const missing = await loadError(join(dir, 'nope'));
  assert.match(missing.message, /schemas dir not found/);
  await assert.rejects(SchemaRegistry.load(SCHEMAS, { maxBytes: 0, maxDepth: 16 }), TypeError);
  assert.throws(() => SchemaRegistry.loadSync(SCHEMAS, { maxBytes: 1024, maxDepth: 1.5 }), TypeError);
});
