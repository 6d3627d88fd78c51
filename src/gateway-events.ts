/**
 * Part of the composition root (with gateway.ts): where the hub's CloudEvents go (contract §9).
 * Webhooks always; with `redis.url` also the Redis Stream `iotgate:events`, which the SSE route
 * then reads (every gateway's events, resumable on any gateway); without Redis SSE follows this
 * gateway's hub.
 */
import type { Logger } from 'pino';
import type { Registry } from 'prom-client';
import type { Config } from './config/schema.js';
import type { EventHub } from './core/event-hub.js';
import type { TelemetryStore } from './core/ports.js';
import { LocalEventLog, type EventLog } from './core/event-log.js';
import type { RedisStores } from './stores/redis/index.js';
import { RedisEventLog } from './upstream/redis-event-log.js';
import { RedisEventStream } from './upstream/redis-stream.js';
import { WebhookDispatcher } from './upstream/webhooks.js';

export interface EventOutputs {
  webhooks: WebhookDispatcher;
  /** What the SSE route reads. */
  eventLog: EventLog;
  /** Stops reading and writing, delivering what is buffered within each output's own deadline. */
  close(): Promise<void>;
}

/** `telemetryStore`: the store the gateway ingests into (the Redis one writes the telemetry events itself, below). */
export function eventOutputs(config: Config, hub: EventHub, redis: RedisStores | null, telemetryStore: TelemetryStore, log: Logger, metrics: Registry): EventOutputs {
  const webhooks = new WebhookDispatcher({ hub, upstreams: config.upstreams, log: log.child({ module: 'webhooks' }), metrics });
  const url = config.redis.url;
  const stream =
    url === undefined ? null : new RedisEventStream({ hub, url, maxLen: config.events.streamMaxLen, log: log.child({ module: 'event-stream' }), metrics });
  // The Redis telemetry store writes the telemetry events with their records (one script call, one
  // copy of the data); only when it is the store in use, or its records' events would be skipped.
  if (stream !== null && redis !== null && telemetryStore === redis.telemetry) redis.telemetry.writeEventsTo(stream.telemetryOutbox());
  const eventLog: EventLog =
    redis === null || url === undefined
      ? new LocalEventLog(hub)
      : new RedisEventLog({ client: redis.client, url, bufferSize: config.events.bufferSize, log: log.child({ module: 'event-log' }) });
  return {
    webhooks,
    eventLog,
    async close() {
      await webhooks.close();
      await eventLog.close();
      await stream?.close();
    },
  };
}
