/**
 * The API gateway door (contract §11): one catch-all route behind every route the REST facade
 * serves itself. Fastify's router prefers static and parametric routes, so /v1, /healthz, /docs ...
 * are never reached here; a path no configured route prefix covers goes to the usual 404 handler.
 * Matching happens per request against the live table, which is what lets SIGHUP swap routes
 * without re-registering anything in Fastify.
 *
 * Per request: match → door (401/403) → rate limit (429) → cache (HIT) → forward (502/504).
 * Request bodies reach the upstream as the raw stream (no parsing, no body limit, no buffering).
 */
import { Readable } from 'node:stream';
import replyFrom from '@fastify/reply-from';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { GatewayError } from '../../core/errors.js';
import { REDACT_PATHS, redactUrl } from '../../log.js';
import { bypassesCache } from '../../routes/cache-control.js';
import type { CachedResponse } from '../../routes/cache.js';
import type { RouteService } from '../../routes/service.js';
import { rateLimited } from '../rate-limit.js';
import { VerifiedServiceTokens } from '../verified-tokens.js';
import { authenticateCaller, callerKey, type DoorOptions } from './door.js';
import { forward, type CacheTarget, type Exchange } from './forward.js';
import type { Caller, ForwardInfo } from './headers.js';

export interface ProxyPluginOptions extends DoorOptions {
  service: RouteService;
}

/** Connections the gateway keeps per upstream origin. */
const CONNECTIONS_PER_ORIGIN = 128;

function callerLabel(caller: Caller | null): string | null {
  if (caller === null) return null;
  if (caller.kind === 'device') return `device:${caller.id}`;
  if (caller.kind === 'service') return `service:${caller.sub}`;
  return 'anonymous';
}

/** A `.` or `..` segment (also percent-encoded) or a backslash could leave the upstream's base path. */
function unsafePath(path: string): boolean {
  if (path.includes('\\')) return true;
  // A dot segment needs a '.', an encoded one or an encoded (back)slash a '%': most paths have neither.
  if (!path.includes('.') && !path.includes('%')) return false;
  for (const segment of path.split('/')) {
    let s: string;
    try {
      s = decodeURIComponent(segment);
    } catch {
      return true;
    }
    if (s.split(/[\\/]/).some((part) => part === '.' || part === '..')) return true;
  }
  return false;
}

function sendCached(reply: FastifyReply, request: FastifyRequest, entry: CachedResponse): FastifyReply {
  reply.code(entry.status);
  for (const [name, value] of Object.entries(entry.headers)) reply.header(name, value);
  const age = entry.initialAgeS + Math.max(0, Math.floor((Date.now() - entry.storedAt) / 1000));
  reply.header('age', String(age));
  reply.header('x-cache', 'HIT');
  reply.header('x-request-id', request.id);
  return reply.send(entry.body);
}

