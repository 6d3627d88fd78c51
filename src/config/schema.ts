/**
 * The one configuration schema (style rule 6). Every key has a default, so an empty config runs the
 * embedded gateway. Every leaf is also settable from the environment as IOTGATE_<PATH> where the
 * path is the key path in SCREAMING_SNAKE_CASE (`http.port` → IOTGATE_HTTP_PORT, `redis.url` →
 * IOTGATE_REDIS_URL, `limits.mqttPacketBytes` → IOTGATE_LIMITS_MQTT_PACKET_BYTES); see load.ts.
 */
import { z } from 'zod';

const portError = { error: 'expected an integer from 0 to 65535 (0 = any free port)' };
const port = z.coerce.number(portError).int(portError).min(0, portError).max(65535, portError);
const boolError = { error: 'expected true or false' };
const bool = z
  .union([z.boolean(), z.enum(['true', 'false', '1', '0', 'yes', 'no'])], boolError)
  .transform((v) => v === true || v === 'true' || v === '1' || v === 'yes');
const positiveInt = z.coerce.number().int().positive();

const listener = (defaultPort: number) =>
  z.strictObject({ port: port.default(defaultPort) }).prefault({});

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
        /** Serve /metrics without auth. When false it needs a service JWT with scope `admin`. */
        publicMetrics: bool.default(true),
      })
      .prefault({}),
    mqtt: listener(1883),
    mqtts: listener(8883),
    coap: listener(5683),
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
    limits: z
      .strictObject({
        mqttPacketBytes: positiveInt.default(262_144),
        telemetryBytes: positiveInt.default(65_536),
        telemetryDepth: positiveInt.max(64).default(16),
        shadowStateBytes: positiveInt.default(8_192),
        shadowDepth: positiveInt.max(32).default(6),
      })
      .prefault({}),
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
