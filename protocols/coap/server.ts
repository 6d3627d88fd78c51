/**
 * The CoAP device edge (contract §7) on our own dgram socket: the `coap` package (1.5 has no
 * address(), so we bind the socket and pass it to `listen`) with three changes made here —
 *  - its parse stage is replaced by guard.ts (malformed datagrams dropped and counted, Block1
 *    uploads bounded before they are buffered);
 *  - its response cache, which answers retransmitted CON requests (RFC 7252 §4.5), is bounded by
 *    entry count (`coap.dedupEntries`) instead of by payload bytes: each entry also holds the
 *    response's retransmission state, so 32 MiB of small payloads meant gigabytes of memory;
 *  - every request is authenticated by its `?t=<device token>` before a resource sees it.
 * On the plain UDP listener, a fast path (fast-telemetry.ts) answers the common CON
 * `POST /telemetry` in front of the package, with the same answers and the same response cache.
 */
import { createSocket, type RemoteInfo, type Socket } from 'node:dgram';
import { lookup as dnsLookup, type LookupOneOptions } from 'node:dns';
import { isIP, isIPv6 } from 'node:net';
import { createServer, type IncomingMessage, type OutgoingMessage, type Server } from 'coap';
import { Counter, Gauge } from 'prom-client';
import { CoapActivity } from './activity.js';
import { createFastTelemetry, rateLimitAnswer, telemetryAnswer, type FastTelemetry, type Handoff } from './fast-telemetry.js';
import { createGuard, transferKey } from './guard.js';
import { CoapObservers } from './observers.js';
import { replyAnswer, replyError, setCode, type Answer } from './reply.js';
import { isGatewayError } from '../../src/core/errors.js';
import { commandsResource } from './resources/commands.js';
import { shadowResource } from './resources/shadow.js';
import { telemetryResource } from './resources/telemetry.js';
import type { CoapEdgeDeps, CoapExchange } from './types.js';

export interface CoapListener {
  readonly socket: Socket;
  port(): number;
  close(): Promise<void>;
}

export interface CoapEdge extends CoapListener {
  /** Resources, observers and presence, for a second listener (DTLS) to mount on. */
  readonly context: CoapContext;
  /** Cached responses held for CON deduplication (bounded by `coap.dedupEntries`). */
  cacheEntries(): number;
  observers(): number;
}

/** RFC 6690 link format of what this server offers. */
const WELL_KNOWN_CORE = [
  '</telemetry>;rt="iotgate.telemetry";ct="50 42"',
  '</shadow>;rt="iotgate.shadow";ct=50;obs',
  '</commands>;rt="iotgate.commands";ct=50;obs',
].join(',');

export async function bindCoap(host: string, port: number): Promise<CoapListener> {
  // Every response goes to the IP address a request came from; dgram still resolves it with
  // dns.lookup, which answers an IP literal a tick later (process.nextTick per datagram). Once the
  // socket is bound, an IP literal is passed straight through, and the send happens synchronously.
  let bound = false;
  const lookup = (address: string, family: number | LookupOneOptions, callback: (err: NodeJS.ErrnoException | null, address: string, family: number) => void): void => {
    const version = isIP(address);
    if (bound && version !== 0) return callback(null, address, version);
    if (typeof family === 'number') dnsLookup(address, family, callback);
    else dnsLookup(address, family, callback);
  };
  const socket = createSocket({ type: isIPv6(host) ? 'udp6' : 'udp4', reuseAddr: false, lookup });
  await new Promise<void>((resolve, reject) => {
    socket.once('error', reject);
    socket.bind(port, host, () => {
      socket.off('error', reject);
      resolve();
    });
  });
  bound = true;
  socket.on('error', () => {
    // A UDP socket error (ICMP unreachable etc.) must never crash the process.
  });
  return {
    socket,
    port: () => socket.address().port,
    close: () => new Promise<void>((resolve) => socket.close(() => resolve())),
  };
}

/** The `coap` package's server internals replaced here (lib/server.js). */
interface ServerInternals {
  _middlewares: unknown[];
  /** The socket's 'message' listener, made once by `listen`. */
  handleRequest(): (msg: Buffer, rsinfo: RemoteInfo) => void;
  _toCacheKey(request: { rsinfo: { address: string; port: number } }, packet: { code?: string; options?: { name: string | number; value: Buffer }[] }): string | null;
  _toKey(request: unknown, packet: { code?: string; ack?: boolean; options?: { name: string | number; value: unknown }[] }, appendToken: boolean): string;
  /** Responses by `_toKey` (endpoint / message id + token): the encoded datagram, with its retransmission state when the package sent it. */
  _lru: { size: number; clear(): void; has(key: string): boolean; peek(key: string): Buffer | undefined; set(key: string, value: Buffer): unknown; constructor: new (opts: object) => ServerInternals['_lru'] };
  _block2Cache: { add(key: string, payload: unknown): void };
}

