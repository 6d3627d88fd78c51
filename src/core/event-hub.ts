/**
 * The event hub: turns bus events into CloudEvents once, numbers them with a monotonic sequence,
 * keeps the last N in a ring for resume (SSE `Last-Event-ID`), and fans them out to subscribers
 * (the SSE route, webhooks, later the Redis Stream). Publishing never throws and never waits:
 * a subscriber that throws is logged and skipped; the JSON of an event is built at most once and
 * shared by every subscriber.
 */
import type { Logger } from 'pino';
import { toCloudEvent, type CloudEvent, type CloudEventOptions, type CloudEventType } from './cloudevents.js';
import type { EventBus, GatewayEvents } from './events.js';

/** One published event as the hub keeps it. Treat `event` as immutable. */
export class HubEntry {
  private jsonText: string | undefined;
  private sseText: string | undefined;

  /** The id SSE shows: the sequence number, or the Redis Stream entry id of a stream-fed hub. */
  readonly id: string;

  /**
   * The publisher handed the data's JSON: for `iotgate.telemetry`, the Redis telemetry store's,
   * which has stored the record (and, given an outbox, written its event to the event stream).
   */
  readonly fromStore: boolean;

  constructor(
    readonly seq: number,
    readonly event: CloudEvent,
    id?: string,
    private dataText?: string,
  ) {
    this.id = id ?? String(seq);
    this.fromStore = dataText !== undefined;
  }

  /** The CloudEvent as JSON, serialized on first use and cached. */
  json(): string {
    return (this.jsonText ??= JSON.stringify(this.event));
  }

  /** The event's `data` as JSON: given by the publisher (the store serialized it) or made once. */
  dataJson(): string {
    return (this.dataText ??= JSON.stringify(this.event.data) ?? 'null');
  }

  /**
   * The Server-Sent Events frame (`id`, `event`, `data`). JSON.stringify never emits a raw line
   * break, so one `data:` line carries the whole event (WHATWG HTML §9.2.6).
   */
  sse(): string {
    return (this.sseText ??= `id: ${this.id}\nevent: ${this.event.type}\ndata: ${this.json()}\n\n`);
  }
}

/** Which events a subscriber wants; an absent set means "all". */
export interface EventFilter {
  types?: ReadonlySet<string> | undefined;
  devices?: ReadonlySet<string> | undefined;
}

export function matchesFilter(filter: EventFilter, event: CloudEvent): boolean {
  if (filter.types !== undefined && !filter.types.has(event.type)) return false;
  if (filter.devices !== undefined && (event.subject === undefined || !filter.devices.has(event.subject))) return false;
  return true;
}

/** Events a resuming subscriber cannot get back. */
export interface EventGap {
  /** The sequence number the subscriber asked to resume after. */
  afterSeq: number;
  /** The oldest sequence number still buffered (replay starts here). */
  oldestSeq: number;
  /**
   * `expired`: events after `afterSeq` fell out of the buffer (or were published by an earlier
   * process). `unknown`: `afterSeq` is newer than anything this hub published.
   */
  reason: 'expired' | 'unknown';
}

export type EventListener = (seq: number, event: CloudEvent, entry: HubEntry) => void;

export interface SubscribeOptions {
  /** Replay buffered events with a greater sequence number before going live. */
  afterSeq?: number;
  /** Called (before the replay) when events after `afterSeq` are no longer available. */
  onGap?: (gap: EventGap) => void;
}

export interface EventHubOptions {
  /** Events kept for replay (default 10 000). */
  bufferSize?: number;
  log?: Logger;
  /**
   * The sequence number before the first event. Default `Date.now() * 1000`, so numbers keep
   * growing across restarts and a client resuming with an id of an earlier process sees a gap
   * instead of silently skipping events.
   */
  seqBase?: number;
}

interface Subscriber {
  filter: EventFilter;
  onEvent: EventListener;
  /** Highest sequence number this subscriber has been offered (guards against double delivery). */
  lastSeq: number;
  errors: number;
}

type BusMappers = { [K in keyof GatewayEvents]?: (...args: GatewayEvents[K]) => CloudEvent };

