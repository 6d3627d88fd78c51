/**
 * Service JWTs already verified, by their exact text: shared by the REST auth plugin
 * (plugins/auth.ts) and the API-gateway door (proxy/door.ts). A backend reuses its JWT, and even
 * with fast-jwt's own cache of verified tokens `request.jwtVerify()` decodes the token, hashes it
 * and rebuilds the user on every request (7 % of the gateway's CPU in the proxy benchmark, ~9 % in
 * rest-read). The same bounds as that cache (the token's `exp` and 60 s, 1000 entries): only what
 * passed the full check is kept, and a token is trusted here exactly as long as it would be there.
 * Scopes and rate limits are still checked per request by the caller. One instance per plugin
 * instance (a gateway's own key), never shared between gateways in a process.
 */
import type { FastifyRequest } from 'fastify';
import { GatewayError } from '../core/errors.js';
import type { ServiceUser } from './plugins/auth.js';
import type { Caller } from './proxy/headers.js';

/** How long a verified service JWT is trusted without a new check (also bounded by its `exp`). */
const VERIFIED_TTL_MS = 60_000;
const VERIFIED_MAX = 1000;

export interface VerifiedService {
  user: ServiceUser;
  caller: Caller & { kind: 'service' };
  /** Epoch ms after which the token is checked again. */
  until: number;
}

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

/**
 * The service JWT of `request` (its text `token`): from `cache` when it passed the full check
 * before, else verified now (signature, exp, issuer: fast-jwt) and remembered. Throws 401.
 */
export async function verifyServiceToken(request: FastifyRequest, token: string, cache: VerifiedServiceTokens): Promise<VerifiedService> {
  const hit = cache.get(token);
  if (hit) return hit;
  try {
    await request.jwtVerify();
  } catch {
    throw new GatewayError('unauthorized', 'the bearer token is invalid, expired or not issued by this gateway');
  }
  const user = request.user;
  if (user.sub === '') throw new GatewayError('unauthorized', 'the bearer token has no subject');
  const exp = (request.server.jwt.decode(token) as { exp?: unknown } | null)?.exp;
  return cache.set(token, user, typeof exp === 'number' ? exp : undefined);
}
