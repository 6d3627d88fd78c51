/** /healthz (the process answers), /readyz (every component ready) and /metrics. */
import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod';
import { z } from 'zod';
import type { Registry } from 'prom-client';
import { problemSchema } from '../problem.js';
import { serviceSecurity } from '../schemas.js';

export type ComponentStatus = { status: 'ok' | 'starting' | 'failing' | 'stopping'; detail?: string };
export type ReadinessProbe = () => Promise<Record<string, ComponentStatus>>;

const componentSchema = z.object({ status: z.enum(['ok', 'starting', 'failing', 'stopping']), detail: z.string().optional() });
const healthSchema = z.object({ status: z.enum(['ok', 'unavailable']), components: z.record(z.string(), componentSchema) });

export interface HealthRoutesOptions {
  readiness: ReadinessProbe;
  metrics: Registry;
  publicMetrics: boolean;
}

export const healthRoutes: FastifyPluginAsyncZod<HealthRoutesOptions> = async (app, opts) => {
  // Liveness tolerates components that are starting or stopping; readiness wants every one ok.
  const probes = [
    { url: '/healthz', summary: 'Liveness, per component', description: '200 while no component is failing (starting or stopping ones are fine), else 503.', pass: (c: ComponentStatus) => c.status !== 'failing' },
    { url: '/readyz', summary: 'Readiness, per component', description: '200 when every component is ok, else 503.', pass: (c: ComponentStatus) => c.status === 'ok' },
  ];
  for (const probe of probes) {
    app.get(
      probe.url,
      {
        logLevel: 'warn',
        schema: { summary: probe.summary, description: probe.description, tags: ['operations'], response: { 200: healthSchema, 503: healthSchema } },
      },
      async (_request, reply) => {
        const components = await opts.readiness();
        const ok = Object.values(components).every(probe.pass);
        return reply.code(ok ? 200 : 503).send({ status: ok ? 'ok' : 'unavailable', components });
      },
    );
  }

  app.get(
    '/metrics',
    {
      logLevel: 'warn',
      ...(opts.publicMetrics ? {} : { onRequest: app.requireScope('admin') }),
      schema: {
        summary: 'Prometheus metrics',
        description: opts.publicMetrics ? 'No auth (http.publicMetrics=true).' : 'Scope: admin.',
        tags: ['operations'],
        ...(opts.publicMetrics ? {} : { security: serviceSecurity }),
        produces: ['text/plain'],
        response: { 200: z.string().describe('Prometheus text exposition'), 401: problemSchema, 403: problemSchema },
      },
    },
    async (_request, reply) => {
      const text = await opts.metrics.metrics();
      return reply.type(opts.metrics.contentType).send(text);
    },
  );
};
