/**
 * The Redis Stream `iotgate:events` as the SSE route's event log (contract §9, issue 8 item 4):
 * with several gateways behind a load balancer, an SSE client sees the events of the whole fleet,
 * and its `Last-Event-ID` (a stream entry id such as `1764000000000-3`) resumes it on any gateway,
 * as far back as the stream's `MAXLEN ~`.
 *
 * How it reads: while at least one SSE client follows it, one reader per gateway runs
 * `XREAD BLOCK` on its own connection and publishes each entry into a local EventHub (a ring buffer
 * of the last `bufferSize` entries, their SSE ids the stream ids), which every SSE client of this
 * gateway follows at its own pace. A client resuming from an id older than that ring is first fed
 * from `XRANGE` in pages (`backfillPage`), on the shared store connection, until it reaches the ring.
 * The reader stops `idleStopMs` after the last client left, so a gateway without SSE clients does
 * not read the stream at all.
 *
 * Gaps: an id older than the stream's first entry (trimmed away) gets an `iotgate.gap` notice with
 * reason `expired`, then everything the stream still holds; an id newer than the stream's last
 * generated id (another Redis, or a flushed one) gets `unknown` and continues live.
 *
 * Events reach SSE after their XADD (the event stream writer batches per tick), a few ms after they
 * happened; events the writer could not store (Redis down beyond its buffer) never reach SSE.
 */
import { Redis } from 'ioredis';
import type { Logger } from 'pino';
import type { CloudEvent } from '../core/cloudevents.js';
import { EventHub, matchesFilter, type EventFilter } from '../core/event-hub.js';
import { badEventId, gapFrame, type EventLog, type EventLogReader, type SseSend } from '../core/event-log.js';
import { storeError } from '../stores/redis/errors.js';
import { EVENT_STREAM_KEY, eventFromFields } from './redis-stream.js';

export interface RedisEventLogOptions {
  /** The shared (store) connection: XINFO, XRANGE, XREVRANGE of resumes. */
  client: Redis;
  /** URL for the reader's own connection (XREAD BLOCK holds a connection). */
  url: string;
  key?: string;
  /** Stream entries kept in memory for this gateway's SSE clients (default 10 000). */
  bufferSize?: number;
  /** Entries per XRANGE page of a resume (default 500). */
  backfillPage?: number;
  /** How long the reader keeps running after the last client left (default 30 000 ms). */
  idleStopMs?: number;
  /** XREAD BLOCK timeout (default 2000 ms). */
  blockMs?: number;
  log?: Logger;
}

type Entry = [id: string, fields: string[]];
type XReadReply = [key: string, entries: Entry[]][] | null;

const STREAM_ID = /^(\d{1,20})-(\d{1,20})$/;
const MAX_SEQ = '18446744073709551615';

/** Compares two canonical stream ids (`ms-seq`, no leading zeros). */
export function compareStreamIds(a: string, b: string): number {
  const [am = '', as = ''] = a.split('-');
  const [bm = '', bs = ''] = b.split('-');
  return compareDecimal(am, bm) || compareDecimal(as, bs);
}

function compareDecimal(a: string, b: string): number {
  return a.length - b.length || (a < b ? -1 : a > b ? 1 : 0);
}

/** The canonical form of a stream id (leading zeros dropped), or undefined when it is not one. */
export function canonicalStreamId(id: string): string | undefined {
  const m = STREAM_ID.exec(id);
  if (!m) return undefined;
  const ms = BigInt(m[1] as string);
  const seq = BigInt(m[2] as string);
  if (ms > 18446744073709551615n || seq > 18446744073709551615n) return undefined;
  return `${ms}-${seq}`;
}

/** The greatest stream id below `id` (`0-0` has none: it stays `0-0`). */
export function previousStreamId(id: string): string {
  const [ms = '0', seq = '0'] = id.split('-');
  if (seq !== '0') return `${ms}-${BigInt(seq) - 1n}`;
  if (ms === '0') return '0-0';
  return `${BigInt(ms) - 1n}-${MAX_SEQ}`;
}

interface Feed {
  hub: EventHub;
  /** The stream's last id when reading started: entries after it all go through the hub. */
  startId: string;
  /** The last id read. */
  lastId: string;
  conn: Redis;
  running: boolean;
}

export class RedisEventLog implements EventLog {
  readonly idFormat = 'a Redis Stream entry id (`<ms>-<n>`)';
  private readonly client: Redis;
  private readonly url: string;
  private readonly key: string;
  private readonly bufferSize: number;
  private readonly page: number;
  private readonly idleStopMs: number;
  private readonly blockMs: number;
  private readonly log: Logger | undefined;
  private feed: Promise<Feed> | null = null;
  private readers = 0;
  private idleTimer: NodeJS.Timeout | null = null;
  private closed = false;

