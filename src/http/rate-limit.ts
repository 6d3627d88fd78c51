/** 429 the way the contract wants it (§10): Retry-After, RateLimit-* headers, the limit named. */
import type { FastifyReply } from 'fastify';
import { GatewayError } from '../core/errors.js';
import type { RateRefusal } from '../core/rate-limit.js';

export function rateLimited(reply: FastifyReply, refusal: RateRefusal): GatewayError {
  const seconds = Math.max(1, Math.ceil(refusal.retryAfterMs / 1000));
  reply.header('retry-after', String(seconds));
  reply.header('ratelimit-limit', String(refusal.max));
  reply.header('ratelimit-remaining', '0');
  reply.header('ratelimit-reset', String(seconds));
  reply.header('ratelimit-policy', `${refusal.max};w=${Math.ceil(refusal.windowMs / 1000)}`);
  return new GatewayError('rate_limited', `rate limit exceeded: ${refusal.limit}; retry in ${seconds} s`, { details: { limit: refusal.limit } });
}
