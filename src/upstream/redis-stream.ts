/**
 * Every CloudEvent of the hub to the Redis Stream `iotgate:events` (contract §9), for upstream
 * services that read it with consumer groups (XGROUP CREATE / XREADGROUP / XACK). One entry per
 * event, its fields the CloudEvents attributes and `data` as JSON text:
 *
 *   specversion 1.0  id <event id>  type iotgate.telemetry  source /devices/d1  subject d1
 *   time 2026-01-01T00:00:00.000Z  datacontenttype application/json  data {"id":...}
 *
 * The entry id is Redis' own (`<ms>-<n>`); the CloudEvent `id` is the one SSE and webhooks show.
 * Each gateway writes the events that happened on it, so with several gateways the stream holds
 * every event once. Writes are `XADD iotgate:events MAXLEN ~ <events.streamMaxLen> * ...`,
 * one script call per batch: whatever accumulated while one batch was on its way goes in the next.
 *
 * With the Redis stores, the telemetry events are written by the telemetry store instead, in the
 * script that stores their records (`telemetryOutbox`): an event for every stored record, none for
 * a record not stored, whatever happens to this writer's buffer.
 *
 * Back-pressure is a bounded buffer, never an await on the ingest path: while Redis is slow or
 * down, events wait in memory up to `maxBuffer` (the oldest is dropped and counted beyond that),
 * and one batch at a time waits in the Redis client. Delivery is at least once: a batch whose
 * reply was lost with the connection is written again (readers deduplicate by the CloudEvent id).
 */
import { Redis } from 'ioredis';
import type { Logger } from 'pino';
import { Counter, Gauge, type Registry } from 'prom-client';
import type { CloudEvent } from '../core/cloudevents.js';
import type { EventHub, HubEntry } from '../core/event-hub.js';
import { BatchScript } from '../stores/redis/scripts.js';
import type { TelemetryEventOutbox } from '../stores/redis/telemetry.js';
import { BoundedQueue } from './delivery.js';

export const EVENT_STREAM_KEY = 'iotgate:events';

export interface RedisEventStreamOptions {
  hub: EventHub;
  /** `redis://host:port/db`; or pass `redis` (a connection this sink then owns and closes). */
  url?: string;
  redis?: Redis;
  /** Stream key (default `iotgate:events`). */
  key?: string;
  /** `MAXLEN ~` of every XADD (config `events.streamMaxLen`). */
  maxLen: number;
  /** Events held in memory while Redis is slow or down (default 10 000); the oldest is dropped beyond. */
  maxBuffer?: number;
  /** Events per write (one script call; default 256). */
  batchMax?: number;
  /** How long close() waits for the buffer to be written (default 2000 ms). */
  closeTimeoutMs?: number;
  log?: Logger;
  /** Registers `iotgate_event_stream_written_total`, `_dropped_total`, `_write_errors_total` and `_buffered`. */
  metrics?: Registry;
}

/** The fields of the stream entry of `event` (see the module comment). */
export function streamFields(event: CloudEvent): string[] {
  return [
    'specversion', event.specversion,
    'id', event.id,
    'type', event.type,
    'source', event.source,
    'subject', event.subject ?? '',
    'time', event.time,
    'datacontenttype', event.datacontenttype,
    'data', JSON.stringify(event.data) ?? 'null',
  ];
}

/**
 * One XADD per event of a batch, in one call (one command to build and parse instead of one per
 * event): ARGV = MAXLEN, then per event id, type, source, subject, time, data; the fields are
 * those of `streamFields`. Each XADD is a pcall: the reply holds per event 1 or the error text, so
 * a refusal never aborts the batch half-way (which would write its first part again).
 */
const APPEND_EVENTS = new BatchScript(`local out = {}
for i = 2, #ARGV, 6 do
  local added = redis.pcall('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'specversion', '1.0', 'id', ARGV[i], 'type', ARGV[i + 1],
    'source', ARGV[i + 2], 'subject', ARGV[i + 3], 'time', ARGV[i + 4], 'datacontenttype', 'application/json', 'data', ARGV[i + 5])
  if type(added) == 'table' and added.err then out[#out + 1] = added.err else out[#out + 1] = 1 end
end
return out`);


function pushEventArgs(args: string[], entry: HubEntry): void {
  const { event } = entry;
  args.push(event.id, event.type, event.source, event.subject ?? '', event.time, entry.dataJson());
}

