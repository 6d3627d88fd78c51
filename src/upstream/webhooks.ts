/**
 * Webhook upstreams (contract §9): every configured upstream gets the CloudEvents of its types,
 * one per POST in structured mode (`application/cloudevents+json`), with retries and a bounded
 * dead-letter list. Back-pressure is a bounded queue, never an await: the hub callback only
 * enqueues (O(1)); when a queue is full its oldest event is dead-lettered (`queue_full`), so a
 * slow or dead upstream costs memory up to `maxQueue` events and never slows ingestion.
 *
 * Configured headers may hold secrets: they are never logged or shown, and neither is the URL's
 * userinfo (sent as Basic auth) or its query values.
 */
import type { Logger } from 'pino';
import { Counter, Gauge, type Registry } from 'prom-client';
import { CLOUD_EVENT_CONTENT_TYPE, CLOUD_EVENT_TYPES } from '../core/cloudevents.js';
import type { EventHub, HubEntry } from '../core/event-hub.js';
import { BoundedQueue, HEADER_NAME, HEADER_VALUE, RESERVED_HEADERS, backoffDelay, describeError, displayUrl, parseRetryAfter, readSome } from './delivery.js';

export { backoffDelay, displayUrl, parseRetryAfter } from './delivery.js';

/** One `upstreams[]` entry of the config (defaults as in config/schema.ts). */
export interface UpstreamConfig {
  name: string;
  url: string;
  /** CloudEvent types to send (default all). */
  types?: readonly string[];
  headers?: Readonly<Record<string, string>>;
  /** Per attempt, headers and body (default 5000). */
  timeoutMs?: number;
  /** Attempts per event, the first included (default 5). */
  maxAttempts?: number;
  /** Events waiting (default 1000). */
  maxQueue?: number;
  /** Requests in flight at once (default 4); with more than 1, events may arrive out of order. */
  concurrency?: number;
}

/** Exponential backoff with full jitter: `random() * min(capMs, baseMs * 2^(attempt-1))`. */
export interface BackoffOptions {
  /** default 200 */
  baseMs?: number;
  /** default 30 000; also the longest `Retry-After` honoured */
  capMs?: number;
  /** default Math.random */
  random?: () => number;
}

export interface WebhookDispatcherOptions {
  hub: EventHub;
  upstreams: readonly UpstreamConfig[];
  log?: Logger;
  /** Registers `iotgate_webhook_deliveries_total` and `iotgate_webhook_queue_depth`. */
  metrics?: Registry;
  backoff?: BackoffOptions;
  /** Dead letters kept per upstream, oldest dropped first (default 100). */
  deadLetterMax?: number;
}

/**
 * `queue_full`: evicted from a full queue before any attempt. `rejected`: a 4xx other than 408 and
 * 429 (or a redirect), not retried. `max_attempts`: still failing after `maxAttempts`.
 */
export type DeadLetterReason = 'queue_full' | 'rejected' | 'max_attempts';

export interface DeadLetter {
  eventId: string;
  type: string;
  deviceId: string | null;
  attempts: number;
  reason: DeadLetterReason;
  lastError: string;
  /** epoch ms */
  at: number;
}

export interface UpstreamStatus {
  name: string;
  /** Without userinfo; query values redacted. */
  url: string;
  types: string[];
  /** Events waiting in the queue. */
  queued: number;
  /** Events taken from the queue and not finished (requests and backoff waits). */
  inFlight: number;
  /** Events acknowledged with a 2xx. */
  delivered: number;
  /** Events given up after attempts (`rejected` or `max_attempts`). */
  failed: number;
  /** Events evicted from a full queue (`queue_full`). */
  dropped: number;
  /** Oldest first. */
  deadLetters: DeadLetter[];
}

type Attempt = { ok: true } | { ok: false; retry: boolean; error: string; retryAfterMs?: number | undefined };

interface Metrics {
  deliveries: Counter<'upstream' | 'outcome'>;
}

class Upstream {
  readonly name: string;
  readonly shownUrl: string;
  readonly types: string[];
  private readonly target: string;
  private readonly headers: Record<string, string>;
  private readonly timeoutMs: number;
  private readonly maxAttempts: number;
  private readonly concurrency: number;
  readonly queue: BoundedQueue<HubEntry>;
  private running = 0;
  private inFlight = 0;
  private delivered = 0;
  private failed = 0;
  private dropped = 0;
  private readonly deadLetters: DeadLetter[] = [];
  private closed = false;
  private readonly cancels = new Set<() => void>();
  private readonly workers = new Set<Promise<void>>();

