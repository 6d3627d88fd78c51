/**
 * API gateway routes (issue 10, contract §11) over real HTTP: one in-process gateway on loopback
 * in front of real upstream servers. The door (401/403), what the upstream receives (identity,
 * request id, forwarding headers, never the caller's credential, no hop-by-hop fields), load
 * sharing, an upstream killed mid-test, a POST that is never replayed, 502 and 504, passive and
 * active health, GET /v1/routes, metrics and the access log.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { request as httpRequest, type IncomingHttpHeaders } from 'node:http';
import { suiteGateway, type TestGateway } from '../helpers/gateway.js';
import { call, type JsonResponse } from '../helpers/http.js';
import { registerDevice, type Device } from '../helpers/mqtt.js';
import { hasTool } from '../helpers/tools.js';
import { deadUrl, echo, startUpstream } from '../helpers/upstream.js';

if (!hasTool('openssl') && process.env.CI === 'true') throw new Error('openssl is required (CI=true)');
const SKIP = !hasTool('openssl') && 'openssl is not installed (devices are registered with openssl CSRs)';
const PROBLEM = /^application\/problem\+json/;
const SLOW_TIMEOUT_MS = 300;

// Upstreams exist before the gateway reads its routes.
const api = await startUpstream('api');
const lb1 = await startUpstream('lb1');
const lb2 = await startUpstream('lb2');
const k1 = await startUpstream('k1');
const k2 = await startUpstream('k2');
// Reads the whole POST, then hangs up without an answer: the request certainly reached it.
const hangUp = (name: string) => startUpstream(name, (req) => req.socket.destroy());
const h1 = await hangUp('h1');
const h2 = await hangUp('h2');
const slow = await startUpstream('slow', () => undefined);
const checked = await startUpstream('checked');
let checkedHealthy = false;
checked.handler = (_req, res, seen) => {
  if (seen.url === '/healthz') {
    res.writeHead(checkedHealthy ? 200 : 503).end();
    return;
  }
  res.writeHead(200, { 'content-type': 'text/plain' }).end('checked');
};
const dead = await deadUrl();
const upstreams = [api, lb1, lb2, k1, k2, h1, h2, slow, checked];
after(async () => {
  for (const u of upstreams) await u.close();
});

const ROUTES = [
  { name: 'dev', prefix: '/dev', auth: 'device', upstreams: [api.url] },
  {
    name: 'svc',
    prefix: '/svc/',
    auth: 'service',
    scopes: ['devices:read'],
    upstreams: [`${api.url}/base/`],
    headers: { set: { 'x-extra': 'yes', authorization: 'Bearer upstream-secret' }, remove: ['cookie'] },
  },
  { name: 'open', prefix: '/open', auth: 'none', stripPrefix: false, upstreams: [api.url] },
  { name: 'lb', prefix: '/lb', auth: 'none', upstreams: [lb1.url, lb2.url] },
  { name: 'kill', prefix: '/kill', auth: 'none', upstreams: [k1.url, k2.url], retries: 1, health: { failures: 2, cooldownMs: 600_000 } },
  { name: 'post', prefix: '/post', auth: 'none', upstreams: [h1.url, h2.url], retries: 3 },
  { name: 'deadpost', prefix: '/deadpost', auth: 'none', upstreams: [dead] },
  { name: 'slow', prefix: '/slow', auth: 'none', upstreams: [slow.url], timeoutMs: SLOW_TIMEOUT_MS, retries: 2 },
  { name: 'checked', prefix: '/checked', auth: 'none', upstreams: [checked.url], health: { check: { path: '/healthz', intervalMs: 100, timeoutMs: 1000 } } },
];

const gateway = suiteGateway({ IOTGATE_ROUTES: JSON.stringify(ROUTES) });

function assertProblem(res: JsonResponse, status: number, code?: string): void {
  assert.equal(res.status, status, res.text);
  assert.match(res.headers.get('content-type') ?? '', PROBLEM);
  assert.equal(res.body.status, status);
  if (code) assert.equal(res.body.code, code);
}

/** A raw HTTP/1.1 request (fetch forbids Connection and friends). */
function rawRequest(port: number, method: string, path: string, headers: Record<string, string>, body?: string): Promise<{ status: number; headers: IncomingHttpHeaders; text: string }> {
  return new Promise((resolve, reject) => {
    const req = httpRequest({ host: '127.0.0.1', port, method, path, headers }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (text += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, text }));
    });
    req.on('error', reject);
    req.end(body);
  });
}