/** How each bus event becomes a CloudEvent. Add a line here for every new bus event. */
export const BUS_EVENT_MAPPERS: BusMappers = {
  telemetry: (record) => toCloudEvent('iotgate.telemetry', record.deviceId, record),
  'device.connected': (e) => toCloudEvent('iotgate.device.connected', e.deviceId, { ...e }, { time: e.at }),
  'device.disconnected': (e) => toCloudEvent('iotgate.device.disconnected', e.deviceId, { ...e }, { time: e.at }),
  'shadow.updated': (e) =>
    toCloudEvent('iotgate.shadow.updated', e.deviceId, { deviceId: e.deviceId, name: e.name, writer: e.writer, version: e.version, deleted: false, ...e.documents }),
  'command.updated': (r) => toCloudEvent('iotgate.command.updated', r.deviceId, r, { time: r.updatedAt }),
  'firmware.updated': (e) => toCloudEvent('iotgate.firmware.updated', e.deviceId, e.job, { time: e.job.updatedAt }),
  'shadow.deleted': (e) =>
    toCloudEvent('iotgate.shadow.updated', e.deviceId, { deviceId: e.deviceId, name: e.name, writer: e.writer, version: e.version, deleted: true }),
};

type BusDataJson = { [K in keyof GatewayEvents]?: (...args: GatewayEvents[K]) => string | undefined };

/** Bus events that come with their CloudEvent data already serialized (by the store). */
export const BUS_EVENT_DATA_JSON: BusDataJson = {
  telemetry: (_record, json) => json,
};

export class EventHub {
  private readonly ring: (HubEntry | undefined)[];
  private readonly capacity: number;
  private seq: number;
  private readonly initialSeq: number;
  private readonly subscribers = new Set<Subscriber>();
  private readonly pending: HubEntry[] = [];
  private dispatching = false;
  private closed = false;
  private readonly detach: (() => void)[] = [];
  private readonly log: Logger | undefined;

  constructor(bus: EventBus | null, opts: EventHubOptions = {}) {
    this.capacity = Math.max(1, Math.floor(opts.bufferSize ?? 10_000));
    this.ring = new Array<HubEntry | undefined>(this.capacity);
    this.seq = opts.seqBase ?? Date.now() * 1000;
    this.initialSeq = this.seq;
    this.log = opts.log;
    if (bus) {
      for (const name of Object.keys(BUS_EVENT_MAPPERS) as (keyof GatewayEvents)[]) {
        const map = BUS_EVENT_MAPPERS[name] as (...args: unknown[]) => CloudEvent;
        const dataJson = BUS_EVENT_DATA_JSON[name] as ((...args: unknown[]) => string | undefined) | undefined;
        const listener = (...args: unknown[]): void => {
          try {
            this.publish(map(...args), undefined, dataJson?.(...args));
          } catch (err) {
            // The bus contract: listeners must not throw into the emitter (the ingest path).
            this.log?.error({ err, event: name }, 'could not publish a bus event');
          }
        };
        bus.on(name, listener as never);
        this.detach.push(() => bus.off(name, listener as never));
      }
    }
  }

  /** Sequence number of the newest event (the base when none was published yet). */
  get lastSeq(): number {
    return this.seq;
  }

  /** Sequence number of the oldest buffered event (`lastSeq + 1` when the buffer is empty). */
  get oldestSeq(): number {
    const held = Math.min(this.capacity, this.seq - this.initialSeq);
    return this.seq - held + 1;
  }

  get subscriberCount(): number {
    return this.subscribers.size;
  }

  /**
   * Publishes a CloudEvent; resolves its entry (null after close). Never throws. `id` is the id
   * SSE shows (default: the sequence number); `dataJson`, when given, is `event.data` as JSON.
   */
  publish(event: CloudEvent, id?: string, dataJson?: string): HubEntry | null {
    if (this.closed) return null;
    const entry = new HubEntry(++this.seq, event, id, dataJson);
    this.ring[entry.seq % this.capacity] = entry;
    this.pending.push(entry);
    this.locked(() => {});
    return entry;
  }

