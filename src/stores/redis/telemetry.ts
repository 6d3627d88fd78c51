/**
 * TelemetryStore on Redis: per device a STREAM whose entry ids are `receivedAt-<seq>`, so
 * XREVRANGE answers "the newest `limit` in [since, until]" directly. `append` runs a Lua script
 * that adds the entry, trims by count (exact MAXLEN) and by age (MINID), and sets the key to expire
 * `retentionMs` after the last append, so an idle device's history disappears as a whole. The
 * appends of one event-loop turn (up to 512) go in one script call: one command to build, send and
 * parse instead of one per message, the largest cost of the Redis ingest path. The returned
 * promise resolves once Redis has the entry. One call touches the streams of several devices, so
 * it needs a standalone (or Sentinel) Redis, which is what createRedisStores connects to.
 */
import type { ClientContext, Redis, Result } from 'ioredis';
import type { TelemetryQuery, TelemetryStore } from '../../core/ports.js';
import type { TelemetryRecord } from '../../core/model.js';
import type { RedisKeys } from './keys.js';
import { jsonOnce } from '../../core/json-once.js';
import { storeError } from './errors.js';
import { defineScripts } from './scripts.js';

declare module 'ioredis' {
  interface RedisCommander<Context extends ClientContext = { type: 'default' }> {
    iotgateTelemetryAppend(numberOfKeys: number, ...keysAndArgs: string[]): Result<(number | string)[], Context>;
  }
}

// KEYS: the devices' streams. ARGV: MAXLEN, the TTL in ms, then per record: the index of its key
// in KEYS, receivedAt, the MINID trim bound, the record JSON.
const SCRIPTS = {
  iotgateTelemetryAppend: {
    // A stream only grows: an entry older than the newest (another gateway's clock, a late
    // append) is stored at the stream's last id instead; the record keeps its own receivedAt.
    // Every call is a pcall: one record's failure (a key of the wrong type, out of memory) must not
    // abort the script half-way, leaving records stored whose callers were told they failed. The
    // reply holds per record 1 (stored) or the error text.
    lua: `
local out = {}
for i = 3, #ARGV, 4 do
  local key = KEYS[tonumber(ARGV[i])]
  local added = redis.pcall('XADD', key, 'MAXLEN', ARGV[1], ARGV[i + 1] .. '-*', 'r', ARGV[i + 3])
  if type(added) == 'table' and added.err then
    local info = redis.pcall('XINFO', 'STREAM', key)
    if type(info) == 'table' and not info.err then
      local last = ARGV[i + 1]
      for j = 1, #info, 2 do
        if info[j] == 'last-generated-id' then last = string.match(info[j + 1], '^(%d+)') end
      end
      added = redis.pcall('XADD', key, 'MAXLEN', ARGV[1], last .. '-*', 'r', ARGV[i + 3])
    end
  end
  if type(added) == 'table' and added.err then
    out[#out + 1] = added.err
  else
    if tonumber(ARGV[i + 2]) > 0 then redis.pcall('XTRIM', key, 'MINID', ARGV[i + 2]) end
    redis.pcall('PEXPIRE', key, ARGV[2])
    out[#out + 1] = 1
  end
end
return out`,
  },
};

/** Appends of one event-loop turn go to Redis in one script call, at most this many. */
const BATCH_MAX = 512;

interface PendingAppend {
  key: string;
  receivedAt: string;
  minId: string;
  json: string;
  resolve: () => void;
  reject: (err: unknown) => void;
}

export interface TelemetryRetention {
  retentionCount: number;
  retentionMs: number;
}

export class RedisTelemetryStore implements TelemetryStore {
  private pending: PendingAppend[] = [];

  constructor(
    private readonly client: Redis,
    private readonly keys: RedisKeys,
    private readonly retention: TelemetryRetention,
  ) {
    defineScripts(client, SCRIPTS);
  }

  append(record: TelemetryRecord): Promise<void> {
    const at = Math.max(0, Math.floor(record.receivedAt));
    return new Promise((resolve, reject) => {
      const n = this.pending.push({
        key: this.keys.telemetry(record.deviceId),
        receivedAt: String(at),
        minId: String(Math.max(0, at - this.retention.retentionMs)),
        json: jsonOnce(record),
        resolve,
        reject,
      });
      if (n >= BATCH_MAX) this.flush();
      else if (n === 1) setImmediate(this.flushSoon);
    });
  }

  private readonly flushSoon = () => this.flush();

  /** Sends the pending appends in one script call; each promise settles with its reply. */
  private flush(): void {
    const batch = this.pending;
    if (batch.length === 0) return;
    this.pending = [];
    const keys: string[] = [];
    const index = new Map<string, string>();
    const args = [String(this.retention.retentionCount), String(this.retention.retentionMs)];
    for (const p of batch) {
      let i = index.get(p.key);
      if (i === undefined) {
        keys.push(p.key);
        index.set(p.key, (i = String(keys.length)));
      }
      args.push(i, p.receivedAt, p.minId, p.json);
    }
    this.client.iotgateTelemetryAppend(keys.length, ...keys, ...args).then(
      (results) => {
        batch.forEach((p, i) => {
          const r = results[i];
          if (r === 1) p.resolve();
          else p.reject(storeError(new Error(`telemetry append refused: ${String(r ?? 'no reply')}`)));
        });
      },
      (err: unknown) => {
        const e = storeError(err);
        for (const p of batch) p.reject(e);
      },
    );
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
