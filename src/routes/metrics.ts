/** Per-route and per-upstream series for /metrics. Upstream labels are the configured URLs. */
import { Counter, Gauge, Histogram, type Registry } from 'prom-client';
import type { UpstreamStatus } from './balancer.js';

const LATENCY_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];

export type UpstreamOutcome = 'response' | 'error' | 'timeout';

export function statusClass(status: number): string {
  return `${Math.floor(status / 100)}xx`;
}

export class RouteMetrics {
  private readonly requests: Counter<'route' | 'method' | 'status_class'>;
  private readonly duration: Histogram<'route'>;
  private readonly upstreamRequests: Counter<'route' | 'upstream' | 'outcome'>;
  private readonly upstreamLatency: Histogram<'route' | 'upstream'>;
  private readonly cache: Counter<'route' | 'result'>;
  private readonly limited: Counter<'route'>;

  constructor(registry: Registry, health: () => Iterable<{ route: string; upstreams: UpstreamStatus[] }>) {
    this.requests = new Counter({
      name: 'iotgate_route_requests_total',
      help: 'Requests through API gateway routes, by route, method and status class',
      labelNames: ['route', 'method', 'status_class'],
      registers: [registry],
    });
    this.duration = new Histogram({
      name: 'iotgate_route_request_duration_seconds',
      help: 'Duration of requests through API gateway routes, until the response is sent',
      labelNames: ['route'],
      buckets: LATENCY_BUCKETS,
      registers: [registry],
    });
    this.upstreamRequests = new Counter({
      name: 'iotgate_route_upstream_requests_total',
      help: 'Attempts sent to route upstreams, by outcome (response, error, timeout)',
      labelNames: ['route', 'upstream', 'outcome'],
      registers: [registry],
    });
    this.upstreamLatency = new Histogram({
      name: 'iotgate_route_upstream_response_seconds',
      help: 'Time until a route upstream sent its response headers',
      labelNames: ['route', 'upstream'],
      buckets: LATENCY_BUCKETS,
      registers: [registry],
    });
    this.cache = new Counter({
      name: 'iotgate_route_cache_total',
      help: 'Route cache lookups, by result (hit, miss)',
      labelNames: ['route', 'result'],
      registers: [registry],
    });
    this.limited = new Counter({
      name: 'iotgate_route_rate_limited_total',
      help: 'Requests refused by a route rate limit',
      labelNames: ['route'],
      registers: [registry],
    });
    new Gauge({
      name: 'iotgate_route_upstream_healthy',
      help: 'Route upstream health: 1 taking traffic, 0 taken out (down or being probed)',
      labelNames: ['route', 'upstream'],
      registers: [registry],
      collect() {
        this.reset();
        for (const r of health()) for (const u of r.upstreams) this.set({ route: r.route, upstream: u.url }, u.healthy ? 1 : 0);
      },
    });
  }

  request(route: string, method: string, status: number, seconds: number): void {
    this.requests.inc({ route, method, status_class: statusClass(status) });
    this.duration.observe({ route }, seconds);
  }

  upstream(route: string, upstream: string, outcome: UpstreamOutcome, seconds?: number): void {
    this.upstreamRequests.inc({ route, upstream, outcome });
    if (seconds !== undefined) this.upstreamLatency.observe({ route, upstream }, seconds);
  }

  cacheLookup(route: string, hit: boolean): void {
    this.cache.inc({ route, result: hit ? 'hit' : 'miss' });
  }

  rateLimited(route: string): void {
    this.limited.inc({ route });
  }
}