/** Polls GET /v1/routes until `check` holds for the named route's upstream `url`. */
async function waitForHealth(gw: TestGateway, admin: string, route: string, url: string, check: (u: Record<string, unknown>) => boolean): Promise<Record<string, unknown>> {
  for (;;) {
    const res = await call(gw.url, 'GET', '/v1/routes', { token: admin });
    const r = (res.body.items as Record<string, unknown>[]).find((i) => i.name === route) as { upstreams: Record<string, unknown>[] };
    const u = r.upstreams.find((x) => x.url === new URL(url).href) as Record<string, unknown>;
    if (check(u)) return u;
    await new Promise<void>((resolve) => setImmediate(resolve));
  }
}

describe('API gateway routes', { skip: SKIP }, () => {
  let gw: TestGateway;
  let admin: string;
  let device: Device;
  before(async () => {
    gw = gateway();
    admin = await gw.token('admin');
    device = await registerDevice(gw, 'route-dev-1');
  });

  describe('the door', () => {
    it('a device route answers 401 without a valid device token and passes with one', async () => {
      const before = api.requests.length;
      const none = await call(gw.url, 'GET', '/dev/things');
      assertProblem(none, 401, 'unauthorized');
      assert.match(none.headers.get('www-authenticate') ?? '', /^Bearer/);
      assertProblem(await call(gw.url, 'GET', '/dev/things', { token: 'not-a-token' }), 401, 'unauthorized');
      assertProblem(await call(gw.url, 'GET', '/dev/things', { token: await gw.token('admin') }), 401, 'unauthorized');
      assert.equal(api.requests.length, before, 'a refused request never reaches the upstream');

      const ok = await call(gw.url, 'GET', '/dev/things?x=1', { token: device.token });
      assert.equal(ok.status, 200, ok.text);
      assert.equal(ok.body.upstream, 'api');
      assert.equal(ok.body.url, '/things?x=1', 'the prefix is stripped, the query kept');
    });

    it('a service route answers 401 without a JWT and 403 without its scope; admin and the scope pass', async () => {
      assertProblem(await call(gw.url, 'GET', '/svc/x'), 401, 'unauthorized');
      assertProblem(await call(gw.url, 'GET', '/svc/x', { token: device.token }), 401, 'unauthorized');
      const wrong = await call(gw.url, 'GET', '/svc/x', { token: await gw.token('telemetry:read') });
      assertProblem(wrong, 403, 'forbidden');
      assert.match(String(wrong.body.detail), /devices:read/);
      for (const scope of ['devices:read', 'admin']) {
        const ok = await call(gw.url, 'GET', '/svc/x', { token: await gw.token(scope) });
        assert.equal(ok.status, 200, ok.text);
      }
    });

    it('a path that no route covers is the usual 404, and /v1 is never shadowed', async () => {
      assertProblem(await call(gw.url, 'GET', '/nothing/here'), 404, 'not_found');
      assertProblem(await call(gw.url, 'GET', '/devx'), 404, 'not_found');
      assert.equal((await call(gw.url, 'GET', '/healthz')).status, 200);
      assertProblem(await call(gw.url, 'GET', '/v1/devices'), 401);
    });

    it('dot segments (plain or encoded) are refused before anything is sent upstream', async () => {
      const before = api.requests.length;
      for (const path of ['/open/../v1/devices', '/open/%2e%2e/secret', '/open/a/%2E%2E%2Fb']) {
        const res = await rawRequest(gw.ports.http, 'GET', path, {});
        assert.equal(res.status, 400, `${path}: ${res.text}`);
      }
      assert.equal(api.requests.length, before);
    });
  });

  describe('what the upstream receives', () => {
    it('device identity, request id and forwarding headers; never the Authorization header', async () => {
      const res = await call(gw.url, 'GET', '/dev/who', { token: device.token, headers: { 'x-iotgate-subject': 'spoofed', 'x-forwarded-for': '203.0.113.9' } });
      assert.equal(res.status, 200, res.text);
      const h = res.body.headers as Record<string, string>;
      assert.equal(h['x-iotgate-device'], device.id);
      assert.equal(h['x-iotgate-subject'], undefined, 'identity headers sent by the caller are dropped');
      assert.equal(h.authorization, undefined);
      assert.match(h['x-request-id'] ?? '', /^[0-9a-f-]{36}$/);
      assert.equal(res.headers.get('x-request-id'), h['x-request-id'], 'the caller sees the same request id');
      assert.equal(h['x-forwarded-for'], '203.0.113.9, 127.0.0.1', 'the gateway appends the address it saw');
      assert.equal(h['x-forwarded-proto'], 'http');
      assert.equal(h['x-forwarded-host'], `127.0.0.1:${gw.ports.http}`);
      assert.equal(h.forwarded, `for=127.0.0.1;host="127.0.0.1:${gw.ports.http}";proto=http`);
      assert.equal(h.host, `127.0.0.1:${api.port}`, 'Host is the upstream');
    });

    it('service identity and scopes; headers.set and headers.remove; the upstream base path', async () => {
      const token = await gw.token('devices:read telemetry:read', { sub: 'billing' });
      const res = await call(gw.url, 'GET', '/svc/orders/7', { token, headers: { cookie: 'session=1', 'x-request-id': 'trace-123' } });
      assert.equal(res.status, 200, res.text);
      assert.equal(res.body.url, '/base/orders/7');
      const h = res.body.headers as Record<string, string>;
      assert.equal(h['x-iotgate-subject'], 'billing');
      assert.equal(h['x-iotgate-scopes'], 'devices:read telemetry:read');
      assert.equal(h['x-iotgate-device'], undefined);
      assert.equal(h.authorization, 'Bearer upstream-secret', 'only the credential the route configures');
      assert.equal(h['x-extra'], 'yes');
      assert.equal(h.cookie, undefined);
      assert.equal(h['x-request-id'], 'trace-123', 'a caller request id is passed through');
      assert.equal(res.headers.get('x-request-id'), 'trace-123');
    });

    it('hop-by-hop headers are removed both ways', async () => {
      api.handler = (_req, res, seen) => {
        const body = JSON.stringify(seen);
        res.writeHead(200, { 'content-type': 'application/json', connection: 'keep-alive, x-up-hop', 'x-up-hop': 'secret', 'keep-alive': 'timeout=5', 'x-up-end': 'kept' });
        res.end(body);
      };
      try {
        const res = await rawRequest(gw.ports.http, 'GET', '/open/hop', { connection: 'keep-alive, x-down-hop', 'x-down-hop': '1', 'proxy-authorization': 'Basic Zm9vOmJhcg==', 'x-end': 'kept' });
        assert.equal(res.status, 200, res.text);
        const seen = JSON.parse(res.text) as { url: string; headers: Record<string, string> };
        assert.equal(seen.url, '/open/hop', 'stripPrefix: false keeps the prefix');
        assert.equal(seen.headers['x-down-hop'], undefined);
        assert.equal(seen.headers['proxy-authorization'], undefined);
        assert.equal(seen.headers['x-end'], 'kept');
        assert.equal(res.headers['x-up-hop'], undefined);
        assert.equal(res.headers['x-up-end'], 'kept');
      } finally {
        api.handler = echo('api');
      }
    });

    it('a request body streams to the upstream (POST with and without a content type)', async () => {
      const json = await call(gw.url, 'POST', '/open/items', { body: { a: 1 } });
      assert.equal(json.status, 200, json.text);
      assert.equal(json.body.bodyBytes, 7);
      const raw = await rawRequest(gw.ports.http, 'PUT', '/open/blob', { 'content-length': '5' }, 'hello');
      assert.equal(raw.status, 200, raw.text);
      assert.equal((JSON.parse(raw.text) as { bodyBytes: number }).bodyBytes, 5);
    });
  });

  describe('balancing and failures', () => {
    it('two upstreams share the load (round robin)', async () => {
      const [a, b] = [lb1.requests.length, lb2.requests.length];
      for (let i = 0; i < 10; i++) assert.equal((await call(gw.url, 'GET', `/lb/r${i}`)).status, 200);
      assert.equal(lb1.requests.length - a, 5);
      assert.equal(lb2.requests.length - b, 5);
    });

    it('killing one upstream mid-test sends the traffic to the other, with no failed GET', async () => {
      const statuses: number[] = [];
      const worker = async (w: number) => {
        for (let i = 0; i < 15; i++) {
          const res = await call(gw.url, 'GET', `/kill/w${w}/${i}`);
          statuses.push(res.status);
          if (w === 0 && i === 4) k1.kill();
        }
      };
      await Promise.all([0, 1, 2].map(worker));
      assert.deepEqual(
        statuses.filter((s) => s !== 200),
        [],
        'every GET succeeded',
      );
      const after = k2.requests.length;
      for (let i = 0; i < 6; i++) assert.equal((await call(gw.url, 'GET', `/kill/after/${i}`)).status, 200);
      assert.equal(k2.requests.length - after, 6, 'once taken out, the dead upstream gets nothing');
      const health = await waitForHealth(gw, admin, 'kill', k1.url, (u) => u.state === 'down');
      assert.equal(health.healthy, false);
      assert.equal(typeof health.lastError, 'string');
    });

    it('a POST that reached an upstream which then failed gives 502 and is not replayed', async () => {
      const res = await call(gw.url, 'POST', '/post/orders', { body: { order: 1 } });
      assertProblem(res, 502, 'bad_gateway');
      assert.equal(res.body.route, 'post');
      assert.equal(h1.requests.length + h2.requests.length, 1, 'exactly one upstream saw the POST, once');
    });

    it('a POST to a dead upstream gives 502 problem+json', async () => {
      const res = await call(gw.url, 'POST', '/deadpost/x', { body: { a: 1 } });
      assertProblem(res, 502, 'bad_gateway');
      assert.doesNotMatch(res.text, /127\.0\.0\.1/, 'upstream addresses are not disclosed to callers');
    });

    it('a slow upstream gives 504 at the route timeout, without a retry', async () => {
      const startedAt = Date.now();
      const res = await call(gw.url, 'GET', '/slow/report');
      assertProblem(res, 504, 'gateway_timeout');
      assert.ok(Date.now() - startedAt >= SLOW_TIMEOUT_MS, 'not before the route timeout');
      assert.match(String(res.body.detail), new RegExp(`${SLOW_TIMEOUT_MS} ms`));
      assert.equal(slow.requests.length, 1, 'a timed-out request is not sent again');
    });

    it('active health checks take an upstream out and bring it back', async () => {
      const down = await waitForHealth(gw, admin, 'checked', checked.url, (u) => u.state === 'down');
      assert.match(String(down.lastError), /503/);
      assertProblem(await call(gw.url, 'GET', '/checked/x'), 502, 'bad_gateway');
      checkedHealthy = true;
      await waitForHealth(gw, admin, 'checked', checked.url, (u) => u.state === 'up');
      const ok = await call(gw.url, 'GET', '/checked/x');
      assert.equal(ok.status, 200);
      assert.equal(ok.text, 'checked');
    });
  });

  describe('operations', () => {
    it('GET /v1/routes lists routes and upstream health for admin only, without header values', async () => {
      assertProblem(await call(gw.url, 'GET', '/v1/routes'), 401);
      assertProblem(await call(gw.url, 'GET', '/v1/routes', { token: await gw.token('devices:read') }), 403, 'forbidden');
      const res = await call(gw.url, 'GET', '/v1/routes', { token: admin });
      assert.equal(res.status, 200, res.text);
      assert.equal(res.body.storage, 'memory');
      const items = res.body.items as Record<string, unknown>[];
      assert.deepEqual(
        items.map((i) => i.name),
        ROUTES.map((r) => r.name),
      );
      const svc = items.find((i) => i.name === 'svc') as Record<string, unknown>;
      assert.equal(svc.prefix, '/svc', 'a trailing slash is normalised away');
      assert.deepEqual(svc.headers, { set: ['x-extra', 'authorization'], remove: ['cookie'] });
      assert.doesNotMatch(res.text, /upstream-secret/);
      const lb = items.find((i) => i.name === 'lb') as { upstreams: { url: string; healthy: boolean }[] };
      assert.deepEqual(
        lb.upstreams.map((u) => [u.url, u.healthy]),
        [
          [`${lb1.url}/`, true],
          [`${lb2.url}/`, true],
        ],
      );
      const doc = await call(gw.url, 'GET', '/openapi.json');
      assert.ok((doc.body.paths as Record<string, unknown>)['/v1/routes'], 'documented in OpenAPI');
      assert.equal(Object.keys(doc.body.paths as object).some((p) => p.includes('*')), false, 'the catch-all is not documented');
    });

    it('metrics per route and per upstream', async () => {
      const text = (await call(gw.url, 'GET', '/metrics')).text;
      assert.match(text, /iotgate_route_requests_total\{route="lb",method="GET",status_class="2xx"\} 10/);
      assert.match(text, /iotgate_route_requests_total\{route="slow",method="GET",status_class="5xx"\} 1/);
      assert.match(text, /iotgate_route_request_duration_seconds_count\{route="lb"\} 10/);
      assert.match(text, new RegExp(`iotgate_route_upstream_healthy\\{route="kill",upstream="${k1.url}/"\\} 0`));
      assert.match(text, new RegExp(`iotgate_route_upstream_healthy\\{route="kill",upstream="${k2.url}/"\\} 1`));
      assert.match(text, new RegExp(`iotgate_route_upstream_requests_total\\{route="slow",upstream="${slow.url}/",outcome="timeout"\\} 1`));
      assert.match(text, /iotgate_route_upstream_response_seconds_bucket\{le="0.005",route="lb"/);
    });

    it('one access line per request with request id, route, upstream, status and duration; no credentials', async () => {
      const res = await call(gw.url, 'GET', '/dev/logged', { token: device.token, headers: { 'x-request-id': 'log-check-1' } });
      assert.equal(res.status, 200);
      const line = await gw.logs.waitFor((e) => e.msg === 'route request' && e.reqId === 'log-check-1');
      assert.equal(line.route, 'dev');
      assert.equal(line.upstream, `${api.url}/`);
      assert.equal(line.status, 200);
      assert.equal(line.caller, `device:${device.id}`);
      assert.equal(line.path, '/dev/logged');
      assert.equal(typeof line.durationMs, 'number');
      const denied = await gw.logs.waitFor((e) => e.msg === 'route request' && e.status === 401);
      assert.equal(denied.outcome, 'unauthorized');
      const all = gw.logs.lines.join('\n');
      assert.ok(!all.includes(device.token), 'the device token is never logged');
      assert.ok(!all.includes(admin), 'JWTs are never logged');
      assert.ok(!all.includes('upstream-secret'), 'configured header values are never logged');
    });
  });
});
