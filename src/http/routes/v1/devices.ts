/** `/v1/devices` and `/v1/register` (contract §8). */
import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod';
import { z } from 'zod';
import type { DeviceService } from '../../../core/devices.js';
import { problemSchema } from '../../problem.js';
import { authErrorResponses, deviceIdSchema, deviceRecordSchema, serviceSecurity } from '../../schemas.js';

const registerBody = z.object({
  id: deviceIdSchema,
  csr: z.string().min(1).max(16_384).describe('PEM PKCS#10 certificate signing request (RSA >= 2048 or EC P-256), CN = id'),
  type: z.string().min(1).max(64).optional().describe('Device type (a schema name); default generic'),
});

const registerResponse = z.object({
  id: z.string(),
  certificate: z.string().describe('PEM device certificate'),
  caCertificate: z.string().describe('PEM CA certificate'),
  token: z.string().describe('Device token'),
  topics: z.object({
    telemetry: z.string(),
    commands: z.string(),
    commandResponse: z.string(),
    shadow: z.string(),
    status: z.string(),
    errors: z.string(),
  }),
});

const listQuery = z.object({
  type: z.string().min(1).max(64).optional(),
  online: z.enum(['true', 'false']).optional(),
  limit: z.coerce.number().int().min(1).max(1000).default(100),
  cursor: z.string().min(1).max(512).optional(),
});

export const deviceRoutes: FastifyPluginAsyncZod<{ devices: DeviceService }> = async (app, { devices }) => {
  app.post(
    '/v1/register',
    {
      onRequest: app.requireScope('provision'),
      schema: {
        summary: 'Register a device from its CSR',
        description: 'Scope: provision. Signs the CSR (CN must equal id), mints a device token.',
        tags: ['devices'],
        security: serviceSecurity,
        body: registerBody,
        response: { 201: registerResponse, 400: problemSchema, 409: problemSchema, ...authErrorResponses },
      },
    },
    async (request, reply) => {
      const result = await devices.register(request.body);
      return reply.code(201).header('location', `/v1/devices/${encodeURIComponent(result.id)}`).send(result);
    },
  );

  app.get(
    '/v1/devices',
    {
      onRequest: app.requireScope('devices:read'),
      schema: {
        summary: 'List devices',
        description: 'Scope: devices:read. Ordered by id; follow nextCursor for the next page.',
        tags: ['devices'],
        security: serviceSecurity,
        querystring: listQuery,
        response: {
          200: z.object({ items: z.array(deviceRecordSchema), nextCursor: z.string().nullable() }),
          400: problemSchema,
          ...authErrorResponses,
        },
      },
    },
    async (request) => {
      const q = request.query;
      return devices.list({
        limit: q.limit,
        ...(q.type !== undefined && { type: q.type }),
        ...(q.online !== undefined && { online: q.online === 'true' }),
        ...(q.cursor !== undefined && { cursor: q.cursor }),
      });
    },
  );

  app.get(
    '/v1/devices/:id',
    {
      onRequest: app.requireScope('devices:read'),
      schema: {
        summary: 'Get a device',
        description: 'Scope: devices:read.',
        tags: ['devices'],
        security: serviceSecurity,
        params: z.object({ id: deviceIdSchema }),
        response: { 200: deviceRecordSchema, 404: problemSchema, 400: problemSchema, ...authErrorResponses },
      },
    },
    async (request) => devices.get(request.params.id),
  );

  app.delete(
    '/v1/devices/:id',
    {
      onRequest: app.requireScope('devices:write'),
      schema: {
        summary: 'Revoke and forget a device',
        description: 'Scope: devices:write. Revokes certificate and token (CRL updated) and removes the record.',
        tags: ['devices'],
        security: serviceSecurity,
        params: z.object({ id: deviceIdSchema }),
        response: { 204: z.null().describe('Revoked'), 404: problemSchema, 400: problemSchema, ...authErrorResponses },
      },
    },
    async (request, reply) => {
      await devices.delete(request.params.id);
      return reply.code(204).send(null);
    },
  );
};
