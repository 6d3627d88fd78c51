/**
 * TelemetryStore on Redis: per device a STREAM whose entry ids are `receivedAt-<seq>`, so
 * XREVRANGE answers "the newest `limit` in [since, until]" directly. `append` runs a Lua script
 * that adds the entry, trims by count (exact MAXLEN) and by age (MINID), and sets the key to expire
 * `retentionMs` after the last append, so an idle device's history disappears as a whole. The
 * appends of one event-loop turn (up to 512) go in one script call: one command to build, send and
 * parse instead of one per message, the largest cost of the Redis ingest path. The returned
 * promise resolves once Redis has the entry. Given an event outbox (`writeEventsTo`), the same
 * call adds each stored record's `iotgate.telemetry` CloudEvent to the event stream. One call
 * touches the streams of several devices, so it needs a standalone (or Sentinel) Redis, which is
 * what createRedisStores connects to.
 */
import type { Redis } from 'ioredis';
import type { TelemetryQuery, TelemetryStore } from '../../core/ports.js';
import type { TelemetryRecord } from '../../core/model.js';
import type { RedisKeys } from './keys.js';
import { storeError } from './errors.js';
import { BatchScript } from './scripts.js';
import { isoTime } from '../../core/cloudevents.js';

// KEYS: the devices' streams, then (when the store writes the telemetry events) the event stream.
// ARGV: MAXLEN, the retention in ms (the TTL, and the MINID trim bound below each stream's newest
// receivedAt), the event stream's MAXLEN ('' = no events), then with events each device stream's
// device id, then per record: the index of its key in KEYS, receivedAt, the record JSON, and with
// events the event id and time.
// A stream only grows: an entry older than the newest (another gateway's clock, a late append) is
// stored at the stream's last id instead; the record keeps its own receivedAt. Every call is a
// pcall: one record's failure (a key of the wrong type, out of memory) must not abort the script
// half-way, leaving records stored whose callers were told they failed. The reply holds per
// record 1 (stored), the error text (not stored) or `event: ` and the error text (stored, its
// event refused). A record's event is written right after the record, in the same script: it is
// in the event stream if and only if the record is stored. Each stream touched is trimmed by age
// and given its TTL once per call, after its last record.
const APPEND = new BatchScript(`
local out = {}
local newest = {}
local retention = tonumber(ARGV[2])
local evMax = ARGV[3]
local devices = #KEYS
local first, stride, events = 4, 3, nil
if evMax ~= '' then
  devices = devices - 1
  events = KEYS[#KEYS]
  first, stride = 4 + devices, 5
end
for i = first, #ARGV, stride do
  local k = tonumber(ARGV[i])
  local key = KEYS[k]
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
    if events then
      local device = ARGV[3 + k]
      local ev = redis.pcall('XADD', events, 'MAXLEN', '~', evMax, '*', 'specversion', '1.0', 'id', ARGV[i + 3], 'type', 'iotgate.telemetry',
        'source', '/devices/' .. device, 'subject', device, 'time', ARGV[i + 4], 'datacontenttype', 'application/json', 'data', ARGV[i + 2])
      if type(ev) == 'table' and ev.err then out[#out] = 'event: ' .. ev.err end
    end
  end
end
for key, at in pairs(newest) do
  if at - retention > 0 then redis.pcall('XTRIM', key, 'MINID', string.format('%.0f', at - retention)) end
  redis.pcall('PEXPIRE', key, ARGV[2])
end
return out`);

/**
 * Where the store writes each stored record's `iotgate.telemetry` CloudEvent (the event stream
 * writer hands this over: src/upstream/redis-stream.ts), and how it reports them.
 */
export interface TelemetryEventOutbox {
  /** The event stream's key and `MAXLEN ~`. */
  key: string;
  maxLen: number;
  /** Events written with their records. */
  written(count: number): void;
  /** A record stored whose event Redis refused. */
  refused(eventId: string, err: string): void;
}

const EVENT_REFUSED = 'event: ';

/** Appends of one event-loop turn go to Redis in one script call, at most this many. */
const BATCH_MAX = 512;

interface PendingAppend {
  key: string;
  deviceId: string;
  id: string;
  at: number;
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
  private outbox: TelemetryEventOutbox | null = null;

  constructor(
    private readonly client: Redis,
    private readonly keys: RedisKeys,
    private readonly retention: TelemetryRetention,
  ) {
  }

  /**
   * From now on each stored record's `iotgate.telemetry` event is written to `outbox.key` in the
   * same script call as the record (the transactional outbox: the event exists if and only if the
   * record does, and its data is sent to Redis once).
   */
  writeEventsTo(outbox: TelemetryEventOutbox | null): void {
    this.outbox = outbox;
  }

  /** Resolves with the record's JSON (what Redis now holds) once it is stored. */
  append(record: TelemetryRecord): Promise<string> {
    const at = Math.max(0, Math.floor(record.receivedAt));
    return new Promise((resolve, reject) => {
      const n = this.pending.push({
        key: this.keys.telemetry(record.deviceId),
        deviceId: record.deviceId,
        id: record.id,
        at: record.receivedAt,
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
    const outbox = this.outbox;
    const keys: string[] = [];
    const devices: string[] = [];
    const index = new Map<string, string>();
    const args: string[] = [];
    for (const p of batch) {
      let i = index.get(p.key);
      if (i === undefined) {
        keys.push(p.key);
        devices.push(p.deviceId);
        index.set(p.key, (i = String(keys.length)));
      }
      if (outbox === null) args.push(i, p.receivedAt, p.json);
      else args.push(i, p.receivedAt, p.json, p.id, isoTime(p.at));
    }
    const head = [String(this.retention.retentionCount), String(this.retention.retentionMs)];
    const argv =
      outbox === null
        ? ['', String(keys.length)].concat(keys, head, '', args)
        : ['', String(keys.length + 1)].concat(keys, outbox.key, head, String(outbox.maxLen), devices, args);
    APPEND.run(this.client, argv).then(
      (reply) => {
        const results = Array.isArray(reply) ? (reply as unknown[]) : [];
        let events = 0;
        batch.forEach((p, i) => {
          const r = results[i];
          if (r === 1) {
            events++;
            p.resolve(p.json);
          } else if (typeof r === 'string' && r.startsWith(EVENT_REFUSED)) {
            outbox?.refused(p.id, r.slice(EVENT_REFUSED.length));
            p.resolve(p.json);
          } else p.reject(storeError(new Error(`telemetry append refused: ${String(r ?? 'no reply')}`)));
        });
        if (outbox !== null && events > 0) outbox.written(events);
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