  constructor(opts: RedisEventLogOptions) {
    this.client = opts.client;
    this.url = opts.url;
    this.key = opts.key ?? EVENT_STREAM_KEY;
    this.bufferSize = opts.bufferSize ?? 10_000;
    this.page = Math.max(1, opts.backfillPage ?? 500);
    this.idleStopMs = opts.idleStopMs ?? 30_000;
    this.blockMs = opts.blockMs ?? 2000;
    this.log = opts.log;
  }

  check(lastEventId: string, path: string): void {
    if (canonicalStreamId(lastEventId) === undefined) {
      throw badEventId(path, 'expected an event id of this stream (a Redis Stream entry id such as 1764000000000-0)');
    }
  }

  /** Whether the reader runs (for tests and metrics). */
  get reading(): boolean {
    return this.feed !== null;
  }

  async open(lastEventId: string | undefined): Promise<EventLogReader> {
    if (this.closed) throw storeError(new Error('Connection is closed'));
    this.readers++;
    if (this.idleTimer) {
      clearTimeout(this.idleTimer);
      this.idleTimer = null;
    }
    let released = false;
    const release = () => {
      if (released) return;
      released = true;
      if (--this.readers === 0 && !this.closed) {
        this.idleTimer = setTimeout(() => this.stop(), this.idleStopMs);
        this.idleTimer.unref();
      }
    };
    let feed: Feed;
    let info: { first: string | undefined; last: string } | null;
    try {
      feed = await this.start();
      info = lastEventId === undefined ? null : await this.streamInfo();
    } catch (err) {
      release();
      throw storeError(err);
    }
    const after = lastEventId === undefined ? undefined : (canonicalStreamId(lastEventId) as string);
    return {
      replay: (filter, send) => this.replay(feed, after, info, filter, send),
      release,
    };
  }

  async close(): Promise<void> {
    this.closed = true;
    if (this.idleTimer) clearTimeout(this.idleTimer);
    await this.stop();
  }

  private async replay(
    feed: Feed,
    lastEventId: string | undefined,
    info: { first: string | undefined; last: string } | null,
    filter: EventFilter,
    send: SseSend,
  ): Promise<{ hub: EventHub; cursor: number } | null> {
    const { hub } = feed;
    if (lastEventId === undefined || info === null) return { hub, cursor: hub.lastSeq };
    if (compareStreamIds(lastEventId, info.last) > 0) {
      // Not an id of this stream (newer than anything it ever held): continue live.
      if (!(await send(gapFrame(lastEventId, feed.lastId, 'unknown')))) return null;
      return { hub, cursor: hub.lastSeq };
    }
    let after = lastEventId;
    if (info.first !== undefined && compareStreamIds(after, info.first) < 0) {
      const resumedAfter = previousStreamId(info.first);
      if (compareStreamIds(after, resumedAfter) < 0) {
        if (!(await send(gapFrame(lastEventId, resumedAfter, 'expired')))) return null;
        after = resumedAfter;
      }
    }
    // The client may come from a gateway whose reader is ahead of ours: let ours catch up first,
    // or entries up to `after` would reach the client again as live ones.
    // (Nothing to wait for when no entry lies between: the one at `after` was deleted since.)
    if (compareStreamIds(after, feed.lastId) > 0 && (await this.entriesBetween(feed.lastId, after)) && !(await this.caughtUp(feed, after))) return null;
    for (;;) {
      const cursor = this.cursorAfter(feed, after);
      if (cursor !== undefined) return { hub, cursor };
      let entries: Entry[];
      try {
        // Trimmed while this client was being fed (MAXLEN ~ moves on): say so, then go on from the first entry.
        const first = (await this.client.xrange(this.key, '-', '+', 'COUNT', 1)) as Entry[];
        const head = first[0]?.[0];
        if (head !== undefined && compareStreamIds(after, previousStreamId(head)) < 0) {
          if (!(await send(gapFrame(after, previousStreamId(head), 'expired')))) return null;
          after = previousStreamId(head);
          continue;
        }
        // Never past what the reader has published: the ring takes over from there, so no entry is sent twice.
        entries = (await this.client.xrange(this.key, `(${after}`, feed.lastId, 'COUNT', this.page)) as Entry[];
      } catch (err) {
        this.log?.warn({ err: (err as Error).message }, 'SSE resume: reading the event stream failed; ending the response');
        return null;
      }
      if (entries.length === 0) {
        // The entries between `after` and the ring are gone: say so, and continue from the ring.
        const oldest = hub.entryAt(hub.oldestSeq);
        if (oldest !== undefined && !(await send(gapFrame(after, previousStreamId(oldest.id), 'expired')))) return null;
        return { hub, cursor: hub.oldestSeq - 1 };
      }
      for (const [id, fields] of entries) {
        after = id;
        let event: CloudEvent;
        try {
          event = eventFromFields(fields);
        } catch (err) {
          this.log?.warn({ err: (err as Error).message, id }, 'SSE resume: an event stream entry is not a CloudEvent; skipped');
          continue;
        }
        if (!matchesFilter(filter, event)) continue;
        if (!(await send(`id: ${id}\nevent: ${event.type}\ndata: ${JSON.stringify(event)}\n\n`))) return null;
      }
    }
  }

