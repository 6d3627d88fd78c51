/**
 * Route rate limits in Redis: the same token bucket as core/rate-limit.ts (refilled continuously,
 * `max` tokens per `windowMs`), kept in a hash per key and updated by one Lua script on Redis's
 * clock, so every gateway process on the same Redis draws from one budget.
 */
import type { Redis } from 'ioredis';
import { describeWindow, type RateRefusal } from '../core/rate-limit.js';
import type { RouteLimiter, RouteRateRule } from './limiter.js';

const PREFIX = 'iotgate:routes:rl:';

// KEYS[1] bucket; ARGV[1] max, ARGV[2] window ms. Returns {allowed (1|0), wait ms}.
const TAKE = `
local max = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or max
local at = tonumber(state[2]) or now
local elapsed = math.max(0, now - at)
tokens = math.min(max, tokens + elapsed * max / window)
local allowed = 0
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
else
  wait = math.ceil((1 - tokens) * window / max)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], window)
return {allowed, wait}
`;

interface LimiterCommands {
  iotgateRouteTake(key: string, max: number, windowMs: number): Promise<[number, number]>;
}

export class RedisRouteLimiter implements RouteLimiter {
  readonly kind = 'redis' as const;
  private readonly commands: LimiterCommands;

  constructor(redis: Redis) {
    redis.defineCommand('iotgateRouteTake', { numberOfKeys: 1, lua: TAKE });
    this.commands = redis as unknown as LimiterCommands;
  }

  async take(ns: string, key: string, rule: RouteRateRule): Promise<RateRefusal | null> {
    const [allowed, wait] = await this.commands.iotgateRouteTake(`${PREFIX}{${ns}}:${key}`, rule.max, rule.windowMs);
    if (allowed === 1) return null;
    const window = describeWindow(rule.windowMs);
    return { limit: `${rule.max} requests per ${window}`, window, max: rule.max, windowMs: rule.windowMs, retryAfterMs: Math.max(1, wait) };
  }

  /** Buckets expire after one idle window by themselves. */
  retain(): void {}

  /** The Redis connection belongs to the route service, which closes it. */
  async close(): Promise<void> {}
}
