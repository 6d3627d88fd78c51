import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, writeFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CONFIG_KEYS, ConfigError, loadConfig } from '../../src/config/load.js';

function configError(fn: () => unknown): string[] {
  try {
    fn();
  } catch (e) {
    assert.ok(e instanceof ConfigError, `expected ConfigError, got ${String(e)}`);
    return e.lines;
  }
  assert.fail('expected a ConfigError');
}

test('defaults are the contract defaults (embedded mode)', () => {
  const c = loadConfig(undefined, {});
  assert.equal(c.host, '0.0.0.0');
  assert.equal(c.http.port, 8080);
  assert.equal(c.mqtt.port, 1883);
  assert.equal(c.mqtts.port, 8883);
  assert.equal(c.coap.port, 5683);
  assert.equal(c.coaps.port, 5684);
  assert.equal(c.certs.dir, './certs');
  assert.equal(c.redis.url, undefined);
  assert.equal(c.limits.mqttPacketBytes, 256 * 1024);
  assert.equal(c.limits.telemetryBytes, 64 * 1024);
  assert.equal(c.limits.telemetryDepth, 16);
  assert.equal(c.limits.shadowStateBytes, 8 * 1024);
  assert.equal(c.limits.shadowDepth, 6);
  assert.ok(Object.isFrozen(c) && Object.isFrozen(c.http), 'config is frozen');
});

test('every key has an IOTGATE_ env name; the contract names exist', () => {
  const envs = CONFIG_KEYS.map((k) => k.env);
  for (const name of ['IOTGATE_HOST', 'IOTGATE_HTTP_PORT', 'IOTGATE_MQTT_PORT', 'IOTGATE_MQTTS_PORT', 'IOTGATE_COAP_PORT', 'IOTGATE_COAPS_PORT', 'IOTGATE_REDIS_URL', 'IOTGATE_CERTS_DIR']) {
    assert.ok(envs.includes(name), `${name} is configurable`);
  }
  assert.equal(new Set(envs).size, envs.length, 'env names are unique');
});

test('environment overrides the file, and values are coerced', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'iotgate-config-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const file = join(dir, 'c.yaml');
  await writeFile(file, 'http:\n  port: 9000\nmqtt:\n  port: 1999\nlog:\n  level: warn\ncerts:\n  hostnames: [gw.example]\n');
  const c = loadConfig(file, { IOTGATE_HTTP_PORT: '0', IOTGATE_HTTP_PUBLIC_METRICS: 'false', IOTGATE_CERTS_HOSTNAMES: 'a.example, b.example' });
  assert.equal(c.http.port, 0);
  assert.equal(c.mqtt.port, 1999);
  assert.equal(c.log.level, 'warn');
  assert.equal(c.http.publicMetrics, false);
  assert.deepEqual(c.certs.hostnames, ['a.example', 'b.example']);

  const json = join(dir, 'c.json');
  await writeFile(json, JSON.stringify({ coap: { port: 15683 } }));
  assert.equal(loadConfig(json, {}).coap.port, 15683);
  assert.equal(loadConfig(undefined, { IOTGATE_CONFIG: json }).coap.port, 15683, 'IOTGATE_CONFIG names the file');
});

test('a bad value gives one line per bad key naming key, env, value and what is allowed', () => {
  const lines = configError(() =>
    loadConfig(undefined, { IOTGATE_HTTP_PORT: 'abc', IOTGATE_LOG_LEVEL: 'loud', IOTGATE_REDIS_URL: 'http://nope', IOTGATE_MQTT_PORT: '70000' }),
  );
  assert.equal(lines.length, 4, lines.join('\n'));
  const port = lines.find((l) => l.includes('http.port'));
  assert.ok(port?.includes('IOTGATE_HTTP_PORT') && port.includes('"abc"') && /0 to 65535/.test(port), port);
  const mqtt = lines.find((l) => l.includes('mqtt.port'));
  assert.ok(mqtt?.includes('70000') && /0 to 65535/.test(mqtt), mqtt);
  const level = lines.find((l) => l.includes('log.level'));
  assert.ok(level?.includes('"loud"') && level.includes('"info"'), level);
  const redis = lines.find((l) => l.includes('redis.url'));
  assert.ok(redis?.includes('redis://'), redis);
});

test('unknown keys, unreadable and malformed files are refused', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'iotgate-config-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const unknown = join(dir, 'u.yaml');
  await writeFile(unknown, 'htp:\n  port: 1\nhttp:\n  prot: 2\n');
  const lines = configError(() => loadConfig(unknown, {}));
  assert.ok(lines.some((l) => l.startsWith('config: htp ') && l.includes('unknown key')), lines.join('\n'));
  assert.ok(lines.some((l) => l.startsWith('config: http.prot ') && l.includes('unknown key')), lines.join('\n'));

  assert.match(configError(() => loadConfig(join(dir, 'missing.yaml'), {}))[0] ?? '', /cannot read .*missing\.yaml: ENOENT/);
  const broken = join(dir, 'b.yaml');
  await writeFile(broken, 'http: [1, 2\n');
  assert.match(configError(() => loadConfig(broken, {}))[0] ?? '', /not valid YAML/);
  const scalar = join(dir, 's.yaml');
  await writeFile(scalar, '42\n');
  assert.match(configError(() => loadConfig(scalar, {}))[0] ?? '', /mapping/);
});
