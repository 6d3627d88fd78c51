/** The `routes` configuration key (contract §11): defaults, and every refusal as a config error line. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ConfigError, loadConfig } from '../../src/config/load.js';

function errors(routes: unknown): string[] {
  try {
    loadConfig(undefined, { IOTGATE_ROUTES: JSON.stringify(routes) });
  } catch (e) {
    assert.ok(e instanceof ConfigError, String(e));
    return e.lines;
  }
  assert.fail('expected a ConfigError');
}

const ok = { name: 'orders', prefix: '/api/orders', upstreams: ['http://orders:8080'], auth: 'service' };

test('no routes by default; a route gets the contract defaults', () => {
  assert.deepEqual(loadConfig(undefined, {}).routes, []);
  const [r] = loadConfig(undefined, { IOTGATE_ROUTES: JSON.stringify([ok]) }).routes;
  assert.deepEqual(r, {
    ...ok,
    scopes: [],
    stripPrefix: true,
    timeoutMs: 30_000,
    retries: 1,
    headers: { set: {}, remove: [] },
    balance: 'round-robin',
    health: { failures: 3, cooldownMs: 10_000 },
  });
});

test('routes from a YAML file, trailing slash of the prefix normalised', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'iotgate-routes-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const file = join(dir, 'c.yaml');
  await writeFile(
    file,
    [
      'routes:',
      '  - name: telemetry-api',
      '    prefix: /api/telemetry/',
      '    auth: device',
      '    upstreams: [http://a:1/base, "https://b:2"]',
      '    cache: { ttlMs: 5000, maxEntries: 100 }',
      '    rateLimit: { max: 10, windowMs: 1000 }',
      '    headers: { set: { x-team: iot }, remove: [cookie] }',
      '    health: { check: { path: /ready } }',
    ].join('\n'),
  );
  const [r] = loadConfig(file, {}).routes;
  assert.equal(r?.prefix, '/api/telemetry');
  assert.deepEqual(r?.cache, { ttlMs: 5000, maxEntries: 100, maxEntryBytes: 262_144 });
  assert.deepEqual(r?.rateLimit, { max: 10, windowMs: 1000, per: 'caller' });
  assert.deepEqual(r?.health.check, { path: '/ready', intervalMs: 10_000, timeoutMs: 2_000 });
});

test('a prefix that would shadow a gateway path is refused', () => {
  for (const prefix of ['/v1', '/v1/devices', '/V1/x', '/healthz', '/readyz', '/metrics', '/docs', '/docs/static', '/openapi.json', '/mqtt', '/mqtt/', '/']) {
    const lines = errors([{ ...ok, prefix }]);
    assert.equal(lines.length, 1, `${prefix}: ${lines.join('\n')}`);
    assert.match(lines[0]!, /^config: routes\.0\.prefix = .*: expected a prefix (that does not shadow|below \/)/, prefix);
  }
  for (const prefix of ['/v10', '/v1x', '/api/v1', '/metricsx', '/health']) assert.doesNotThrow(() => loadConfig(undefined, { IOTGATE_ROUTES: JSON.stringify([{ ...ok, prefix }]) }), prefix);
});

test('malformed prefixes, names and URLs are refused, one line per bad key', () => {
  assert.match(errors([{ ...ok, prefix: 'api' }])[0]!, /routes\.0\.prefix = "api": expected a path prefix/);
  assert.match(errors([{ ...ok, prefix: '/api/../v1' }])[0]!, /routes\.0\.prefix/);
  assert.match(errors([{ ...ok, prefix: '/a b' }])[0]!, /routes\.0\.prefix/);
  assert.match(errors([{ ...ok, name: 'bad name' }])[0]!, /routes\.0\.name = "bad name": expected a name/);
  assert.match(errors([{ ...ok, upstreams: ['ftp://x'] }])[0]!, /routes\.0\.upstreams\.0 = "ftp:\/\/x": expected an http:\/\/ or https:\/\/ URL/);
  assert.match(errors([{ ...ok, upstreams: ['http://u:p@x'] }])[0]!, /without user:password/);
  assert.match(errors([{ ...ok, upstreams: ['http://x/?a=1'] }])[0]!, /without query/);
  assert.match(errors([{ ...ok, upstreams: [] }])[0]!, /routes\.0\.upstreams = \[\]: expected at least one upstream URL/);
  assert.match(errors([{ ...ok, upstreams: ['http://x', 'http://x/'] }])[0]!, /routes\.0\.upstreams\.1 .*expected each upstream URL once/);
  assert.match(errors([{ ...ok, auth: 'jwt' }])[0]!, /routes\.0\.auth = "jwt": expected one of "device", "service", "none"/);
  assert.match(errors([{ ...ok, scopes: ['orders:read'] }])[0]!, /routes\.0\.scopes\.0/);
  assert.match(errors([{ ...ok, auth: 'device', scopes: ['admin'] }])[0]!, /routes\.0\.scopes .*expected scopes only on auth: service routes/);
  assert.match(errors([{ ...ok, extra: 1 }])[0]!, /routes\.0\.extra = 1: unknown key/);
  assert.match(errors([{ ...ok, cache: { ttlMs: 0, maxEntries: 1 } }])[0]!, /routes\.0\.cache\.ttlMs/);
  assert.match(errors([{ ...ok, rateLimit: { max: 1 } }])[0]!, /routes\.0\.rateLimit\.windowMs = \(missing\)/);
});

test('names and prefixes are unique', () => {
  const lines = errors([ok, { ...ok, prefix: '/other' }, { ...ok, name: 'b', prefix: '/API/orders/' }]);
  assert.deepEqual(
    lines.map((l) => l.split(' =')[0]),
    ['config: routes.1.name', 'config: routes.2.prefix'],
  );
});

test('headers.set / headers.remove may not touch what the gateway sets; values are never echoed', () => {
  for (const name of ['X-Iotgate-Device', 'x-forwarded-for', 'Forwarded', 'x-request-id', 'host', 'connection', 'content-length']) {
    const lines = errors([{ ...ok, headers: { set: { [name]: 'secret-value' } } }]);
    assert.match(lines[0]!, /expected a header the gateway does not set or strip itself/, name);
    assert.ok(!lines.join('\n').includes('secret-value'), 'header values are redacted');
    assert.match(errors([{ ...ok, headers: { remove: [name] } }])[0]!, /expected a header the gateway does not set or strip itself/, name);
  }
  const bad = errors([{ ...ok, headers: { set: { 'x-ok': 'line\nbreak' } } }]);
  assert.match(bad[0]!, /\[Redacted\]: expected a header value without control characters/);
  const r = loadConfig(undefined, { IOTGATE_ROUTES: JSON.stringify([{ ...ok, headers: { set: { authorization: 'Bearer s', 'x-n': 5 } } }]) }).routes[0];
  assert.deepEqual(r?.headers.set, { authorization: 'Bearer s', 'x-n': '5' }, 'an upstream credential may be configured');
});
