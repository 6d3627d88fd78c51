/**
 * The one configuration schema (style rule 6). Every key has a default, so an empty config runs the
 * embedded gateway. Every leaf is also settable from the environment as IOTGATE_<PATH> where the
 * path is the key path in SCREAMING_SNAKE_CASE (`http.port` → IOTGATE_HTTP_PORT, `redis.url` →
 * IOTGATE_REDIS_URL, `limits.mqttPacketBytes` → IOTGATE_LIMITS_MQTT_PACKET_BYTES); see load.ts.
 */
import { z } from 'zod';
import { HEADER_NAME, HEADER_VALUE, RESERVED_HEADERS } from '../upstream/delivery.js';
import { CLOUD_EVENT_TYPES } from '../core/cloudevents.js';
import { routesSchema } from './routes.js';

const portError = { error: 'expected an integer from 0 to 65535 (0 = any free port)' };
const port = z.coerce.number(portError).int(portError).min(0, portError).max(65535, portError);
const boolError = { error: 'expected true or false' };
const bool = z
  .union([z.boolean(), z.enum(['true', 'false', '1', '0', 'yes', 'no'])], boolError)
  .transform((v) => v === true || v === 'true' || v === '1' || v === 'yes');
const positiveInt = z.coerce.number().int().positive();

const mqttListener = (defaultPort: number) =>
  z
    .strictObject({
      port: port.default(defaultPort),
      /** Open connections this listener accepts; further ones are closed at once. */
      maxConnections: positiveInt.default(10_000),
    })
    .prefault({});
const listener = (defaultPort: number) => z.strictObject({ port: port.default(defaultPort) }).prefault({});

const rateWindowsError = { error: 'expected a list of {limit, windowMs} with positive integers' };
const rateWindows = z.array(z.strictObject({ limit: positiveInt, windowMs: positiveInt }), rateWindowsError).max(8, rateWindowsError);

// Issue 4 item 6 (events): SSE buffer and webhook upstreams (contract §9). Header values may be
// secrets: config error lines never print them (load.ts redacts everything under `headers`).
const upstreamName = z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/, { error: 'expected a name of letters, digits, ".", "_" or "-" (max 64)' });
const upstream = z.strictObject({
  name: upstreamName,
  url: z.url({ protocol: /^https?$/, error: 'expected an http:// or https:// URL' }),
  /** CloudEvent types sent to this upstream; default all. */
  types: z.array(z.enum(CLOUD_EVENT_TYPES)).min(1).default([...CLOUD_EVENT_TYPES]),
  /** Extra request headers (e.g. Authorization). Never logged. */
  headers: z
    .record(z.string().min(1), z.union([z.string(), z.number()], { error: 'expected a string header value' }).transform(String))
    .superRefine((headers, ctx) => {
      for (const [name, value] of Object.entries(headers)) {
        if (!HEADER_NAME.test(name)) ctx.addIssue({ code: 'custom', path: [name], message: 'expected an HTTP header name (RFC 9110 token)' });
        else if (RESERVED_HEADERS.has(name.toLowerCase())) ctx.addIssue({ code: 'custom', path: [name], message: 'expected a header the gateway does not set itself' });
        else if (!HEADER_VALUE.test(value)) ctx.addIssue({ code: 'custom', path: [name], message: 'expected a header value without control characters' });
      }
    })
    .default({}),
  timeoutMs: positiveInt.max(300_000).default(5000),
  maxAttempts: positiveInt.max(100).default(5),
  /** Events waiting per upstream; when full the oldest is dead-lettered (`queue_full`). */
  maxQueue: positiveInt.max(1_000_000).default(1000),
  concurrency: positiveInt.max(64).default(4),
});
const upstreams = z
  .array(upstream)
  .max(64)
  .superRefine((list, ctx) => {
    const seen = new Set<string>();
    list.forEach((u, i) => {
      if (seen.has(u.name)) ctx.addIssue({ code: 'custom', path: [i, 'name'], message: 'expected a unique upstream name' });
      seen.add(u.name);
    });
  })
  .default([]);

