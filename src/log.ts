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

/** What a secret's value becomes in a line. */
export const CENSOR = '[Redacted]';

export const REDACT_PATHS = [
  ...SECRET_KEYS,
  ...SECRET_KEYS.map((k) => `*.${k}`),
  ...SECRET_KEYS.map((k) => `*.*.${k}`),
  'req.headers.authorization',
  'req.headers.cookie',
  'req.headers["proxy-authorization"]',
  'res.headers["set-cookie"]',
];

/** The paths above without a wildcard: the top-level secret keys and the header paths. */
export const LITERAL_REDACT_PATHS = REDACT_PATHS.filter((p) => !p.includes('*'));

/**
 * A child of `log` for lines that are flat objects of known fields (access lines): the literal
 * paths still guard their top-level keys, and no value is walked for nested secret keys (a flat
 * line has none). Bindings and level are the parent's.
 */
export function flatLineLogger(log: Logger): Logger {
  return log.child({}, { redact: { paths: LITERAL_REDACT_PATHS, censor: CENSOR } });
}

const SECRET_QUERY = /([?&](?:t|token|access_token|password)=)[^&#]*/gi;

/** Removes secret query values from a URL or path (`/x?t=abc` → `/x?t=[Redacted]`). */
export function redactUrl(url: string): string {
  // Without a '?' or '&' there is no query value to find (the common case: skip the regex).
  if (!url.includes('?') && !url.includes('&')) return url;
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

const SECRET_KEY_SET: ReadonlySet<string> = new Set(SECRET_KEYS);

function copyOf(o: object): Record<string, unknown> {
  if (Array.isArray(o)) return o.slice() as unknown as Record<string, unknown>;
  // As @pinojs/redact clones: same prototype (toJSON keeps working), own enumerable properties.
  return Object.assign(Object.create(Object.getPrototypeOf(o) as object | null) as object, o) as Record<string, unknown>;
}

/**
 * `v` with every secret key (SECRET_KEYS) found `levels` deep below it replaced by the censor
 * (1: `v.key`; 2: also `v.*.key`; 3: also `v.*.*.key`), arrays included, as pino's wildcard
 * paths do. Copy-on-write: `v` itself when there is nothing to redact (the common case), else a
 * copy of just the objects on the way to a secret; the caller's object is never changed.
 */
export function redactSecretKeys(v: unknown, levels: number): unknown {
  if (v === null || typeof v !== 'object' || ArrayBuffer.isView(v)) return v;
  let copy: Record<string, unknown> | null = null;
  const o = v as Record<string, unknown>;
  for (const key of Object.keys(o)) {
    if (SECRET_KEY_SET.has(key)) {
      (copy ??= copyOf(o))[key] = CENSOR;
    } else if (levels > 1) {
      const child = o[key];
      if (child !== null && typeof child === 'object') {
        const r = redactSecretKeys(child, levels - 1);
        if (r !== child) (copy ??= copyOf(o))[key] = r;
      }
    }
  }
  return copy ?? v;
}

type Stringifier = (value: unknown, stringifySafe?: unknown) => string | undefined;

/**
 * The secret keys at depth 2 and 3 (REDACT_PATHS' `*.key` and `*.*.key`) without pino's wildcard
 * redaction. With wildcard paths pino runs @pinojs/redact, which parses ~25 paths and clones on
 * every value of every line and of every child logger's bindings (each REST request's logger:
 * ~6 % of the gateway's CPU in the rest-read benchmark, the access line as much again). The
 * logger is built with the literal paths only (the top-level keys, the header paths), and its
 * stringifiers (pino.symbols, the documented extension point) are completed here: every
 * top-level value and binding, and every value pino would interpolate into a message, goes
 * through redactSecretKeys first. Same output, checked line by line against pino's own
 * redaction in test/unit/log-redaction.test.ts. False when pino's internals are not as expected
 * (the caller then builds the logger with the wildcard paths: slower, never less safe).
 */
function installSecretKeyRedaction(logger: Logger): boolean {
  const sym = pino.symbols as unknown as Record<string, symbol | undefined>;
  const { stringifiersSym, wildcardFirstSym, formatOptsSym, stringifySym, stringifySafeSym } = sym;
  if (!stringifiersSym || !wildcardFirstSym || !formatOptsSym || !stringifySym || !stringifySafeSym) return false;
  const l = logger as unknown as Record<symbol, unknown>;
  const stringifiers = l[stringifiersSym] as Record<string | symbol, Stringifier | undefined> | undefined;
  const formatOpts = l[formatOptsSym] as { stringify?: (v: unknown) => string } | undefined;
  const stringify = l[stringifySym] as ((v: unknown, safe: unknown) => string) | undefined;
  const stringifySafe = l[stringifySafeSym];
  if (typeof stringifiers !== 'object' || stringifiers === null || typeof stringify !== 'function') return false;
  if (typeof formatOpts?.stringify !== 'function' || stringifiers[wildcardFirstSym] !== undefined) return false;

  // Literal multi-segment paths (`req.headers.authorization` …): pino made one redactor per first
  // segment; the secret keys below that value are redacted first, as a wildcard would have.
  for (const key of Object.keys(stringifiers)) {
    const literal = stringifiers[key];
    if (SECRET_KEY_SET.has(key) || typeof literal !== 'function') continue;
    stringifiers[key] = (value, safe) => literal(redactSecretKeys(value, 2), safe);
  }
  // Every other top-level value and binding.
  stringifiers[wildcardFirstSym] = (value) => stringify(redactSecretKeys(value, 2), stringifySafe);
  // `log.info('%j', obj)`: the interpolated object, secret keys at its top level too.
  const fmt = formatOpts.stringify;
  formatOpts.stringify = (value) => fmt(redactSecretKeys(value, 3));
  return true;
}

export function createLogger(opts: LoggerOptions = {}): Logger {
  // Synchronous stdout: the last lines before exit are never lost or reordered (an async
  // sonic-boom's flush(cb) does not wait for writes in flight).
  const destination = opts.destination ?? pino.destination({ dest: 1, sync: true });
  const build = (paths: string[]) =>
    pino(
      {
        level: opts.level ?? 'info',
        base: { pid: process.pid },
        redact: { paths, censor: CENSOR },
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
      destination,
    );
  const logger = build(LITERAL_REDACT_PATHS);
  return installSecretKeyRedaction(logger) ? logger : build(REDACT_PATHS);
}
