/**
 * The `routes` key (contract §11): HTTP routes to upstream microservices. Kept apart from schema.ts
 * so the gateway's own keys and the API-gateway table each stay readable. Header values may be
 * secrets (e.g. an upstream Authorization): load.ts redacts everything under `headers` in error
 * lines, and GET /v1/routes shows header names only.
 */
import { z } from 'zod';
import { SCOPES } from '../core/model.js';
import { HEADER_NAME, HEADER_VALUE } from '../upstream/delivery.js';

const positiveInt = z.coerce.number().int().positive();

/** Paths the gateway serves itself; a route prefix may not equal, contain or sit under them. */
export const RESERVED_PATHS = ['/v1', '/healthz', '/readyz', '/metrics', '/docs', '/openapi.json', '/mqtt'] as const;

/**
 * Request headers the gateway sets or strips itself: `headers.set` / `headers.remove` may not name
 * them (identity and forwarding headers must stay trustworthy; hop-by-hop headers are per hop).
 */
export const GATEWAY_HEADERS = new Set([
  'host',
  'content-length',
  'transfer-encoding',
  'connection',
  'keep-alive',
  'proxy-connection',
  'upgrade',
  'te',
  'trailer',
  'expect',
  'forwarded',
  'x-forwarded-for',
  'x-forwarded-proto',
  'x-forwarded-host',
  'x-request-id',
]);

export function isGatewayHeader(name: string): boolean {
  const n = name.toLowerCase();
  return GATEWAY_HEADERS.has(n) || n.startsWith('x-iotgate-');
}

/** True when `prefix` equals a reserved path, lies under one, or lies above one (would shadow it). */
export function shadowsReservedPath(prefix: string): string | null {
  const p = prefix.toLowerCase();
  for (const r of RESERVED_PATHS) {
    if (p === r || p.startsWith(`${r}/`) || r.startsWith(`${p}/`)) return r;
  }
  return null;
}

const routeName = z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/, { error: 'expected a name of letters, digits, ".", "_" or "-" (max 64)' });

const PREFIX = /^(\/[A-Za-z0-9._~-]+)+$/;
const prefix = z
  .string({ error: 'expected a path prefix like /api/orders' })
  .transform((s) => (s.length > 1 && s.endsWith('/') ? s.slice(0, -1) : s))
  .superRefine((s, ctx) => {
    if (s === '/' || s === '') {
      ctx.addIssue({ code: 'custom', message: `expected a prefix below / (a route at / would shadow ${RESERVED_PATHS.join(', ')})` });
      return;
    }
    if (!PREFIX.test(s) || s.split('/').some((seg) => seg === '.' || seg === '..')) {
      ctx.addIssue({ code: 'custom', message: 'expected a path prefix like /api/orders (segments of letters, digits, ".", "_", "~", "-")' });
      return;
    }
    const shadowed = shadowsReservedPath(s);
    if (shadowed) ctx.addIssue({ code: 'custom', message: `expected a prefix that does not shadow ${shadowed} (reserved: ${RESERVED_PATHS.join(', ')})` });
  });

const upstreamUrl = z.url({ protocol: /^https?$/, error: 'expected an http:// or https:// URL' }).superRefine((s, ctx) => {
  const u = new URL(s);
  if (u.username !== '' || u.password !== '') ctx.addIssue({ code: 'custom', message: 'expected a URL without user:password (set credentials with headers.set)' });
  else if (u.search !== '' || u.hash !== '') ctx.addIssue({ code: 'custom', message: 'expected a URL without query or fragment' });
});

const headerName = z.string().superRefine((name, ctx) => {
  if (!HEADER_NAME.test(name)) ctx.addIssue({ code: 'custom', message: 'expected an HTTP header name (RFC 9110 token)' });
  else if (isGatewayHeader(name)) ctx.addIssue({ code: 'custom', message: 'expected a header the gateway does not set or strip itself' });
});

