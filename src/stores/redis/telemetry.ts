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
import type { Redis } from 'ioredis';
import type { TelemetryQuery, TelemetryStore } from '../../core/ports.js';
import type { TelemetryRecord } from '../../core/model.js';
import type { RedisKeys } from './keys.js';
import { storeError } from './errors.js';
import { BatchScript } from './scripts.js';

// KEYS: the devices' streams. ARGV: MAXLEN, the retention in ms (the TTL, and the MINID trim
// bound below each stream's newest receivedAt), then per record: the index of its key in KEYS,
// receivedAt, the record JSON.
// A stream only grows: an entry older than the newest (another gateway's clock, a late append) is
// stored at the stream's last id instead; the record keeps its own receivedAt. Every call is a
// pcall: one record's failure (a key of the wrong type, out of memory) must not abort the script
// half-way, leaving records stored whose callers were told they failed. The reply holds per
// record 1 (stored) or the error text. Each stream touched is trimmed by age and given its TTL
// once per call, after its last record.
const APPEND = new BatchScript(`
local out = {}
local newest = {}
local retention = tonumber(ARGV[2])
for i = 3, #ARGV, 3 do
  local key = KEYS[tonumber(ARGV[i])]
  local added = redis.pcall('XADD', key, 'MAXLEN', ARGV[1], ARGV[i + 1] .. '-*', 'r', ARGV[i + 2])
  if type(added) == 'table' and added.err then
    local info = redis.pcall('XINFO', 'STREAM', key)
    if type(info) == 'table' and not info.err then
      local last = ARGV[i + 1]
      for j = 1, #info, 2 do
        if info[j] == 'last-generated-id' then last = string.match(info[j + 1], '^(%d+)') end
      end
      added = redis.pcall('XADD', key, 'MAXLEN', ARGV[1], last .. '-*', 'r', ARGV[i + 2])
    end
  end
  if type(added) == 'table' and added.err then
    out[#out + 1] = added.err
  else
    local at = tonumber(ARGV[i + 1])
    if newest[key] == nil or at > newest[key] then newest[key] = at end
    out[#out + 1] = 1
  end
end
for key, at in pairs(newest) do
  if at - retention > 0 then redis.pcall('XTRIM', key, 'MINID', string.format('%.0f', at - retention)) end
  redis.pcall('PEXPIRE', key, ARGV[2])
end
return out`);

/** Appends of one event-loop turn go to Redis in one script call, at most this many. */
const BATCH_MAX = 512;

interface PendingAppend {
  key: string;
  receivedAt: string;
  json: string;
  resolve: (json: string) => void;
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
  }

  /** Resolves with the record's JSON (what Redis now holds) once it is stored. */
  append(record: TelemetryRecord): Promise<string> {
    const at = Math.max(0, Math.floor(record.receivedAt));
    return new Promise((resolve, reject) => {
      const n = this.pending.push({
        key: this.keys.telemetry(record.deviceId),
        receivedAt: String(at),
        json: JSON.stringify(record),
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
      args.push(i, p.receivedAt, p.json);
    }
    APPEND.run(this.client, ['', String(keys.length)].concat(keys, args)).then(
      (reply) => {
        const results = Array.isArray(reply) ? (reply as unknown[]) : [];
        batch.forEach((p, i) => {
          const r = results[i];
          if (r === 1) p.resolve(p.json);
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
