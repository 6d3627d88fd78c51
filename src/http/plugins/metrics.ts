/** Per-route request counters and latency histogram for /metrics. */
import fp from 'fastify-plugin';
import type { FastifyInstance } from 'fastify';
import { Counter, Histogram, type Registry } from 'prom-client';

export const httpMetricsPlugin = fp<{ registry: Registry }>(
  async (app: FastifyInstance, { registry }) => {
    const requests = new Counter({
      name: 'iotgate_http_requests_total',
      help: 'REST requests by method, route and status',
      labelNames: ['method', 'route', 'status'] as const,
      registers: [registry],
    });
    const duration = new Histogram({
      name: 'iotgate_http_request_duration_seconds',
      help: 'REST request duration',
      labelNames: ['method', 'route'] as const,
      buckets: [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5],
      registers: [registry],
    });
    app.addHook('onResponse', async (request, reply) => {
      // Unknown routes share one label so random URLs cannot blow up the series count.
      const route = request.routeOptions.url ?? 'unmatched';
      requests.inc({ method: request.method, route, status: String(reply.statusCode) });
      duration.observe({ method: request.method, route }, reply.elapsedTime / 1000);
    });
  },
  { name: 'iotgate-http-metrics' },
);