const headers = z
  .strictObject({
    /** Set (or replace) on the request sent upstream. Values are never logged or listed. */
    set: z
      .record(z.string().min(1), z.union([z.string(), z.number()], { error: 'expected a string header value' }).transform(String))
      .superRefine((set, ctx) => {
        for (const [name, value] of Object.entries(set)) {
          if (!HEADER_NAME.test(name)) ctx.addIssue({ code: 'custom', path: [name], message: 'expected an HTTP header name (RFC 9110 token)' });
          else if (isGatewayHeader(name)) ctx.addIssue({ code: 'custom', path: [name], message: 'expected a header the gateway does not set or strip itself' });
          else if (!HEADER_VALUE.test(value)) ctx.addIssue({ code: 'custom', path: [name], message: 'expected a header value without control characters' });
        }
      })
      .default({}),
    /** Removed from the caller's request before it goes upstream (e.g. cookie). */
    remove: z.array(headerName).max(64).default([]),
  })
  .prefault({});

const route = z
  .strictObject({
    name: routeName,
    /** Requests to prefix and prefix/... on the HTTP port go to this route. */
    prefix,
    upstreams: z.array(upstreamUrl).min(1, { error: 'expected at least one upstream URL' }).max(64),
    auth: z.enum(['device', 'service', 'none']),
    /** Service routes: every scope the caller's JWT must carry (`admin` implies all). */
    scopes: z.array(z.enum(SCOPES)).max(16).default([]),
    stripPrefix: z.boolean({ error: 'expected true or false' }).default(true),
    /** Wait for the upstream's response headers (and any gap in its body), ms; then 504. */
    timeoutMs: positiveInt.max(600_000).default(30_000),
    /** Extra attempts of an idempotent request without a body, each on another upstream. */
    retries: z.coerce.number().int().min(0).max(10).default(1),
    rateLimit: z
      .strictObject({
        max: positiveInt,
        windowMs: positiveInt.max(86_400_000),
        /** `caller`: each device / subject / client IP has its own budget; `route`: one budget for all. */
        per: z.enum(['caller', 'route']).default('caller'),
      })
      .optional(),
    cache: z
      .strictObject({
        ttlMs: positiveInt.max(86_400_000),
        maxEntries: positiveInt.max(1_000_000),
        /** Responses with a larger body are passed through, not stored. */
        maxEntryBytes: positiveInt.max(16_777_216).default(262_144),
      })
      .optional(),
    headers,
    /** How an upstream is chosen among the healthy ones. */
    balance: z.enum(['round-robin', 'least-pending']).default('round-robin'),
    health: z
      .strictObject({
        /** Consecutive failures (connection errors, timeouts) that take an upstream out. */
        failures: positiveInt.max(1000).default(3),
        /** How long it stays out before one probe request may try it again. */
        cooldownMs: positiveInt.max(3_600_000).default(10_000),
        /** Optional active check: GET upstream + path every intervalMs; 2xx/3xx is healthy. */
        check: z
          .strictObject({
            path: z.string().regex(/^\/[^\s?#]*$/, { error: 'expected an absolute path like /healthz' }).default('/healthz'),
            intervalMs: positiveInt.min(100).max(3_600_000).default(10_000),
            timeoutMs: positiveInt.max(60_000).default(2_000),
          })
          .optional(),
      })
      .prefault({}),
  })
  .superRefine((r, ctx) => {
    if (r.scopes.length > 0 && r.auth !== 'service') ctx.addIssue({ code: 'custom', path: ['scopes'], message: 'expected scopes only on auth: service routes' });
    const seen = new Set<string>();
    r.upstreams.forEach((u, i) => {
      const href = new URL(u).href;
      if (seen.has(href)) ctx.addIssue({ code: 'custom', path: ['upstreams', i], message: 'expected each upstream URL once' });
      seen.add(href);
    });
  });

export const routesSchema = z
  .array(route)
  .max(256)
  .superRefine((list, ctx) => {
    const names = new Set<string>();
    const prefixes = new Set<string>();
    list.forEach((r, i) => {
      if (names.has(r.name)) ctx.addIssue({ code: 'custom', path: [i, 'name'], message: 'expected a unique route name' });
      names.add(r.name);
      const p = r.prefix.toLowerCase();
      if (prefixes.has(p)) ctx.addIssue({ code: 'custom', path: [i, 'prefix'], message: 'expected a unique route prefix' });
      prefixes.add(p);
    });
  })
  .default([]);

/** One validated route, with defaults. */
export type RouteConfig = z.output<typeof route>;
