/**
 * Part of the composition root (with gateway.ts): which implementation of every state port the
 * gateway runs on. Memory by default; with `redis.url` every store and the rate-limit counters are
 * in Redis (contract §1). Stores passed in `deps` (tests) win over both.
 */
import type { Logger } from 'pino';
import type { Config } from './config/schema.js';
import type { CommandStore, DeviceRegistry, ShadowStore, TelemetryStore } from './core/ports.js';
import { RateLimiter, type Limiter, type RateRule } from './core/rate-limit.js';
import type { ComponentStatus } from './http/routes/health.js';
import { MemoryCommandStore } from './stores/memory/commands.js';
import { MemoryDeviceRegistry } from './stores/memory/registry.js';
import { MemoryShadowStore } from './stores/memory/shadows.js';
import { MemoryTelemetryStore } from './stores/memory/telemetry.js';
import { createRedisStores, type RedisStores } from './stores/redis/index.js';

export interface StoreOverrides {
  registry?: DeviceRegistry;
  telemetryStore?: TelemetryStore;
  shadowStore?: ShadowStore;
  commandStore?: CommandStore;
}

export interface GatewayStores {
  registry: DeviceRegistry;
  telemetry: TelemetryStore;
  shadows: ShadowStore;
  commands: CommandStore;
  limiter(rule: RateRule): Limiter;
  /** The Redis store set when `redis.url` is set (readiness, the cluster link), else null. */
  redis: RedisStores | null;
  /** The `store` component of /readyz. */
  status(): ComponentStatus;
}

export function selectStores(config: Config, deps: StoreOverrides, log: Logger): GatewayStores {
  const redis =
    config.redis.url === undefined
      ? null
      : createRedisStores(config.redis.url, { historyMax: config.commands.historyMax, telemetry: config.telemetry, log: log.child({ module: 'redis' }) });
  return {
    registry: deps.registry ?? redis?.registry ?? new MemoryDeviceRegistry(),
    telemetry: deps.telemetryStore ?? redis?.telemetry ?? new MemoryTelemetryStore(config.telemetry),
    shadows: deps.shadowStore ?? redis?.shadows ?? new MemoryShadowStore(),
    commands: deps.commandStore ?? redis?.commands ?? new MemoryCommandStore({ historyMax: config.commands.historyMax }),
    limiter: (rule) => (redis ? redis.rateLimiter(rule) : new RateLimiter(rule)),
    redis,
    status: () =>
      redis === null
        ? { status: 'ok', detail: 'memory' }
        : redis.isReady()
          ? { status: 'ok', detail: 'redis' }
          : { status: 'failing', detail: `redis ${redis.status}` },
  };
}
