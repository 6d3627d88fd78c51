/**
 * The route response cache: a small backend port (memory here, Redis in cache-redis.ts) and the
 * Vary logic on top of it. A response without `Vary` is stored under its primary key (route
 * namespace, caller, path and query); a response with `Vary` stores a marker with the field names
 * there, and the response under primary key + the request's values of those fields.
 */
import { varyKey, type HeaderBag } from './cache-control.js';

export interface CachedResponse {
  status: number;
  /** Response headers as sent to the caller on a MISS (hop-by-hop, Age and X-Cache removed). */
  headers: Record<string, string | string[]>;
  body: Buffer;
  /** epoch ms */
  storedAt: number;
  /** The Age the upstream reported, seconds (RFC 9111 §4.2.3). */
  initialAgeS: number;
}

export type CacheRecord = { kind: 'vary'; names: string[] } | ({ kind: 'response' } & CachedResponse);

export interface CacheLimits {
  ttlMs: number;
  maxEntries: number;
}

/** Where entries live. `ns` is a route and its definition's generation; keys are opaque strings. */
export interface CacheBackend {
  readonly kind: 'memory' | 'redis';
  get(ns: string, key: string): Promise<CacheRecord | null>;
  set(ns: string, key: string, record: CacheRecord, limits: CacheLimits): Promise<void>;
  /** Drops namespaces not in `keep` (routes removed or changed by a reload). */
  retain(keep: ReadonlySet<string>): Promise<void>;
  close(): Promise<void>;
}

export class RouteCache {
  constructor(readonly backend: CacheBackend) {}

  /** The fresh stored response for this request, or null. */
  async lookup(ns: string, primary: string, requestHeaders: HeaderBag): Promise<CachedResponse | null> {
    const first = await this.backend.get(ns, primary);
    if (first === null) return null;
    if (first.kind === 'response') return first;
    const second = await this.backend.get(ns, `${primary}\n${varyKey(first.names, requestHeaders)}`);
    return second?.kind === 'response' ? second : null;
  }

  async store(ns: string, primary: string, requestHeaders: HeaderBag, vary: readonly string[], response: CachedResponse, limits: CacheLimits): Promise<void> {
    const record: CacheRecord = { kind: 'response', ...response };
    if (vary.length === 0) {
      await this.backend.set(ns, primary, record, limits);
      return;
    }
    await this.backend.set(ns, primary, { kind: 'vary', names: [...vary] }, limits);
    await this.backend.set(ns, `${primary}\n${varyKey(vary, requestHeaders)}`, record, limits);
  }
}

interface MemoryEntry {
  record: CacheRecord;
  expiresAt: number;
}

/**
 * In-process LRU per namespace (a Map in recency order), bounded by the route's maxEntries; an
 * entry's body is at most the route's maxEntryBytes, so a route holds at most their product.
 */
export class MemoryCacheBackend implements CacheBackend {
  readonly kind = 'memory' as const;
  private readonly spaces = new Map<string, Map<string, MemoryEntry>>();

  constructor(private readonly now: () => number = Date.now) {}

  async get(ns: string, key: string): Promise<CacheRecord | null> {
    const space = this.spaces.get(ns);
    const entry = space?.get(key);
    if (!space || !entry) return null;
    space.delete(key);
    if (entry.expiresAt <= this.now()) return null;
    space.set(key, entry);
    return entry.record;
  }

  async set(ns: string, key: string, record: CacheRecord, limits: CacheLimits): Promise<void> {
    let space = this.spaces.get(ns);
    if (!space) {
      space = new Map();
      this.spaces.set(ns, space);
    }
    space.delete(key);
    space.set(key, { record, expiresAt: this.now() + limits.ttlMs });
    while (space.size > limits.maxEntries) {
      const oldest = space.keys().next().value as string;
      space.delete(oldest);
    }
  }

  async retain(keep: ReadonlySet<string>): Promise<void> {
    for (const ns of this.spaces.keys()) if (!keep.has(ns)) this.spaces.delete(ns);
  }

  /** Entries held in `ns` (expired ones included until touched or evicted). */
  size(ns: string): number {
    return this.spaces.get(ns)?.size ?? 0;
  }

  async close(): Promise<void> {
    this.spaces.clear();
  }
}
