/**
 * Commands over REST (contract §8, docs/commands.md): `POST /v1/devices/{id}/commands` waits for
 * the device's answer (200), or gives up after `timeoutMs` (504 with the record, the command stays
 * deliverable), or with `wait: false` answers 202 at once; `GET` lists or shows records; `DELETE`
 * cancels an unfinished command. A waiting request holds one timer and one promise, and lets go
 * of both when its client disconnects.
 */
import type { FastifyReply, FastifyRequest } from 'fastify';
import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod';
import { z } from 'zod';
import { notFound, type CommandService, type WaitOutcome } from '../../../core/command-service.js';
import { COMMAND_LIMITS, COMMAND_STATES, isFinished, type CommandRecord, type CommandState } from '../../../core/commands.js';
import type { DeviceService } from '../../../core/devices.js';
import type { ErrorCode } from '../../../core/errors.js';
import { sendProblem } from '../../plugins/errors.js';
import { problem, problemSchema } from '../../problem.js';
import { authErrorResponses, deviceIdSchema, serviceSecurity } from '../../schemas.js';

const L = COMMAND_LIMITS;

const commandRecordSchema = z.object({
  id: z.string(),
  deviceId: z.string(),
  name: z.string(),
  params: z.record(z.string(), z.unknown()),
  state: z.enum(COMMAND_STATES),
  createdAt: z.number().int().describe('epoch ms'),
  updatedAt: z.number().int().describe('epoch ms'),
  expiresAt: z.number().int().describe('epoch ms; not delivered by then → expired, delivered but not answered → timed_out'),
  response: z.object({ status: z.number().int(), payload: z.unknown() }).optional().describe("The device's answer"),
  idempotencyKey: z.string().optional(),
});

const sendBody = z.strictObject({
  name: z.string().min(1).max(L.nameMaxLength).describe('Command name, as the device knows it'),
  params: z.record(z.string(), z.unknown()).default({}).describe('Parameters (a JSON object)'),
  timeoutMs: z.number().int().min(L.minTimeoutMs).max(L.maxTimeoutMs).default(L.defaultTimeoutMs).describe('How long `wait: true` waits for the answer'),
  wait: z.boolean().default(true).describe('Wait for the answer (200/504) or return at once (202)'),
  ttlMs: z.number().int().min(1).max(L.maxTtlMs).default(L.defaultTtlMs).describe('How long the command stays deliverable (default 1 h, at most 48 h)'),
  idempotencyKey: z.string().min(1).max(L.idempotencyKeyMaxLength).optional().describe('The same key (per device) returns the same command'),
});

const stateList = z
  .string()
  .max(200)
  .transform((s, ctx) => {
    const states = s.split(',').map((x) => x.trim());
    for (const st of states) {
      if (!(COMMAND_STATES as readonly string[]).includes(st)) {
        ctx.addIssue({ code: 'custom', message: `unknown state "${st}"; one of ${COMMAND_STATES.join(', ')}` });
        return z.NEVER;
      }
    }
    return states as CommandState[];
  });

const params = z.object({ id: deviceIdSchema });
const commandParams = z.object({ id: deviceIdSchema, commandId: z.string().min(1).max(128) });
const withRecord = problemSchema.describe('RFC 9457 problem details that also carry the command record (id, state, ...)');

const locationOf = (r: CommandRecord) => `/v1/devices/${encodeURIComponent(r.deviceId)}/commands/${encodeURIComponent(r.id)}`;

/** problem+json whose extension members are the command record (contract: "504 with the record"). */
function sendWithRecord(reply: FastifyReply, request: FastifyRequest, code: ErrorCode, detail: string, record: CommandRecord): FastifyReply {
  return sendProblem(reply.header('location', locationOf(record)), request, problem(code, detail, { ...record }));
}

