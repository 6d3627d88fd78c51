/**
 * One exchange with a route's upstreams through @fastify/reply-from (undici): pick a healthy
 * upstream, stream the request to it and its response back, retry an idempotent request without a
 * body on another upstream when the first could not answer, and answer 502/504 problem+json when
 * none could. Bodies are streamed, except a response body of at most 16 KiB by its Content-Length
 * (collected, then sent in one write) and a cacheable response up to the route's maxEntryBytes,
 * which is copied aside while it streams to the caller.
 *
 * Why our own deadline timer: undici's headersTimeout (passed as `timeout`) starts only once the
 * request is written, so a connection that never opens would wait for the agent's connect timeout;
 * the route's timeoutMs is enforced here, and undici's timeout stays as the bound on body gaps.
 */
import { Transform, pipeline, type Readable, type TransformCallback } from 'node:stream';
import type { FastifyReply, FastifyRequest } from 'fastify';
import type { Logger } from 'pino';
import type { Lease } from '../../routes/balancer.js';
import { storeDecision } from '../../routes/cache-control.js';
import type { CachedResponse } from '../../routes/cache.js';
import type { RouteService } from '../../routes/service.js';
import { joinUpstreamPath, type RouteMatch } from '../../routes/table.js';
import { sendProblem } from '../plugins/errors.js';
import { problemType, type Problem } from '../problem.js';
import { downstreamResponseHeaders, upstreamRequestHeaders, type ForwardInfo } from './headers.js';

/** RFC 9110 §9.2.2; only those without a body are ever retried (a streamed body cannot be replayed). */
const IDEMPOTENT = new Set(['GET', 'HEAD', 'OPTIONS', 'TRACE', 'PUT', 'DELETE']);

const TIMEOUT_CODES = new Set([
  'FST_REPLY_FROM_TIMEOUT',
  'FST_REPLY_FROM_GATEWAY_TIMEOUT',
  'FST_REPLY_FROM_HTTP_REQUEST_TIMEOUT',
  'UND_ERR_HEADERS_TIMEOUT',
  'UND_ERR_CONNECT_TIMEOUT',
  'UND_ERR_BODY_TIMEOUT',
]);

/**
 * A response body declared (Content-Length) at most this long is collected before it is sent;
 * anything longer, or of unknown length, streams.
 */
const SMALL_BODY_BYTES = 16 * 1024;

/** Response headers that a stored copy does not keep (recomputed on every HIT). */
const NOT_STORED = new Set(['x-request-id', 'x-cache', 'age', 'content-length']);

/** Per-request state, read by the access log line. */
export interface Exchange {
  route: string;
  path: string;
  caller: string | null;
  upstream: string | null;
  attempts: number;
  cache: 'HIT' | 'MISS' | null;
  /** Why the gateway answered itself (timeout, unavailable, rate_limited ...), when it did. */
  outcome: string | null;
}

export interface CacheTarget {
  ns: string;
  primary: string;
  ttlMs: number;
  maxEntries: number;
  maxEntryBytes: number;
}

export interface ForwardArgs {
  request: FastifyRequest;
  reply: FastifyReply;
  service: RouteService;
  match: RouteMatch;
  search: string;
  info: ForwardInfo;
  exchange: Exchange;
  cache: CacheTarget | null;
  log: Logger;
}

function errorCodes(error: Error): string[] {
  const e = error as Error & { code?: unknown; cause?: { code?: unknown } };
  return [e.code, e.cause?.code].filter((c): c is string => typeof c === 'string');
}

function describe(error: Error): string {
  const codes = errorCodes(error);
  if (codes.some((c) => TIMEOUT_CODES.has(c))) return 'timeout';
  if (codes.includes('ECONNREFUSED')) return 'connection refused';
  if (codes.includes('ECONNRESET')) return 'connection reset';
  if (codes.includes('UND_ERR_SOCKET')) return 'connection closed before a response';
  if (codes.includes('ENOTFOUND') || codes.includes('EAI_AGAIN')) return 'host not found';
  return codes[codes.length - 1] ?? 'error';
}

function gatewayProblem(status: 502 | 504, detail: string, route: string): Problem {
  const code = status === 502 ? 'bad_gateway' : 'gateway_timeout';
  return { type: problemType(code), title: status === 502 ? 'Bad Gateway' : 'Gateway Timeout', status, detail, code, route };
}

