/**
 * Where the SSE route reads events from, and how a client resumes (contract §9, WHATWG HTML §9.2
 * `Last-Event-ID`). Two implementations:
 *
 * - `LocalEventLog` (here): this gateway's own hub; ids are its sequence numbers, resume reaches
 *   back as far as the hub's ring buffer.
 * - `RedisEventLog` (src/upstream/redis-event-log.ts): the Redis Stream `iotgate:events` that every
 *   gateway writes; ids are stream entry ids, so a client can resume on any gateway of the fleet
 *   and reach back as far as the stream's MAXLEN.
 *
 * A resume happens in two steps: `open()` before the response starts (it may fail with a 400 for
 * an id of the wrong form, or a 503 when the log is unreachable), then `replay()` on the open
 * response, which writes what must come before the live events (a gap notice, events the buffer
 * no longer holds) and hands over a hub and the cursor to follow it from.
 */
import { GatewayError } from './errors.js';
import type { EventFilter, EventHub } from './event-hub.js';

/** The SSE event name of a gap notice (not a CloudEvent type). */
export const GAP_EVENT = 'iotgate.gap';

/**
 * Writes one SSE frame; resolves true once the client can take more (at once, or after `drain`),
 * false once it has gone away.
 */
export type SseSend = (frame: string) => Promise<boolean>;

export interface EventLogReader {
  /**
   * Writes what comes before the live events and resolves the hub cursor to follow from (events
   * with a greater sequence number are new to the client); null when the client went away or the
   * log failed meanwhile (the response should then end: the client reconnects with its last id).
   */
  replay(filter: EventFilter, send: SseSend): Promise<{ hub: EventHub; cursor: number } | null>;
  /** The client has gone: the log may stop reading once nobody follows it. */
  release(): void;
}

export interface EventLog {
  /** What ids look like, for the route's documentation. */
  readonly idFormat: string;
  /** Throws a 400 GatewayError when `lastEventId` cannot be an id of this log. */
  check(lastEventId: string, path: string): void;
  /** Starts a reader resuming after `lastEventId` (or at the live end); may throw a 503. */
  open(lastEventId: string | undefined): Promise<EventLogReader>;
  close(): Promise<void>;
}

/** The SSE frame telling a client that events after `lastEventId` are lost; its id moves the client past the hole. */
export function gapFrame(lastEventId: string, resumedAfter: string, reason: 'expired' | 'unknown'): string {
  const data = JSON.stringify({ lastEventId, resumedAfter, reason });
  return `id: ${resumedAfter}\nevent: ${GAP_EVENT}\ndata: ${data}\n\n`;
}

export function badEventId(path: string, message: string): GatewayError {
  return new GatewayError('validation_failed', `${path}: ${message}`, { details: { errors: [{ path, message }] } });
}

const SEQ = /^\d{1,16}$/;

/** The gateway's own hub as the event log (no Redis): ids are sequence numbers. */
export class LocalEventLog implements EventLog {
  readonly idFormat = 'a decimal sequence number';

  constructor(private readonly hub: EventHub) {}

  check(lastEventId: string, path: string): void {
    if (!SEQ.test(lastEventId)) throw badEventId(path, 'expected an event id (a decimal sequence number) from this stream');
  }

  open(lastEventId: string | undefined): Promise<EventLogReader> {
    const hub = this.hub;
    return Promise.resolve({
      async replay(_filter, send) {
        if (lastEventId === undefined) return { hub, cursor: hub.lastSeq };
        const afterSeq = Number(lastEventId);
        const gap = hub.gapAfter(afterSeq);
        if (!gap) return { hub, cursor: afterSeq };
        // After a gap, replay everything still buffered.
        if (!(await send(gapFrame(String(gap.afterSeq), String(gap.oldestSeq - 1), gap.reason)))) return null;
        return { hub, cursor: gap.oldestSeq - 1 };
      },
      release() {},
    });
  }

  close(): Promise<void> {
    return Promise.resolve();
  }
}
