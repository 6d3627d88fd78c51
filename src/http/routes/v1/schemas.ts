/** `GET /v1/schemas[/{type}]` (scope devices:read): the device types that are loaded (contract §6). */
import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod';
import { z } from 'zod';
import { GatewayError } from '../../../core/errors.js';
import { problemSchema } from '../../problem.js';
import { authErrorResponses, serviceSecurity } from '../../schemas.js';

export interface SchemaCatalog {
  types(): string[];
  describe(type: string): SchemaSummary | undefined;
}

export interface SchemaSummary {
  type: string;
  encoding: string;
  jsonFallback: boolean;
  messages: string[];
  proto?: string;
  jsonSchema?: unknown;
}

const summarySchema = z.object({
  type: z.string(),
  encoding: z.string(),
  jsonFallback: z.boolean(),
  messages: z.array(z.string()),
  proto: z.string().optional().describe('.proto source'),
  jsonSchema: z.unknown().optional().describe('JSON Schema of telemetry'),
});

export const schemaRoutes: FastifyPluginAsyncZod<{ catalog: SchemaCatalog }> = async (app, { catalog }) => {
  app.get(
    '/v1/schemas',
    {
      onRequest: app.requireScope('devices:read'),
      schema: {
        summary: 'Device types',
        description: 'Scope: devices:read.',
        tags: ['schemas'],
        security: serviceSecurity,
        response: { 200: z.object({ items: z.array(summarySchema.omit({ proto: true, jsonSchema: true })) }), ...authErrorResponses },
      },
    },
    async () => ({
      items: catalog
        .types()
        .map((t) => catalog.describe(t))
        .filter((d): d is SchemaSummary => d !== undefined)
        .map(({ type, encoding, jsonFallback, messages }) => ({ type, encoding, jsonFallback, messages })),
    }),
  );

  app.get(
    '/v1/schemas/:type',
    {
      onRequest: app.requireScope('devices:read'),
      schema: {
        summary: 'One device type with its schema',
        description: 'Scope: devices:read.',
        tags: ['schemas'],
        security: serviceSecurity,
        params: z.object({ type: z.string().min(1).max(64) }),
        response: { 200: summarySchema, 404: problemSchema, ...authErrorResponses },
      },
    },
    async (request) => {
      const found = catalog.describe(request.params.type);
      if (!found) throw new GatewayError('not_found', `no device type ${request.params.type}`);
      return found;
    },
  );
};