export const commandRoutes: FastifyPluginAsyncZod<{ devices: DeviceService; commands: CommandService }> = async (app, { devices, commands }) => {
  const answer = async (request: FastifyRequest, reply: FastifyReply, record: CommandRecord, outcome: WaitOutcome, timeoutMs: number) => {
    // The client closed the connection: nobody to answer (Fastify drops a reply to a closed socket).
    if (outcome.outcome === 'aborted') return reply.code(499).send();
    if (outcome.outcome === 'gone') return sendProblem(reply, request, problem('device_not_found', `device ${record.deviceId} was deleted`));
    const current = outcome.outcome === 'finished' ? outcome.record : ((await commands.get(record.deviceId, record.id)) ?? record);
    if (outcome.outcome === 'shutdown') {
      return sendWithRecord(reply, request, 'unavailable', 'the gateway is shutting down before the device answered', current);
    }
    // A timeout whose record finished meanwhile (an answer event missed, e.g. from another
    // gateway while the cluster channel reconnected) is answered like a finished wait.
    if (outcome.outcome === 'timeout' && (current.state === 'queued' || current.state === 'sent' || current.state === 'delivered')) {
      return sendWithRecord(reply, request, 'command_timeout', `the device did not answer within ${timeoutMs} ms; the command stays deliverable until expiresAt`, current);
    }
    switch (current.state) {
      case 'succeeded':
      case 'failed':
        return reply.header('location', locationOf(current)).code(200).send(current);
      case 'canceled':
        return sendWithRecord(reply, request, 'conflict', 'the command was canceled before the device answered', current);
      default:
        return sendWithRecord(reply, request, 'command_timeout', `the command ${current.state === 'expired' ? 'expired before the device acknowledged it' : 'expired before the device answered'}`, current);
    }
  };

  app.post(
    '/v1/devices/:id/commands',
    {
      onRequest: app.requireScope('commands:send'),
      schema: {
        summary: 'Send a command to a device',
        description:
          'Scope: commands:send. `wait: true` (default): 200 with the record once the device answered (succeeded = 2xx status, failed otherwise); 504 problem+json carrying the record when `timeoutMs` passes first (the command stays deliverable until `expiresAt`). `wait: false`: 202 with the record and a Location. An offline device gets the command when it subscribes to devices/{id}/commands/+. The same `idempotencyKey` returns the same command (422 if reused with another name or params). 429 when the device has `commands.queueMax` undelivered commands.',
        tags: ['commands'],
        security: serviceSecurity,
        params,
        body: sendBody,
        response: {
          200: commandRecordSchema,
          202: commandRecordSchema,
          400: problemSchema,
          404: problemSchema,
          409: withRecord,
          422: problemSchema,
          429: problemSchema,
          503: withRecord,
          504: withRecord,
          ...authErrorResponses,
        },
      },
    },
    async (request, reply) => {
      const { id } = request.params;
      const body = request.body;
      await devices.get(id);
      const { record } = await commands.send(id, { name: body.name, params: body.params, ttlMs: body.ttlMs, idempotencyKey: body.idempotencyKey });
      if (!body.wait) return reply.code(202).header('location', locationOf(record)).send(record);
      if (isFinished(record.state)) return answer(request, reply, record, { outcome: 'finished', record }, body.timeoutMs);
      const waiting = commands.wait(id, record.id, body.timeoutMs);
      const release = () => waiting.cancel();
      reply.raw.once('close', release);
      const outcome = await waiting.promise;
      reply.raw.off('close', release);
      return answer(request, reply, record, outcome, body.timeoutMs);
    },
  );

  app.get(
    '/v1/devices/:id/commands',
    {
      onRequest: app.requireScope('commands:send'),
      schema: {
        summary: "List a device's commands",
        description: 'Scope: commands:send. Oldest first (creation order); follow nextCursor for the next page. `state` filters: one state or a comma-separated list.',
        tags: ['commands'],
        security: serviceSecurity,
        params,
        querystring: z.object({
          state: stateList.optional(),
          limit: z.coerce.number().int().min(1).max(1000).default(100),
          cursor: z.string().min(1).max(512).optional(),
        }),
        response: { 200: z.object({ items: z.array(commandRecordSchema), nextCursor: z.string().nullable() }), 400: problemSchema, 404: problemSchema, ...authErrorResponses },
      },
    },
    async (request) => {
      await devices.get(request.params.id);
      const q = request.query;
      return commands.list(request.params.id, { limit: q.limit, ...(q.state && { states: q.state }), ...(q.cursor !== undefined && { cursor: q.cursor }) });
    },
  );

  app.get(
    '/v1/devices/:id/commands/:commandId',
    {
      onRequest: app.requireScope('commands:send'),
      schema: {
        summary: 'Get a command',
        description: 'Scope: commands:send.',
        tags: ['commands'],
        security: serviceSecurity,
        params: commandParams,
        response: { 200: commandRecordSchema, 400: problemSchema, 404: problemSchema, ...authErrorResponses },
      },
    },
    async (request) => {
      const { id, commandId } = request.params;
      await devices.get(id);
      const record = await commands.get(id, commandId);
      if (!record) throw notFound(id, commandId);
      return record;
    },
  );

  app.delete(
    '/v1/devices/:id/commands/:commandId',
    {
      onRequest: app.requireScope('commands:send'),
      schema: {
        summary: 'Cancel a command',
        description: 'Scope: commands:send. Cancels a command that is not finished and answers the canceled record; a finished one is 409 (problem+json carrying the record). A canceled command is never delivered, and a late answer to it is refused.',
        tags: ['commands'],
        security: serviceSecurity,
        params: commandParams,
        response: { 200: commandRecordSchema, 400: problemSchema, 404: problemSchema, 409: withRecord, ...authErrorResponses },
      },
    },
    async (request) => {
      const { id, commandId } = request.params;
      await devices.get(id);
      return commands.cancel(id, commandId);
    },
  );
};
