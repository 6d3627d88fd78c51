/**
 * The route cache in Redis, shared by every gateway process on the same Redis. One string per entry
 * (`PX` = its freshness) and one sorted set per namespace (members scored by expiry) that bounds
 * the namespace to maxEntries: a Lua script stores and, when over the bound, evicts the entries
 * closest to expiry, atomically. Keys carry the namespace in a hash tag (`{ns}`) so a namespace
 * stays in one slot.
 */
import { createHash } from 'node:crypto';
import type { Redis } from 'ioredis';
import type { CacheBackend, CacheLimits, CacheRecord } from './cache.js';

const PREFIX = 'iotgate:routes:cache:';

// KEYS[1] entry, KEYS[2] index; ARGV[1] value, ARGV[2] ttl ms, ARGV[3] max entries
const SET_BOUNDED = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl)
redis.call('ZADD', KEYS[2], now + ttl, KEYS[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local over = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[3])
if over > 0 then
  local victims = redis.call('ZRANGE', KEYS[2], 0, over - 1)
  for _, k in ipairs(victims) do redis.call('DEL', k) end
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, over - 1)
end
if redis.call('PTTL', KEYS[2]) < ttl then redis.call('PEXPIRE', KEYS[2], ttl) end
return 1
`;

interface CacheCommands {
  iotgateRouteCacheSet(entryKey: string, indexKey: string, value: Buffer, ttlMs: number, maxEntries: number): Promise<number>;
}

/** `[u32 meta length][meta JSON][body]` */
export function encodeRecord(record: CacheRecord): Buffer {
  const { body, ...meta } = record.kind === 'response' ? record : { ...record, body: Buffer.alloc(0) };
  const json = Buffer.from(JSON.stringify(meta), 'utf8');
  const head = Buffer.allocUnsafe(4);
  head.writeUInt32BE(json.length, 0);
  return Buffer.concat([head, json, body]);
}

export function decodeRecord(buf: Buffer): CacheRecord | null {
  if (buf.length < 4) return null;
  const len = buf.readUInt32BE(0);
  if (4 + len > buf.length) return null;
  try {
    const meta = JSON.parse(buf.subarray(4, 4 + len).toString('utf8')) as Record<string, unknown>;
    if (meta.kind === 'vary' && Array.isArray(meta.names)) return { kind: 'vary', names: meta.names.map(String) };
    if (meta.kind === 'response' && typeof meta.status === 'number') {
      return {
        kind: 'response',
        status: meta.status,
        headers: (meta.headers ?? {}) as Record<string, string | string[]>,
        storedAt: Number(meta.storedAt),
        initialAgeS: Number(meta.initialAgeS) || 0,
        body: Buffer.from(buf.subarray(4 + len)),
      };
    }
  } catch {
    // a foreign or corrupt value is a miss
  }
  return null;
}

export class RedisCacheBackend implements CacheBackend {
  readonly kind = 'redis' as const;
  private readonly commands: CacheCommands;

  constructor(private readonly redis: Redis) {
    redis.defineCommand('iotgateRouteCacheSet', { numberOfKeys: 2, lua: SET_BOUNDED });
    this.commands = redis as unknown as CacheCommands;
  }

  private entryKey(ns: string, key: string): string {
    return `${PREFIX}{${ns}}:${createHash('sha256').update(key).digest('base64url')}`;
  }

  async get(ns: string, key: string): Promise<CacheRecord | null> {
    const buf = await this.redis.getBuffer(this.entryKey(ns, key));
    return buf === null ? null : decodeRecord(buf);
  }

  async set(ns: string, key: string, record: CacheRecord, limits: CacheLimits): Promise<void> {
    await this.commands.iotgateRouteCacheSet(this.entryKey(ns, key), `${PREFIX}{${ns}}:index`, encodeRecord(record), Math.max(1, Math.round(limits.ttlMs)), limits.maxEntries);
  }

  /** Other processes may still serve the old definition: entries of old namespaces simply expire. */
  async retain(): Promise<void> {}

  /** The Redis connection belongs to the route service, which closes it. */
  async close(): Promise<void> {}
}