/** Copies the body aside while it streams, up to `cap` bytes; `captured` is set when it all fit. */
class CaptureStream extends Transform {
  private chunks: Buffer[] = [];
  private size = 0;
  private over = false;
  captured: Buffer | null = null;

  constructor(
    private readonly cap: number,
    private readonly done: (body: Buffer) => void,
  ) {
    super();
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    if (!this.over) {
      this.size += chunk.length;
      if (this.size > this.cap) {
        this.over = true;
        this.chunks = [];
      } else {
        this.chunks.push(chunk);
      }
    }
    cb(null, chunk);
  }

  override _flush(cb: TransformCallback): void {
    if (!this.over) this.done(Buffer.concat(this.chunks, this.size));
    this.chunks = [];
    cb();
  }
}

export function forward(args: ForwardArgs): FastifyReply {
  const { request, reply, service, match, search, info, exchange: ex, log } = args;
  const route = match.route;
  const def = route.def;
  const method = request.method;
  const retryable = IDEMPOTENT.has(method) && !info.hasBody;
  const tried = new Set<Lease['upstream']>();
  let deadline: number | null = null;
  let timer: NodeJS.Timeout | null = null;
  let current: Lease | null = null;
  /** Leases not yet released; all go when the response closes (one listener, whatever the retries). */
  const open = new Set<Lease>();
  /** The gateway has answered (or the caller left): later upstream events only clean up. */
  let finished = false;
  let responded = false;

  const stopTimer = () => {
    if (timer) clearTimeout(timer);
    timer = null;
  };
  const finish = () => {
    finished = true;
    stopTimer();
  };
  reply.raw.once('close', () => {
    finished = true;
    stopTimer();
    // The caller left before an answer: whatever the attempt in flight does later (an error, a
    // timeout) is not the upstream's failure and must not take it out of service.
    current = null;
    for (const lease of open) lease.release();
    open.clear();
  });
  const release = (lease: Lease) => {
    lease.release();
    open.delete(lease);
  };

  const noteFailure = (lease: Lease, reason: string) => {
    const u = lease.upstream;
    const before = u.state;
    lease.failed(reason);
    if (u.state === 'down' && before !== 'down') {
      log.warn({ route: route.name, upstream: u.label, reason, consecutiveFailures: u.consecutiveFailures, cooldownMs: def.health.cooldownMs }, 'route upstream taken out');
    }
  };
  const noteSuccess = (lease: Lease) => {
    const u = lease.upstream;
    const before = u.state;
    lease.succeeded();
    if (before !== 'up') log.info({ route: route.name, upstream: u.label }, 'route upstream back in service');
  };

  const fail = (status: 502 | 504, detail: string, outcome: string) => {
    finish();
    ex.outcome = outcome;
    sendProblem(reply, request, gatewayProblem(status, detail, route.name));
  };

  const onDeadline = () => {
    timer = null;
    if (finished || responded) return;
    const lease = current;
    current = null;
    if (lease) {
      noteFailure(lease, 'timeout');
      service.metrics.upstream(route.name, lease.upstream.label, 'timeout');
    }
    fail(504, `the upstream of route "${route.name}" did not answer within ${def.timeoutMs} ms`, 'timeout');
  };
  const armDeadline = () => {
    if (timer || finished || responded) return;
    deadline ??= Date.now() + def.timeoutMs;
    timer = setTimeout(onDeadline, Math.max(0, deadline - Date.now()));
  };
  // The deadline covers waiting for the response: with a body, it starts once the body is sent.
  if (info.hasBody) {
    if (request.raw.readableEnded) armDeadline();
    else request.raw.once('end', armDeadline);
  }

  const sendBody = (res: { statusCode: number; headers: Record<string, string | string[] | undefined>; stream: Readable }) => {
    const target = args.cache;
    if (target && method === 'GET') {
      const decision = storeDecision({ method, status: res.statusCode, requestHeaders: request.headers, responseHeaders: res.headers, routeTtlMs: target.ttlMs });
      const declared = Number(res.headers['content-length']);
      if (decision.store && !(declared > target.maxEntryBytes)) {
        const headers: Record<string, string | string[]> = {};
        for (const [k, v] of Object.entries(downstreamResponseHeaders(res.headers))) if (!NOT_STORED.has(k)) headers[k] = v;
        const capture = new CaptureStream(target.maxEntryBytes, (body) => {
          const entry: CachedResponse = { status: res.statusCode, headers, body, storedAt: Date.now(), initialAgeS: decision.initialAgeS };
          service.cache
            .store(target.ns, target.primary, request.headers, decision.vary, entry, { ttlMs: decision.ttlMs, maxEntries: target.maxEntries })
            .catch((err: unknown) => service.warn(err, 'route cache store failed'));
        });
        pipeline(res.stream, capture, () => undefined);
        reply.send(capture);
        return;
      }
    }
    const declared = Number(res.headers['content-length']);
    if (method === 'GET' && declared <= SMALL_BODY_BYTES) {
      // Collected and sent as one Buffer: the response goes out in one write, without the pipe
      // to the socket (Fastify's sendStream, end-of-stream bookkeeping) a streamed body costs.
      const chunks: Buffer[] = [];
      res.stream.on('data', (chunk: Buffer) => chunks.push(chunk));
      res.stream.once('error', (err) => {
        // Headers are not sent yet, but the upstream's are set on the reply: drop the connection,
        // as a body that breaks off mid-stream does.
        if (!finished) reply.raw.destroy(err);
      });
      res.stream.once('end', () => {
        if (!finished) reply.send(chunks.length === 1 ? chunks[0] : Buffer.concat(chunks));
      });
      return;
    }
    reply.send(res.stream);
  };

  const attempt = (): void => {
    const lease = route.balancer.pick(tried);
    if (lease === null) {
      const detail = tried.size === 0 ? `no upstream of route "${route.name}" is healthy` : `no upstream of route "${route.name}" could answer`;
      fail(502, detail, tried.size === 0 ? 'no_healthy_upstream' : 'upstream_failed');
      return;
    }
    tried.add(lease.upstream);
    current = lease;
    ex.attempts++;
    ex.upstream = lease.upstream.label;
    open.add(lease);
    const target = `${lease.upstream.url.origin}${joinUpstreamPath(lease.upstream, match.forwardPath)}${search}`;
    const sentAt = performance.now();
    if (!info.hasBody) armDeadline();
    try {
      reply.from(target, {
        timeout: def.timeoutMs,
        retryDelay: () => null,
        rewriteRequestHeaders: (_req, headers) => ({ ...upstreamRequestHeaders(request.headers, info), host: headers.host as string }),
        rewriteHeaders: (headers) => {
          if (finished) return {};
          const out = downstreamResponseHeaders(headers);
          out['x-request-id'] = request.id;
          if (args.cache) out['x-cache'] = 'MISS';
          return out;
        },
        onResponse: (_req, _reply, raw) => {
          // reply-from hands undici's response: status, headers and the body stream.
          const res = raw as unknown as { statusCode: number; headers: Record<string, string | string[] | undefined>; stream: Readable };
          const stream = res.stream;
          if (finished) {
            // Answered already (the deadline passed) or the caller left: drop this late response.
            stream.destroy();
            release(lease);
            return;
          }
          responded = true;
          current = null;
          stopTimer();
          noteSuccess(lease);
          service.metrics.upstream(route.name, lease.upstream.label, 'response', (performance.now() - sentAt) / 1000);
          sendBody(res);
        },
        onError: (_reply, { error }) => {
          const reason = describe(error);
          const timedOut = reason === 'timeout';
          if (current === lease) {
            current = null;
            noteFailure(lease, reason);
            service.metrics.upstream(route.name, lease.upstream.label, timedOut ? 'timeout' : 'error');
          }
          release(lease);
          if (finished) return;
          log.debug({ route: route.name, upstream: lease.upstream.label, reason, attempt: ex.attempts }, 'route upstream attempt failed');
          if (!timedOut && retryable && ex.attempts <= def.retries && !request.raw.destroyed) {
            attempt();
            return;
          }
          if (timedOut) fail(504, `the upstream of route "${route.name}" did not answer within ${def.timeoutMs} ms`, 'timeout');
          else fail(502, `no upstream of route "${route.name}" could answer`, 'upstream_failed');
        },
      });
    } catch (err) {
      // reply-from refuses a target it considers unsafe before sending anything.
      current = null;
      release(lease);
      log.warn({ err, route: route.name }, 'route request could not be sent');
      fail(502, `the request could not be sent to route "${route.name}"`, 'unsendable');
    }
  };

  attempt();
  return reply;
}
