/**
 * Maps every error to problem+json (style rule 5: codes from core/errors.ts, mapped at the edge):
 * GatewayError, schema validation failures (400 with each failing path), @fastify/jwt and
 * body-parser errors, unknown routes (404), and anything unexpected (500, details only in the log).
 */
import fp from 'fastify-plugin';
import type { FastifyError, FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { hasZodFastifySchemaValidationErrors } from 'fastify-type-provider-zod';
import { isGatewayError, type ErrorCode } from '../../core/errors.js';
import { PROBLEM_CONTENT_TYPE, problem, type Problem } from '../problem.js';

export function sendProblem(reply: FastifyReply, request: FastifyRequest, body: Problem): FastifyReply {
  if (body.status === 401) reply.header('www-authenticate', 'Bearer realm="iotgate"');
  return reply
    .code(body.status)
    .type(PROBLEM_CONTENT_TYPE)
    .send({ ...body, instance: request.url.split('?')[0] });
}

const FASTIFY_CODES: Record<string, ErrorCode> = {
  FST_ERR_CTP_INVALID_MEDIA_TYPE: 'unsupported_media_type',
  FST_ERR_CTP_BODY_TOO_LARGE: 'payload_too_large',
  FST_ERR_CTP_EMPTY_JSON_BODY: 'bad_request',
  FST_ERR_CTP_INVALID_JSON_BODY: 'bad_request',
  FST_ERR_CTP_INVALID_CONTENT_LENGTH: 'bad_request',
};

function toProblem(error: FastifyError): Problem {
  if (isGatewayError(error)) {
    return problem(error.code, error.message, error.details ? { ...error.details } : {});
  }
  if (hasZodFastifySchemaValidationErrors(error)) {
    const part = error.validationContext ?? 'request';
    const errors = error.validation.map((v) => ({
      path: `${part}${v.instancePath ? v.instancePath.replace(/\//g, '.') : ''}`,
      message: v.message ?? 'invalid',
    }));
    const first = errors[0];
    return problem('validation_failed', first ? `${first.path}: ${first.message}` : 'request validation failed', { errors });
  }
  if (error.code?.startsWith('FST_JWT_')) {
    return problem('unauthorized', 'a valid bearer token is required');
  }
  const mapped = error.code ? FASTIFY_CODES[error.code] : undefined;
  if (mapped) return problem(mapped, error.message);
  if (typeof error.statusCode === 'number' && error.statusCode >= 400 && error.statusCode < 500) {
    return { ...problem('bad_request', error.message), status: error.statusCode, title: 'Client Error' };
  }
  return problem('internal', 'internal error');
}

export const errorsPlugin = fp(
  async (app: FastifyInstance) => {
    app.setErrorHandler((error: FastifyError, request, reply) => {
      const body = toProblem(error);
      if (body.status >= 500) request.log.error({ err: error }, 'request failed');
      return sendProblem(reply, request, body);
    });
    app.setNotFoundHandler((request, reply) =>
      sendProblem(reply, request, problem('not_found', `no route ${request.method} ${request.url.split('?')[0]}`)),
    );
  },
  { name: 'iotgate-errors' },
);