/** `t=...` from the query; the token is never logged (pino redacts `t=` in URLs too). */
export function splitUrl(url: string): { path: string; query: URLSearchParams } {
  const q = url.indexOf('?');
  if (q < 0) return { path: url, query: new URLSearchParams() };
  // CoAP Uri-Query options arrive joined with '&' and are not percent-encoded: keep '+' as is.
  return { path: url.slice(0, q), query: new URLSearchParams(url.slice(q + 1).replace(/\+/g, '%2B')) };
}

/** Shared by every CoAP listener of the gateway (UDP now; DTLS through the same resources). */
export interface CoapContext {
  deps: CoapEdgeDeps;
  activity: CoapActivity;
  observers: CoapObservers;
  resources: Record<string, (ex: CoapExchange) => void | Promise<void>>;
  requests: Counter<'resource' | 'code'>;
  dropped: Counter<'reason'>;
}

export interface MountOptions {
  protocol: 'coap' | 'coaps';
  /** The device a secure session already authenticated (DTLS), or null: then `?t=` decides. */
  identify?: (rsinfo: { address: string; port: number }) => string | null;
  /** Sends a datagram (the guard's own refusals); defaults to the socket's send. */
  send?: (buf: Buffer, port: number, address: string) => void;
  /** Answer CON `POST /telemetry` on the fast path (fast-telemetry.ts): a real dgram socket, no `identify`. */
  fastPath?: boolean;
}

export interface MountedServer {
  server: Server;
  cacheEntries(): number;
  close(): Promise<void>;
}

export function createCoapContext(deps: CoapEdgeDeps): CoapContext {
  const registers = [deps.metrics];
  const activity = new CoapActivity(deps.presence, deps.settings.presenceWindowMs, deps.log);
  const observers = new CoapObservers(deps, activity);
  new Gauge({
    name: 'iotgate_coap_observers',
    help: 'CoAP Observe registrations',
    registers,
    collect() {
      this.set(observers.size);
    },
  });
  return {
    deps,
    activity,
    observers,
    resources: {
      telemetry: telemetryResource(deps),
      shadow: shadowResource(deps, observers),
      commands: commandsResource(deps, observers),
    },
    requests: new Counter({ name: 'iotgate_coap_requests_total', help: 'CoAP requests by resource and response class', labelNames: ['resource', 'code'], registers }),
    dropped: new Counter({ name: 'iotgate_coap_dropped_total', help: 'CoAP datagrams dropped or refused before a resource saw them', labelNames: ['reason'], registers }),
  };
}