  /** Whether the stream holds an entry in (from, to]; true when that cannot be read (then wait). */
  private async entriesBetween(from: string, to: string): Promise<boolean> {
    try {
      return ((await this.client.xrange(this.key, `(${from}`, to, 'COUNT', 1)) as Entry[]).length > 0;
    } catch {
      return true;
    }
  }

  /** Resolves true once the reader has read up to `id`, false when it does not within a few seconds. */
  private caughtUp(feed: Feed, id: string): Promise<boolean> {
    return new Promise((resolve) => {
      const done = (ok: boolean) => {
        clearTimeout(timer);
        unsubscribe();
        resolve(ok);
      };
      const timer = setTimeout(() => done(false), this.blockMs + 3000);
      timer.unref();
      const unsubscribe = feed.hub.subscribe({}, (_seq, _event, entry) => {
        if (compareStreamIds(entry.id, id) >= 0) done(true);
      });
      if (compareStreamIds(feed.lastId, id) >= 0) done(true);
    });
  }

  /** The hub cursor after stream id `after` when the hub holds everything after it, else undefined. */
  private cursorAfter(feed: Feed, after: string): number | undefined {
    const { hub } = feed;
    const oldest = hub.entryAt(hub.oldestSeq);
    if (oldest === undefined || compareStreamIds(after, oldest.id) < 0) {
      // Nothing evicted yet: the hub holds everything after startId.
      const nothingEvicted = hub.oldestSeq === 1;
      if (nothingEvicted && compareStreamIds(after, feed.startId) >= 0) return 0;
      // After an eviction, `after` must be at least the oldest entry held.
      return undefined;
    }
    // Binary search: the last entry with an id <= after.
    let lo = hub.oldestSeq;
    let hi = hub.lastSeq;
    while (lo < hi) {
      const mid = Math.ceil((lo + hi) / 2);
      const entry = hub.entryAt(mid);
      if (entry === undefined) return undefined;
      if (compareStreamIds(entry.id, after) <= 0) lo = mid;
      else hi = mid - 1;
    }
    return lo;
  }

  private async streamInfo(): Promise<{ first: string | undefined; last: string }> {
    let reply: unknown[];
    try {
      reply = (await this.client.xinfo('STREAM', this.key)) as unknown[];
    } catch (err) {
      if (err instanceof Error && /no such key/i.test(err.message)) return { first: undefined, last: '0-0' };
      throw err;
    }
    const field = (name: string) => reply[reply.indexOf(name) + 1];
    const first = field('first-entry') as Entry | null;
    return { first: first?.[0] ?? undefined, last: String(field('last-generated-id')) };
  }

  private start(): Promise<Feed> {
    this.feed ??= (async () => {
      const last = (await this.client.xrevrange(this.key, '+', '-', 'COUNT', 1)) as Entry[];
      const startId = last[0]?.[0] ?? '0-0';
      const conn = new Redis(this.url, {
        enableOfflineQueue: true,
        maxRetriesPerRequest: null,
        retryStrategy: (attempt) => Math.min(50 * attempt, 1000),
        connectionName: 'iotgate:events-reader',
      });
      conn.on('error', () => undefined);
      const feed: Feed = { hub: new EventHub(null, { bufferSize: this.bufferSize, seqBase: 0, log: this.log }), startId, lastId: startId, conn, running: true };
      void this.read(feed);
      return feed;
    })().catch((err: unknown) => {
      this.feed = null;
      throw err;
    });
    return this.feed;
  }

  private async read(feed: Feed): Promise<void> {
    let failures = 0;
    while (feed.running) {
      let reply: XReadReply;
      try {
        reply = (await feed.conn.xread('COUNT', 1000, 'BLOCK', this.blockMs, 'STREAMS', this.key, feed.lastId)) as XReadReply;
        failures = 0;
      } catch (err) {
        if (!feed.running) return;
        if (failures++ % 50 === 0) this.log?.warn({ err: (err as Error).message }, 'SSE: reading the event stream failed; retrying');
        await new Promise((resolve) => setTimeout(resolve, Math.min(100 * failures, 1000)).unref());
        continue;
      }
      for (const [, entries] of reply ?? []) {
        for (const [id, fields] of entries) {
          feed.lastId = id;
          try {
            feed.hub.publish(eventFromFields(fields), id);
          } catch (err) {
            this.log?.warn({ err: (err as Error).message, id }, 'SSE: an event stream entry is not a CloudEvent; skipped');
          }
        }
      }
    }
  }

  private async stop(): Promise<void> {
    const pending = this.feed;
    this.feed = null;
    if (!pending) return;
    const feed = await pending.catch(() => null);
    if (!feed) return;
    feed.running = false;
    feed.hub.close();
    feed.conn.disconnect();
  }
}
