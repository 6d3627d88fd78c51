/**
 * The one pino root (style rule 8). Modules take child loggers (`log.child({ module: 'mqtt' })`).
 * Secrets are redacted by key here, and URLs lose their `t=` / `token=` query values, so tokens,
 * keys and passwords never reach a log line.
 */
import { pino, type DestinationStream, type Logger } from 'pino';

export type { Logger } from 'pino';

/** Keys whose values are never logged, at any of the depths pino's redaction can address. */
const SECRET_KEYS = [
  'authorization',
  'password',
  'token',
  'accessToken',
  'key',
  'privateKey',
  'privateKeyPem',
  'secret',
  'tokenSecret',
  'csr',
  'cookie',
];

export const REDACT_PATHS = [
  ...SECRET_KEYS,
  ...SECRET_KEYS.map((k) => `*.${k}`),
  ...SECRET_KEYS.map((k) => `*.*.${k}`),
  'req.headers.authorization',
  'req.headers.cookie',
  'req.headers["proxy-authorization"]',
  'res.headers["set-cookie"]',
];

const SECRET_QUERY = /([?&](?:t|token|access_token|password)=)[^&#]*/gi;

/** Removes secret query values from a URL or path (`/x?t=abc` → `/x?t=[Redacted]`). */
export function redactUrl(url: string): string {
  return url.replace(SECRET_QUERY, '$1[Redacted]');
}

interface RequestLike {
  method?: string;
  url?: string;
  id?: unknown;
  ip?: string;
  hostname?: string;
}

export interface LoggerOptions {
  level?: string;
  /** Where lines go (stdout by default); tests pass a stream to read them. */
  destination?: DestinationStream;
}

export function createLogger(opts: LoggerOptions = {}): Logger {
  return pino(
    {
      level: opts.level ?? 'info',
      base: { pid: process.pid },
      redact: { paths: REDACT_PATHS, censor: '[Redacted]' },
      serializers: {
        err: pino.stdSerializers.err,
        req: (req: RequestLike) => ({
          id: req.id,
          method: req.method,
          url: req.url === undefined ? undefined : redactUrl(req.url),
          remoteAddress: req.ip,
        }),
      },
    },
    // Synchronous stdout: the last lines before exit are never lost or reordered (an async
    // sonic-boom's flush(cb) does not wait for writes in flight).
    opts.destination ?? pino.destination({ dest: 1, sync: true }),
  );
}
