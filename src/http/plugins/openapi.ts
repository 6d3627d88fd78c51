/** OpenAPI 3 document generated from the route schemas (zod), served at /openapi.json and /docs. */
import fp from 'fastify-plugin';
import swagger from '@fastify/swagger';
import swaggerUi from '@fastify/swagger-ui';
import type { FastifyInstance } from 'fastify';
import { jsonSchemaTransform } from 'fastify-type-provider-zod';

export const openapiPlugin = fp<{ version: string }>(
  async (app: FastifyInstance, opts) => {
    await app.register(swagger, {
      openapi: {
        openapi: '3.1.0',
        info: {
          title: 'iotgate REST API',
          version: opts.version,
          description:
            'Devices, telemetry, shadows, commands and firmware of the iotgate IoT gateway. Errors are RFC 9457 application/problem+json.',
        },
        components: {
          securitySchemes: {
            serviceJwt: { type: 'http', scheme: 'bearer', bearerFormat: 'JWT', description: 'Service JWT (ES256) with scopes' },
            deviceToken: { type: 'http', scheme: 'bearer', description: 'Device token' },
          },
        },
      },
      transform: jsonSchemaTransform,
    });
    await app.register(swaggerUi, { routePrefix: '/docs', staticCSP: true });
    app.get('/openapi.json', { schema: { summary: 'This OpenAPI document', tags: ['operations'] } }, async () => app.swagger());
  },
  { name: 'iotgate-openapi' },
);
