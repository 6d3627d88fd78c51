/**
 * Webhook delivery against real node:http receivers on 127.0.0.1: retries with the same
 * CloudEvent id in structured mode, dead letters (4xx, timeouts, full queue), Retry-After, a dead
 * upstream next to a healthy one, abort on close, and no secret in a log line.
 */
import { describe, it, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type IncomingHttpHeaders, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Writable } from 'node:stream';
import { Registry } from 'prom-client';
import { EventHub } from '../../src/core/event-hub.js';
import { createLogger } from '../../src/log.js';
import { backoffDelay, parseRetryAfter, WebhookDispatcher, type UpstreamConfig, type WebhookDispatcherOptions } from '../../src/upstream/webhooks.js';
import type { TelemetryRecord } from '../../src/core/model.js';

interface Received {
  method: string;
  url: string;
  headers: IncomingHttpHeaders;
  body: string;
  /** The parsed CloudEvent. */
  event: { id: string; type: string; subject: string; specversion: string; data: unknown };
  at: number;
  res: ServerResponse;
  aborted: Promise<void>;
}

type Handler = (req: Received, index: number) => void;

/** Resolves once `cond()` holds; fails after `ms` (checks on every turn of the event loop). */
async function until(cond: () => boolean, ms: number, what: string): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 2));
  }
}