export const configSchema = z
  .strictObject({
    /** Bind address for every listener. */
    host: z.string().min(1).default('0.0.0.0'),
    http: z
      .strictObject({
        port: port.default(8080),
        /** Public base URL of the REST API (for the CLI and Location headers); derived when empty. */
        url: z.url({ protocol: /^https?$/, error: 'expected an http:// or https:// URL' }).optional(),
        /** Maximum request body in bytes. */
        bodyLimitBytes: positiveInt.default(1_048_576),
        /** Open MQTT-over-WebSocket connections (at /mqtt) this listener accepts. */
        mqttWsMaxConnections: positiveInt.default(10_000),
        /** Serve /metrics without auth. When false it needs a service JWT with scope `admin`. */
        publicMetrics: bool.default(true),
      })
      .prefault({}),
    mqtt: mqttListener(1883),
    mqtts: mqttListener(8883),
    broker: z
      .strictObject({
        /** A connection that sends no CONNECT within this time is closed. */
        connectTimeoutMs: positiveInt.max(60_000).default(10_000),
        /** Largest keepalive a client may ask for (s); a CONNECT with 0 or more is refused. */
        keepaliveMaxSeconds: positiveInt.max(65_535).default(1200),
        /** Unacknowledged inbound QoS 2 messages per client; more closes the connection. */
        maxInflightQos2: positiveInt.max(65_535).default(100),
        /** Messages queued for one offline persistent session; further ones are dropped (and counted). */
        offlineQueueMax: positiveInt.default(1000),
        /** A subscriber whose socket does not drain within this time is disconnected. */
        drainTimeoutMs: positiveInt.default(10_000),
        /** Topic depth limit (aedes caps it at 100). */
        maxTopicLevels: positiveInt.max(100).default(32),
      })
      .prefault({}),
    coap: z
      .strictObject({
        port: port.default(5683),
        /** A CoAP device with no request and no Observe registration for this long goes offline. */
        presenceWindowMs: positiveInt.max(86_400_000).default(60_000),
        /**
         * Responses kept to answer retransmitted CON requests without running them again (RFC 7252
         * §4.5). Bounded by count: each entry holds a response and its retransmission state.
         */
        dedupEntries: positiveInt.max(1_000_000).default(10_000),
        /** Block1 uploads being assembled at once (each up to limits.telemetryBytes). */
        maxBlockTransfers: positiveInt.max(100_000).default(256),
      })
      .prefault({}),
    coaps: z.strictObject({ port: port.default(5684), enabled: bool.default(false) }).prefault({}),
    certs: z
      .strictObject({
        /** Holds the CA, the server certificate, token secrets and the CA database. */
        dir: z.string().min(1).default('./certs'),
        /** Extra DNS names / IPs for the server certificate created on first start. */
        hostnames: z
          .union([z.array(z.string().min(1)), z.string().transform((s) => s.split(',').map((x) => x.trim()).filter(Boolean))])
          .default([]),
        deviceCertDays: positiveInt.max(3650).default(365),
        /** How often a running gateway re-reads the CA database (provisioning, revocation). */
        syncIntervalMs: positiveInt.min(100).max(5000).default(1000),
      })
      .prefault({}),
    schemas: z
      .strictObject({
        /** Device types (<type>.proto, <type>.schema.json); empty = the schemas shipped with iotgate. */
        dir: z.string().default(''),
      })
      .prefault({}),
    redis: z
      .strictObject({
        /** When set, all state moves to Redis (issue: Redis as the shared state). */
        url: z.url({ protocol: /^rediss?$/, error: 'expected a redis://host:port/db or rediss:// URL' }).optional(),
      })
      .prefault({}),
    auth: z
      .strictObject({
        /** Default lifetime of `iotgate token create`, e.g. 1h, 30m, 7d. */
        defaultTokenTtl: z.string().regex(/^\d+[smhd]?$/, { error: 'expected a duration like 3600, 30m, 1h or 7d' }).default('1h'),
      })
      .prefault({}),
    log: z
      .strictObject({
        level: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
      })
      .prefault({}),
    telemetry: z
      .strictObject({
        /** Messages kept per device (oldest dropped first). */
        retentionCount: positiveInt.max(1_000_000).default(1000),
        /** How long a message is kept (ms). */
        retentionMs: positiveInt.default(7 * 24 * 3600 * 1000),
      })
      .prefault({}),
    commands: z
      .strictObject({
        /** Commands a device may have queued or sent but not acknowledged; more are refused with 429. */
        queueMax: positiveInt.max(100_000).default(100),
        /** Finished command records kept per device (oldest dropped first). */
        historyMax: positiveInt.max(1_000_000).default(1000),
      })
      .prefault({}),
    limits: z
      .strictObject({
        mqttPacketBytes: positiveInt.default(262_144),
        telemetryBytes: positiveInt.default(65_536),
        telemetryDepth: positiveInt.max(64).default(16),
        shadowStateBytes: positiveInt.default(8_192),
        shadowDepth: positiveInt.max(32).default(6),
        /** Per-device message rate, several windows at once (MQTT publishes, later CoAP and HTTP). */
        deviceMessages: rateWindows.default([
          { limit: 100, windowMs: 1000 },
          { limit: 3000, windowMs: 60_000 },
        ]),
        /** REST requests per service subject (JWT `sub`), several windows at once. */
        serviceRequests: rateWindows.default([
          { limit: 1000, windowMs: 1000 },
          { limit: 20_000, windowMs: 60_000 },
        ]),
        /** Per-device payload bytes, several windows at once. */
        deviceBytes: rateWindows.default([{ limit: 1_048_576, windowMs: 1000 }]),
      })
      .prefault({}),
    events: z
      .strictObject({
        /** Events kept for `Last-Event-ID` resume of the SSE stream. */
        bufferSize: positiveInt.max(1_000_000).default(10_000),
        /** SSE heartbeat comment interval (ms). */
        heartbeatMs: positiveInt.min(10).max(300_000).default(15_000),
        /** An SSE client that falls this many events behind (socket not draining) is disconnected. */
        sseMaxLagEvents: positiveInt.max(1_000_000).default(1000),
        /**
         * Approximate length the Redis Stream `iotgate:events` is trimmed to (`XADD ... MAXLEN ~`);
         * used when `redis.url` is set.
         */
        streamMaxLen: positiveInt.max(100_000_000).default(100_000),
      })
      .prefault({}),
    upstreams,
    /** API gateway routes to upstream microservices (contract §11, docs/routes.md). */
    routes: routesSchema,
    shutdown: z
      .strictObject({
        /** Hard deadline for a graceful stop (contract: exit within 10 s). */
        timeoutMs: positiveInt.max(10_000).default(8_000),
      })
      .prefault({}),
  });

/** Input as written in a file (every key optional). */
export type ConfigInput = z.input<typeof configSchema>;
/** Validated, defaulted, frozen configuration. */
export type Config = Readonly<z.output<typeof configSchema>>;
