/**
 * Telemetry over REST (contract §8): read history and latest (`telemetry:read`), and device HTTP
 * ingestion with the device token (`POST /v1/devices/{id}/telemetry`, JSON or protobuf, 202).
 */
import type { FastifyPluginAsyncZod, ZodTypeProvider } from 'fastify-type-provider-zod';
import { z } from 'zod';
import type { TelemetryQuery, TelemetryStore } from '../../../core/ports.js';
import type { DeviceService } from '../../../core/devices.js';
import type { TelemetryService } from '../../../core/telemetry.js';
import { GatewayError } from '../../../core/errors.js';
import type { RateRefusal } from '../../../core/rate-limit.js';
import { rateLimited } from '../../rate-limit.js';
import { problemSchema } from '../../problem.js';
import { authErrorResponses, deviceIdSchema, serviceSecurity } from '../../schemas.js';

/** Epoch milliseconds or ISO 8601 (contract §8). */
const instant = z
  .string()
  .transform((s, ctx) => {
    const t = /^\d{1,16}$/.test(s) ? Number(s) : Date.parse(s);
    if (Number.isNaN(t)) {
      ctx.addIssue({ code: 'custom', message: 'expected epoch milliseconds or an ISO 8601 time' });
      return z.NEVER;
    }
    return t;
  })
  .describe('epoch ms or ISO 8601');

const recordSchema = z.object({
  id: z.string(),
  deviceId: z.string(),
  type: z.string(),
  protocol: z.string(),
  receivedAt: z.number().describe('epoch ms'),
  deviceTime: z.number().nullable().describe('epoch ms from the message, if any'),
  data: z.record(z.string(), z.unknown()),
});

export interface TelemetryRoutesOptions {
  devices: DeviceService;
  telemetry: TelemetryService;
  store: TelemetryStore;
  /** The device type of a known device, or undefined. */
  typeOf: (deviceId: string) => string | undefined;
  /** Per-device rate limits shared with MQTT (messages, then bytes); null when allowed. */
  limit: (deviceId: string, bytes: number) => RateRefusal | null;
  /** Records traffic for presence (lastSeen). */
  touch: (deviceId: string) => void;
}

export const telemetryRoutes: FastifyPluginAsyncZod<TelemetryRoutesOptions> = async (app, opts) => {
  const params = z.object({ id: deviceIdSchema });

  app.get(
    '/v1/devices/:id/telemetry',
    {
      onRequest: app.requireScope('telemetry:read'),
      schema: {
        summary: 'Telemetry history',
        description: 'Scope: telemetry:read. The newest `limit` messages in [since, until], oldest first.',
        tags: ['telemetry'],
        security: serviceSecurity,
        params,
        querystring: z.object({
          since: instant.optional(),
          until: instant.optional(),
          limit: z.coerce.number().int().min(1).max(10_000).default(100),
        }),
        response: { 200: z.object({ items: z.array(recordSchema) }), 400: problemSchema, 404: problemSchema, ...authErrorResponses },
      },
    },
    async (request) => {
      await opts.devices.get(request.params.id);
      const q = request.query;
      const query: TelemetryQuery = { limit: q.limit, ...(q.since !== undefined && { since: q.since }), ...(q.until !== undefined && { until: q.until }) };
      return { items: await opts.store.history(request.params.id, query) };
    },
  );

  app.get(
    '/v1/devices/:id/telemetry/latest',
    {
      onRequest: app.requireScope('telemetry:read'),
      schema: {
        summary: 'Latest telemetry',
        description: 'Scope: telemetry:read. `item` is null when the device has sent nothing yet.',
        tags: ['telemetry'],
        security: serviceSecurity,
        params,
        response: { 200: z.object({ item: recordSchema.nullable() }), 400: problemSchema, 404: problemSchema, ...authErrorResponses },
      },
    },
    async (request) => {
      await opts.devices.get(request.params.id);
      return { item: await opts.store.latest(request.params.id) };
    },
  );

  // Device ingestion reads the raw body: the codec does size, parse and validation itself.
  await app.register(async (plain) => {
    const scope = plain.withTypeProvider<ZodTypeProvider>();
    scope.removeContentTypeParser(['application/json']);
    scope.addContentTypeParser(['application/json', 'application/x-protobuf', 'application/protobuf'], { parseAs: 'buffer' }, (_req, body, done) =>
      done(null, body),
    );
    scope.post(
      '/v1/devices/:id/telemetry',
      {
        onRequest: scope.requireDevice,
        schema: {
          summary: 'Send telemetry as a device',
          description: 'Device token. Body: JSON object, or protobuf `Telemetry` of the device type (application/x-protobuf). Same pipeline as MQTT and CoAP.',
          tags: ['telemetry'],
          security: [{ deviceToken: [] }],
          params,
          consumes: ['application/json', 'application/x-protobuf'],
          response: { 202: z.object({ id: z.string(), receivedAt: z.number() }), 400: problemSchema, 413: problemSchema, 415: problemSchema, 429: problemSchema, ...authErrorResponses },
        },
      },
      async (request, reply) => {
        const deviceId = request.params.id;
        const type = opts.typeOf(deviceId);
        if (type === undefined) throw new GatewayError('device_not_found', `device ${deviceId} is not known`);
        const body = request.body as Buffer;
        const refusal = opts.limit(deviceId, body.length);
        if (refusal) throw rateLimited(reply, refusal);
        opts.touch(deviceId);
        // Media types are case-insensitive (RFC 9110 §8.3.1).
        const mediaType = (request.headers['content-type'] ?? '').split(';')[0]?.trim().toLowerCase();
        const contentType = mediaType === 'application/x-protobuf' || mediaType === 'application/protobuf' ? 'protobuf' : 'json';
        const outcome = await opts.telemetry.ingest({ deviceId, type, protocol: 'http', payload: body, contentType });
        if (!outcome.ok) {
          const { code, message, path } = outcome.error;
          const status = code === 'too_large' ? 'payload_too_large' : code === 'unsupported_content_type' ? 'unsupported_media_type' : 'validation_failed';
          throw new GatewayError(status, message, {
            details: { reason: code, ...(path !== undefined && { errors: [{ path: `body${path.replace(/\//g, '.')}`, message }] }) },
          });
        }
        return reply.code(202).send({ id: outcome.record.id, receivedAt: outcome.record.receivedAt });
      },
    );
  });
};
