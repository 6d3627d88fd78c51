/**
 * Route rate limits: a small port with the in-process implementation here (core RateLimiter, a
 * token bucket per key) and a Redis one in limiter-redis.ts, so several gateways share a budget.
 * A refusal is a core RateRefusal; the proxy names the route in it.
 */
import { RateLimiter, type RateRefusal } from '../core/rate-limit.js';

export interface RouteRateRule {
  max: number;
  windowMs: number;
}

export interface RouteLimiter {
  readonly kind: 'memory' | 'redis';
  /** Takes one request from `key`'s budget in namespace `ns`; null when allowed. */
  take(ns: string, key: string, rule: RouteRateRule): Promise<RateRefusal | null>;
  /** Forgets namespaces not in `keep` (routes removed or changed by a reload). */
  retain(keep: ReadonlySet<string>): void;
  close(): Promise<void>;
}

/** The namespace of a route's limiter: a changed rule starts with fresh budgets. */
export function limiterNamespace(route: string, rule: RouteRateRule): string {
  return `${route}:${rule.max}/${rule.windowMs}`;
}

export class MemoryRouteLimiter implements RouteLimiter {
  readonly kind = 'memory' as const;
  private readonly limiters = new Map<string, RateLimiter>();

  async take(ns: string, key: string, rule: RouteRateRule): Promise<RateRefusal | null> {
    let limiter = this.limiters.get(ns);
    if (!limiter) {
      limiter = new RateLimiter({ unit: 'requests', windows: [{ limit: rule.max, windowMs: rule.windowMs }] });
      this.limiters.set(ns, limiter);
    }
    return limiter.take(key);
  }

  retain(keep: ReadonlySet<string>): void {
    for (const [ns, limiter] of this.limiters) {
      if (keep.has(ns)) continue;
      limiter.close();
      this.limiters.delete(ns);
    }
  }

  async close(): Promise<void> {
    this.retain(new Set());
  }
}
