/**
 * The fast path of the CoAP edge (docs/performance.md "coap-telemetry"): the request devices send
 * most, a CON `POST /telemetry?t=<token>`, is answered with a piggybacked ACK encoded here and
 * written on the socket, without the `coap` package's request and response streams, their timers
 * and the retransmission state it keeps with every cached response.
 *
 * It takes a datagram only when it can answer exactly as the full path (mountCoapServer) would;
 * everything else goes to the full path untouched, *before* any side effect (no token checked,
 * no rate-limit unit taken, nothing ingested):
 *  - NON, other methods and resources, a token longer than 8 bytes, any option but one Uri-Path
 *    `telemetry`, Uri-Query and one Content-Format of 50 or 42 (Block1, Observe, Uri-Host, ...);
 *  - a query the full path would percent-decode or split (`%`, `&`), bytes outside printable
 *    ASCII, no `t=` or more than one, an empty one;
 *  - a device token the credential index does not accept synchronously (unknown yet, revoked: the
 *    full path re-reads the ledger and answers 4.01);
 *  - a datagram whose response is already cached: the package resends it (RFC 7252 §4.5).
 *
 * Deduplication stays the package's: the encoded response goes into the package's own
 * count-bounded LRU (`coap.dedupEntries`) under the package's key (endpoint / message id + token),
 * so a retransmission is answered from it byte for byte and not ingested twice, and one bound
 * holds every cached response of both paths.
 *
 * A store that answers asynchronously (Redis) returns a promise from the pipeline: the request is
 * then handed to the full path with its outcome (`takeHandoff`), so the package's piggyback timer
 * (an empty ACK and a separate CON response after 50 ms) applies unchanged. A retransmission of
 * such a handed-off request is never ingested a second time (requests the full path took from the
 * start keep the package's own behaviour): while it is still in the pipeline it is dropped
 * (its answer is on the way), and once the package has sent the empty ACK (which it caches under
 * endpoint / message id, without the token) the retransmission gets that ACK again (RFC 7252 §4.5;
 * the package itself would run the request again).
 */
import type { RemoteInfo } from 'node:dgram';
import type { IngestOutcome } from '../../src/core/telemetry.js';
import type { RateRefusal } from '../../src/core/rate-limit.js';
import type { CoapActivity } from './activity.js';
import { encodePiggybacked, type Answer, type CoapCode } from './reply.js';
import type { CoapEdgeDeps } from './types.js';

/** The parts of a fast-path request; byte offsets into the datagram. */
export interface FastTelemetryRequest {
  messageId: number;
  /** The CoAP token: bytes 4 .. 4 + tokenLength of the datagram. */
  tokenLength: number;
  /** The `t=` value of the Uri-Query: the device token. */
  deviceToken: string;
  /** 50 → json, 42 → protobuf, absent → undefined (the device type decides). */
  contentType: 'json' | 'protobuf' | undefined;
  payload: Buffer;
}

const URI_PATH = 11;
const CONTENT_FORMAT = 12;
const URI_QUERY = 15;
const TELEMETRY = Buffer.from('telemetry');
const EMPTY = Buffer.alloc(0);

/**
 * The datagram as a fast-path request, or null when the full path must see it (see the module
 * comment). Strict: it accepts only datagrams that coap-packet parses to the same message (bounds
 * checked here, where coap-packet would cut a value short or throw).
 */