async function receiver(t: TestContext, handler: Handler): Promise<{ url: string; requests: Received[]; waitFor(n: number, ms?: number): Promise<Received[]> }> {
  const requests: Received[] = [];
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    const aborted = new Promise<void>((resolve) => res.on('close', () => resolve()));
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks).toString('utf8');
      const r: Received = { method: req.method ?? '', url: req.url ?? '', headers: req.headers, body, event: JSON.parse(body) as Received['event'], at: Date.now(), res, aborted };
      requests.push(r);
      handler(r, requests.length - 1);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.after(async () => {
    server.closeAllConnections();
    await new Promise((r) => server.close(r));
  });
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}/hook`,
    requests,
    waitFor: async (n, ms = 5000) => {
      await until(() => requests.length >= n, ms, `${n} requests at the receiver`);
      return requests;
    },
  };
}

const reply = (status: number, headers: Record<string, string> = {}) => (r: Received) => {
  r.res.writeHead(status, { 'content-type': 'text/plain', ...headers });
  r.res.end(status >= 400 ? `status ${status}` : 'ok');
};

function record(deviceId: string, n: number): TelemetryRecord {
  return { id: `rec-${deviceId}-${n}`, deviceId, type: 'generic', protocol: 'mqtt', receivedAt: Date.now(), deviceTime: null, data: { n } };
}

function logs(): { log: ReturnType<typeof createLogger>; lines: string[] } {
  const lines: string[] = [];
  const stream = new Writable({
    write(chunk: Buffer, _enc, cb) {
      lines.push(...chunk.toString('utf8').split('\n').filter(Boolean));
      cb();
    },
  });
  return { log: createLogger({ level: 'debug', destination: stream }), lines };
}

function setup(t: TestContext, upstreams: UpstreamConfig[], extra: Partial<WebhookDispatcherOptions> = {}) {
  const hub = new EventHub(null, { seqBase: 0 });
  const metrics = new Registry();
  const { log, lines } = logs();
  const dispatcher = new WebhookDispatcher({ hub, upstreams, log, metrics, backoff: { baseMs: 5, capMs: 20 }, ...extra });
  t.after(async () => {
    await dispatcher.close();
    hub.close();
  });
  const status = (name: string) => {
    const s = dispatcher.status().find((u) => u.name === name);
    assert.ok(s, `upstream ${name}`);
    return s;
  };
  const counter = async (upstream: string, outcome: string): Promise<number> => {
    const m = await metrics.getSingleMetric('iotgate_webhook_deliveries_total')?.get();
    return m?.values.find((v) => v.labels.upstream === upstream && v.labels.outcome === outcome)?.value ?? 0;
  };
  const depth = async (upstream: string): Promise<number | undefined> => {
    const m = await metrics.getSingleMetric('iotgate_webhook_queue_depth')?.get();
    return m?.values.find((v) => v.labels.upstream === upstream)?.value;
  };
  return { hub, dispatcher, metrics, lines, status, counter, depth };
}

describe('webhook backoff helpers', () => {
  it('full jitter grows exponentially up to the cap', () => {
    assert.equal(backoffDelay(1, { baseMs: 200, capMs: 30_000, random: () => 1 }), 200);
    assert.equal(backoffDelay(4, { baseMs: 200, capMs: 30_000, random: () => 1 }), 1600);
    assert.equal(backoffDelay(20, { baseMs: 200, capMs: 30_000, random: () => 1 }), 30_000);
    assert.equal(backoffDelay(3, { random: () => 0 }), 0);
    assert.equal(backoffDelay(3, { random: () => 0.5 }), 400);
  });

  it('parses Retry-After as seconds or an HTTP-date', () => {
    const now = Date.parse('2025-01-01T00:00:00Z');
    assert.equal(parseRetryAfter('3', now), 3000);
    assert.equal(parseRetryAfter('Wed, 01 Jan 2025 00:00:10 GMT', now), 10_000);
    assert.equal(parseRetryAfter('Tue, 31 Dec 2024 00:00:00 GMT', now), 0);
    assert.equal(parseRetryAfter('soon', now), undefined);
    assert.equal(parseRetryAfter(null, now), undefined);
  });
});

describe('WebhookDispatcher', () => {
  it('retries 500 three times with the same event id, then delivers exactly once', async (t) => {
    const rx = await receiver(t, (r, i) => reply(i < 3 ? 500 : 200)(r));
    const { hub, status, counter, lines } = setup(t, [
      { name: 'rx', url: rx.url, headers: { Authorization: 'Bearer s3cret-token', 'X-Tenant': 'acme' }, maxAttempts: 5 },
    ]);
    const entry = hub.emit('iotgate.telemetry', 'dev-1', record('dev-1', 1));
    assert.ok(entry);
    const got = await rx.waitFor(4);
    await until(() => status('rx').delivered === 1, 5000, 'delivered');
    assert.equal(rx.requests.length, 4);
    for (const r of got) {
      assert.equal(r.method, 'POST');
      assert.equal(r.url, '/hook');
      assert.equal(r.headers['content-type'], 'application/cloudevents+json');
      assert.equal(r.headers.authorization, 'Bearer s3cret-token');
      assert.equal(r.headers['x-tenant'], 'acme');
      assert.equal(r.event.id, 'rec-dev-1-1');
      assert.equal(r.event.specversion, '1.0');
      assert.equal(r.event.type, 'iotgate.telemetry');
      assert.equal(r.body, entry.json());
    }
    const s = status('rx');
    assert.deepEqual({ delivered: s.delivered, failed: s.failed, queued: s.queued, inFlight: s.inFlight, deadLetters: s.deadLetters }, { delivered: 1, failed: 0, queued: 0, inFlight: 0, deadLetters: [] });
    assert.equal(await counter('rx', 'retried'), 3);
    assert.equal(await counter('rx', 'delivered'), 1);
    assert.ok(lines.some((l) => l.includes('will be retried')), 'retries are logged at debug');
    assert.ok(!lines.some((l) => l.includes('s3cret')), 'no header value in the log');
  });

  it('dead-letters a 400 at once', async (t) => {
    const rx = await receiver(t, reply(400));
    const { hub, status, counter } = setup(t, [{ name: 'rx', url: rx.url }]);
    hub.emit('iotgate.device.connected', 'dev-2', { deviceId: 'dev-2' }, { id: 'evt-400' });
    await until(() => status('rx').failed === 1, 5000, 'dead letter');
    assert.equal(rx.requests.length, 1);
    const [dl] = status('rx').deadLetters;
    assert.deepEqual({ ...dl, at: 0 }, { eventId: 'evt-400', type: 'iotgate.device.connected', deviceId: 'dev-2', attempts: 1, reason: 'rejected', lastError: 'HTTP 400: status 400', at: 0 });
    assert.equal(await counter('rx', 'failed'), 1);
  });

  it('a receiver that never answers times out, retries and dead-letters, while a healthy upstream keeps flowing', async (t) => {
    const dead = await receiver(t, () => {});
    const healthy = await receiver(t, reply(204));
    const { hub, status } = setup(t, [
      { name: 'dead', url: dead.url, types: ['iotgate.device.connected'], timeoutMs: 200, maxAttempts: 3, concurrency: 1 },
      { name: 'healthy', url: healthy.url },
    ]);
    hub.emit('iotgate.device.connected', 'dev-3', { deviceId: 'dev-3' }, { id: 'evt-slow' });
    await dead.waitFor(1);
    for (let i = 1; i <= 20; i++) hub.emit('iotgate.telemetry', 'dev-3', record('dev-3', i));
    await healthy.waitFor(21);
    assert.equal(status('dead').failed, 0, 'the dead upstream is still trying while the healthy one got everything');
    assert.equal(status('dead').inFlight, 1);

    await until(() => status('dead').failed === 1, 5000, 'dead letter after maxAttempts');
    assert.equal(dead.requests.length, 3);
    assert.ok(dead.requests.every((r) => r.event.id === 'evt-slow'));
    await Promise.all(dead.requests.map((r) => r.aborted)); // every timed-out request was aborted
    const [dl] = status('dead').deadLetters;
    assert.equal(dl?.reason, 'max_attempts');
    assert.equal(dl?.attempts, 3);
    assert.equal(dl?.lastError, 'timeout after 200 ms');
    await until(() => status('healthy').delivered === 21, 5000, 'healthy deliveries');
  });

  it('a full queue dead-letters its oldest event (queue_full) and keeps the newest', async (t) => {
    const held: Received[] = [];
    const rx = await receiver(t, (r) => held.push(r));
    const { hub, status, counter, depth } = setup(t, [{ name: 'rx', url: rx.url, maxQueue: 2, concurrency: 1 }]);
    for (let i = 1; i <= 4; i++) hub.emit('iotgate.shadow.updated', 'dev-4', { i }, { id: `e${i}` });
    // e1 is in flight; e2 and e3 were queued; e4 evicted e2.
    assert.deepEqual(
      status('rx').deadLetters.map((d) => [d.eventId, d.reason, d.attempts]),
      [['e2', 'queue_full', 0]],
    );
    assert.equal(status('rx').queued, 2);
    assert.equal(status('rx').dropped, 1);
    assert.equal(await counter('rx', 'dropped'), 1);
    assert.equal(await depth('rx'), 2);

    await rx.waitFor(1);
    reply(200)(held[0] as Received);
    await rx.waitFor(2);
    reply(200)(held[1] as Received);
    await rx.waitFor(3);
    reply(200)(held[2] as Received);
    await until(() => status('rx').delivered === 3, 5000, 'deliveries');
    assert.deepEqual(rx.requests.map((r) => r.event.id), ['e1', 'e3', 'e4']);
  });

  it('bounds the dead-letter list and does not log every drop', async (t) => {
    const rx = await receiver(t, () => {});
    const { hub, status, lines } = setup(t, [{ name: 'rx', url: rx.url, maxQueue: 1, concurrency: 1 }], { deadLetterMax: 10 });
    for (let i = 1; i <= 50; i++) hub.emit('iotgate.telemetry', 'dev-8', record('dev-8', i));
    const s = status('rx');
    assert.equal(s.dropped, 48); // e1 in flight, e50 queued
    assert.equal(s.queued, 1);
    assert.deepEqual(s.deadLetters.map((d) => d.eventId), Array.from({ length: 10 }, (_, i) => `rec-dev-8-${i + 40}`));
    assert.equal(lines.filter((l) => l.includes('dead-lettered')).length, 1);
  });

  it('honours Retry-After on 429 instead of its own backoff', async (t) => {
    const rx = await receiver(t, (r, i) => (i === 0 ? reply(429, { 'retry-after': '1' })(r) : reply(200)(r)));
    // Its own backoff would wait 60 s: a retry within a few seconds can only come from Retry-After.
    const { hub, status } = setup(t, [{ name: 'rx', url: rx.url }], { backoff: { baseMs: 60_000, capMs: 60_000, random: () => 1 } });
    hub.emit('iotgate.telemetry', 'dev-5', record('dev-5', 1));
    const [first, second] = await rx.waitFor(2, 10_000);
    const waited = (second as Received).at - (first as Received).at;
    assert.ok(waited >= 900 && waited < 5000, `waited ${waited} ms`);
    await until(() => status('rx').delivered === 1, 5000, 'delivered');
  });

  it('sends userinfo as Basic auth and never shows it or query values', async (t) => {
    const rx = await receiver(t, reply(200));
    const url = rx.url.replace('http://', 'http://user:p%40ss@') + '?code=abc';
    const { hub, status } = setup(t, [{ name: 'rx', url, types: ['iotgate.telemetry'] }]);
    hub.emit('iotgate.device.connected', 'dev-6', {}); // not subscribed
    hub.emit('iotgate.telemetry', 'dev-6', record('dev-6', 1));
    const [r] = await rx.waitFor(1);
    assert.equal(r?.headers.authorization, `Basic ${Buffer.from('user:p@ss').toString('base64')}`);
    assert.equal(r?.url, '/hook?code=abc');
    assert.equal(r?.event.type, 'iotgate.telemetry');
    assert.equal(status('rx').url, rx.url.replace('/hook', '/hook?code=[Redacted]'));
  });

  it('close() aborts requests in flight and stops', async (t) => {
    const rx = await receiver(t, () => {});
    const { hub, dispatcher, status } = setup(t, [{ name: 'rx', url: rx.url, timeoutMs: 60_000 }]);
    hub.emit('iotgate.telemetry', 'dev-7', record('dev-7', 1));
    const [r] = await rx.waitFor(1);
    const started = Date.now();
    await dispatcher.close();
    await r?.aborted;
    assert.ok(Date.now() - started < 2000);
    hub.emit('iotgate.telemetry', 'dev-7', record('dev-7', 2));
    assert.equal(status('rx').queued, 0);
    assert.equal(status('rx').deadLetters.length, 0, 'shutdown is not a dead letter');
  });

  it('rejects bad header names and reserved headers without echoing values', () => {
    const hub = new EventHub(null, { seqBase: 0 });
    assert.throws(() => new WebhookDispatcher({ hub, upstreams: [{ name: 'a', url: 'http://x.example/', headers: { 'Bad Header': 'v3ry-secret' } }] }), (e: Error) => {
      assert.match(e.message, /upstream "a": header name "Bad Header"/);
      assert.doesNotMatch(e.message, /v3ry-secret/);
      return true;
    });
    assert.throws(() => new WebhookDispatcher({ hub, upstreams: [{ name: 'a', url: 'http://x.example/', headers: { 'Content-Type': 'text/plain' } }] }), /set by the gateway/);
    assert.throws(() => new WebhookDispatcher({ hub, upstreams: [{ name: 'a', url: 'http://x.example/', headers: { 'X-A': 'a\r\nb' } }] }), /invalid value/);
    assert.throws(() => new WebhookDispatcher({ hub, upstreams: [{ name: 'a', url: 'http://x.example/' }, { name: 'a', url: 'http://y.example/' }] }), /configured twice/);
    hub.close();
  });
});
