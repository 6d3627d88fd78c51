/**
 * Authentication at the door of a route (contract §11): the same credentials and checks as the
 * REST API (auth plugin): a device token or a service JWT verified by @fastify/jwt, `admin`
 * implying every scope, 401 for a missing or bad credential, 403 for a missing scope, and the
 * per-subject REST limit (contract §10) for services.
 */
import type { FastifyReply, FastifyRequest } from 'fastify';
import { GatewayError } from '../../core/errors.js';
import type { RateRefusal } from '../../core/rate-limit.js';
import type { RouteConfig } from '../../config/routes.js';
import { hasScope } from '../plugins/auth.js';
import { rateLimited } from '../rate-limit.js';
import { verifyServiceToken, type VerifiedServiceTokens } from '../verified-tokens.js';
import type { Caller } from './headers.js';

const BEARER = /^Bearer [A-Za-z0-9._~+/-]+=*$/;

export interface DoorOptions {
  authenticateDevice: (token: string) => Promise<string | null>;
  limitService?: ((sub: string) => RateRefusal | null) | undefined;
}

export async function authenticateCaller(
  request: FastifyRequest,
  reply: FastifyReply,
  def: RouteConfig,
  opts: DoorOptions,
  verified: VerifiedServiceTokens,
): Promise<Caller> {
  if (def.auth === 'none') return { kind: 'anonymous' };
  const header = request.headers.authorization;
  const bearer = header !== undefined && BEARER.test(header);
  if (def.auth === 'device') {
    const deviceId = bearer ? await opts.authenticateDevice((header as string).slice(7)) : null;
    if (deviceId === null) throw new GatewayError('unauthorized', 'a valid device token is required (Authorization: Bearer <device token>)');
    return { kind: 'device', id: deviceId };
  }
  if (!bearer) throw new GatewayError('unauthorized', 'a bearer token is required (Authorization: Bearer <service JWT>)');
  const { user, caller } = await verifyServiceToken(request, (header as string).slice(7), verified);
  const missing = def.scopes.filter((s) => !hasScope(user, s));
  if (missing.length > 0) {
    const list = missing.map((s) => `"${s}"`).join(', ');
    throw new GatewayError('forbidden', `route "${def.name}" needs scope ${list}`, { details: { requiredScope: missing[0], requiredScopes: [...def.scopes] } });
  }
  const refusal = opts.limitService?.(user.sub) ?? null;
  if (refusal) throw rateLimited(reply, refusal);
  return caller;
}

/** The key of a caller's rate-limit budget and cache partition. */
export function callerKey(caller: Caller, clientIp: string): string {
  switch (caller.kind) {
    case 'device':
      return `device:${caller.id}`;
    case 'service':
      return `service:${caller.sub}`;
    default:
      return `ip:${clientIp}`;
  }
}
