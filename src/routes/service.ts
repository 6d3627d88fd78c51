/**
 * The API gateway routes as one object for gateway.ts: the route table, the response cache, the
 * rate limiter and the metrics, in memory or, when `redis.url` is set, with the cache and the
 * limiter shared through Redis (a connection of their own, so the route hot path never waits
 * behind bulk store traffic).
 */
import { Redis } from 'ioredis';
import type { Logger } from 'pino';
import type { Registry } from 'prom-client';
import type { RouteConfig } from '../config/routes.js';
import { MemoryCacheBackend, RouteCache, type CacheBackend } from './cache.js';
import { RedisCacheBackend } from './cache-redis.js';
import { MemoryRouteLimiter, type RouteLimiter } from './limiter.js';
import { RedisRouteLimiter } from './limiter-redis.js';
import { RouteMetrics } from './metrics.js';
import { RouteTable, type ReloadSummary } from './table.js';

/** A Redis command that does not answer in this time fails: a miss for the cache, allowed for the limiter. */
const REDIS_COMMAND_TIMEOUT_MS = 1000;
/** At most one line per this interval about Redis trouble on the route hot path. */
const WARN_EVERY_MS = 10_000;

export interface RouteServiceOptions {
  routes: readonly RouteConfig[];
  redisUrl?: string | undefined;
  log: Logger;
  registry: Registry;
}

export class RouteService {
  readonly table: RouteTable;
  readonly cache: RouteCache;
  readonly limiter: RouteLimiter;
  readonly metrics: RouteMetrics;
  readonly log: Logger;
  private readonly redis: Redis | null;
  private lastWarnAt = 0;

  constructor(opts: RouteServiceOptions) {
    this.log = opts.log;
    this.table = new RouteTable(opts.log);
    this.redis = opts.redisUrl
      ? // Connects on the first cache or limiter command: no connection while no route needs one.
        new Redis(opts.redisUrl, { lazyConnect: true, maxRetriesPerRequest: 1, commandTimeout: REDIS_COMMAND_TIMEOUT_MS, connectionName: 'iotgate-routes' })
      : null;
    this.redis?.on('error', (err: Error) => this.warn(err, 'route cache/limiter Redis connection error'));
    const backend: CacheBackend = this.redis ? new RedisCacheBackend(this.redis) : new MemoryCacheBackend();
    this.cache = new RouteCache(backend);
    this.limiter = this.redis ? new RedisRouteLimiter(this.redis) : new MemoryRouteLimiter();
    this.metrics = new RouteMetrics(opts.registry, () => this.table.health());
    this.table.replace(opts.routes);
  }

  /** Where the cache and the limiter keep their state. */
  get storage(): 'memory' | 'redis' {
    return this.redis ? 'redis' : 'memory';
  }

  /** Swaps in a new, already validated route list (SIGHUP). Requests in flight finish on the old routes. */
  reload(routes: readonly RouteConfig[]): ReloadSummary {
    const summary = this.table.replace(routes);
    const live = this.table.list();
    void this.cache.backend.retain(new Set(live.flatMap((r) => (r.cacheNs ? [r.cacheNs] : []))));
    this.limiter.retain(new Set(live.flatMap((r) => (r.limiterNs ? [r.limiterNs] : []))));
    return summary;
  }

  /** Logs Redis trouble at most once per WARN_EVERY_MS (the hot path must not flood the log). */
  warn(err: unknown, msg: string): void {
    const now = Date.now();
    if (now - this.lastWarnAt < WARN_EVERY_MS) return;
    this.lastWarnAt = now;
    this.log.warn({ err }, msg);
  }

  async close(): Promise<void> {
    this.table.close();
    await this.cache.backend.close();
    await this.limiter.close();
    // Nothing here is worth waiting for at shutdown (a lost cache write is a later miss), and a
    // QUIT to an unreachable Redis would wait: drop the connection.
    this.redis?.disconnect();
  }
}
