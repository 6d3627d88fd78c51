/** `GET /v1/routes` (contract §11): the API gateway routes in force, their upstreams and health. */
import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod';
import { z } from 'zod';
import type { RouteService } from '../../../routes/service.js';
import { authErrorResponses, serviceSecurity } from '../../schemas.js';

export interface RouteListOptions {
  routes: RouteService;
}

const upstreamSchema = z.object({
  url: z.string(),
  healthy: z.boolean().describe('takes traffic now'),
  state: z.enum(['up', 'down', 'probing']).describe('down: taken out after failures (or a failed active check); probing: one trial request in flight'),
  pending: z.number().int().describe('requests in flight to this upstream'),
  consecutiveFailures: z.number().int(),
  lastError: z.string().nullable(),
  since: z.number().int().describe('epoch ms of the last health change'),
  retryAt: z.number().int().nullable().describe('epoch ms when a down upstream may be probed again (passive health)'),
});

const routeSchema = z.object({
  name: z.string(),
  prefix: z.string(),
  auth: z.enum(['device', 'service', 'none']),
  scopes: z.array(z.string()),
  stripPrefix: z.boolean(),
  timeoutMs: z.number().int(),
  retries: z.number().int(),
  balance: z.enum(['round-robin', 'least-pending']),
  rateLimit: z.object({ max: z.number().int(), windowMs: z.number().int(), per: z.enum(['caller', 'route']) }).nullable(),
  cache: z.object({ ttlMs: z.number().int(), maxEntries: z.number().int(), maxEntryBytes: z.number().int() }).nullable(),
  headers: z.object({ set: z.array(z.string()).describe('names only; values are never shown'), remove: z.array(z.string()) }),
  health: z.object({
    failures: z.number().int(),
    cooldownMs: z.number().int(),
    check: z.object({ path: z.string(), intervalMs: z.number().int(), timeoutMs: z.number().int() }).nullable(),
  }),
  upstreams: z.array(upstreamSchema),
});

export const routeListRoutes: FastifyPluginAsyncZod<RouteListOptions> = async (app, opts) => {
  app.get(
    '/v1/routes',
    {
      onRequest: app.requireScope('admin'),
      schema: {
        summary: 'API gateway routes',
        description:
          'Scope: admin. The routes to upstream microservices in force (docs/routes.md), each with its upstreams and their health. Changes with a config reload (SIGHUP).',
        tags: ['operations'],
        security: serviceSecurity,
        response: {
          200: z.object({
            loadedAt: z.number().int().describe('epoch ms of the last (re)load'),
            storage: z.enum(['memory', 'redis']).describe('where the cache and rate-limit counters live'),
            items: z.array(routeSchema),
          }),
          ...authErrorResponses,
        },
      },
    },
    async () => ({
      loadedAt: opts.routes.table.loadedAt,
      storage: opts.routes.storage,
      items: opts.routes.table.list().map((r) => {
        const d = r.def;
        return {
          name: d.name,
          prefix: d.prefix,
          auth: d.auth,
          scopes: [...d.scopes],
          stripPrefix: d.stripPrefix,
          timeoutMs: d.timeoutMs,
          retries: d.retries,
          balance: d.balance,
          rateLimit: d.rateLimit ? { ...d.rateLimit } : null,
          cache: d.cache ? { ...d.cache } : null,
          headers: { set: Object.keys(d.headers.set), remove: [...d.headers.remove] },
          health: { failures: d.health.failures, cooldownMs: d.health.cooldownMs, check: d.health.check ? { ...d.health.check } : null },
          upstreams: r.balancer.status(),
        };
      }),
    }),
  );
};