  constructor(
    cfg: UpstreamConfig,
    private readonly backoff: BackoffOptions,
    private readonly deadLetterMax: number,
    private readonly metrics: Metrics | undefined,
    private readonly log: Logger | undefined,
  ) {
    this.name = cfg.name;
    let url: URL;
    try {
      url = new URL(cfg.url);
    } catch {
      throw new Error(`upstream "${cfg.name}": url is not a valid URL`);
    }
    if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new Error(`upstream "${cfg.name}": url must be http:// or https://`);
    this.shownUrl = displayUrl(url);
    this.types = [...(cfg.types ?? CLOUD_EVENT_TYPES)];
    this.timeoutMs = cfg.timeoutMs ?? 5000;
    this.maxAttempts = Math.max(1, cfg.maxAttempts ?? 5);
    this.concurrency = Math.max(1, cfg.concurrency ?? 4);
    this.queue = new BoundedQueue(Math.max(1, cfg.maxQueue ?? 1000));

    const headers: Record<string, string> = { 'user-agent': 'iotgate' };
    for (const [name, value] of Object.entries(cfg.headers ?? {})) {
      // The value is never part of an error message: it may be a secret.
      if (!HEADER_NAME.test(name)) throw new Error(`upstream "${cfg.name}": header name "${name.slice(0, 64)}" is not a valid HTTP token`);
      if (RESERVED_HEADERS.has(name.toLowerCase())) throw new Error(`upstream "${cfg.name}": header "${name}" is set by the gateway`);
      if (!HEADER_VALUE.test(value)) throw new Error(`upstream "${cfg.name}": header "${name}" has an invalid value (control characters)`);
      headers[name.toLowerCase()] = value;
    }
    // fetch refuses URLs with credentials: send them as Basic auth (RFC 7617) unless configured.
    if ((url.username || url.password) && headers.authorization === undefined) {
      const user = decodeURIComponent(url.username);
      const pass = decodeURIComponent(url.password);
      headers.authorization = `Basic ${Buffer.from(`${user}:${pass}`).toString('base64')}`;
    }
    url.username = '';
    url.password = '';
    this.target = url.href;
    headers['content-type'] = CLOUD_EVENT_CONTENT_TYPE;
    this.headers = headers;
  }

  /** Synchronous and O(1): the only thing the hub callback does. */
  enqueue(entry: HubEntry): void {
    if (this.closed) return;
    const evicted = this.queue.push(entry);
    if (evicted !== undefined) {
      this.dropped++;
      this.metrics?.deliveries.inc({ upstream: this.name, outcome: 'dropped' });
      this.deadLetter(evicted, 0, 'queue_full', `queue full (${this.queue.capacity} events waiting)`);
    }
    this.kick();
  }

  status(): UpstreamStatus {
    return {
      name: this.name,
      url: this.shownUrl,
      types: [...this.types],
      queued: this.queue.length,
      inFlight: this.inFlight,
      delivered: this.delivered,
      failed: this.failed,
      dropped: this.dropped,
      deadLetters: this.deadLetters.map((d) => ({ ...d })),
    };
  }

  async close(): Promise<void> {
    this.closed = true;
    this.queue.clear();
    for (const cancel of [...this.cancels]) cancel();
    await Promise.all([...this.workers]);
  }

  private kick(): void {
    while (this.running < this.concurrency && this.queue.length > 0 && !this.closed) {
      this.running++;
      const worker = this.work();
      this.workers.add(worker);
      void worker.finally(() => this.workers.delete(worker));
    }
  }

  private async work(): Promise<void> {
    for (;;) {
      // Taking the next event and retiring the worker happen in one step, so an event enqueued
      // right after always finds either a running worker or a free slot.
      const entry = this.closed ? undefined : this.queue.shift();
      if (entry === undefined) {
        this.running--;
        return;
      }
      this.inFlight++;
      try {
        await this.deliver(entry);
      } catch (err) {
        this.log?.error({ err, upstream: this.name, eventId: entry.event.id }, 'webhook delivery failed unexpectedly');
      } finally {
        this.inFlight--;
      }
    }
  }

  private async deliver(entry: HubEntry): Promise<void> {
    for (let attempt = 1; ; attempt++) {
      const result = await this.attempt(entry);
      if (this.closed) return;
      if (result.ok) {
        this.delivered++;
        this.metrics?.deliveries.inc({ upstream: this.name, outcome: 'delivered' });
        return;
      }
      if (!result.retry || attempt >= this.maxAttempts) {
        this.failed++;
        this.metrics?.deliveries.inc({ upstream: this.name, outcome: 'failed' });
        this.deadLetter(entry, attempt, result.retry ? 'max_attempts' : 'rejected', result.error);
        return;
      }
      this.metrics?.deliveries.inc({ upstream: this.name, outcome: 'retried' });
      const cap = this.backoff.capMs ?? 30_000;
      const delay = result.retryAfterMs !== undefined ? Math.min(result.retryAfterMs, cap) : backoffDelay(attempt, this.backoff);
      this.log?.debug({ upstream: this.name, eventId: entry.event.id, attempt, delayMs: delay, error: result.error }, 'webhook delivery will be retried');
      await this.sleep(delay);
      if (this.closed) return;
    }
  }

