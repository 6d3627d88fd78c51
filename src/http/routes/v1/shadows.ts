/**
 * Device shadows over REST (contract §5, §8): `GET/PATCH/DELETE /v1/devices/{id}/shadow[?name=]`
 * and `GET /v1/devices/{id}/shadows`. Services write only `desired`; ETag = version; If-Match → 412;
 * a `version` in the body that is not the current one → 409.
 */
import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod';
import { z } from 'zod';
import type { DeviceService } from '../../../core/devices.js';
import { GatewayError, type ErrorCode } from '../../../core/errors.js';
import type { ShadowFailure, ShadowService } from '../../../core/shadow-service.js';
import { errorDocument } from '../../../core/shadow.js';
import { problemSchema } from '../../problem.js';
import { authErrorResponses, deviceIdSchema, serviceSecurity } from '../../schemas.js';

const CODES: Record<ShadowFailure['code'], ErrorCode> = {
  400: 'bad_request',
  404: 'not_found',
  409: 'conflict',
  412: 'precondition_failed',
  413: 'payload_too_large',
};

/** problem+json carrying the AWS error document `{code, message, timestamp, clientToken?}` (contract §5). */
function fail(error: ShadowFailure, clientToken?: string): never {
  throw new GatewayError(CODES[error.code], error.message, { details: { shadowError: errorDocument(error, Date.now(), clientToken) } });
}

/** `If-Match: "7"`, `7` or `W/"7"` → 7; absent or `*` (any current version) → undefined. */
function ifMatch(header: string | undefined): number | undefined {
  if (header === undefined || header.trim() === '*') return undefined;
  const m = /^\s*(?:W\/)?"?(\d{1,15})"?\s*$/.exec(header);
  if (!m) throw new GatewayError('bad_request', 'If-Match must be the ETag of the shadow (its version), e.g. "7"');
  return Number(m[1]);
}

const etag = (version: number) => `"${version}"`;

const params = z.object({ id: deviceIdSchema });
const query = z.object({ name: z.string().max(64).default('').describe("Named shadow; empty for the classic shadow") });
const shadowDocument = z.object({
  state: z.object({ desired: z.unknown().optional(), reported: z.unknown().optional(), delta: z.unknown().optional() }),
  metadata: z.object({ desired: z.unknown().optional(), reported: z.unknown().optional() }),
  version: z.number().int(),
  timestamp: z.number().int().describe('seconds'),
  clientToken: z.string().optional(),
});
const errors = { 400: problemSchema, 404: problemSchema, ...authErrorResponses };

export const shadowRoutes: FastifyPluginAsyncZod<{ devices: DeviceService; shadows: ShadowService }> = async (app, { devices, shadows }) => {
  app.get(
    '/v1/devices/:id/shadow',
    {
      onRequest: app.requireScope('shadow:read'),
      schema: {
        summary: 'Get a device shadow',
        description: 'Scope: shadow:read. The AWS IoT shadow document with desired, reported and delta. ETag = version.',
        tags: ['shadows'],
        security: serviceSecurity,
        params,
        querystring: query,
        response: { 200: shadowDocument, ...errors },
      },
    },
    async (request, reply) => {
      await devices.get(request.params.id);
      const r = await shadows.get(request.params.id, request.query.name);
      if (!r.ok) fail(r.error, r.clientToken);
      return reply.header('etag', etag(r.version)).send(r.document);
    },
  );

  app.patch(
    '/v1/devices/:id/shadow',
    {
      onRequest: app.requireScope('shadow:write'),
      schema: {
        summary: 'Update the desired state',
        description:
          'Scope: shadow:write. Body: an AWS update request `{state: {desired}, version?, clientToken?}`; only the fields sent change, null deletes. The device gets /update/delta. Answers the whole document. If-Match → 412; a stale `version` → 409; state over the size limit → 413.',
        tags: ['shadows'],
        security: serviceSecurity,
        params,
        querystring: query,
        body: z.unknown().describe('AWS IoT shadow update request'),
        response: { 200: shadowDocument, 409: problemSchema, 412: problemSchema, 413: problemSchema, ...errors },
      },
    },
    async (request, reply) => {
      await devices.get(request.params.id);
      const match = ifMatch(request.headers['if-match']);
      const r = await shadows.update(request.params.id, request.query.name, request.body, 'service', match === undefined ? {} : { ifMatch: match });
      if (!r.ok) fail(r.error, r.clientToken);
      return reply.header('etag', etag(r.version)).send(r.document);
    },
  );

  app.delete(
    '/v1/devices/:id/shadow',
    {
      onRequest: app.requireScope('shadow:write'),
      schema: {
        summary: 'Delete a device shadow',
        description: 'Scope: shadow:write. The version keeps counting (AWS semantics).',
        tags: ['shadows'],
        security: serviceSecurity,
        params,
        querystring: query,
        response: { 200: z.object({ version: z.number().int(), timestamp: z.number().int(), clientToken: z.string().optional() }), 412: problemSchema, ...errors },
      },
    },
    async (request) => {
      await devices.get(request.params.id);
      const match = ifMatch(request.headers['if-match']);
      const r = await shadows.delete(request.params.id, request.query.name, 'service', match === undefined ? {} : { ifMatch: match });
      if (!r.ok) fail(r.error, r.clientToken);
      return r.accepted;
    },
  );

  app.get(
    '/v1/devices/:id/shadows',
    {
      onRequest: app.requireScope('shadow:read'),
      schema: {
        summary: 'Names of the named shadows',
        description: 'Scope: shadow:read. Like AWS ListNamedShadowsForThing.',
        tags: ['shadows'],
        security: serviceSecurity,
        params,
        response: { 200: z.object({ results: z.array(z.string()), timestamp: z.number().int() }), ...errors },
      },
    },
    async (request) => {
      await devices.get(request.params.id);
      return { results: await shadows.names(request.params.id), timestamp: Math.floor(Date.now() / 1000) };
    },
  );
};
