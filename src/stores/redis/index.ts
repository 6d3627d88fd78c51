/**
 * The Redis store set: every port on ONE ioredis client (auto-pipelined, so concurrent calls from
 * all stores share writes to the socket). main.ts/gateway.ts pick this instead of the memory
 * stores when `redis.url` is set; docs/redis.md has the key layout and the bounds.
 */
import { Redis, type RedisStatus } from 'ioredis';
import type { Logger } from 'pino';
import type { RateRule } from '../../core/rate-limit.js';
import { RedisCommandStore } from './commands.js';
import { RedisKeys } from './keys.js';
import { RedisRateLimiter } from './rate-limit.js';
import { RedisDeviceRegistry } from './registry.js';
import { RedisShadowStore } from './shadows.js';
import { RedisTelemetryStore, type TelemetryRetention } from './telemetry.js';

export { RedisCommandStore, RedisDeviceRegistry, RedisKeys, RedisRateLimiter, RedisShadowStore, RedisTelemetryStore };
export type { TelemetryRetention };

export interface RedisStoresOptions {
  /** Finished command records kept per device (config `commands.historyMax`). */
  historyMax: number;
  /** Telemetry kept per device (config `telemetry`). */
  telemetry: TelemetryRetention;
  /** Prefix of every key (default `iotgate:`); no braces. */
  keyPrefix?: string;
  log?: Logger;
  /** How often shared rate limits sync with Redis (ms, default 100). */
  rateFlushMs?: number;
}

export interface RedisStores {
  /** The one connection every store uses (also for readiness and for other Redis users' needs). */
  client: Redis;
  keys: RedisKeys;
  registry: RedisDeviceRegistry;
  shadows: RedisShadowStore;
  commands: RedisCommandStore;
  telemetry: RedisTelemetryStore;
  /** A rate limiter whose counts are shared by every gateway on this Redis. */
  rateLimiter(rule: RateRule): RedisRateLimiter;
  /** ioredis' connection status; only `ready` serves requests. */
  readonly status: RedisStatus;
  /** True while Redis answers (for /readyz). */
  isReady(): boolean;
  /** Resolves once the connection is ready (at once when it is); rejects after `timeoutMs`. */
  ready(timeoutMs?: number): Promise<void>;
  /** Sends the rate limiters' last counts and closes the connection. */
  close(): Promise<void>;
}

/**
 * Connects (in the background: await `ready()` before serving) and builds every Redis store.
 *
 * Failure behaviour, chosen for a server that must answer while Redis is down:
 * - `enableOfflineQueue: false`: a command issued while disconnected fails at once ("Stream isn't
 *   writeable") instead of waiting in an unbounded queue; the caller answers 503 and /readyz
 *   (isReady) shows it. A bounded queue would only turn fast errors into slow ones.
 * - `maxRetriesPerRequest: 0`: commands in flight when the connection drops fail rather than
 *   being re-sent after the reconnect. Their outcome is unknown either way, and a re-sent
 *   compareAndSet, create or INCRBY could apply twice (or report a conflict for its own write).
 * - reconnects forever, backing off to 1 s, so a restarted Redis is picked up within a second;
 *   `commandTimeout` bounds a command against a Redis that accepts connections but hangs.
 */
export function createRedisStores(url: string, opts: RedisStoresOptions): RedisStores {
  const log = opts.log;
  const client = new Redis(url, {
    // The telemetry batch (telemetry.ts) is sent directly (scripts.ts, BatchScript): ioredis runs
    // one auto-pipeline at a time per connection, a turn later, which queued each batch behind the
    // previous reply.
    enableAutoPipelining: true,
    enableOfflineQueue: false,
    maxRetriesPerRequest: 0,
    retryStrategy: (attempt) => Math.min(50 * attempt, 1000),
    commandTimeout: 5000,
    connectionName: 'iotgate',
  });
  let lastError = 0;
  let lost = false;
  let closing = false;
  client.on('error', (err: Error) => {
    // ioredis repeats the error on every reconnect attempt: log one line per 10 s.
    const now = Date.now();
    if (now - lastError < 10_000) return;
    lastError = now;
    log?.warn({ err }, 'redis connection error');
  });
  client.on('ready', () => {
    if (lost) log?.info('redis connection is back');
    lost = false;
  });
  client.on('close', () => {
    // 'close' also follows every failed reconnect attempt: one line per loss.
    if (lost || closing) return;
    lost = true;
    log?.warn('redis connection lost; reconnecting');
  });

  const keys = new RedisKeys(opts.keyPrefix);
  const limiters = new Set<RedisRateLimiter>();

  return {
    client,
    keys,
    registry: new RedisDeviceRegistry(client, keys),
    shadows: new RedisShadowStore(client, keys),
    commands: new RedisCommandStore(client, keys, { historyMax: opts.historyMax }),
    telemetry: new RedisTelemetryStore(client, keys, opts.telemetry),
    rateLimiter(rule) {
      const limiter = new RedisRateLimiter(client, keys, rule, { ...(opts.rateFlushMs !== undefined && { flushMs: opts.rateFlushMs }), ...(log && { log }) });
      limiters.add(limiter);
      return limiter;
    },
    get status() {
      return client.status;
    },
    isReady: () => client.status === 'ready',
    ready: (timeoutMs = 10_000) => waitReady(client, timeoutMs),
    async close() {
      closing = true;
      for (const l of limiters) l.close();
      await Promise.all([...limiters].map((l) => l.flushNow()));
      if (client.status === 'ready') {
        await client.quit().catch(() => client.disconnect());
      } else client.disconnect();
    },
  };
}

function waitReady(client: Redis, timeoutMs: number): Promise<void> {
  if (client.status === 'ready') return Promise.resolve();
  if (client.status === 'end') return Promise.reject(new Error('redis connection is closed'));
  return new Promise((resolve, reject) => {
    const done = (err?: Error) => {
      clearTimeout(timer);
      client.off('ready', onReady);
      client.off('end', onEnd);
      if (err) reject(err);
      else resolve();
    };
    const onReady = () => done();
    const onEnd = () => done(new Error('redis connection is closed'));
    const timer = setTimeout(() => done(new Error(`redis not ready after ${timeoutMs} ms (status ${client.status})`)), timeoutMs);
    client.once('ready', onReady);
    client.once('end', onEnd);
  });
}
