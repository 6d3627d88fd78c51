/**
 * TelemetryStore on Redis: per device a STREAM whose entry ids are `receivedAt-<seq>`, so
 * XREVRANGE answers "the newest `limit` in [since, until]" directly. `append` is one Lua script
 * (auto-pipelined with concurrent appends) that adds the entry, trims by count (exact MAXLEN) and by
 * age (MINID), and sets the key to expire `retentionMs` after the last append, so an idle device's
 * history disappears as a whole. The returned promise resolves once Redis has the entry.
 */
import type { ClientContext, Redis, Result } from 'ioredis';
import type { TelemetryQuery, TelemetryStore } from '../../core/ports.js';
import type { TelemetryRecord } from '../../core/model.js';
import type { RedisKeys } from './keys.js';
import { storeError } from './errors.js';
import { defineScripts } from './scripts.js';

declare module 'ioredis' {
  interface RedisCommander<Context extends ClientContext = { type: 'default' }> {
    iotgateTelemetryAppend(key: string, receivedAt: string, maxLen: string, minId: string, json: string, ttlMs: string): Result<number, Context>;
  }
}

const SCRIPTS = {
  iotgateTelemetryAppend: {
    numberOfKeys: 1,
    // A stream only grows: an entry older than the newest (another gateway's clock, a late
    // append) is stored at the stream's last id instead; the record keeps its own receivedAt.
    lua: `
local added = redis.pcall('XADD', KEYS[1], 'MAXLEN', ARGV[2], ARGV[1] .. '-*', 'r', ARGV[4])
if type(added) == 'table' and added.err then
  local info = redis.call('XINFO', 'STREAM', KEYS[1])
  local last = ARGV[1]
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then last = string.match(info[i + 1], '^(%d+)') end
  end
  redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[2], last .. '-*', 'r', ARGV[4])
end
if tonumber(ARGV[3]) > 0 then redis.call('XTRIM', KEYS[1], 'MINID', ARGV[3]) end
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1`,
  },
};

export interface TelemetryRetention {
  retentionCount: number;
  retentionMs: number;
}

export class RedisTelemetryStore implements TelemetryStore {
  constructor(
    private readonly client: Redis,
    private readonly keys: RedisKeys,
    private readonly retention: TelemetryRetention,
  ) {
    defineScripts(client, SCRIPTS);
  }

  async append(record: TelemetryRecord): Promise<void> {
    try {
      const at = Math.max(0, Math.floor(record.receivedAt));
      await this.client.iotgateTelemetryAppend(
        this.keys.telemetry(record.deviceId),
        String(at),
        String(this.retention.retentionCount),
        String(Math.max(0, at - this.retention.retentionMs)),
        JSON.stringify(record),
        String(this.retention.retentionMs),
      );
    } catch (err) {
      throw storeError(err);
    }
  }

  async history(deviceId: string, q: TelemetryQuery): Promise<TelemetryRecord[]> {
    try {
      if (q.limit <= 0) return [];
      // Like the memory store, nothing older than retentionMs is returned, trimmed yet or not.
      const since = Math.max(q.since ?? 0, Date.now() - this.retention.retentionMs);
      if (q.until !== undefined && (q.until < 0 || q.until < since)) return [];
      const end = q.until === undefined ? '+' : String(Math.floor(q.until));
      const start = since <= 0 ? '-' : String(Math.ceil(since));
      const entries = await this.client.xrevrange(this.keys.telemetry(deviceId), end, start, 'COUNT', q.limit);
      const out: TelemetryRecord[] = [];
      for (let i = entries.length - 1; i >= 0; i--) out.push(parseEntry((entries[i] as [string, string[]])[1]));
      return out;
    } catch (err) {
      throw storeError(err);
    }
  }

  async latest(deviceId: string): Promise<TelemetryRecord | null> {
    try {
      const [r] = await this.history(deviceId, { limit: 1 });
      return r ?? null;
    } catch (err) {
      throw storeError(err);
    }
  }

  async forget(deviceId: string): Promise<void> {
    try {
      await this.client.del(this.keys.telemetry(deviceId));
    } catch (err) {
      throw storeError(err);
    }
  }

  /** The client belongs to createRedisStores(), which closes it. */
  async close(): Promise<void> {}
}

function parseEntry(fields: readonly string[]): TelemetryRecord {
  for (let i = 0; i + 1 < fields.length; i += 2) if (fields[i] === 'r') return JSON.parse(fields[i + 1] as string) as TelemetryRecord;
  throw new Error('telemetry stream entry without a record');
}
