/** Route matching, upstream paths, reload bookkeeping (src/routes/table.ts) and the header rules of the hop (src/http/proxy/headers.ts). */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { pino } from 'pino';
import { routesSchema } from '../../src/config/routes.js';
import { RouteTable, joinUpstreamPath } from '../../src/routes/table.js';
import { downstreamResponseHeaders, upstreamRequestHeaders, type ForwardInfo } from '../../src/http/proxy/headers.js';

const log = pino({ level: 'silent' });
const routes = (list: unknown[]) => routesSchema.parse(list);

test('longest prefix wins, on segment boundaries only; stripPrefix decides the forwarded path', () => {
  const table = new RouteTable(log);
  table.replace(
    routes([
      { name: 'api', prefix: '/api', auth: 'none', upstreams: ['http://a'] },
      { name: 'orders', prefix: '/api/orders', auth: 'none', upstreams: ['http://o/v2/'] },
      { name: 'keep', prefix: '/keep', auth: 'none', upstreams: ['http://k'], stripPrefix: false },
    ]),
  );
  const m = (p: string) => {
    const r = table.match(p);
    return r && [r.route.name, r.forwardPath];
  };
  assert.deepEqual(m('/api/orders/7'), ['orders', '/7']);
  assert.deepEqual(m('/api/orders'), ['orders', '']);
  assert.deepEqual(m('/api/ordersx'), ['api', '/ordersx']);
  assert.deepEqual(m('/api'), ['api', '']);
  assert.deepEqual(m('/keep/a'), ['keep', '/keep/a']);
  assert.equal(m('/apix'), null);
  assert.equal(m('/'), null);
  const [orders] = table.list().filter((r) => r.name === 'orders');
  const u = orders!.balancer.upstreams[0]!;
  assert.equal(joinUpstreamPath(u, '/7'), '/v2/7');
  assert.equal(joinUpstreamPath(u, ''), '/v2');
  const root = table.list()[0]!.balancer.upstreams[0]!;
  assert.equal(joinUpstreamPath(root, ''), '/');
  assert.equal(joinUpstreamPath(root, '/x/'), '/x/');
  table.close();
});

test('replace reports added, removed and changed routes; an unchanged route keeps its object and health', () => {
  const table = new RouteTable(log);
  const a = { name: 'a', prefix: '/a', auth: 'none', upstreams: ['http://a1', 'http://a2'] };
  const b = { name: 'b', prefix: '/b', auth: 'none', upstreams: ['http://b'] };
  assert.deepEqual(table.replace(routes([a, b])), { routes: 2, added: ['a', 'b'], removed: [], changed: [] });
  const [ra, rb] = table.list();
  const lease = rb!.balancer.pick();
  lease?.failed('refused');
  lease?.release();
  const summary = table.replace(routes([a, { ...b, timeoutMs: 5 }, { name: 'c', prefix: '/c', auth: 'none', upstreams: ['http://c'] }]));
  assert.deepEqual(summary, { routes: 3, added: ['c'], removed: [], changed: ['b'] });
  assert.equal(table.list()[0], ra, 'unchanged route: same object');
  assert.notEqual(table.list()[1], rb);
  assert.equal(table.list()[1]!.balancer.upstreams[0]!.consecutiveFailures, 1, 'a changed route keeps the health of the same URL');
  assert.notEqual(table.list()[1]!.generation, rb!.generation);
  assert.deepEqual(table.replace(routes([b])), { routes: 1, added: [], removed: ['a', 'c'], changed: ['b'] });
  table.close();
});

const info = (over: Partial<ForwardInfo> = {}): ForwardInfo => ({
  requestId: 'r-1',
  clientIp: '127.0.0.1',
  proto: 'http',
  caller: { kind: 'anonymous' },
  hasBody: false,
  removeHeaders: new Set(),
  setHeaders: [],
  ...over,
});

test('upstream request headers: credentials, hop-by-hop and spoofed identity out; identity and forwarding in', () => {
  const out = upstreamRequestHeaders(
    {
      host: 'gw.example:8080',
      authorization: 'Bearer x',
      connection: 'keep-alive, X-Private',
      'x-private': '1',
      te: 'trailers',
      upgrade: 'websocket',
      expect: '100-continue',
      'content-length': '10',
      'x-iotgate-scopes': 'admin',
      'x-request-id': 'caller-chosen',
      forwarded: 'for=192.0.2.60',
      accept: 'application/json',
      cookie: 'c=1',
    },
    info({ caller: { kind: 'service', sub: 'svc', scopes: ['a', 'b'] }, clientIp: '::1', proto: 'https', removeHeaders: new Set(['cookie']), setHeaders: [['x-team', 'iot']] }),
  );
  assert.deepEqual(out, {
    accept: 'application/json',
    'x-request-id': 'r-1',
    'x-iotgate-subject': 'svc',
    'x-iotgate-scopes': 'a b',
    'x-forwarded-for': '::1',
    'x-forwarded-proto': 'https',
    'x-forwarded-host': 'gw.example:8080',
    forwarded: 'for=192.0.2.60, for="[::1]";host="gw.example:8080";proto=https',
    'x-team': 'iot',
  });
  const withBody = upstreamRequestHeaders({ 'content-length': '10', 'content-type': 'text/plain' }, info({ hasBody: true, clientIp: '::ffff:10.0.0.1', caller: { kind: 'device', id: 'd1' } }));
  assert.equal(withBody['content-length'], '10');
  assert.equal(withBody['x-iotgate-device'], 'd1');
  assert.equal(withBody['x-forwarded-for'], '10.0.0.1');
  assert.equal(withBody.forwarded, 'for=10.0.0.1;proto=http');
});

test('downstream response headers: hop-by-hop and Connection-listed fields removed', () => {
  assert.deepEqual(
    downstreamResponseHeaders({ connection: 'close, x-hop', 'x-hop': '1', 'keep-alive': 'timeout=5', 'transfer-encoding': 'chunked', 'content-type': 'text/plain', 'set-cookie': ['a=1', 'b=2'], etag: undefined }),
    { 'content-type': 'text/plain', 'set-cookie': ['a=1', 'b=2'] },
  );
});
