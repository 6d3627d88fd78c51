/**
 * The HTTP caching rules the route cache follows (RFC 9111), as pure functions: Cache-Control
 * parsing, whether a response may be stored and for how long, Vary, and when a request bypasses
 * the cache. The cache is shared by the gateway's callers, so it behaves as a shared cache
 * (`private` is not stored), except that on authenticated routes entries are keyed per caller.
 */

export type HeaderValue = string | string[] | number | undefined;
export type HeaderBag = Readonly<Record<string, HeaderValue>>;

/** Directive name (lower case) → value (unquoted) or `true` when it has none. First occurrence wins. */
export type CacheDirectives = ReadonlyMap<string, string | true>;

function joined(value: HeaderValue): string {
  if (value === undefined) return '';
  return Array.isArray(value) ? value.join(', ') : String(value);
}

/** Splits a comma-separated header at commas outside quoted strings (RFC 9110 §5.6.1). */
function splitList(value: string): string[] {
  const out: string[] = [];
  let current = '';
  let quoted = false;
  for (let i = 0; i < value.length; i++) {
    const c = value[i] as string;
    if (quoted && c === '\\' && i + 1 < value.length) {
      current += c + (value[i + 1] as string);
      i++;
      continue;
    }
    if (c === '"') quoted = !quoted;
    if (c === ',' && !quoted) {
      out.push(current);
      current = '';
    } else {
      current += c;
    }
  }
  out.push(current);
  return out.map((s) => s.trim()).filter((s) => s.length > 0);
}

/** RFC 9111 §5.2: `Cache-Control` into directives. */
export function parseCacheControl(value: HeaderValue): CacheDirectives {
  const directives = new Map<string, string | true>();
  for (const part of splitList(joined(value))) {
    const eq = part.indexOf('=');
    const name = (eq < 0 ? part : part.slice(0, eq)).trim().toLowerCase();
    if (name === '' || directives.has(name)) continue;
    if (eq < 0) {
      directives.set(name, true);
      continue;
    }
    let arg = part.slice(eq + 1).trim();
    if (arg.length >= 2 && arg.startsWith('"') && arg.endsWith('"')) arg = arg.slice(1, -1).replace(/\\(.)/g, '$1');
    directives.set(name, arg);
  }
  return directives;
}

/** RFC 9111 §1.2.2 delta-seconds; undefined when absent or malformed (a malformed age is "stale"). */
export function deltaSeconds(value: string | true | undefined): number | undefined {
  if (typeof value !== 'string' || !/^\d+$/.test(value)) return undefined;
  return Math.min(Number(value), 2_147_483_648);
}

/** `Vary` field names, lower case; `['*']` when the response varies on everything. */
export function parseVary(value: HeaderValue): string[] {
  const names = splitList(joined(value)).map((n) => n.toLowerCase());
  if (names.includes('*')) return ['*'];
  return [...new Set(names)].sort();
}

/** Status codes heuristically cacheable (RFC 9110 §15.1); others are never stored. */
const CACHEABLE_STATUS = new Set([200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501]);

export type StoreDecision = { store: true; ttlMs: number; vary: string[]; initialAgeS: number } | { store: false; reason: string };

export interface StoreInput {
  method: string;
  status: number;
  requestHeaders: HeaderBag;
  responseHeaders: HeaderBag;
  /** The route's `cache.ttlMs`: the freshness when the upstream says nothing, and its ceiling. */
  routeTtlMs: number;
  now?: number;
}

/**
 * Whether a response may be stored, and for how long (RFC 9111 §3, §4.2.1): only GET, a cacheable
 * status, no `no-store` / `private` / `no-cache` (this cache never revalidates), no `Set-Cookie`,
 * no `Vary: *`. Freshness is `s-maxage`, else `max-age`, else `Expires`, each minus the `Age` the
 * upstream reported, capped by the route's ttlMs; with none of them it is the route's ttlMs.
 */
export function storeDecision(input: StoreInput): StoreDecision {
  if (input.method !== 'GET') return { store: false, reason: 'method' };
  if (!CACHEABLE_STATUS.has(input.status)) return { store: false, reason: 'status' };
  const req = parseCacheControl(input.requestHeaders['cache-control']);
  if (req.has('no-store')) return { store: false, reason: 'request no-store' };
  const cc = parseCacheControl(input.responseHeaders['cache-control']);
  for (const d of ['no-store', 'private', 'no-cache'] as const) {
    if (cc.has(d)) return { store: false, reason: d };
  }
  if (input.responseHeaders['set-cookie'] !== undefined) return { store: false, reason: 'set-cookie' };
  const vary = parseVary(input.responseHeaders.vary);
  if (vary[0] === '*') return { store: false, reason: 'vary *' };

  const ageS = deltaSeconds(joined(input.responseHeaders.age).split(',')[0]?.trim()) ?? 0;
  let freshMs: number | undefined;
  const sMaxAge = cc.get('s-maxage');
  const maxAge = cc.get('max-age');
  if (sMaxAge !== undefined || maxAge !== undefined) {
    const seconds = deltaSeconds(sMaxAge ?? maxAge);
    freshMs = seconds === undefined ? 0 : seconds * 1000;
  } else if (input.responseHeaders.expires !== undefined) {
    const expires = Date.parse(joined(input.responseHeaders.expires));
    const dateHeader = Date.parse(joined(input.responseHeaders.date));
    const base = Number.isNaN(dateHeader) ? (input.now ?? Date.now()) : dateHeader;
    freshMs = Number.isNaN(expires) ? 0 : Math.max(0, expires - base);
  }
  const ttlMs = freshMs === undefined ? input.routeTtlMs : Math.min(input.routeTtlMs, freshMs - ageS * 1000);
  if (ttlMs <= 0) return { store: false, reason: 'stale' };
  return { store: true, ttlMs, vary, initialAgeS: ageS };
}

/** A request that must not be answered from the cache: `no-cache`, `no-store`, `max-age=0`, `Pragma: no-cache`. */
export function bypassesCache(requestHeaders: HeaderBag): boolean {
  const cc = parseCacheControl(requestHeaders['cache-control']);
  if (cc.has('no-cache') || cc.has('no-store') || deltaSeconds(cc.get('max-age')) === 0) return true;
  return cc.size === 0 && /(^|,)\s*no-cache\s*(,|$)/i.test(joined(requestHeaders.pragma));
}

/** The request's values of the Vary fields, in a stable form for the cache key. */
export function varyKey(names: readonly string[], requestHeaders: HeaderBag): string {
  return names.map((n) => `${n}=${joined(requestHeaders[n])}`).join('\n');
}