export function parseFastTelemetry(msg: Buffer): FastTelemetryRequest | null {
  const len = msg.length;
  if (len < 4) return null;
  const b0 = msg[0] as number;
  // Version 1, type CON (0), token length ≤ 8 (RFC 7252 §3); code 0.02 POST.
  if ((b0 & 0xf0) !== 0x40 || msg[1] !== 0x02) return null;
  const tokenLength = b0 & 0x0f;
  if (tokenLength > 8) return null;
  let i = 4 + tokenLength;
  if (i > len) return null;
  let number = 0;
  let paths = 0;
  let formats = 0;
  let contentType: 'json' | 'protobuf' | undefined;
  let tStart = -1;
  let tEnd = -1;
  let payloadStart = len;
  while (i < len) {
    const byte = msg[i++] as number;
    if (byte === 0xff) {
      payloadStart = i;
      break;
    }
    let delta = byte >> 4;
    let length = byte & 0x0f;
    if (delta === 13) {
      if (i >= len) return null;
      delta = (msg[i++] as number) + 13;
    } else if (delta === 14) {
      if (i + 1 >= len) return null;
      delta = (((msg[i] as number) << 8) | (msg[i + 1] as number)) + 269;
      i += 2;
    } else if (delta === 15) return null;
    if (length === 13) {
      if (i >= len) return null;
      length = (msg[i++] as number) + 13;
    } else if (length === 14) {
      if (i + 1 >= len) return null;
      length = (((msg[i] as number) << 8) | (msg[i + 1] as number)) + 269;
      i += 2;
    } else if (length === 15) return null;
    if (i + length > len) return null;
    number += delta;
    if (number === URI_PATH) {
      if (++paths > 1 || length !== TELEMETRY.length || msg.compare(TELEMETRY, 0, TELEMETRY.length, i, i + length) !== 0) return null;
    } else if (number === CONTENT_FORMAT) {
      if (++formats > 1 || length !== 1) return null;
      const format = msg[i];
      if (format === 50) contentType = 'json';
      else if (format === 42) contentType = 'protobuf';
      else return null;
    } else if (number === URI_QUERY) {
      // Printable ASCII only, nothing URLSearchParams would decode ('%') or split ('&'): the full
      // path joins the queries with '&' and reads them with URLSearchParams ('+' kept as is).
      // A first query starting with '?' reads differently on the full path (the package prefixes
      // the first query with '?' and URLSearchParams drops one leading '?'): its business.
      if (msg[i] === 0x3f) return null;
      let eq = -1;
      for (let j = i; j < i + length; j++) {
        const c = msg[j] as number;
        if (c < 0x21 || c > 0x7e || c === 0x25 || c === 0x26) return null;
        if (eq < 0 && c === 0x3d) eq = j;
      }
      const keyEnd = eq < 0 ? i + length : eq;
      if (keyEnd === i + 1 && msg[i] === 0x74) {
        // `t=...` (or a bare `t`): one only, and not empty.
        if (tStart >= 0 || eq < 0 || eq + 1 === i + length) return null;
        tStart = eq + 1;
        tEnd = i + length;
      }
    } else return null;
    i += length;
  }
  if (paths !== 1 || tStart < 0) return null;
  return {
    messageId: ((msg[2] as number) << 8) | (msg[3] as number),
    tokenLength,
    deviceToken: msg.toString('latin1', tStart, tEnd),
    contentType,
    payload: payloadStart < len ? msg.subarray(payloadStart) : EMPTY,
  };
}

/** The answer to an ingest outcome: 2.04, or the rejection as 4.13/4.15/4.00 with the reason. */
export function telemetryAnswer(outcome: IngestOutcome): Answer {
  if (outcome.ok) return { code: '2.04' };
  const { code, message, path } = outcome.error;
  const diagnostic = path && !message.startsWith(path) ? `${path}: ${message}` : message;
  return { code: code === 'too_large' ? '4.13' : code === 'unsupported_content_type' ? '4.15' : '4.00', diagnostic };
}

/** A device over its rate limit: 4.29, Max-Age = seconds to wait, the limit named. */
export function rateLimitAnswer(refusal: RateRefusal): Answer {
  return { code: '4.29', diagnostic: `rate limit exceeded: ${refusal.limit}`, maxAgeSeconds: Math.max(1, Math.ceil(refusal.retryAfterMs / 1000)) };
}

/** A fast-path request whose outcome the full path answers (the store is asynchronous). */
export interface Handoff {
  deviceId: string;
  outcome: Promise<IngestOutcome>;
}

export interface FastTelemetryOptions {
  deps: Pick<CoapEdgeDeps, 'credentials' | 'rateLimits' | 'ingestTelemetry'>;
  activity: Pick<CoapActivity, 'seen'>;
  /** The package's response cache (the LRU bounded by `coap.dedupEntries`). */
  responses: { has(key: string): boolean; peek(key: string): Buffer | undefined; set(key: string, value: Buffer): unknown };
  send(buf: Buffer, port: number, address: string): void;
  /** The full path (the package's datagram handler). */
  fullPath(msg: Buffer, rsinfo: RemoteInfo): void;
  /** A request answered here, by its code (iotgate_coap_requests_total). */
  answered(code: CoapCode): void;
  /** A request refused by a rate limit (iotgate_coap_dropped_total{reason="rate_limited"}). */
  rateLimited(): void;
  /** The answer to an exception from the pipeline, as the full path gives it (logged there). */
  failure(err: unknown): Answer;
}

