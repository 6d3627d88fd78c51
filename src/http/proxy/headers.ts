/**
 * Headers across the gateway hop (RFC 9110 §7.6.1, RFC 7239): what the upstream receives in place
 * of the caller's credential, and what the caller receives from the upstream.
 */
import type { IncomingHttpHeaders } from 'node:http';

/** Hop-by-hop fields (RFC 9110 §7.6.1 and the usual non-standard ones); never forwarded. */
export const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'te', 'trailer', 'upgrade', 'proxy-authenticate', 'proxy-authorization']);

/** Who called, as established at the door. */
export type Caller = { kind: 'device'; id: string } | { kind: 'service'; sub: string; scopes: readonly string[] } | { kind: 'anonymous' };

export interface ForwardInfo {
  requestId: string;
  clientIp: string;
  /** `http` or `https`: how the caller reached the gateway. */
  proto: string;
  caller: Caller;
  /** The request carries a body that is streamed upstream. */
  hasBody: boolean;
  removeHeaders: ReadonlySet<string>;
  setHeaders: readonly (readonly [string, string])[];
}

type OutHeaders = Record<string, string | string[]>;

/** Field names listed in `Connection` (they are hop-by-hop for this message). */
export function connectionTokens(value: string | string[] | undefined): Set<string> {
  const raw = Array.isArray(value) ? value.join(',') : (value ?? '');
  return new Set(
    raw
      .split(',')
      .map((s) => s.trim().toLowerCase())
      .filter(Boolean),
  );
}

/** RFC 7239 §6: an IPv6 node is bracketed and quoted; other values are quoted when not a token. */
function forwardedNode(ip: string): string {
  const bare = ip.startsWith('::ffff:') && ip.includes('.') ? ip.slice(7) : ip;
  return bare.includes(':') ? `"[${bare}]"` : bare;
}

function quoted(value: string): string {
  return /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/.test(value) ? value : `"${value.replace(/["\\]/g, '\\$&')}"`;
}

function appendList(prior: string | string[] | undefined, value: string): string {
  const before = Array.isArray(prior) ? prior.join(', ') : prior;
  return before && before.trim() !== '' ? `${before}, ${value}` : value;
}

/**
 * The request headers for the upstream: the caller's, minus hop-by-hop fields, every credential
 * (`Authorization`, `Proxy-Authorization`), any `X-Iotgate-*` the caller tried to send and the
 * route's `headers.remove`; plus `X-Request-Id`, the identity headers, `X-Forwarded-For/-Proto/-Host`
 * and `Forwarded` (the gateway's element appended to what earlier proxies wrote), then the route's
 * `headers.set`. `Host` is set by the proxy library to the upstream's.
 */
export function upstreamRequestHeaders(incoming: IncomingHttpHeaders, info: ForwardInfo): OutHeaders {
  const listed = connectionTokens(incoming.connection);
  const out: OutHeaders = {};
  for (const [name, value] of Object.entries(incoming)) {
    if (value === undefined) continue;
    const n = name.toLowerCase();
    if (HOP_BY_HOP.has(n) || listed.has(n) || info.removeHeaders.has(n)) continue;
    if (n === 'authorization' || n === 'host' || n === 'expect' || n.startsWith('x-iotgate-')) continue;
    if (n === 'x-request-id' || n === 'x-forwarded-for' || n === 'x-forwarded-proto' || n === 'x-forwarded-host' || n === 'forwarded') continue;
    if (!info.hasBody && n === 'content-length') continue;
    out[n] = value;
  }
  out['x-request-id'] = info.requestId;
  const c = info.caller;
  if (c.kind === 'device') out['x-iotgate-device'] = c.id;
  if (c.kind === 'service') {
    out['x-iotgate-subject'] = c.sub;
    out['x-iotgate-scopes'] = c.scopes.join(' ');
  }
  const host = incoming.host;
  out['x-forwarded-for'] = appendList(incoming['x-forwarded-for'], info.clientIp.startsWith('::ffff:') && info.clientIp.includes('.') ? info.clientIp.slice(7) : info.clientIp);
  out['x-forwarded-proto'] = info.proto;
  if (host !== undefined) out['x-forwarded-host'] = host;
  const element = [`for=${forwardedNode(info.clientIp)}`, ...(host !== undefined ? [`host=${quoted(host)}`] : []), `proto=${info.proto}`].join(';');
  out.forwarded = appendList(incoming.forwarded, element);
  for (const [name, value] of info.setHeaders) out[name] = value;
  return out;
}

/** The upstream's response headers for the caller: hop-by-hop fields (and those `Connection` lists) removed. */
export function downstreamResponseHeaders(upstream: IncomingHttpHeaders | Record<string, string | string[] | undefined>): OutHeaders {
  const listed = connectionTokens(upstream.connection);
  const out: OutHeaders = {};
  for (const [name, value] of Object.entries(upstream)) {
    if (value === undefined) continue;
    const n = name.toLowerCase();
    if (HOP_BY_HOP.has(n) || listed.has(n)) continue;
    out[n] = value;
  }
  return out;
}
