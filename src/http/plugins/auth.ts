/**
 * Service authentication for REST (contract §2, §8): `Authorization: Bearer <service JWT>`,
 * verified by @fastify/jwt (fast-jwt) with the algorithm, issuer and audience pinned, `exp` and
 * `sub` required. 401 for a missing or invalid token, 403 for a valid token without the scope.
 */
import fp from 'fastify-plugin';
import fastifyJwt from '@fastify/jwt';
import type {
  FastifyInstance,
  FastifyReply,
  FastifyRequest,
  HookHandlerDoneFunction,
  onRequestAsyncHookHandler,
  onRequestHookHandler,
} from 'fastify';
import { GatewayError } from '../../core/errors.js';
import type { Scope } from '../../core/model.js';
import type { RateRefusal } from '../../core/rate-limit.js';
import { rateLimited } from '../rate-limit.js';
import { VerifiedServiceTokens, verifyServiceToken } from '../verified-tokens.js';

export interface ServiceUser {
  sub: string;
  scopes: ReadonlySet<string>;
}

declare module '@fastify/jwt' {
  interface FastifyJWT {
    payload: { sub?: unknown; scope?: unknown };
    user: ServiceUser;
  }
}

declare module 'fastify' {
  interface FastifyInstance {
    /** onRequest hook: a service JWT that grants `scope` (or `admin`). */
    requireScope(scope: Scope): onRequestHookHandler;
    /** onRequest hook: `Authorization: Bearer <device token>` of the device named by `:id`. */
    requireDevice: onRequestAsyncHookHandler;
  }
}

export interface AuthOptions {
  jwtPublicKeyPem: string;
  /** fast-jwt verifier options (algorithms, allowedIss, allowedAud, requiredClaims...), from pki. */
  verify: Record<string, unknown>;
  /** The device id a device token authenticates, or null. */
  authenticateDevice: (token: string) => Promise<string | null>;
  /** Per service subject request limits (contract §10); null when allowed. */
  limitService?: (sub: string) => RateRefusal | null;
}

const BEARER = /^Bearer [A-Za-z0-9._~+/-]+=*$/;

export function hasScope(user: ServiceUser, scope: Scope): boolean {
  return user.scopes.has(scope) || user.scopes.has('admin');
}

export const authPlugin = fp<AuthOptions>(
  async (app: FastifyInstance, opts) => {
    await app.register(fastifyJwt, {
      secret: { public: opts.jwtPublicKeyPem },
      // fast-jwt's LRU of verified tokens (bounded by the token's exp/nbf and cacheTTL): ES256
      // verification was 32 % of CPU in the rest-read benchmark; a service reuses its JWT.
      verify: { cache: 1000, cacheTTL: 60_000, ...opts.verify },
      formatUser: (payload) => {
        const p = payload as { sub?: unknown; scope?: unknown };
        const scope = typeof p.scope === 'string' ? p.scope : '';
        return { sub: typeof p.sub === 'string' ? p.sub : '', scopes: new Set(scope.split(' ').filter(Boolean)) };
      },
    });

    // Tokens that passed the full check below, trusted again without jwtVerify() (same bounds as
    // fast-jwt's cache: exp and 60 s). One per app: this gateway's key only.
    const verified = new VerifiedServiceTokens();

    /** The scope and the per-subject limit, checked on every request (cached token or not). */
    const authorize = (reply: FastifyReply, user: ServiceUser, scope: Scope): Error | undefined => {
      if (!hasScope(user, scope)) {
        return new GatewayError('forbidden', `this route needs scope "${scope}"`, { details: { requiredScope: scope } });
      }
      const refusal = opts.limitService?.(user.sub) ?? null;
      return refusal ? rateLimited(reply, refusal) : undefined;
    };

    // A callback hook, not an async one: a known token is checked synchronously, without a
    // promise and a microtask per request; an unknown one goes through verifyService.
    app.decorate('requireScope', (scope: Scope): onRequestHookHandler => {
      return (request: FastifyRequest, reply: FastifyReply, done: HookHandlerDoneFunction) => {
        const header = request.headers.authorization;
        if (header === undefined || !BEARER.test(header)) {
          done(new GatewayError('unauthorized', 'a bearer token is required (Authorization: Bearer <service JWT>)'));
          return;
        }
        const token = header.slice(7);
        const hit = verified.get(token);
        if (hit !== null) {
          request.user = hit.user;
          done(authorize(reply, hit.user, scope));
          return;
        }
        verifyServiceToken(request, token, verified).then(
          ({ user }) => done(authorize(reply, user, scope)),
          (err: Error) => done(err),
        );
      };
    });

    app.decorate('requireDevice', async (request: FastifyRequest) => {
      const header = request.headers.authorization;
      const deviceId = header !== undefined && BEARER.test(header) ? await opts.authenticateDevice(header.slice(7)) : null;
      if (deviceId === null) throw new GatewayError('unauthorized', 'a valid device token is required (Authorization: Bearer <device token>)');
      const target = (request.params as { id?: unknown }).id;
      if (deviceId !== target) throw new GatewayError('forbidden', 'a device token is valid only for its own device');
    });
  },
  { name: 'iotgate-auth' },
);