/** A stream entry's fields (the flat `[name, value, ...]` of XRANGE / XREADGROUP) as a CloudEvent. */
export function eventFromFields(fields: readonly string[]): CloudEvent {
  const f = new Map<string, string>();
  for (let i = 0; i + 1 < fields.length; i += 2) f.set(fields[i] as string, fields[i + 1] as string);
  return {
    specversion: '1.0',
    id: f.get('id') ?? '',
    source: f.get('source') ?? '',
    type: f.get('type') as CloudEvent['type'],
    ...(f.get('subject') ? { subject: f.get('subject') as string } : {}),
    time: f.get('time') ?? '',
    datacontenttype: 'application/json',
    data: JSON.parse(f.get('data') ?? 'null') as unknown,
  };
}

interface Metrics {
  written: Counter;
  dropped: Counter<'reason'>;
  errors: Counter;
}

const MAX_ATTEMPTS_ON_REPLY_ERROR = 3;
const BACKOFF_MIN_MS = 100;
const BACKOFF_MAX_MS = 5000;

export class RedisEventStream {
  private readonly redis: Redis;
  private readonly key: string;
  private readonly maxLen: string;
  private readonly batchMax: number;
  private readonly closeTimeoutMs: number;
  private readonly queue: BoundedQueue<HubEntry>;
  /** The batch being written (or waiting to be written again), oldest first. */
  private batch: { entry: HubEntry; attempts: number }[] = [];
  private readonly log: Logger | undefined;
  private readonly metrics: Metrics | undefined;
  private readonly unsubscribe: () => void;
  private flushing = false;
  private retryTimer: NodeJS.Timeout | null = null;
  private backoffMs = BACKOFF_MIN_MS;
  private idleWaiters: (() => void)[] = [];
  private droppedCount = 0;
  private writtenCount = 0;
  private closing: Promise<void> | null = null;
  private storeWritesTelemetry = false;

  constructor(opts: RedisEventStreamOptions) {
    if (!opts.redis && opts.url === undefined) throw new Error('RedisEventStream needs a url or a redis connection');
    this.redis = opts.redis ?? new Redis(opts.url as string, { connectionName: 'iotgate:events' });
    this.key = opts.key ?? EVENT_STREAM_KEY;
    this.maxLen = String(Math.max(1, Math.floor(opts.maxLen)));
    this.batchMax = Math.max(1, opts.batchMax ?? 256);
    this.closeTimeoutMs = opts.closeTimeoutMs ?? 2000;
    this.queue = new BoundedQueue(Math.max(1, opts.maxBuffer ?? 10_000));
    this.log = opts.log;
    let errors = 0;
    this.redis.on('error', (err: Error) => {
      if (errors++ % 100 === 0) this.log?.warn({ err: err.message, errors }, 'event stream: redis connection error');
    });
    if (opts.metrics) {
      const registers = [opts.metrics];
      this.metrics = {
        written: new Counter({ name: 'iotgate_event_stream_written_total', help: `Events written to the Redis Stream ${this.key}`, registers }),
        dropped: new Counter({
          name: 'iotgate_event_stream_dropped_total',
          help: 'Events never written to the Redis Stream: buffer_full (Redis slow or down), rejected (Redis refused the write)',
          labelNames: ['reason'] as const,
          registers,
        }),
        errors: new Counter({ name: 'iotgate_event_stream_write_errors_total', help: 'Failed batch writes to the Redis Stream (retried)', registers }),
      };
      const self = this;
      new Gauge({
        name: 'iotgate_event_stream_buffered',
        help: 'Events waiting to be written to the Redis Stream',
        registers,
        collect() {
          this.set(self.buffered);
        },
      });
    }
    this.unsubscribe = opts.hub.subscribe({}, (_seq, _event, entry) => this.enqueue(entry));
  }

  /** Events waiting in memory (buffer and the batch on its way). */
  get buffered(): number {
    return this.queue.length + this.batch.length;
  }

  /** Events written since start, and dropped (buffer full or refused). */
  get counts(): { written: number; dropped: number } {
    return { written: this.writtenCount, dropped: this.droppedCount };
  }

