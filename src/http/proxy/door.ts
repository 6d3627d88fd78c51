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
import { hasScope, type ServiceUser } from '../plugins/auth.js';
import { rateLimited } from '../rate-limit.js';
import type { Caller } from './headers.js';

const BEARER = /^Bearer [A-Za-z0-9._~+/-]+=*$/;

export interface DoorOptions {
  authenticateDevice: (token: string) => Promise<string | null>;
  limitService?: ((sub: string) => RateRefusal | null) | undefined;
}

/** How long a verified service JWT is trusted without a new check (also bounded by its `exp`). */
const VERIFIED_TTL_MS = 60_000;
const VERIFIED_MAX = 1000;

interface VerifiedService {
  user: ServiceUser;
  caller: Caller & { kind: 'service' };
  /** Epoch ms after which the token is checked again. */
  until: number;
}

/**
 * Service JWTs this door has verified, by their exact text: a backend reuses its JWT, and even with
 * fast-jwt's own cache of verified tokens `request.jwtVerify()` decodes the token, hashes it and
 * rebuilds the user on every request (7 % of the gateway's CPU in the proxy benchmark). The same
 * bounds as that cache (the token's `exp` and 60 s, 1000 entries): only what passed the full
 * check is kept, and a token is trusted here exactly as long as it would be there. One per
 * proxy plugin instance (a gateway's own key), never shared between gateways in a process.
 */
export class VerifiedServiceTokens {
  private readonly entries = new Map<string, VerifiedService>();

  constructor(private readonly now: () => number = Date.now) {}

  get(token: string): VerifiedService | null {
    const e = this.entries.get(token);
    if (e === undefined) return null;
    if (e.until <= this.now()) {
      this.entries.delete(token);
      return null;
    }
    return e;
  }

  /** `exp` in epoch seconds, as in the token. */
  set(token: string, user: ServiceUser, exp: number | undefined): VerifiedService {
    const now = this.now();
    const until = Math.min(now + VERIFIED_TTL_MS, typeof exp === 'number' ? exp * 1000 : now);
    const e: VerifiedService = { user, caller: { kind: 'service', sub: user.sub, scopes: [...user.scopes].sort() }, until };
    if (until <= now) return e;
    if (this.entries.size >= VERIFIED_MAX) this.entries.delete(this.entries.keys().next().value as string);
    this.entries.set(token, e);
    return e;
  }
}

async function verifyService(request: FastifyRequest, token: string, cache: VerifiedServiceTokens | undefined): Promise<VerifiedService> {
  const hit = cache?.get(token);
  if (hit) return hit;
  try {
    await request.jwtVerify();
  } catch {
    throw new GatewayError('unauthorized', 'the bearer token is invalid, expired or not issued by this gateway');
  }
  const user = request.user;
  if (user.sub === '') throw new GatewayError('unauthorized', 'the bearer token has no subject');
  const exp = (request.server.jwt.decode(token) as { exp?: unknown } | null)?.exp;
  return (cache ?? new VerifiedServiceTokens()).set(token, user, typeof exp === 'number' ? exp : undefined);
}

export async function authenticateCaller(
  request: FastifyRequest,
  reply: FastifyReply,
  def: RouteConfig,
  opts: DoorOptions,
  verified?: VerifiedServiceTokens,
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
  const { user, caller } = await verifyService(request, (header as string).slice(7), verified);
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