  private async attempt(entry: HubEntry): Promise<Attempt> {
    const ac = new AbortController();
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      ac.abort();
    }, this.timeoutMs);
    const cancel = () => ac.abort();
    this.cancels.add(cancel);
    try {
      const res = await fetch(this.target, {
        method: 'POST',
        headers: this.headers,
        body: entry.json(),
        signal: ac.signal,
        // A redirect could carry the configured headers to another host: not followed.
        redirect: 'manual',
      });
      const text = await readSome(res, 4096);
      if (res.status >= 200 && res.status < 300) return { ok: true };
      const snippet = text.trim().replace(/\s+/g, ' ').slice(0, 200);
      const error = `HTTP ${res.status}${snippet ? `: ${snippet}` : ''}`;
      const retry = res.status >= 500 || res.status === 408 || res.status === 429;
      const retryAfterMs = res.status === 429 || res.status === 503 ? parseRetryAfter(res.headers.get('retry-after')) : undefined;
      return { ok: false, retry, error, retryAfterMs };
    } catch (err) {
      if (timedOut) return { ok: false, retry: true, error: `timeout after ${this.timeoutMs} ms` };
      if (this.closed) return { ok: false, retry: false, error: 'aborted: shutting down' };
      return { ok: false, retry: true, error: describeError(err) };
    } finally {
      clearTimeout(timer);
      this.cancels.delete(cancel);
    }
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        this.cancels.delete(done);
        resolve();
      };
      const timer = setTimeout(done, ms);
      this.cancels.add(done);
    });
  }

  private deadLetter(entry: HubEntry, attempts: number, reason: DeadLetterReason, lastError: string): void {
    const e = entry.event;
    this.deadLetters.push({ eventId: e.id, type: e.type, deviceId: e.subject ?? null, attempts, reason, lastError, at: Date.now() });
    if (this.deadLetters.length > this.deadLetterMax) this.deadLetters.splice(0, this.deadLetters.length - this.deadLetterMax);
    // A full queue drops at the ingest rate: log the first drop and then every 1000th, not each.
    if (reason === 'queue_full' && this.dropped !== 1 && this.dropped % 1000 !== 0) return;
    this.log?.warn({ upstream: this.name, eventId: e.id, type: e.type, deviceId: e.subject, attempts, reason, lastError, dropped: this.dropped }, 'webhook event dead-lettered');
  }
}

/** Delivers hub events to the configured webhook upstreams. */
export class WebhookDispatcher {
  private readonly upstreams: Upstream[];
  private readonly unsubscribe: () => void;
  private closing: Promise<void> | null = null;

  /** Throws (naming the upstream, never a header value) when an upstream is misconfigured. */
  constructor(opts: WebhookDispatcherOptions) {
    const names = new Set<string>();
    for (const u of opts.upstreams) {
      if (names.has(u.name)) throw new Error(`upstream "${u.name}" is configured twice`);
      names.add(u.name);
    }
    let metrics: Metrics | undefined;
    if (opts.metrics) {
      metrics = {
        deliveries: new Counter({
          name: 'iotgate_webhook_deliveries_total',
          help: 'Webhook events by final outcome (delivered, failed, dropped) and retried attempts (retried)',
          labelNames: ['upstream', 'outcome'] as const,
          registers: [opts.metrics],
        }),
      };
    }
    const deadLetterMax = Math.max(1, opts.deadLetterMax ?? 100);
    this.upstreams = opts.upstreams.map((u) => new Upstream(u, opts.backoff ?? {}, deadLetterMax, metrics, opts.log));
    if (opts.metrics) {
      const upstreams = this.upstreams;
      new Gauge({
        name: 'iotgate_webhook_queue_depth',
        help: 'Webhook events waiting per upstream',
        labelNames: ['upstream'] as const,
        registers: [opts.metrics],
        collect() {
          for (const u of upstreams) this.set({ upstream: u.name }, u.queue.length);
        },
      });
    }

    const byType = new Map<string, Upstream[]>();
    for (const u of this.upstreams) {
      for (const t of u.types) byType.set(t, [...(byType.get(t) ?? []), u]);
    }
    this.unsubscribe =
      byType.size === 0
        ? () => {}
        : opts.hub.subscribe({ types: new Set(byType.keys()) }, (_seq, event, entry) => {
            for (const u of byType.get(event.type) ?? []) u.enqueue(entry);
          });
  }

  /** For `GET /v1/upstreams`. */
  status(): UpstreamStatus[] {
    return this.upstreams.map((u) => u.status());
  }

  /** Stops taking events, drops the queues and aborts requests in flight. Idempotent. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      this.unsubscribe();
      await Promise.all(this.upstreams.map((u) => u.close()));
    })();
    return this.closing;
  }
}
