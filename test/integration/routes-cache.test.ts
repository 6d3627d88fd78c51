/**
 * API gateway routes (issue 10, contract §11), second part, over real HTTP against one in-process
 * gateway: the response cache (HIT without calling the upstream until the TTL, Cache-Control
 * no-store / private / max-age, Vary, per-caller partitions, Age and X-Cache), rate limits (429
 * naming the limit, Retry-After, RateLimit-*), bodies streamed both ways without being buffered,
 * and a route reload that keeps requests in flight.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { request as httpRequest, type ServerResponse } from 'node:http';
import { suiteGateway, type TestGateway } from '../helpers/gateway.js';
import { call, type JsonResponse } from '../helpers/http.js';
import { registerDevice, withDeadline, type Device } from '../helpers/mqtt.js';
import { hasTool } from '../helpers/tools.js';
import { startUpstream } from '../helpers/upstream.js';
import { routesSchema } from '../../src/config/routes.js';

if (!hasTool('openssl') && process.env.CI === 'true') throw new Error('openssl is required (CI=true)');
const SKIP = !hasTool('openssl') && 'openssl is not installed (devices are registered with openssl CSRs)';
const PROBLEM = /^application\/problem\+json/;
const TTL_MS = 400;

/** Answers `{n, url, lang}` where n counts the requests for that URL; `?cc=` and `?vary=` set those headers. */
const cached = await startUpstream('cached', (_req, res, seen) => {
  const url = new URL(seen.url, 'http://x');
  const n = cached.requests.filter((r) => r.url === seen.url).length;
  const headers: Record<string, string> = { 'content-type': 'application/json' };
  const cc = url.searchParams.get('cc');
  if (cc) headers['cache-control'] = cc;
  const vary = url.searchParams.get('vary');
  if (vary) headers.vary = vary;
  if (url.searchParams.has('cookie')) headers['set-cookie'] = 'a=1';
  res.writeHead(200, headers).end(JSON.stringify({ n, url: seen.url, lang: seen.headers['accept-language'] ?? null }));
});
const api = await startUpstream('api');

/** Lock-step streaming: each side waits for the other to see the first chunk before sending the rest. */
const CHUNK = Buffer.alloc(64 * 1024, 0x61);
let releaseDownload: () => void = () => undefined;
let firstUploadChunk: () => void = () => undefined;
const streamer = await startUpstream(
  'streamer',
  (req, res, seen) => {
    if (seen.url === '/download') {
      res.writeHead(200, { 'content-type': 'application/octet-stream' });
      res.write(CHUNK);
      new Promise<void>((resolve) => (releaseDownload = resolve)).then(() => res.end(CHUNK), () => undefined);
      return;
    }
    let total = 0;
    let first = true;
    req.on('data', (c: Buffer) => {
      total += c.length;
      if (first) {
        first = false;
        firstUploadChunk();
      }
    });
    req.on('end', () => res.writeHead(200, { 'content-type': 'text/plain' }).end(String(total)));
  },
  { readBody: false },
);
/** Keeps every response open until the test answers it. */
const heldResponses: ServerResponse[] = [];
const held = await startUpstream('held', (_req, res) => void heldResponses.push(res));
after(async () => {
  for (const u of [cached, api, streamer, held]) await u.close();
});

const ROUTES = [
  { name: 'cache', prefix: '/cache', auth: 'service', upstreams: [cached.url], cache: { ttlMs: TTL_MS, maxEntries: 100 } },
  { name: 'shared', prefix: '/shared', auth: 'none', upstreams: [cached.url], cache: { ttlMs: 60_000, maxEntries: 2, maxEntryBytes: 1024 } },
  { name: 'rl', prefix: '/rl', auth: 'device', upstreams: [api.url], rateLimit: { max: 2, windowMs: 60_000 } },
  { name: 'rlall', prefix: '/rlall', auth: 'none', upstreams: [api.url], rateLimit: { max: 1, windowMs: 3_600_000, per: 'route' } },
  { name: 'stream', prefix: '/stream', auth: 'none', upstreams: [streamer.url] },
  { name: 'held', prefix: '/held', auth: 'none', upstreams: [held.url] },
];

const gateway = suiteGateway({ IOTGATE_ROUTES: JSON.stringify(ROUTES) });

function assertProblem(res: JsonResponse, status: number, code?: string): void {
  assert.equal(res.status, status, res.text);
  assert.match(res.headers.get('content-type') ?? '', PROBLEM);
  if (code) assert.equal(res.body.code, code);
}

const hits = (url: string) => cached.requests.filter((r) => r.url === url).length;