export interface FastTelemetry {
  /** The socket's datagram handler: answers here, or passes the datagram to the full path. */
  onMessage(msg: Buffer, rsinfo: RemoteInfo): void;
  /**
   * The request being handed to the full path right now, once: the full path's request handler
   * calls this first (synchronously, as the package emits the request within fullPath).
   */
  takeHandoff(): Handoff | null;
}

export function createFastTelemetry(opts: FastTelemetryOptions): FastTelemetry {
  const { deps, activity, responses } = opts;
  /** Dedup keys of handed-off requests still in the pipeline. */
  const inFlight = new Set<string>();
  let handoff: Handoff | null = null;
  /** Set at the first handoff: only then can an empty ACK of the package's be cached for a request. */
  let handedOff = false;

  const answer = (a: Answer, req: FastTelemetryRequest, msg: Buffer, key: string, rsinfo: RemoteInfo): void => {
    const buf = encodePiggybacked(a, req.messageId, msg.subarray(4, 4 + req.tokenLength));
    responses.set(key, buf);
    opts.send(buf, rsinfo.port, rsinfo.address);
    opts.answered(a.code);
  };

  const onMessage = (msg: Buffer, rsinfo: RemoteInfo): void => {
    const req = parseFastTelemetry(msg);
    if (req === null) return opts.fullPath(msg, rsinfo);
    // The package's key of the response (its `_toKey` with the token), so its cache lookup finds it.
    const key = `${rsinfo.address}:${rsinfo.port}/${req.messageId}${msg.toString('hex', 4, 4 + req.tokenLength)}`;
    if (responses.has(key)) return opts.fullPath(msg, rsinfo);
    if (handedOff) {
      // The empty ACK the package sent when the pipeline took longer than piggybackReplyMs.
      const ack = responses.peek(`${rsinfo.address}:${rsinfo.port}/${req.messageId}`);
      if (ack !== undefined && ack.length === 4 && ack[0] === 0x60 && ack[1] === 0x00) return opts.send(ack, rsinfo.port, rsinfo.address);
      if (inFlight.has(key)) return;
    }
    const deviceId = deps.credentials.authenticateToken(req.deviceToken);
    if (deviceId === null) return opts.fullPath(msg, rsinfo);

    const refusal = deps.rateLimits.messages.take(deviceId) ?? deps.rateLimits.bytes.take(deviceId, req.payload.length);
    if (refusal) {
      opts.rateLimited();
      return answer(rateLimitAnswer(refusal), req, msg, key, rsinfo);
    }
    activity.seen(deviceId, 'coap');
    let outcome: IngestOutcome | Promise<IngestOutcome>;
    try {
      outcome = deps.ingestTelemetry({ deviceId, protocol: 'coap', payload: req.payload, ...(req.contentType && { contentType: req.contentType }) });
    } catch (err) {
      return answer(opts.failure(err), req, msg, key, rsinfo);
    }
    if (!(outcome instanceof Promise)) return answer(telemetryAnswer(outcome), req, msg, key, rsinfo);

    handedOff = true;
    inFlight.add(key);
    const settled = () => inFlight.delete(key);
    outcome.then(settled, settled);
    handoff = { deviceId, outcome };
    try {
      opts.fullPath(msg, rsinfo);
    } finally {
      if (handoff !== null) {
        // Not reached by the full path (it always is: nothing above lets it answer otherwise);
        // the request was ingested, so it is answered here rather than left without a response.
        handoff = null;
        outcome.then(
          (o) => answer(telemetryAnswer(o), req, msg, key, rsinfo),
          (err: unknown) => answer(opts.failure(err), req, msg, key, rsinfo),
        );
      }
    }
  };

  return {
    onMessage,
    takeHandoff() {
      const h = handoff;
      handoff = null;
      return h;
    },
  };
}
