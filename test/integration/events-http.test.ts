/**
 * `GET /v1/events` (SSE) and `GET /v1/upstreams` over real HTTP on 127.0.0.1, in a Fastify app
 * assembled like src/http/app.ts (errors + auth plugins, zod compilers, forceCloseConnections
 * 'idle'): CloudEvents with sequence ids, filters, Last-Event-ID resume and gaps, heartbeat,
 * auth (401/403), a slow client dropped, and shutdown with open streams.
 */
import { after, before, describe, it, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { get, type IncomingMessage } from 'node:http';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Fastify, { type FastifyBaseLogger, type FastifyInstance } from 'fastify';
import { serializerCompiler, validatorCompiler } from 'fastify-type-provider-zod';
import { EventBus } from '../../src/core/events.js';
import { EventHub } from '../../src/core/event-hub.js';
import { LocalEventLog } from '../../src/core/event-log.js';
import type { TelemetryRecord } from '../../src/core/model.js';
import { errorsPlugin } from '../../src/http/plugins/errors.js';
import { authPlugin } from '../../src/http/plugins/auth.js';
import { openapiPlugin } from '../../src/http/plugins/openapi.js';
import { eventRoutes } from '../../src/http/routes/v1/events.js';
import { upstreamRoutes } from '../../src/http/routes/v1/upstreams.js';
import { WebhookDispatcher } from '../../src/upstream/webhooks.js';
import { initCa, loadCaMaterial, serviceJwtVerifyOptions, signServiceToken, type CaMaterial } from '../../src/pki/index.js';
import { createLogger } from '../../src/log.js';

interface SseEvent {
  id?: string;
  event?: string;
  data: string;
}

interface SseClient {
  status: number;
  headers: IncomingMessage['headers'];
  events: SseEvent[];
  comments: string[];
  /** Resolves the first event (received or future) at index >= `from` that matches. */
  next(match: (e: SseEvent) => boolean, ms?: number, from?: number): Promise<SseEvent>;
  comment(match: (c: string) => boolean, ms?: number): Promise<string>;
  /** Resolves when the response is over (ended or cut). */
  closed: Promise<void>;
  res: IncomingMessage;
  close(): void;
}

async function until(cond: () => boolean, ms: number, what: string): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

function openSse(url: string, headers: Record<string, string>, opts: { paused?: boolean } = {}): Promise<SseClient> {
  return new Promise((resolve, reject) => {
    const req = get(url, { headers: { accept: 'text/event-stream', ...headers } }, (res) => {
      const events: SseEvent[] = [];
      const comments: string[] = [];
      let buf = '';
      const closed = new Promise<void>((r) => {
        res.on('close', () => r());
        res.on('error', () => r());
      });
      const parse = () => {
        let i: number;
        while ((i = buf.indexOf('\n\n')) >= 0) {
          const block = buf.slice(0, i);
          buf = buf.slice(i + 2);
          const ev: SseEvent = { data: '' };
          let isEvent = false;
          for (const line of block.split('\n')) {
            if (line.startsWith(':')) comments.push(line.slice(1).trim());
            else {
              isEvent = true;
              const [field, ...rest] = line.split(':');
              const value = rest.join(':').replace(/^ /, '');
              if (field === 'id') ev.id = value;
              else if (field === 'event') ev.event = value;
              else if (field === 'data') ev.data += value;
            }
          }
          if (isEvent) events.push(ev);
        }
      };
      res.setEncoding('utf8');
      if (opts.paused) res.pause();
      res.on('data', (chunk: string) => {
        buf += chunk;
        parse();
      });
      resolve({
        status: res.statusCode ?? 0,
        headers: res.headers,
        events,
        comments,
        res,
        closed,
        async next(match, ms = 5000, from = 0) {
          let found: SseEvent | undefined;
          await until(() => (found = events.slice(from).find(match)) !== undefined, ms, 'an SSE event');
          return found as SseEvent;
        },
        async comment(match, ms = 5000) {
          let found: string | undefined;
          await until(() => (found = comments.find(match)) !== undefined, ms, 'an SSE comment');
          return found as string;
        },
        close: () => req.destroy(),
      });
    });
    req.on('error', reject);
  });
}

function record(deviceId: string, n: number, data: Record<string, unknown> = { n }): TelemetryRecord {
  return { id: `rec-${deviceId}-${n}`, deviceId, type: 'generic', protocol: 'mqtt', receivedAt: 1_700_000_000_000 + n, deviceTime: null, data };
}

const cloud = (e: SseEvent) => JSON.parse(e.data) as { id: string; type: string; source: string; subject: string; specversion: string; data: TelemetryRecord };

describe('events over HTTP', () => {
  let certsDir: string;
  let material: CaMaterial;
  const token = (scope: string) => signServiceToken(material, { sub: 'events-test', scope, ttlSeconds: 600 }).token;

  before(async () => {
    certsDir = await mkdtemp(join(tmpdir(), 'iotgate-events-'));
    await initCa(certsDir);
    material = await loadCaMaterial(certsDir);
  });
  after(() => rm(certsDir, { recursive: true, force: true }));

  /** An app built like src/http/app.ts with the events and upstreams routes. */
  async function start(t: TestContext, opts: { bufferSize?: number; heartbeatMs?: number; maxLagEvents?: number } = {}) {
    const bus = new EventBus();
    const hub = new EventHub(bus, { bufferSize: opts.bufferSize ?? 1000, seqBase: 0 });
    const dispatcher = new WebhookDispatcher({ hub, upstreams: [{ name: 'audit', url: 'http://ops:pw@127.0.0.1:9/hook', types: ['iotgate.shadow.updated'] }] });
    const app: FastifyInstance = Fastify({ loggerInstance: createLogger({ level: 'silent' }) as FastifyBaseLogger, forceCloseConnections: 'idle', return503OnClosing: true });
    app.setValidatorCompiler(validatorCompiler);
    app.setSerializerCompiler(serializerCompiler);
    await app.register(errorsPlugin);
    const { key, ...verify } = serviceJwtVerifyOptions(material.jwtPublicKeyPem);
    await app.register(authPlugin, { jwtPublicKeyPem: key, verify, authenticateDevice: async () => null });
    await app.register(openapiPlugin, { version: 'test' });
    await app.register(eventRoutes, { log: new LocalEventLog(hub), heartbeatMs: opts.heartbeatMs ?? 60_000, maxLagEvents: opts.maxLagEvents ?? 1000 });
    await app.register(upstreamRoutes, { upstreams: dispatcher });
    const url = await app.listen({ host: '127.0.0.1', port: 0 });
    t.after(async () => {
      await app.close();
      await dispatcher.close();
      hub.close();
    });
    return { app, bus, hub, url };
  }

  it('streams bus events as CloudEvents with sequence ids', async (t) => {
    const { bus, url } = await start(t);
    const sse = await openSse(`${url}/v1/events`, { authorization: `Bearer ${token('telemetry:read')}` });
    t.after(() => sse.close());
    assert.equal(sse.status, 200);
    assert.match(String(sse.headers['content-type']), /^text\/event-stream/);
    assert.equal(sse.headers['cache-control'], 'no-cache, no-transform');
    assert.equal(sse.headers['x-accel-buffering'], 'no');

    bus.emit('telemetry', record('d1', 1));
    bus.emit('device.connected', { deviceId: 'd1', protocol: 'mqtt', online: true, reason: 'connected', at: 5, version: 1 });
    const second = await sse.next((e) => e.id === '2');
    const first = sse.events[0] as SseEvent;
    assert.equal(first.id, '1');
    assert.equal(first.event, 'iotgate.telemetry');
    const ce = cloud(first);
    assert.equal(ce.specversion, '1.0');
    assert.equal(ce.id, 'rec-d1-1');
    assert.equal(ce.source, '/devices/d1');
    assert.equal(ce.subject, 'd1');
    assert.deepEqual(ce.data, record('d1', 1));
    assert.equal(second.event, 'iotgate.device.connected');
    assert.equal(cloud(second).type, 'iotgate.device.connected');
  });

  it('filters by types and devices', async (t) => {
    const { bus, url } = await start(t);
    const auth = { authorization: `Bearer ${token('admin')}` };
    const byType = await openSse(`${url}/v1/events?types=iotgate.device.connected,iotgate.device.disconnected`, auth);
    const byDevice = await openSse(`${url}/v1/events?devices=d2,d3`, auth);
    const both = await openSse(`${url}/v1/events?types=iotgate.telemetry&devices=d2`, auth);
    t.after(() => [byType, byDevice, both].forEach((c) => c.close()));
    bus.emit('telemetry', record('d1', 1)); // 1
    bus.emit('telemetry', record('d2', 2)); // 2
    bus.emit('device.connected', { deviceId: 'd3', protocol: 'coap', online: true, reason: 'connected', at: 1, version: 1 }); // 3
    bus.emit('device.disconnected', { deviceId: 'd1', protocol: 'mqtt', online: false, reason: 'client_disconnect', at: 2, version: 2 }); // 4
    bus.emit('telemetry', record('d2', 5)); // 5
    await byType.next((e) => e.id === '4');
    await byDevice.next((e) => e.id === '5');
    await both.next((e) => e.id === '5');
    assert.deepEqual(byType.events.map((e) => e.id), ['3', '4']);
    assert.deepEqual(byDevice.events.map((e) => e.id), ['2', '3', '5']);
    assert.deepEqual(both.events.map((e) => e.id), ['2', '5']);
  });

  it('rejects unknown types, bad device ids and bad Last-Event-IDs with 400 problems', async (t) => {
    const { url } = await start(t);
    const headers = { authorization: `Bearer ${token('telemetry:read')}` };
    for (const [path, extra, where] of [
      ['/v1/events?types=iotgate.telemetry,iotgate.nope', {}, 'querystring.types'],
      ['/v1/events?devices=ok,bad%20id', {}, 'querystring.devices'],
      ['/v1/events', { 'last-event-id': 'abc' }, 'headers.last-event-id'],
      ['/v1/events?lastEventId=-1', {}, 'querystring.lastEventId'],
    ] as const) {
      const res = await fetch(`${url}${path}`, { headers: { ...headers, ...extra } });
      assert.equal(res.status, 400, path);
      assert.match(res.headers.get('content-type') ?? '', /^application\/problem\+json/);
      const body = (await res.json()) as { code: string; detail: string; errors?: { path: string }[] };
      assert.equal(body.code, 'validation_failed');
      assert.equal(body.errors?.[0]?.path, where, JSON.stringify(body));
    }
    const res = await fetch(`${url}/v1/events?types=iotgate.nope`, { headers });
    assert.match(((await res.json()) as { detail: string }).detail, /unknown event type "iotgate.nope"/);
  });

  it('resumes after Last-Event-ID (header or query) from the buffer', async (t) => {
    const { bus, url } = await start(t);
    const headers = { authorization: `Bearer ${token('telemetry:read')}` };
    const sse = await openSse(`${url}/v1/events`, headers);
    bus.emit('telemetry', record('d1', 1));
    bus.emit('telemetry', record('d1', 2));
    await sse.next((e) => e.id === '2');
    sse.close();
    await sse.closed;
    for (let i = 3; i <= 5; i++) bus.emit('telemetry', record('d1', i));

    const resumed = await openSse(`${url}/v1/events`, { ...headers, 'last-event-id': '2' });
    t.after(() => resumed.close());
    await resumed.next((e) => e.id === '5');
    bus.emit('telemetry', record('d1', 6));
    await resumed.next((e) => e.id === '6');
    assert.deepEqual(resumed.events.map((e) => e.id), ['3', '4', '5', '6']);
    assert.deepEqual(resumed.events.map((e) => cloud(e).id), ['rec-d1-3', 'rec-d1-4', 'rec-d1-5', 'rec-d1-6']);

    const byQuery = await openSse(`${url}/v1/events?lastEventId=4&devices=d1`, headers);
    t.after(() => byQuery.close());
    await byQuery.next((e) => e.id === '6');
    assert.deepEqual(byQuery.events.map((e) => e.id), ['5', '6']);
  });

  it('announces a gap when the requested id is older than the buffer', async (t) => {
    const { bus, url } = await start(t, { bufferSize: 3 });
    for (let i = 1; i <= 10; i++) bus.emit('telemetry', record('d1', i));
    const sse = await openSse(`${url}/v1/events`, { authorization: `Bearer ${token('telemetry:read')}`, 'last-event-id': '2' });
    t.after(() => sse.close());
    await sse.next((e) => e.id === '10');
    const [gap, ...rest] = sse.events;
    assert.equal(gap?.event, 'iotgate.gap');
    assert.equal(gap?.id, '7');
    assert.deepEqual(JSON.parse(gap?.data ?? '{}'), { lastEventId: '2', resumedAfter: '7', reason: 'expired' });
    assert.deepEqual(rest.map((e) => e.id), ['8', '9', '10']);
  });

  it('sends a heartbeat comment', async (t) => {
    const { url } = await start(t, { heartbeatMs: 30 });
    const sse = await openSse(`${url}/v1/events`, { authorization: `Bearer ${token('telemetry:read')}` });
    t.after(() => sse.close());
    await sse.comment((c) => c === 'ping', 3000);
  });

  it('needs a token (401) with telemetry:read or admin (403)', async (t) => {
    const { url } = await start(t);
    const none = await fetch(`${url}/v1/events`);
    assert.equal(none.status, 401);
    assert.match(none.headers.get('content-type') ?? '', /^application\/problem\+json/);
    const wrong = await fetch(`${url}/v1/events`, { headers: { authorization: `Bearer ${token('devices:read shadow:read')}` } });
    assert.equal(wrong.status, 403);
    assert.equal(((await wrong.json()) as { code: string }).code, 'forbidden');
    const garbage = await fetch(`${url}/v1/events`, { headers: { authorization: 'Bearer abc.def.ghi' } });
    assert.equal(garbage.status, 401);
  });

  it('GET /v1/upstreams: 401, 403 without admin, 200 with status and no credentials', async (t) => {
    const { url } = await start(t);
    assert.equal((await fetch(`${url}/v1/upstreams`)).status, 401);
    const forbidden = await fetch(`${url}/v1/upstreams`, { headers: { authorization: `Bearer ${token('telemetry:read')}` } });
    assert.equal(forbidden.status, 403);
    const ok = await fetch(`${url}/v1/upstreams`, { headers: { authorization: `Bearer ${token('admin')}` } });
    assert.equal(ok.status, 200);
    const text = await ok.text();
    assert.doesNotMatch(text, /ops:pw|pw@/);
    assert.deepEqual(JSON.parse(text), {
      items: [{ name: 'audit', url: 'http://127.0.0.1:9/hook', types: ['iotgate.shadow.updated'], queued: 0, inFlight: 0, delivered: 0, failed: 0, dropped: 0, deadLetters: [] }],
    });
  });

  it('documents both routes in the OpenAPI document', async (t) => {
    const { url } = await start(t);
    const doc = (await (await fetch(`${url}/openapi.json`)).json()) as { paths: Record<string, { get?: { security?: unknown } }> };
    assert.ok(doc.paths['/v1/events']?.get?.security);
    assert.ok(doc.paths['/v1/upstreams']?.get?.security);
  });

  it('disconnects a client that does not read instead of buffering for it', async (t) => {
    const { bus, hub, url } = await start(t, { maxLagEvents: 5 });
    const sse = await openSse(`${url}/v1/events`, { authorization: `Bearer ${token('telemetry:read')}` }, { paused: true });
    t.after(() => sse.close());
    assert.equal(hub.subscriberCount, 2); // the webhook dispatcher and this stream
    const big = 'x'.repeat(64 * 1024);
    for (let i = 1; i <= 400 && hub.subscriberCount === 2; i++) bus.emit('telemetry', record('d1', i, { big }));
    await until(() => hub.subscriberCount === 1, 5000, 'the slow stream to be dropped');
    sse.res.resume();
    await sse.closed;
    assert.ok(sse.events.length < 400, `got ${sse.events.length} events`);
  });

  it('ends open streams when the server closes', async (t) => {
    const { app, bus, hub, url } = await start(t, { heartbeatMs: 50 });
    const headers = { authorization: `Bearer ${token('telemetry:read')}` };
    const a = await openSse(`${url}/v1/events`, headers);
    const b = await openSse(`${url}/v1/events?types=iotgate.telemetry`, headers);
    bus.emit('telemetry', record('d1', 1));
    await Promise.all([a.next((e) => e.id === '1'), b.next((e) => e.id === '1')]);
    const started = Date.now();
    let timer: NodeJS.Timeout | undefined;
    const hung = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error('app.close() is blocked by the open SSE streams')), 3000);
    });
    await Promise.race([app.close(), hung]).finally(() => clearTimeout(timer));
    assert.ok(Date.now() - started < 2000, `close took ${Date.now() - started} ms`);
    await Promise.all([a.closed, b.closed]);
    assert.equal(hub.subscriberCount, 1, 'streams unsubscribed');
  });
});