  /** Resolves once everything buffered so far is written (or dropped). */
  idle(): Promise<void> {
    if (!this.flushing && this.retryTimer === null && this.buffered === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  /** Stops taking events, writes what is buffered (for up to `closeTimeoutMs`), closes the connection. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      this.unsubscribe();
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([this.idle(), new Promise<void>((resolve) => (timer = setTimeout(resolve, this.closeTimeoutMs)))]);
      clearTimeout(timer);
      if (this.retryTimer) clearTimeout(this.retryTimer);
      const lost = this.buffered;
      if (lost > 0) this.log?.warn({ events: lost }, 'event stream: events not written before stop');
      // QUIT only when connected: it would wait for a Redis that is down.
      if (this.redis.status === 'ready') {
        let quitTimer: NodeJS.Timeout | undefined;
        await Promise.race([this.redis.quit().catch(() => undefined), new Promise<void>((resolve) => (quitTimer = setTimeout(resolve, 1000)))]);
        clearTimeout(quitTimer);
      }
      this.redis.disconnect();
    })();
    return this.closing;
  }

  /**
   * Hands the `iotgate.telemetry` events of the Redis telemetry store's records over to that store,
   * which writes each in the script that stores its record (src/stores/redis/telemetry.ts): the
   * event is in the stream if and only if the record is in Redis, and its data goes to Redis once.
   * This writer then skips them (hub entries whose data the store serialized) and only counts them
   * in its metrics. Both must use the same Redis.
   */
  telemetryOutbox(): TelemetryEventOutbox {
    this.storeWritesTelemetry = true;
    return {
      key: this.key,
      maxLen: Number(this.maxLen),
      written: (count) => {
        this.writtenCount += count;
        this.metrics?.written.inc(count);
      },
      refused: (eventId, err) => this.dropped(eventId, 'iotgate.telemetry', 'rejected', err),
    };
  }

  private enqueue(entry: HubEntry): void {
    if (this.closing) return;
    if (this.storeWritesTelemetry && entry.fromStore && entry.event.type === 'iotgate.telemetry') return;
    const evicted = this.queue.push(entry);
    if (evicted !== undefined) this.drop(evicted, 'buffer_full');
    this.schedule(0);
  }

  private drop(entry: HubEntry, reason: 'buffer_full' | 'rejected', err?: string): void {
    this.dropped(entry.event.id, entry.event.type, reason, err);
  }

  private dropped(eventId: string, type: string, reason: 'buffer_full' | 'rejected', err?: string): void {
    this.droppedCount++;
    this.metrics?.dropped.inc({ reason });
    // At the ingest rate while Redis is down: the first drop and then every 1000th.
    if (reason === 'rejected' || this.droppedCount === 1 || this.droppedCount % 1000 === 0) {
      this.log?.warn({ eventId, type, reason, err, dropped: this.droppedCount }, 'event stream: event dropped');
    }
  }

  private schedule(delayMs: number): void {
    if (this.flushing || this.retryTimer !== null) return;
    if (delayMs > 0) {
      this.retryTimer = setTimeout(() => {
        this.retryTimer = null;
        this.schedule(0);
      }, delayMs);
      this.retryTimer.unref();
      return;
    }
    this.flushing = true;
    // Events of the same tick go in one pipeline.
    setImmediate(() => void this.flush());
  }

  private async flush(): Promise<void> {
    try {
      for (;;) {
        while (this.batch.length < this.batchMax) {
          const entry = this.queue.shift();
          if (entry === undefined) break;
          this.batch.push({ entry, attempts: 0 });
        }
        if (this.batch.length === 0) return;
        if (!(await this.write())) {
          this.flushing = false;
          this.schedule(this.backoffMs);
          this.backoffMs = Math.min(BACKOFF_MAX_MS, this.backoffMs * 2);
          return;
        }
        this.backoffMs = BACKOFF_MIN_MS;
      }
    } finally {
      if (this.retryTimer === null) {
        this.flushing = false;
        if (this.buffered === 0) for (const resolve of this.idleWaiters.splice(0)) resolve();
        else this.schedule(0);
      }
    }
  }

  /** Writes the batch in one script call; keeps what failed for a retry. Resolves false when something must be retried. */
  private async write(): Promise<boolean> {
    const argv: string[] = ['', '1', this.key, this.maxLen];
    for (const { entry } of this.batch) pushEventArgs(argv, entry);
    let results: unknown[];
    try {
      const reply = await APPEND_EVENTS.run(this.redis, argv);
      results = Array.isArray(reply) ? (reply as unknown[]) : [];
    } catch (err) {
      // The connection (or the script call itself) failed: nothing of the batch is known to be
      // written; it is written again, for as long as it takes.
      this.metrics?.errors.inc();
      this.log?.debug({ err, events: this.batch.length }, 'event stream: write failed; will retry');
      return false;
    }
    const again: typeof this.batch = [];
    let written = 0;
    this.batch.forEach((item, i) => {
      const r = results[i];
      if (r === 1) {
        written++;
        return;
      }
      // Redis refused this entry (out of memory, a key of the wrong type): a few tries only.
      item.attempts++;
      if (item.attempts >= MAX_ATTEMPTS_ON_REPLY_ERROR) this.drop(item.entry, 'rejected', String(r ?? 'no reply'));
      else again.push(item);
    });
    this.writtenCount += written;
    this.metrics?.written.inc(written);
    if (again.length > 0) this.metrics?.errors.inc();
    this.batch = again;
    return again.length === 0;
  }
}