describe('API gateway routes: cache, rate limits, streaming, reload', { skip: SKIP }, () => {
  let gw: TestGateway;
  let alice: string;
  let bob: string;
  before(async () => {
    gw = gateway();
    alice = await gw.token('devices:read', { sub: 'alice' });
    bob = await gw.token('devices:read', { sub: 'bob' });
  });

  describe('cache', () => {
    it('a cached GET is a HIT (upstream not called) until its TTL, then a MISS', async () => {
      const sentAt = Date.now();
      const first = await call(gw.url, 'GET', '/cache/a', { token: alice });
      assert.equal(first.status, 200);
      assert.equal(first.headers.get('x-cache'), 'MISS');
      assert.equal(first.body.n, 1);
      const second = await call(gw.url, 'GET', '/cache/a', { token: alice });
      assert.equal(second.headers.get('x-cache'), 'HIT');
      assert.equal(second.body.n, 1);
      assert.match(second.headers.get('age') ?? '', /^\d+$/);
      assert.equal(second.headers.get('content-type'), 'application/json');
      assert.equal(hits('/a'), 1, 'the upstream was called once');
      const head = await fetch(`${gw.url}/cache/a`, { method: 'HEAD', headers: { authorization: `Bearer ${alice}` } });
      assert.equal(head.headers.get('x-cache'), 'HIT', 'HEAD is answered from the GET entry');
      // Poll until the entry expires: every answer before is a HIT of the first response.
      for (;;) {
        const res = await call(gw.url, 'GET', '/cache/a', { token: alice });
        if (res.headers.get('x-cache') === 'MISS') {
          assert.ok(Date.now() - sentAt >= TTL_MS, 'not before the TTL');
          assert.equal(res.body.n, 2);
          break;
        }
        assert.equal(res.body.n, 1);
        assert.equal(hits('/a'), 1);
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
      assert.equal(hits('/a'), 2);
    });

    it('Cache-Control: no-store (and private, no-cache, max-age=0) is never cached', async () => {
      for (const cc of ['no-store', 'private, max-age=60', 'no-cache', 'max-age=0']) {
        const path = `/b?cc=${encodeURIComponent(cc)}`;
        for (let i = 1; i <= 3; i++) {
          const res = await call(gw.url, 'GET', `/cache${path}`, { token: alice });
          assert.equal(res.headers.get('x-cache'), 'MISS', cc);
          assert.equal(res.body.n, i, cc);
        }
        assert.equal(hits(path), 3, cc);
      }
    });

    it('a request with Cache-Control: no-cache skips the stored copy', async () => {
      await call(gw.url, 'GET', '/shared/nc');
      assert.equal((await call(gw.url, 'GET', '/shared/nc')).headers.get('x-cache'), 'HIT');
      const fresh = await call(gw.url, 'GET', '/shared/nc', { headers: { 'cache-control': 'no-cache' } });
      assert.equal(fresh.headers.get('x-cache'), 'MISS');
      assert.equal(fresh.body.n, 2);
    });

    it('entries are per caller on authenticated routes', async () => {
      assert.equal((await call(gw.url, 'GET', '/cache/p', { token: alice })).headers.get('x-cache'), 'MISS');
      assert.equal((await call(gw.url, 'GET', '/cache/p', { token: alice })).headers.get('x-cache'), 'HIT');
      const other = await call(gw.url, 'GET', '/cache/p', { token: bob });
      assert.equal(other.headers.get('x-cache'), 'MISS', "bob never sees alice's entry");
      assert.equal(other.body.n, 2);
    });

    it('Vary keys entries by the named request headers', async () => {
      const path = '/shared/v?vary=accept-language';
      const get = (lang: string) => call(gw.url, 'GET', path, { headers: { 'accept-language': lang } });
      const en1 = await get('en');
      const en2 = await get('en');
      const fr1 = await get('fr');
      const fr2 = await get('fr');
      assert.deepEqual(
        [en1, en2, fr1, fr2].map((r) => [r.headers.get('x-cache'), r.body.lang]),
        [
          ['MISS', 'en'],
          ['HIT', 'en'],
          ['MISS', 'fr'],
          ['HIT', 'fr'],
        ],
      );
      const star = '/shared/s?vary=*';
      await call(gw.url, 'GET', star);
      assert.equal((await call(gw.url, 'GET', star)).headers.get('x-cache'), 'MISS', 'Vary: * is never stored');
    });

    it('Set-Cookie and bodies over maxEntryBytes are passed through, not stored; maxEntries bounds the route', async () => {
      await call(gw.url, 'GET', '/shared/k?cookie=1');
      assert.equal((await call(gw.url, 'GET', '/shared/k?cookie=1')).headers.get('x-cache'), 'MISS');
      const big = `/shared/big?pad=${'x'.repeat(1100)}`;
      await call(gw.url, 'GET', big);
      assert.equal((await call(gw.url, 'GET', big)).headers.get('x-cache'), 'MISS');
      // maxEntries: 2. Three fresh URLs: the first one is evicted.
      for (const p of ['/shared/e1', '/shared/e2', '/shared/e3']) await call(gw.url, 'GET', p);
      assert.equal((await call(gw.url, 'GET', '/shared/e3')).headers.get('x-cache'), 'HIT');
      assert.equal((await call(gw.url, 'GET', '/shared/e1')).headers.get('x-cache'), 'MISS');
    });
  });

  describe('rate limits', () => {
    let d1: Device;
    let d2: Device;
    before(async () => {
      d1 = await registerDevice(gw, 'rl-dev-1');
      d2 = await registerDevice(gw, 'rl-dev-2');
    });

    it('429 names the limit, with Retry-After and RateLimit-* headers; budgets are per caller', async () => {
      assert.equal((await call(gw.url, 'GET', '/rl/x', { token: d1.token })).status, 200);
      assert.equal((await call(gw.url, 'GET', '/rl/x', { token: d1.token })).status, 200);
      const before = api.requests.length;
      const refused = await call(gw.url, 'GET', '/rl/x', { token: d1.token });
      assertProblem(refused, 429, 'rate_limited');
      assert.equal(refused.body.limit, '2 requests per 1m per caller on route "rl"');
      assert.match(String(refused.body.detail), /2 requests per 1m per caller on route "rl"/);
      assert.ok(Number(refused.headers.get('retry-after')) >= 1);
      assert.equal(refused.headers.get('ratelimit-limit'), '2');
      assert.equal(refused.headers.get('ratelimit-remaining'), '0');
      assert.equal(refused.headers.get('ratelimit-policy'), '2;w=60');
      assert.equal(api.requests.length, before, 'a refused request never reaches the upstream');
      assert.equal((await call(gw.url, 'GET', '/rl/x', { token: d2.token })).status, 200, 'another device has its own budget');
      const metrics = (await call(gw.url, 'GET', '/metrics')).text;
      assert.match(metrics, /iotgate_route_rate_limited_total\{route="rl"\} 1/);
    });

    it('per: route shares one budget among all callers', async () => {
      assert.equal((await call(gw.url, 'GET', '/rlall/x')).status, 200);
      const refused = await call(gw.url, 'GET', '/rlall/x', { headers: { 'x-forwarded-for': '198.51.100.7' } });
      assertProblem(refused, 429, 'rate_limited');
      assert.equal(refused.body.limit, '1 requests per 1h for all callers on route "rlall"');
    });
  });

  describe('streaming', () => {
    it('a response streams to the caller before the upstream has finished it', async () => {
      const res = await fetch(`${gw.url}/stream/download`);
      assert.equal(res.status, 200);
      const reader = res.body!.getReader();
      let received = 0;
      // The upstream sends the rest only after this first chunk went all the way through.
      while (received < CHUNK.length) {
        const { value, done } = await withDeadline(reader.read(), 10_000, 'the first chunk through the gateway');
        assert.equal(done, false);
        received += value.length;
      }
      releaseDownload();
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        received += value.length;
      }
      assert.equal(received, 2 * CHUNK.length);
    });

    it('a request body streams to the upstream before the caller has finished sending it', async () => {
      const upstreamGotFirst = new Promise<void>((resolve) => (firstUploadChunk = resolve));
      const answer = new Promise<string>((resolve, reject) => {
        const req = httpRequest({ host: '127.0.0.1', port: gw.ports.http, method: 'POST', path: '/stream/upload', headers: { 'content-type': 'application/octet-stream', 'transfer-encoding': 'chunked' } }, (res) => {
          let text = '';
          res.on('data', (c: Buffer) => (text += c.toString()));
          res.on('end', () => resolve(text));
        });
        req.on('error', reject);
        req.write(CHUNK);
        // Only once the upstream has the first chunk does the rest follow.
        void withDeadline(upstreamGotFirst, 10_000, 'the first upload chunk at the upstream').then(
          () => req.end(CHUNK),
          (err: unknown) => {
            req.destroy();
            reject(err as Error);
          },
        );
      });
      assert.equal(await answer, String(2 * CHUNK.length));
    });
  });

  describe('reload', () => {
    it('new routes replace the old ones at once; a request in flight on a removed route still completes', async () => {
      const arrived = held.waitFor((r) => r.url === '/slow-report');
      const inFlight = call(gw.url, 'GET', '/held/slow-report');
      await arrived;
      const summary = gw.gateway.routes.reload(routesSchema.parse([...ROUTES.filter((r) => r.name !== 'held'), { name: 'fresh', prefix: '/fresh', auth: 'none', upstreams: [api.url] }]));
      assert.deepEqual(summary, { routes: ROUTES.length, added: ['fresh'], removed: ['held'], changed: [] });
      assert.equal((await call(gw.url, 'GET', '/fresh/x')).status, 200);
      assertProblem(await call(gw.url, 'GET', '/held/other'), 404, 'not_found');
      // The held request was forwarded before the reload: it gets its answer now.
      for (const r of heldResponses.splice(0)) r.writeHead(200, { 'content-type': 'text/plain' }).end('done');
      const res = await inFlight;
      assert.equal(res.status, 200);
      assert.equal(res.text, 'done');
    });
  });
});
