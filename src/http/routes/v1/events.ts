/**
 * `GET /v1/events` (contract §8, §9): the event log as Server-Sent Events (WHATWG HTML §9.2).
 * Each event is `id: <id>`, `event: <CloudEvent type>`, `data: <CloudEvent JSON>`; a `: ping`
 * comment keeps idle streams alive. Where events come from and what ids look like is the event
 * log's business (src/core/event-log.ts): this gateway's hub with sequence numbers, or with Redis
 * the fleet's stream `iotgate:events` with its entry ids. `Last-Event-ID` (or `?lastEventId=`)
 * resumes; when that is no longer possible an `iotgate.gap` event says so first.
 *
 * Back-pressure: a stream reads from the hub's ring buffer at its own pace (a cursor, no
 * per-client queue): while its socket does not drain it only counts the live events it misses,
 * and is closed once that passes `maxLagEvents` (the client reconnects with Last-Event-ID).
 */
import type { ServerResponse } from 'node:http';
import type { FastifyBaseLogger } from 'fastify';
import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod';
import { z } from 'zod';
import { CLOUD_EVENT_TYPES, isCloudEventType } from '../../../core/cloudevents.js';
import { isDeviceId } from '../../../core/model.js';
import { matchesFilter, type EventFilter, type EventHub, type HubEntry } from '../../../core/event-hub.js';
import { GAP_EVENT, type EventLog, type EventLogReader, type SseSend } from '../../../core/event-log.js';
import { problemSchema } from '../../problem.js';
import { authErrorResponses, serviceSecurity } from '../../schemas.js';

export interface EventRoutesOptions {
  log: EventLog;
  /** `: ping` comment interval (default 15 000 ms). */
  heartbeatMs?: number;
  /** Live events a non-draining client may miss before it is disconnected (default 1000). */
  maxLagEvents?: number;
}

export { GAP_EVENT };

const MAX_FILTER_ITEMS = 1000;

function csv(s: string): string[] {
  return s
    .split(',')
    .map((x) => x.trim())
    .filter((x) => x.length > 0);
}

const typesParam = z
  .string()
  .max(4096)
  .transform((s, ctx) => {
    const items = csv(s);
    const unknown = items.filter((t) => !isCloudEventType(t));
    if (unknown.length > 0) {
      ctx.addIssue({ code: 'custom', message: `unknown event type ${unknown.map((t) => `"${t}"`).join(', ')} (known: ${CLOUD_EVENT_TYPES.join(', ')})` });
      return z.NEVER;
    }
    return items;
  })
  .describe(`Comma-separated CloudEvent types (${CLOUD_EVENT_TYPES.join(', ')}); default all`);

const devicesParam = z
  .string()
  .max(131_072)
  .transform((s, ctx) => {
    const items = csv(s);
    const bad = items.find((d) => !isDeviceId(d));
    if (bad !== undefined) {
      ctx.addIssue({ code: 'custom', message: `"${bad.slice(0, 140)}" is not a device id` });
      return z.NEVER;
    }
    if (items.length > MAX_FILTER_ITEMS) {
      ctx.addIssue({ code: 'custom', message: `at most ${MAX_FILTER_ITEMS} devices` });
      return z.NEVER;
    }
    return items;
  })
  .describe('Comma-separated device ids; default all');

/** The id to resume after (header first, then query), checked against the log's id format, or undefined. */
function resumeAfter(log: EventLog, header: string | string[] | undefined, query: string | undefined): string | undefined {
  const [value, path] = header !== undefined ? [Array.isArray(header) ? header[0] : header, 'headers.last-event-id'] : [query, 'querystring.lastEventId'];
  if (value === undefined || value.trim() === '') return undefined;
  log.check(value.trim(), path);
  return value.trim();
}

/** Writes a frame to `res`, resolving once it can take more (true) or has closed (false). */
function sender(res: ServerResponse): SseSend {
  return (frame) =>
    new Promise<boolean>((resolve) => {
      if (res.destroyed || res.writableEnded) return resolve(false);
      if (res.write(frame)) return resolve(true);
      const settle = (ok: boolean) => () => {
        res.off('drain', onDrain);
        res.off('close', onClose);
        resolve(ok);
      };
      const onDrain = settle(true);
      const onClose = settle(false);
      res.once('drain', onDrain);
      res.once('close', onClose);
    });
}

class SseStream {
  /** Sequence number of the last buffered event this stream has written or skipped. */
  private cursor: number;
  /** The socket did not drain: events are read from the hub buffer once it does. */
  private waiting = false;
  private lagged = 0;
  private ended = false;
  private readonly unsubscribe: () => void;
  private readonly onDrain = () => this.pump();

  constructor(
    private readonly res: ServerResponse,
    private readonly hub: EventHub,
    private readonly filter: EventFilter,
    cursor: number,
    private readonly maxLag: number,
    private readonly log: FastifyBaseLogger,
    private readonly onEnd: (s: SseStream) => void,
  ) {
    res.on('close', () => this.finish());
    res.on('error', () => this.finish());
    this.cursor = cursor;
    this.unsubscribe = hub.subscribe(filter, (seq, _event, entry) => this.onLive(seq, entry));
    this.waiting = true;
    this.pump();
  }

  ping(): void {
    if (!this.waiting && !this.ended) this.send(': ping\n\n');
  }

