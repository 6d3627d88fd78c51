/** Service JWTs (ES256) for REST callers and backend MQTT clients. */
import { randomUUID } from 'node:crypto';
import { createSigner, createVerifier, type VerifierOptions } from 'fast-jwt';
import { GatewayError } from '../core/errors.js';
import { SCOPES, isScope } from '../core/model.js';

/** `iss` of every service JWT. */
export const JWT_ISSUER = 'iotgate';
/** `aud` of every service JWT. */
export const JWT_AUDIENCE = 'iotgate';
/** The only accepted signature algorithm. */
export const JWT_ALGORITHMS = ['ES256'] as const;

const MAX_TOKEN_LENGTH = 8192;
const MAX_TTL_SECONDS = 10 * 365 * 24 * 3600;
const SUB_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$/;

/** A signed service token and what it grants. */
export interface ServiceToken {
  token: string;
  sub: string;
  scope: string;
  /** ISO 8601. */
  expiresAt: string;
}

/** A verified service token. */
export interface ServiceClaims {
  sub: string;
  scopes: Set<string>;
}

type SignFn = (payload: Record<string, unknown>) => string;
type VerifyFn = (token: string) => unknown;

// Keyed by PEM; a gateway has one key, the cap only guards against callers passing many.
const signers = new Map<string, SignFn>();
const verifiers = new Map<string, VerifyFn>();
const CACHE_LIMIT = 8;

function cached<F>(cache: Map<string, F>, key: string, make: () => F): F {
  let fn = cache.get(key);
  if (!fn) {
    if (cache.size >= CACHE_LIMIT) cache.clear();
    fn = make();
    cache.set(key, fn);
  }
  return fn;
}

/** Parses "1h", "30m", "45s", "2d", "1w" or plain seconds ("3600") into seconds. */
export function parseTtl(input: string): number {
  const m = /^\s*(\d{1,9})\s*([smhdw]?)\s*$/.exec(input);
  if (!m) throw new Error(`invalid TTL "${input}": use seconds or a number with s, m, h, d or w (e.g. 1h)`);
  const unit = { '': 1, s: 1, m: 60, h: 3600, d: 86400, w: 604800 }[m[2] as '' | 's' | 'm' | 'h' | 'd' | 'w'];
  const seconds = Number(m[1]) * unit;
  if (seconds < 1 || seconds > MAX_TTL_SECONDS) {
    throw new Error(`invalid TTL "${input}": must be between 1 second and 10 years`);
  }
  return seconds;
}

/**
 * Signs a service JWT: ES256 with iss/aud "iotgate", a random jti, iat and exp = iat + ttl.
 * `scope` is space separated; each scope must be one of the contract's scopes.
 */
export function signServiceToken(
  material: { jwtPrivateKeyPem: string },
  claims: { sub: string; scope: string; ttlSeconds: number },
): ServiceToken {
  if (typeof claims.sub !== 'string' || !SUB_PATTERN.test(claims.sub)) {
    throw new GatewayError('validation_failed', `invalid sub "${String(claims.sub)}"`);
  }
  const scopes = [...new Set(claims.scope.split(/\s+/).filter((s) => s.length > 0))];
  const unknown = scopes.filter((s) => !isScope(s));
  if (unknown.length > 0) {
    throw new GatewayError('validation_failed', `unknown scope ${unknown.map((s) => `"${s}"`).join(', ')} (allowed: ${SCOPES.join(' ')})`);
  }
  if (scopes.length === 0) throw new GatewayError('validation_failed', 'at least one scope is required');
  if (!Number.isInteger(claims.ttlSeconds) || claims.ttlSeconds < 1 || claims.ttlSeconds > MAX_TTL_SECONDS) {
    throw new GatewayError('validation_failed', `invalid ttl ${claims.ttlSeconds}s`);
  }
  const sign = cached(signers, material.jwtPrivateKeyPem, () =>
    createSigner({ key: material.jwtPrivateKeyPem, algorithm: 'ES256', iss: JWT_ISSUER, aud: JWT_AUDIENCE }),
  );
  const iat = Math.floor(Date.now() / 1000);
  const exp = iat + claims.ttlSeconds;
  const scope = scopes.join(' ');
  const token = sign({ sub: claims.sub, scope, jti: randomUUID(), iat, exp });
  return { token, sub: claims.sub, scope, expiresAt: new Date(exp * 1000).toISOString() };
}

/**
 * fast-jwt createVerifier options for service JWTs (also usable as @fastify/jwt `verify`
 * options, minus `key`): ES256 only, exact iss/aud, exp required, no clock tolerance.
 */
export function serviceJwtVerifyOptions(publicKeyPem: string): Partial<VerifierOptions> & { key: string } {
  return {
    key: publicKeyPem,
    algorithms: [...JWT_ALGORITHMS],
    allowedIss: JWT_ISSUER,
    allowedAud: JWT_AUDIENCE,
    requiredClaims: ['sub', 'iss', 'aud', 'exp'],
    clockTolerance: 0,
  };
}

/** Verifies a service JWT; resolves its subject and scopes or throws (fast-jwt TokenError or Error). */
export function verifyServiceToken(publicKeyPem: string, token: string): ServiceClaims {
  if (typeof token !== 'string' || token.length === 0 || token.length > MAX_TOKEN_LENGTH) {
    throw new Error('malformed service token');
  }
  const verify = cached(verifiers, publicKeyPem, () => createVerifier(serviceJwtVerifyOptions(publicKeyPem)) as VerifyFn);
  const payload = verify(token) as { sub?: unknown; scope?: unknown };
  if (typeof payload.sub !== 'string' || payload.sub.length === 0) throw new Error('service token has no sub');
  if (payload.scope !== undefined && typeof payload.scope !== 'string') throw new Error('service token scope is not a string');
  const scopes = new Set((payload.scope ?? '').split(' ').filter((s) => s.length > 0));
  return { sub: payload.sub, scopes };
}
