/** Delivery helpers for webhook upstreams: backoff, Retry-After, safe URLs and headers, a ring queue. */
import type { BackoffOptions } from './webhooks.js';

/** The delay before retry number `attempt` (1 = after the first failure). */
export function backoffDelay(attempt: number, opts: BackoffOptions = {}): number {
  const base = opts.baseMs ?? 200;
  const cap = opts.capMs ?? 30_000;
  const ceiling = Math.min(cap, base * 2 ** Math.min(attempt - 1, 52));
  return Math.floor((opts.random ?? Math.random)() * ceiling);
}

/** `Retry-After` (RFC 9110 §10.2.3): delay-seconds or an HTTP-date; ms from `now`, or undefined. */
export function parseRetryAfter(value: string | null, now = Date.now()): number | undefined {
  if (value === null) return undefined;
  const v = value.trim();
  if (/^\d+$/.test(v)) return Number(v) * 1000;
  const at = Date.parse(v);
  return Number.isNaN(at) ? undefined : Math.max(0, at - now);
}

/** The URL as shown and logged: no userinfo, every query value redacted. */
export function displayUrl(url: URL): string {
  const u = new URL(url.href);
  u.username = '';
  u.password = '';
  const keys = [...new Set(u.searchParams.keys())];
  if (keys.length === 0) return u.href;
  u.search = '';
  return `${u.href}?${keys.map((k) => `${encodeURIComponent(k)}=[Redacted]`).join('&')}`;
}

export const HEADER_NAME = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/; // RFC 9110 §5.6.2 token
export const HEADER_VALUE = /^[\t\x20-\x7e\x80-\xff]*$/; // RFC 9110 §5.5, no CR/LF/NUL
export const RESERVED_HEADERS = new Set(['content-type', 'content-length', 'host', 'transfer-encoding', 'connection', 'keep-alive', 'upgrade', 'expect', 'te', 'trailer']);

export class BoundedQueue<T> {
  private readonly buf: (T | undefined)[];
  private head = 0;
  private size = 0;

  constructor(readonly capacity: number) {
    this.buf = new Array<T | undefined>(capacity);
  }

  get length(): number {
    return this.size;
  }

  /** Appends; resolves the evicted oldest item when the queue was full. */
  push(item: T): T | undefined {
    let evicted: T | undefined;
    if (this.size === this.capacity) evicted = this.shift();
    this.buf[(this.head + this.size) % this.capacity] = item;
    this.size++;
    return evicted;
  }

  shift(): T | undefined {
    if (this.size === 0) return undefined;
    const item = this.buf[this.head];
    this.buf[this.head] = undefined;
    this.head = (this.head + 1) % this.capacity;
    this.size--;
    return item;
  }

  clear(): void {
    this.buf.fill(undefined);
    this.head = 0;
    this.size = 0;
  }
}

/** Reads and discards up to `max` bytes of a response body; resolves them as text. */
export async function readSome(res: Response, max: number): Promise<string> {
  if (res.body === null) return '';
  const reader = res.body.getReader();
  const chunks: Uint8Array[] = [];
  let size = 0;
  try {
    while (size < max) {
      const { done, value } = await reader.read();
      if (done) return Buffer.concat(chunks).toString('utf8');
      chunks.push(value);
      size += value.byteLength;
    }
    await reader.cancel();
  } catch {
    // The status is what counts.
  }
  return Buffer.concat(chunks).toString('utf8').slice(0, max);
}

export function describeError(err: unknown): string {
  const cause = (err as { cause?: { code?: unknown; message?: unknown } } | null)?.cause;
  if (cause && typeof cause === 'object') {
    const code = typeof cause.code === 'string' ? cause.code : undefined;
    const message = typeof cause.message === 'string' ? cause.message : undefined;
    if (code || message) return `network error: ${[code, message].filter(Boolean).join(' ')}`;
  }
  return `network error: ${err instanceof Error ? err.message : String(err)}`;
}