  /** Server shutdown: end politely, or cut a client whose socket is full. */
  close(): void {
    if (this.ended) return;
    if (this.waiting) this.res.destroy();
    else this.res.end();
    this.finish();
  }

  private onLive(seq: number, entry: HubEntry): void {
    if (this.ended) return;
    if (this.waiting) {
      if (++this.lagged > this.maxLag) this.drop(`more than ${this.maxLag} events behind`);
      return;
    }
    this.cursor = seq;
    this.send(entry.sse());
  }

  private send(chunk: string): boolean {
    if (this.res.write(chunk)) return true;
    this.waiting = true;
    this.res.once('drain', this.onDrain);
    return false;
  }

  /** Writes buffered events after the cursor until the socket is full or the stream caught up. */
  private pump(): void {
    if (this.ended) return;
    if (this.cursor < this.hub.oldestSeq - 1) {
      this.drop('fell behind the event buffer');
      return;
    }
    for (const entry of this.hub.entriesAfter(this.cursor)) {
      this.cursor = entry.seq;
      if (!matchesFilter(this.filter, entry.event)) continue;
      if (!this.send(entry.sse())) return;
    }
    this.waiting = false;
    this.lagged = 0;
  }

  private drop(reason: string): void {
    this.log.info({ reason }, 'SSE client is too slow; disconnecting it');
    this.res.destroy();
    this.finish();
  }

  private finish(): void {
    if (this.ended) return;
    this.ended = true;
    this.unsubscribe();
    this.res.off('drain', this.onDrain);
    this.onEnd(this);
  }
}

export const eventRoutes: FastifyPluginAsyncZod<EventRoutesOptions> = async (app, opts) => {
  const { log } = opts;
  const heartbeatMs = opts.heartbeatMs ?? 15_000;
  const maxLag = opts.maxLagEvents ?? 1000;
  const streams = new Set<SseStream>();
  /** Responses still replaying (before their SseStream exists). */
  const replaying = new Set<ServerResponse>();
  let heartbeat: NodeJS.Timeout | null = null;

  const removed = (s: SseStream) => {
    streams.delete(s);
    if (streams.size === 0 && heartbeat) {
      clearInterval(heartbeat);
      heartbeat = null;
    }
  };

  // preClose runs before the server stops listening: open streams would otherwise keep
  // http.close() (forceCloseConnections 'idle') waiting forever.
  app.addHook('preClose', (done) => {
    for (const s of [...streams]) s.close();
    for (const res of [...replaying]) res.destroy();
    done();
  });

  app.get(
    '/v1/events',
    {
      onRequest: app.requireScope('telemetry:read'),
      schema: {
        summary: 'Event stream (Server-Sent Events)',
        description:
          'Scope: telemetry:read. A text/event-stream of CloudEvents 1.0: `id: <id>`, `event: <type>`, `data: <CloudEvent JSON>`, ' +
          'and a `: ping` comment every few seconds. Ids are sequence numbers of this gateway, or with Redis the entry ids of the ' +
          'stream `iotgate:events` (every gateway\'s events; resume on any gateway). Resume with the `Last-Event-ID` header (or ' +
          `\`lastEventId\`); when events after it are no longer held an \`${GAP_EVENT}\` event comes first. A client that does not keep up is disconnected.`,
        tags: ['events'],
        security: serviceSecurity,
        querystring: z.object({
          types: typesParam.optional(),
          devices: devicesParam.optional(),
          lastEventId: z.string().max(48).optional().describe('Same as the Last-Event-ID header (the header wins)'),
        }),
        response: {
          200: z.string().describe('text/event-stream'),
          400: problemSchema,
          ...authErrorResponses,
        },
      },
    },
    async (request, reply) => {
      const q = request.query;
      const after = resumeAfter(log, request.headers['last-event-id'], q.lastEventId);
      const filter: EventFilter = {
        types: q.types !== undefined && q.types.length > 0 ? new Set(q.types) : undefined,
        devices: q.devices !== undefined && q.devices.length > 0 ? new Set(q.devices) : undefined,
      };
      // Before the response starts: a log that cannot be read answers 503 here.
      const reader: EventLogReader = await log.open(after);

      reply.hijack();
      const res = reply.raw;
      res.writeHead(200, {
        'content-type': 'text/event-stream; charset=utf-8',
        'cache-control': 'no-cache, no-transform',
        'x-accel-buffering': 'no',
        'x-request-id': String(request.id),
      });
      res.write(': iotgate events\n\n');
      replaying.add(res);
      const start = await reader
        .replay(filter, sender(res))
        .catch((err: unknown) => {
          request.log.warn({ err }, 'SSE resume failed; ending the response');
          return null;
        })
        .finally(() => replaying.delete(res));
      if (start === null || res.destroyed || res.writableEnded) {
        reader.release();
        if (!res.writableEnded) res.end();
        return;
      }
      const ended = (s: SseStream) => {
        removed(s);
        reader.release();
      };
      const stream = new SseStream(res, start.hub, filter, start.cursor, maxLag, request.log, ended);
      if (res.destroyed) return;
      streams.add(stream);
      heartbeat ??= setInterval(() => {
        for (const s of streams) s.ping();
      }, heartbeatMs);
      heartbeat.unref();
      request.log.debug({ types: q.types, devices: q.devices?.length, after }, 'SSE stream opened');
    },
  );
};