export async function proxyPlugin(app: FastifyInstance, opts: ProxyPluginOptions): Promise<void> {
  const { service } = opts;
  const log = service.log;
  const verified = new VerifiedServiceTokens();

  // Bodies of proxied requests stay streams (this context only: /v1 keeps its JSON parser).
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('*', (_request, payload, done) => done(null, payload));
  await app.register(replyFrom, {
    disableRequestLogging: true,
    destroyAgent: true,
    // reply-from turns TLS verification off unless told otherwise: https upstreams are verified.
    undici: { connections: CONNECTIONS_PER_ORIGIN, pipelining: 1, connect: { rejectUnauthorized: true, timeout: 10_000 } },
  });

  // The access line is a flat object built right here (no headers, no bodies, the path already
  // through redactUrl), so the root logger's wildcard redaction (`*.key`, `*.*.key` for 11 secret
  // keys: a walk of every value of every line, 12 % of the gateway's CPU in the proxy benchmark)
  // has nothing to find in it. This child keeps the literal paths only: same output, same guard
  // should a secret-named key ever be added to the line.
  const accessLogger = app.log.child({}, { redact: { paths: REDACT_PATHS.filter((p) => !p.includes('*')), censor: '[Redacted]' } });
  const accessLog = (request: FastifyRequest, reply: FastifyReply, ex: Exchange) => {
    const status = reply.raw.statusCode;
    const aborted = !reply.raw.writableFinished;
    service.metrics.request(ex.route, request.method, status, reply.elapsedTime / 1000);
    // One line per proxied request (the route's own logLevel silences Fastify's two generic ones).
    accessLogger.info(
      {
        reqId: request.id,
        route: ex.route,
        method: request.method,
        path: ex.path,
        caller: ex.caller,
        upstream: ex.upstream,
        attempts: ex.attempts,
        status,
        durationMs: Math.round(reply.elapsedTime * 10) / 10,
        ...(ex.cache && { cache: ex.cache }),
        ...(ex.outcome && { outcome: ex.outcome }),
        ...(aborted && { aborted: true }),
      },
      'route request',
    );
  };

  // logLevel 'warn': Fastify's "incoming request"/"request completed" lines cost a third of the
  // proxy's CPU in the benchmark; the access log line above carries what they would.
  app.all('/*', { schema: { hide: true }, logLevel: 'warn' }, async (request, reply) => {
    const url = request.url;
    const q = url.indexOf('?');
    const path = q < 0 ? url : url.slice(0, q);
    const search = q < 0 ? '' : url.slice(q);
    const match = service.table.match(path);
    if (match === null) {
      reply.callNotFound();
      return reply;
    }
    const { route } = match;
    const def = route.def;
    const ex: Exchange = { route: route.name, path: redactUrl(path), caller: null, upstream: null, attempts: 0, cache: null, outcome: null };
    reply.raw.once('close', () => accessLog(request, reply, ex));
    reply.header('x-request-id', request.id);

    let caller: Caller;
    try {
      caller = await authenticateCaller(request, reply, def, opts, verified);
    } catch (err) {
      ex.outcome = err instanceof GatewayError ? err.code : 'error';
      throw err;
    }
    ex.caller = callerLabel(caller);
    const key = callerKey(caller, request.ip);

    if (def.rateLimit && route.limiterNs) {
      const rule = def.rateLimit;
      let refusal = null;
      try {
        refusal = await service.limiter.take(route.limiterNs, rule.per === 'route' ? 'route' : key, rule);
      } catch (err) {
        service.warn(err, 'route rate limit unavailable; the request is allowed');
      }
      if (refusal) {
        service.metrics.rateLimited(route.name);
        ex.outcome = 'rate_limited';
        const scope = rule.per === 'route' ? 'for all callers' : 'per caller';
        throw rateLimited(reply, { ...refusal, limit: `${refusal.limit} ${scope} on route "${route.name}"` });
      }
    }

    if (unsafePath(path)) {
      ex.outcome = 'bad_request';
      throw new GatewayError('bad_request', 'the path may not contain "." or ".." segments (plain or percent-encoded) or backslashes');
    }

    const info: ForwardInfo = {
      requestId: request.id,
      clientIp: request.ip,
      proto: request.protocol,
      caller,
      hasBody: request.body instanceof Readable,
      removeHeaders: route.removeHeaders,
      setHeaders: route.setHeaders,
    };

    let cache: CacheTarget | null = null;
    if (def.cache && route.cacheNs && (request.method === 'GET' || request.method === 'HEAD')) {
      // Authenticated routes keep one partition per caller; `auth: none` routes share theirs.
      const partition = def.auth === 'none' ? '*' : key;
      cache = { ns: route.cacheNs, primary: `${partition}\n${path}${search}`, ttlMs: def.cache.ttlMs, maxEntries: def.cache.maxEntries, maxEntryBytes: def.cache.maxEntryBytes };
      ex.cache = 'MISS';
      let hit: CachedResponse | null = null;
      if (!bypassesCache(request.headers)) {
        try {
          hit = await service.cache.lookup(cache.ns, cache.primary, request.headers);
        } catch (err) {
          service.warn(err, 'route cache lookup failed; treated as a miss');
        }
      }
      service.metrics.cacheLookup(route.name, hit !== null);
      if (hit) {
        ex.cache = 'HIT';
        return sendCached(reply, request, hit);
      }
    }

    return forward({ request, reply, service, match, search, info, exchange: ex, cache, log });
  });
}
