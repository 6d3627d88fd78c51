/**
 * Per-key rate limits over several windows at once (e.g. 20 messages/s and 600 messages/min, and
 * bytes likewise). Each window is a token bucket refilled continuously; a take succeeds only when
 * every window has room, and a refusal names the window that was exceeded (contract §10).
 */

export interface RateWindow {
  /** How many units (messages or bytes) the window allows. */
  limit: number;
  windowMs: number;
}

export interface RateRule {
  /** What is counted, for the refusal text: "messages" or "bytes". */
  unit: 'messages' | 'bytes' | 'requests';
  windows: readonly RateWindow[];
}

export interface RateRefusal {
  /** e.g. "20 messages per 1s" */
  limit: string;
  window: string;
  /** The exceeded window as numbers (for RateLimit-* headers). */
  max: number;
  windowMs: number;
  retryAfterMs: number;
}

interface Bucket {
  tokens: Float64Array;
  at: number;
}

export function describeWindow(ms: number): string {
  if (ms % 3_600_000 === 0) return `${ms / 3_600_000}h`;
  if (ms % 60_000 === 0) return `${ms / 60_000}m`;
  if (ms % 1000 === 0) return `${ms / 1000}s`;
  return `${ms}ms`;
}

/**
 * What the doors need of a rate limiter: the in-memory RateLimiter here, and the one whose counts
 * are shared by every gateway through Redis (src/stores/redis/rate-limit.ts). `take` decides
 * synchronously on the hot path.
 */
export interface Limiter {
  readonly enabled: boolean;
  /** Takes `amount` units for `key`; null when allowed, else what was exceeded. */
  take(key: string, amount?: number, now?: number): RateRefusal | null;
  forget(key: string): void;
  close(): void;
}

/**
 * The decision on refilled buckets (one token count per window): null when `amount` fits in every
 * window, else the window that makes the caller wait longest. Shared by the in-memory limiter and
 * the Redis-backed one.
 */
export function refusalFor(windows: readonly RateWindow[], tokens: Float64Array, amount: number, unit: RateRule['unit']): RateRefusal | null {
  let refusal: RateRefusal | null = null;
  for (let i = 0; i < windows.length; i++) {
    const w = windows[i] as RateWindow;
    const have = tokens[i] as number;
    if (have >= amount) continue;
    // More than the window allows at all can never pass: say "a whole window" rather than 0.
    const wait = amount > w.limit ? w.windowMs : Math.ceil(((amount - have) * w.windowMs) / w.limit);
    if (refusal === null || wait > refusal.retryAfterMs) {
      const window = describeWindow(w.windowMs);
      refusal = { limit: `${w.limit} ${unit} per ${window}`, window, max: w.limit, windowMs: w.windowMs, retryAfterMs: wait };
    }
  }
  return refusal;
}

export class RateLimiter implements Limiter {
  private readonly buckets = new Map<string, Bucket>();
  private readonly windows: RateWindow[];
  private readonly sweeper: NodeJS.Timeout;

  constructor(private readonly rule: RateRule) {
    this.windows = rule.windows.filter((w) => w.limit > 0 && w.windowMs > 0);
    const longest = Math.max(1000, ...this.windows.map((w) => w.windowMs));
    // A bucket idle for its longest window is full again: forgetting it changes nothing.
    this.sweeper = setInterval(() => this.sweep(longest), longest).unref();
  }

  get enabled(): boolean {
    return this.windows.length > 0;
  }

  /** Takes `amount` units for `key`; null when allowed, else what was exceeded. */
  take(key: string, amount = 1, now = Date.now()): RateRefusal | null {
    const n = this.windows.length;
    if (n === 0) return null;
    let bucket = this.buckets.get(key);
    if (!bucket) {
      bucket = { tokens: new Float64Array(n), at: now };
      for (let i = 0; i < n; i++) bucket.tokens[i] = (this.windows[i] as RateWindow).limit;
      this.buckets.set(key, bucket);
    }
    const elapsed = Math.max(0, now - bucket.at);
    bucket.at = now;
    for (let i = 0; i < n; i++) {
      const w = this.windows[i] as RateWindow;
      bucket.tokens[i] = Math.min(w.limit, (bucket.tokens[i] as number) + (elapsed * w.limit) / w.windowMs);
    }
    const refusal = refusalFor(this.windows, bucket.tokens, amount, this.rule.unit);
    if (refusal) return refusal;
    for (let i = 0; i < n; i++) bucket.tokens[i] = (bucket.tokens[i] as number) - amount;
    return null;
  }

  forget(key: string): void {
    this.buckets.delete(key);
  }

  private sweep(idleMs: number): void {
    const cutoff = Date.now() - idleMs;
    for (const [key, b] of this.buckets) if (b.at < cutoff) this.buckets.delete(key);
  }

  close(): void {
    clearInterval(this.sweeper);
  }
}
