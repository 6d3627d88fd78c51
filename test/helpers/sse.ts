/** Reading `GET /v1/events` (Server-Sent Events) with fetch, as a backend service would. */
import assert from 'node:assert/strict';
import type { TestGateway, Teardown } from './gateway.js';
import { withDeadline } from './mqtt.js';

export interface SseEvent {
  id: string;
  event: string;
  /** The CloudEvent. */
  data: Record<string, unknown>;
}

export interface EventStream {
  events: SseEvent[];
  /** Resolves with the first event (already received or future) that matches. */
  next(match: (e: SseEvent) => boolean, what: string, ms?: number): Promise<SseEvent>;
  close(): void;
}

/**
 * Opens `/v1/events?<query>` with `token`. Resolves once the response headers arrived (the stream
 * is subscribed by then); aborted when `t` ends.
 */
export async function openEvents(t: Teardown, gw: TestGateway, query: string, token: string): Promise<EventStream> {
  const ac = new AbortController();
  t.after(() => ac.abort());
  const res = await fetch(`${gw.url}/v1/events?${query}`, {
    headers: { authorization: `Bearer ${token}`, accept: 'text/event-stream' },
    signal: ac.signal,
  });
  assert.equal(res.status, 200);
  assert.match(res.headers.get('content-type') ?? '', /^text\/event-stream/);
  const sse = collectEvents(() => ac.abort());
  void (async () => {
    const decoder = new TextDecoder();
    try {
      for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) sse.feed(decoder.decode(chunk, { stream: true }));
    } catch {
      // aborted
    }
  })();
  return sse.stream;
}

/**
 * An SSE parser with the waiting `next()` of EventStream: feed it the response text as it comes
 * (from fetch or node:http alike).
 */
export function collectEvents(close: () => void): { feed(text: string): void; stream: EventStream } {
  const events: SseEvent[] = [];
  const waiters = new Set<() => void>();
  let buf = '';
  const feed = (text: string) => {
    buf += text;
    let i: number;
    while ((i = buf.indexOf('\n\n')) >= 0) {
      const block = buf.slice(0, i);
      buf = buf.slice(i + 2);
      let id = '';
      let event: string | undefined;
      let data = '';
      for (const line of block.split('\n')) {
        if (line.startsWith(':')) continue;
        const at = line.indexOf(':');
        const field = line.slice(0, at);
        const value = line.slice(at + 1).replace(/^ /, '');
        if (field === 'id') id = value;
        else if (field === 'event') event = value;
        else if (field === 'data') data += value;
      }
      if (event !== undefined) events.push({ id, event, data: JSON.parse(data) as Record<string, unknown> });
    }
    for (const w of waiters) w();
  };
  const stream: EventStream = {
    events,
    next(match, what, ms = 5000) {
      const found = events.find(match);
      if (found) return Promise.resolve(found);
      let check: (() => void) | undefined;
      const arrived = new Promise<SseEvent>((resolve) => {
        check = () => {
          const e = events.find(match);
          if (e) resolve(e);
        };
        waiters.add(check);
      });
      return withDeadline(arrived, ms, what).finally(() => check && waiters.delete(check));
    },
    close,
  };
  return { feed, stream };
}
