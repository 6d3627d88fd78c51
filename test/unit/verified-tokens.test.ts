/**
 * The cache of verified service JWTs (src/http/verified-tokens.ts, used by the REST auth plugin and the proxy door): a token is trusted
 * without a new check only until its `exp` and at most 60 s, an expired token is never kept, and
 * the cache holds at most 1000 tokens (the oldest goes first).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { VerifiedServiceTokens } from '../../src/http/verified-tokens.js';
import type { ServiceUser } from '../../src/http/plugins/auth.js';

const user = (sub: string): ServiceUser => ({ sub, scopes: new Set(['telemetry:read', 'admin']) });

test('a verified token is trusted until its exp or 60 s, whichever comes first', () => {
  let now = 1_000_000;
  const cache = new VerifiedServiceTokens(() => now);
  const e = cache.set('tok-a', user('svc-a'), now / 1000 + 3600);
  assert.deepEqual(e.caller, { kind: 'service', sub: 'svc-a', scopes: ['admin', 'telemetry:read'] });
  assert.equal(cache.get('tok-a'), e);
  now += 59_999;
  assert.equal(cache.get('tok-a'), e);
  now += 1;
  assert.equal(cache.get('tok-a'), null, 'checked again after 60 s');

  cache.set('tok-b', user('svc-b'), now / 1000 + 5);
  now += 4_999;
  assert.notEqual(cache.get('tok-b'), null);
  now += 1;
  assert.equal(cache.get('tok-b'), null, 'never past exp');
});

test('an expired or exp-less token is not kept; the cache is bounded', () => {
  const now = 5_000_000;
  const cache = new VerifiedServiceTokens(() => now);
  cache.set('expired', user('x'), now / 1000 - 1);
  assert.equal(cache.get('expired'), null);
  cache.set('no-exp', user('x'), undefined);
  assert.equal(cache.get('no-exp'), null);
  for (let i = 0; i < 1001; i++) cache.set(`t${i}`, user('x'), now / 1000 + 60);
  assert.equal(cache.get('t0'), null, 'the oldest went first');
  assert.notEqual(cache.get('t1'), null);
  assert.notEqual(cache.get('t1000'), null);
});