/** A `coap` server on `socket` (a dgram socket, or a look-alike that a DTLS layer feeds). */
export function mountCoapServer(ctx: CoapContext, socket: Socket, opts: MountOptions): MountedServer {
  const { deps, activity, resources, requests, dropped } = ctx;
  const log = deps.log;

  /** The fast path, when mounted: it hands requests whose store answers asynchronously to `handle`. */
  let fast: FastTelemetry | null = null;

  const handle = async (req: IncomingMessage, res: OutgoingMessage, handed: Handoff | null): Promise<void> => {
    if (handed !== null) {
      // Authenticated, counted against the rate limits and being ingested by the fast path already.
      return replyAnswer(res, telemetryAnswer(await handed.outcome));
    }
    const { path, query } = splitUrl(req.url);
    if (path === '/.well-known/core') {
      if (req.method !== 'GET') return replyError(res, '4.05', 'use GET');
      setCode(res, '2.05');
      res.setOption('Content-Format', 'application/link-format');
      res.end(Buffer.from(WELL_KNOWN_CORE));
      return;
    }
    const segments = path.split('/');
    const name = segments[1] ?? '';
    const resource = Object.hasOwn(resources, name) ? resources[name] : undefined;
    if (!resource || !(segments.length === 2 || (name === 'commands' && segments.length === 3))) {
      return replyError(res, '4.04', `no resource ${path}; see /.well-known/core`);
    }
    const session = opts.identify?.(req.rsinfo) ?? null;
    const token = query.get('t');
    query.delete('t');
    let deviceId = session;
    if (token) {
      const byToken = deps.credentials.authenticateToken(token) ?? (await deps.credentials.authenticateTokenFresh(token));
      if (byToken === null) return replyError(res, '4.01', 'the device token is invalid or revoked');
      if (session !== null && byToken !== session) return replyError(res, '4.01', 'the token belongs to another device than the DTLS session');
      deviceId = byToken;
    }
    if (deviceId === null) return replyError(res, '4.01', 'a device token is required: ?t=<device token>');
    const refusal = deps.rateLimits.messages.take(deviceId) ?? deps.rateLimits.bytes.take(deviceId, req.payload.length);
    if (refusal) {
      dropped.inc({ reason: 'rate_limited' });
      return replyAnswer(res, rateLimitAnswer(refusal));
    }
    activity.seen(deviceId, opts.protocol);
    await resource({ req, res, deviceId, path, query, protocol: opts.protocol });
  };

  /** The answer to an exception from a resource or the pipeline (logged here). */
  const failureAnswer = (err: unknown, resource: string): Answer => {
    // The store is unreachable (Redis down): 5.03 with Max-Age, the device retries later.
    if (isGatewayError(err) && err.code === 'unavailable') {
      log.warn({ resource, err: err.message }, 'coap request refused: store unavailable');
      return { code: '5.03', diagnostic: 'service unavailable; retry later', maxAgeSeconds: 5 };
    }
    log.error({ err, resource }, 'coap request failed');
    return { code: '5.00', diagnostic: 'internal error' };
  };

  const server: Server = createServer({ type: socket.address().family === 'IPv6' ? 'udp6' : 'udp4', piggybackReplyMs: 50 }, (req, res) => {
    // First, synchronously: the package emits a handed-off request within the fast path's call.
    const handed = fast?.takeHandoff() ?? null;
    const resource = req.url.split('?')[0]?.split('/')[1] ?? '';
    res.once('finish', () => requests.inc({ resource, code: res.code || res.statusCode || '2.05' }));
    handle(req, res, handed).catch((err: unknown) => {
      const answer = failureAnswer(err, resource);
      if (!res.writableEnded) replyAnswer(res, answer);
    });
  });
  const internals = server as unknown as ServerInternals;
  // Same LRU class, bounded by count; entries expire after EXCHANGE_LIFETIME as before.
  const lru = internals._lru;
  internals._lru = new lru.constructor({
    max: deps.settings.dedupEntries,
    ttl: 247_000,
    dispose: (value: { sender?: { reset(): void } }) => value.sender?.reset(),
  });
  // The package keys a sent CON notification by endpoint + message id (so the client's ACK or RST,
  // which carry no token, find it) but a NON one by endpoint + message id + token, so an RST to a
  // NON notification found nothing and the registration stayed (RFC 7641 §3.6 says it ends).
  // Notifications of either kind are keyed without the token; incoming requests still carry theirs.
  const toKey = internals._toKey.bind(server);
  internals._toKey = (request, packet, appendToken) =>
    toKey(request, packet, appendToken && !(packet.ack !== true && packet.code?.[0] !== '0' && packet.options?.some((o) => o.name === 'Observe') === true));
  // Block-wise bodies are reassembled per endpoint and URI, not per token (see transferKey).
  // With that key the package's cache of Block2 response bodies would hand the blocks of an older
  // representation to a client fetching the rest of a newer notification (which starts at block
  // 1): every block is served from a fresh representation instead (a changed one shows in ETag).
  internals._block2Cache.add = () => undefined;
  internals._toCacheKey = (request, packet) => transferKey(`${request.rsinfo.address}:${request.rsinfo.port}`, packet);
  const [, handleServerRequest] = internals._middlewares;
  internals._middlewares = [
    createGuard({
      send: opts.send ?? ((buf, port, address) => socket.send(buf, port, address)),
      bounds: { maxPayloadBytes: deps.settings.maxPayloadBytes, maxTransfers: deps.settings.maxBlockTransfers },
      dropped,
    }),
    handleServerRequest,
  ];
  if (opts.fastPath === true) {
    const packageHandler = internals.handleRequest.bind(server);
    let fullPath: (msg: Buffer, rsinfo: RemoteInfo) => void = () => undefined;
    const path = createFastTelemetry({
      deps,
      activity,
      responses: internals._lru,
      send: (buf, port, address) => socket.send(buf, port, address),
      fullPath: (msg, rsinfo) => fullPath(msg, rsinfo),
      answered: (code) => requests.inc({ resource: 'telemetry', code }),
      rateLimited: () => dropped.inc({ reason: 'rate_limited' }),
      failure: (err) => failureAnswer(err, 'telemetry'),
    });
    internals.handleRequest = () => {
      fullPath = packageHandler();
      return path.onMessage;
    };
    fast = path;
  }
  server.on('error', (err: Error) => log.debug({ err: err.message }, 'coap server error'));
  server.listen(socket);
  return {
    server,
    cacheEntries: () => internals._lru.size,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

export async function startCoapEdge(deps: CoapEdgeDeps, opts: { host: string; port: number }): Promise<CoapEdge> {
  const listener = await bindCoap(opts.host, opts.port);
  const { socket } = listener;
  const ctx = createCoapContext(deps);
  const mounted = mountCoapServer(ctx, socket, { protocol: 'coap', fastPath: true });

  const onRevoked = (record: { id: string }) => {
    ctx.observers.endDevice(record.id, '4.01', 'the device token was revoked');
    ctx.activity.end(record.id, 'revoked');
  };
  deps.credentials.on('revoked', onRevoked);

  return {
    socket,
    context: ctx,
    port: listener.port,
    cacheEntries: mounted.cacheEntries,
    observers: () => ctx.observers.size,
    async close() {
      deps.credentials.off('revoked', onRevoked);
      ctx.observers.close();
      ctx.activity.close();
      await mounted.close();
      // Retransmission timers of the `coap` package may still fire: sending on a closed dgram
      // socket throws, so the socket stops sending before it closes.
      socket.send = (() => undefined) as typeof socket.send;
      await listener.close();
    },
  };
}
