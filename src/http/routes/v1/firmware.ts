/** Firmware updates (contract §8): `POST /v1/devices/{id}/firmware` (202 job) and `GET .../firmware`. */
import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod';
import { z } from 'zod';
import type { DeviceService } from '../../../core/devices.js';
import type { FirmwareService } from '../../../core/firmware.js';
import { problemSchema } from '../../problem.js';
import { authErrorResponses, deviceIdSchema, serviceSecurity } from '../../schemas.js';

const state = z.enum(['pending', 'downloading', 'installing', 'succeeded', 'failed']);
const target = z.object({
  version: z.string().min(1).max(64),
  url: z.string().min(1).max(2048).describe('http:// or https:// URL of the image'),
  sha256: z.string().describe('64 hex characters'),
  size: z.number().int().positive().optional().describe('bytes'),
});
const job = z.object({
  id: z.string(),
  deviceId: z.string(),
  target,
  state,
  progress: z.number().nullable(),
  error: z.string().nullable(),
  createdAt: z.number(),
  updatedAt: z.number(),
  completedAt: z.number().nullable(),
  history: z.array(z.object({ state, at: z.number(), progress: z.number().optional(), error: z.string().optional(), version: z.string().optional() })),
});
const params = z.object({ id: deviceIdSchema });

export const firmwareRoutes: FastifyPluginAsyncZod<{ devices: DeviceService; firmware: FirmwareService }> = async (app, { devices, firmware }) => {
  app.post(
    '/v1/devices/:id/firmware',
    {
      onRequest: app.requireScope('firmware:write'),
      schema: {
        summary: 'Start a firmware update',
        description:
          'Scope: firmware:write. Sets desired.firmware {version, url, sha256, size?} on the classic shadow; the device reports reported.firmware {version, state: downloading|installing|succeeded|failed, progress?, error?}.',
        tags: ['firmware'],
        security: serviceSecurity,
        params,
        body: target,
        response: { 202: job, 400: problemSchema, 404: problemSchema, ...authErrorResponses },
      },
    },
    async (request, reply) => {
      await devices.get(request.params.id);
      const created = await firmware.start(request.params.id, request.body);
      return reply.code(202).header('location', `/v1/devices/${encodeURIComponent(request.params.id)}/firmware`).send(created);
    },
  );

  app.get(
    '/v1/devices/:id/firmware',
    {
      onRequest: app.requireScope('firmware:write'),
      schema: {
        summary: 'State of the firmware update',
        description: 'Scope: firmware:write. Current (reported) version, target, state and the job.',
        tags: ['firmware'],
        security: serviceSecurity,
        params,
        response: {
          200: z.object({ current: z.string().nullable(), target: z.string().nullable(), state: state.nullable(), progress: z.number().nullable(), error: z.string().nullable(), job: job.nullable() }),
          400: problemSchema,
          404: problemSchema,
          ...authErrorResponses,
        },
      },
    },
    async (request) => {
      await devices.get(request.params.id);
      return firmware.status(request.params.id);
    },
  );
};
