/**
 * The REST request path after the rest-read work (docs/performance.md): the auth plugin's cache of
 * verified service JWTs (src/http/verified-tokens.ts) keeps every check that is not the
 * signature (scope, subject limit, expiry), and the access log (src/http/plugins/access-log.ts)
 * writes exactly one line per request with its request id, and no secret.
 */
import { before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { suiteGateway, type TestGateway } from '../helpers/gateway.js';
import { call } from '../helpers/http.js';

describe('REST auth cache and access log', () => {
  let gw: TestGateway;
  const gateway = suiteGateway();
  before(() => {
    gw = gateway();
  });

  it('a token seen before is still checked for its scope on every route', async () => {
    const reader = await gw.token('devices:read');
    for (let i = 0; i < 3; i++) {
      const list = await call(gw.url, 'GET', '/v1/devices', { token: reader });
      assert.equal(list.status, 200, list.text);
      const write = await call(gw.url, 'DELETE', '/v1/devices/nope', { token: reader });
      assert.equal(write.status, 403, write.text);
      assert.equal(write.body.code, 'forbidden');
    }
  });

  it('a token with a bad signature is refused every time, even after its valid twin was cached', async () => {
    const good = await gw.token('devices:read');
    assert.equal((await call(gw.url, 'GET', '/v1/devices', { token: good })).status, 200);
    const [h, p, s] = good.split('.') as [string, string, string];
    const forged = `${h}.${p}.${s.slice(0, -2)}${s.endsWith('AA') ? 'BB' : 'AA'}`;
    for (let i = 0; i < 2; i++) assert.equal((await call(gw.url, 'GET', '/v1/devices', { token: forged })).status, 401);
  });

  it('an expired token is refused although it was accepted (and cached) before', async () => {
    const short = await gw.token('devices:read', { ttlSeconds: 1 });
    assert.equal((await call(gw.url, 'GET', '/v1/devices', { token: short })).status, 200);
    await sleep(2100);
    const res = await call(gw.url, 'GET', '/v1/devices', { token: short });
    assert.equal(res.status, 401, res.text);
  });

  it('writes one access line per request, with the request id, and no token', async () => {
    const token = await gw.token('devices:read');
    const reqId = 'access-line-check-1';
    const res = await call(gw.url, 'GET', `/v1/devices?limit=5&t=${token}`, { token, headers: { 'x-request-id': reqId } });
    assert.equal(res.status, 200, res.text);
    const line = await gw.logs.waitFor((e) => e.reqId === reqId && e.msg === 'request completed');
    assert.equal(line.level, 30);
    assert.equal(line.method, 'GET');
    assert.equal(line.statusCode, 200);
    assert.equal(line.url, '/v1/devices?limit=5&t=[Redacted]');
    assert.equal(typeof line.responseTime, 'number');
    const mine = gw.logs.entries().filter((e) => e.reqId === reqId);
    assert.equal(mine.length, 1, JSON.stringify(mine));
    assert.ok(!gw.logs.lines.some((l) => l.includes(token)), 'the token never reaches the log');
    assert.ok(!gw.logs.entries().some((e) => e.msg === 'incoming request'));
  });
});
