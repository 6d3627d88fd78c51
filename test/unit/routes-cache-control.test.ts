/** The caching rules of API gateway routes (RFC 9111) as pure functions. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { bypassesCache, deltaSeconds, parseCacheControl, parseVary, storeDecision, varyKey, type StoreInput } from '../../src/routes/cache-control.js';

test('Cache-Control parsing: names lower-cased, quoted values unquoted, commas inside quotes kept, first wins', () => {
  const d = parseCacheControl('Max-Age=60, no-cache="set-cookie, x-a", private, max-age=5');
  assert.equal(d.get('max-age'), '60');
  assert.equal(d.get('no-cache'), 'set-cookie, x-a');
  assert.equal(d.get('private'), true);
  assert.equal(parseCacheControl(['public', 's-maxage="30"']).get('s-maxage'), '30');
  assert.equal(parseCacheControl(undefined).size, 0);
  assert.equal(parseCacheControl(' , ,').size, 0);
});

test('delta-seconds: digits only; anything else is undefined', () => {
  assert.equal(deltaSeconds('0'), 0);
  assert.equal(deltaSeconds('120'), 120);
  assert.equal(deltaSeconds('99999999999'), 2_147_483_648);
  for (const bad of ['-1', '1.5', '', 'abc', true, undefined] as const) assert.equal(deltaSeconds(bad), undefined);
});

test('Vary: sorted, lower case, de-duplicated; * wins', () => {
  assert.deepEqual(parseVary('Accept-Language, accept-encoding, Accept-Language'), ['accept-encoding', 'accept-language']);
  assert.deepEqual(parseVary('accept, *'), ['*']);
  assert.deepEqual(parseVary(undefined), []);
  assert.equal(varyKey(['a', 'b'], { a: 'x', b: ['y', 'z'] }), 'a=x\nb=y, z');
});

const base = (over: Partial<StoreInput> = {}): StoreInput => ({
  method: 'GET',
  status: 200,
  requestHeaders: {},
  responseHeaders: {},
  routeTtlMs: 10_000,
  ...over,
});

test('a plain 200 to a GET is stored for the route TTL', () => {
  assert.deepEqual(storeDecision(base()), { store: true, ttlMs: 10_000, vary: [], initialAgeS: 0 });
});

test('never stored: other methods, uncacheable statuses, no-store, private, no-cache, Set-Cookie, Vary: *', () => {
  const refused: [Partial<StoreInput>, string][] = [
    [{ method: 'POST' }, 'method'],
    [{ method: 'HEAD' }, 'method'],
    [{ status: 500 }, 'status'],
    [{ status: 302 }, 'status'],
    [{ status: 206 }, 'status'],
    [{ responseHeaders: { 'cache-control': 'no-store' } }, 'no-store'],
    [{ responseHeaders: { 'cache-control': 'public, max-age=60, no-store' } }, 'no-store'],
    [{ responseHeaders: { 'cache-control': 'private, max-age=60' } }, 'private'],
    [{ responseHeaders: { 'cache-control': 'no-cache' } }, 'no-cache'],
    [{ responseHeaders: { 'set-cookie': ['a=1'] } }, 'set-cookie'],
    [{ responseHeaders: { vary: '*' } }, 'vary *'],
    [{ requestHeaders: { 'cache-control': 'no-store' } }, 'request no-store'],
  ];
  for (const [over, reason] of refused) assert.deepEqual(storeDecision(base(over)), { store: false, reason }, JSON.stringify(over));
});

test('freshness: s-maxage over max-age over Expires, minus Age, capped by the route TTL', () => {
  const ttl = (responseHeaders: Record<string, string>) => {
    const d = storeDecision(base({ responseHeaders, now: Date.parse('2025-01-01T00:00:00Z') }));
    return d.store ? d.ttlMs : d.reason;
  };
  assert.equal(ttl({ 'cache-control': 'max-age=5' }), 5000);
  assert.equal(ttl({ 'cache-control': 'max-age=3600' }), 10_000, 'capped by the route');
  assert.equal(ttl({ 'cache-control': 'max-age=60, s-maxage=2' }), 2000);
  assert.equal(ttl({ 'cache-control': 'max-age=5', age: '2' }), 3000);
  assert.equal(ttl({ 'cache-control': 'max-age=5', age: '9' }), 'stale');
  assert.equal(ttl({ 'cache-control': 'max-age=0' }), 'stale');
  assert.equal(ttl({ 'cache-control': 'max-age=soon' }), 'stale', 'a malformed max-age is stale');
  assert.equal(ttl({ expires: 'Wed, 01 Jan 2025 00:00:04 GMT', date: 'Wed, 01 Jan 2025 00:00:00 GMT' }), 4000);
  assert.equal(ttl({ expires: 'Wed, 01 Jan 2025 00:00:04 GMT' }), 4000, 'without Date, from now');
  assert.equal(ttl({ expires: '0' }), 'stale', 'an invalid Expires is in the past');
  const d = storeDecision(base({ responseHeaders: { vary: 'Accept-Language', age: '1' } }));
  assert.deepEqual(d, { store: true, ttlMs: 10_000, vary: ['accept-language'], initialAgeS: 1 });
});

test('a request bypasses the cache with no-cache, no-store, max-age=0 or Pragma: no-cache', () => {
  assert.equal(bypassesCache({}), false);
  assert.equal(bypassesCache({ 'cache-control': 'max-age=60' }), false);
  for (const cc of ['no-cache', 'no-store', 'max-age=0']) assert.equal(bypassesCache({ 'cache-control': cc }), true, cc);
  assert.equal(bypassesCache({ pragma: 'no-cache' }), true);
  assert.equal(bypassesCache({ pragma: 'no-cache', 'cache-control': 'max-age=60' }), false, 'Cache-Control wins over Pragma');
});
