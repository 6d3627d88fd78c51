/** `GET /v1/upstreams` (contract §8, §9): webhook upstreams, their queues and dead letters. */
import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod';
import { z } from 'zod';
import type { UpstreamStatus } from '../../../upstream/webhooks.js';
import { authErrorResponses, serviceSecurity } from '../../schemas.js';

export interface UpstreamRoutesOptions {
  upstreams: { status(): UpstreamStatus[] };
}

const deadLetterSchema = z.object({
  eventId: z.string(),
  type: z.string(),
  deviceId: z.string().nullable(),
  attempts: z.number().int().describe('delivery attempts made (0 when dropped from a full queue)'),
  reason: z.enum(['queue_full', 'rejected', 'max_attempts']),
  lastError: z.string(),
  at: z.number().int().describe('epoch ms'),
});

const upstreamSchema = z.object({
  name: z.string(),
  url: z.string().describe('without userinfo; query values redacted'),
  types: z.array(z.string()),
  queued: z.number().int().describe('events waiting'),
  inFlight: z.number().int().describe('events being delivered or waiting for a retry'),
  delivered: z.number().int(),
  failed: z.number().int().describe('events given up after attempts'),
  dropped: z.number().int().describe('events evicted from a full queue'),
  deadLetters: z.array(deadLetterSchema).describe('the newest dead letters, oldest first'),
});

export const upstreamRoutes: FastifyPluginAsyncZod<UpstreamRoutesOptions> = async (app, opts) => {
  app.get(
    '/v1/upstreams',
    {
      onRequest: app.requireScope('admin'),
      schema: {
        summary: 'Webhook upstreams',
        description: 'Scope: admin. Each configured webhook upstream with its counters and bounded dead-letter list.',
        tags: ['events'],
        security: serviceSecurity,
        response: { 200: z.object({ items: z.array(upstreamSchema) }), ...authErrorResponses },
      },
    },
    async () => ({ items: opts.upstreams.status() }),
  );
};
