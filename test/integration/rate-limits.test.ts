/** Contract §10 on REST: per service subject and per device, 429 naming the limit, with Retry-After and RateLimit-* headers. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { build } from '../helpers/gateway.js';
import { call } from '../helpers/http.js';
import { registerDevice } from '../helpers/mqtt.js';
import { requireTool } from '../helpers/tools.js';

test('REST: a service subject past its limit gets 429 naming it; other subjects are not affected', async (t) => {
  const gw = await build(t, { IOTGATE_LIMITS_SERVICE_REQUESTS: '[{"limit":3,"windowMs":60000}]' });
  const token = await gw.token('devices:read', { sub: 'busy' });
  for (let i = 0; i < 3; i++) assert.equal((await call(gw.url, 'GET', '/v1/devices', { token })).status, 200);
  const refused = await call(gw.url, 'GET', '/v1/devices', { token });
  assert.equal(refused.status, 429);
  assert.match(refused.headers.get('content-type') ?? '', /^application\/problem\+json/);
  assert.equal(refused.body.limit, '3 requests per 1m');
  assert.match(String(refused.body.detail), /3 requests per 1m/);
  assert.ok(Number(refused.headers.get('retry-after')) >= 1);
  assert.equal(refused.headers.get('ratelimit-limit'), '3');
  assert.equal(refused.headers.get('ratelimit-remaining'), '0');
  assert.equal(refused.headers.get('ratelimit-policy'), '3;w=60');
  assert.equal((await call(gw.url, 'GET', '/v1/devices', { token: await gw.token('devices:read', { sub: 'calm' }) })).status, 200);
});

test('device HTTP ingestion past the device limit gets 429 naming it', async (t) => {
  if (!requireTool(t, 'openssl')) return;
  const gw = await build(t, { IOTGATE_LIMITS_DEVICE_MESSAGES: '[{"limit":2,"windowMs":1000}]' });
  const d = await registerDevice(gw, 'rl-1');
  const post = () => call(gw.url, 'POST', '/v1/devices/rl-1/telemetry', { token: d.token, body: { t: 1 } });
  assert.equal((await post()).status, 202);
  assert.equal((await post()).status, 202);
  const refused = await post();
  assert.equal(refused.status, 429);
  assert.equal(refused.body.limit, '2 messages per 1s');
  assert.ok(refused.headers.get('retry-after'));
  assert.equal(refused.headers.get('ratelimit-limit'), '2');
});