  /** Builds and publishes a CloudEvent (for services that emit straight to the hub). */
  emit<T>(type: CloudEventType, deviceId: string, data: T, opts?: CloudEventOptions): HubEntry | null {
    return this.publish(toCloudEvent(type, deviceId, data, opts));
  }

  /** What a subscriber resuming after `afterSeq` has lost, or null. */
  gapAfter(afterSeq: number): EventGap | null {
    if (afterSeq > this.seq) return { afterSeq, oldestSeq: this.oldestSeq, reason: 'unknown' };
    if (afterSeq < this.oldestSeq - 1) return { afterSeq, oldestSeq: this.oldestSeq, reason: 'expired' };
    return null;
  }

  /** The buffered entry with sequence number `seq`, if it is still buffered. */
  entryAt(seq: number): HubEntry | undefined {
    if (seq < this.oldestSeq || seq > this.seq) return undefined;
    const entry = this.ring[seq % this.capacity];
    return entry !== undefined && entry.seq === seq ? entry : undefined;
  }

  /** Buffered entries with a sequence number greater than `afterSeq`, oldest first (live view). */
  *entriesAfter(afterSeq: number): Generator<HubEntry, void, undefined> {
    for (let s = Math.max(afterSeq + 1, this.oldestSeq); s <= this.seq; s++) {
      const entry = this.ring[s % this.capacity];
      // Overwritten while iterating (the reader fell behind): stop; the reader checks oldestSeq.
      if (entry === undefined || entry.seq !== s) return;
      yield entry;
    }
  }

  /**
   * Calls `onEvent` for every matching event: first the buffered ones after `opts.afterSeq`
   * (if given), then live ones, each once and in sequence order. Resolves an unsubscribe function.
   */
  subscribe(filter: EventFilter, onEvent: EventListener, opts: SubscribeOptions = {}): () => void {
    if (this.closed) return () => {};
    const sub: Subscriber = { filter, onEvent, lastSeq: this.seq, errors: 0 };
    const unsubscribe = () => void this.subscribers.delete(sub);
    this.subscribers.add(sub);
    const { afterSeq } = opts;
    if (afterSeq === undefined) return unsubscribe;

    const gap = this.gapAfter(afterSeq);
    if (gap) this.call(sub, () => opts.onGap?.(gap));
    this.locked(() => {
      // After a gap, replay everything still buffered.
      sub.lastSeq = gap ? this.oldestSeq - 1 : afterSeq;
      for (const entry of this.entriesAfter(sub.lastSeq)) {
        if (!this.subscribers.has(sub)) break;
        this.deliver(sub, entry);
      }
    });
    return unsubscribe;
  }

  /** Detaches from the bus and drops every subscriber and buffered event. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const off of this.detach) off();
    this.detach.length = 0;
    this.subscribers.clear();
    this.ring.fill(undefined);
  }

  /** Runs `fn` with fan-out deferred, then fans out everything published meanwhile, in order. */
  private locked(fn: () => void): void {
    if (this.dispatching) {
      fn();
      return;
    }
    this.dispatching = true;
    try {
      fn();
      // Re-entrant publishes (from a subscriber) append here and go out after the current one.
      for (let i = 0; i < this.pending.length; i++) {
        const entry = this.pending[i] as HubEntry;
        for (const sub of this.subscribers) this.deliver(sub, entry);
      }
    } finally {
      this.pending.length = 0;
      this.dispatching = false;
    }
  }

  private deliver(sub: Subscriber, entry: HubEntry): void {
    // Already offered (replayed, or published before this subscriber joined mid-fan-out).
    if (entry.seq <= sub.lastSeq) return;
    sub.lastSeq = entry.seq;
    if (!matchesFilter(sub.filter, entry.event)) return;
    this.call(sub, () => sub.onEvent(entry.seq, entry.event, entry));
  }

  private call(sub: Subscriber, fn: () => void): void {
    try {
      fn();
    } catch (err) {
      sub.errors++;
      if (sub.errors === 1 || sub.errors % 1000 === 0) this.log?.warn({ err, errors: sub.errors }, 'an event subscriber threw');
    }
  }
}
