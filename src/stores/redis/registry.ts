/**
 * DeviceRegistry on Redis. A record is a HASH under the device's hash tag, one field per property
 * (values JSON), so `update` writes only the patched fields, atomically in a Lua script, without
 * decoding the record in Lua. The fleet-wide index `iotgate:devices` (a ZSET, lexicographic) gives
 * the id order for `list`; it lives in another slot, so create/delete touch two slots (see
 * docs/redis.md). The record is the truth: `list` skips index entries without a record, and
 * `delete` re-adds the id when a concurrent create won the race.
 *
 * Presence (`writePresence`): one script on the record and `{id}:presence` (who holds it: gateway
 * and session), so an offline is a compare-and-set on that owner. A connect first adds the id to
 * the gateway's set `presence:<gateway>` (another slot; a superset of what the gateway holds),
 * which is what `reap` walks when that gateway is gone.
 */
import type { ClientContext, Redis, Result } from 'ioredis';
import type { DeviceListQuery, DevicePage, DeviceRegistry, PresenceOffline, PresenceOnline, PresenceStore, PresenceWrite } from '../../core/ports.js';
import type { DeviceRecord } from '../../core/model.js';
import { decodeCursor, encodeCursor } from '../memory/registry.js';
import type { RedisKeys } from './keys.js';
import { storeError } from './errors.js';
import { defineScripts, replyArray } from './scripts.js';

declare module 'ioredis' {
  interface RedisCommander<Context extends ClientContext = { type: 'default' }> {
    /** 1 created, 0 exists. ARGV: field, value, ... */
    iotgateDeviceCreate(key: string, ...fieldsAndValues: string[]): Result<number, Context>;
    /** 0 unknown, else HGETALL after the change. ARGV: nset, field, value, ..., fields to delete ... */
    iotgateDeviceUpdate(key: string, nset: number, ...args: string[]): Result<unknown, Context>;
    /**
     * {'applied', version, previous protocol JSON} | {'unknown'} | {'not_owner'}.
     * ARGV: 'on' gateway session minVersion protocolJSON atJSON | 'off' gateway session|'' minVersion lastSeenJSON|''
     */
    iotgateDevicePresence(record: string, owner: string, ...args: string[]): Result<unknown, Context>;
  }
}

const SCRIPTS = {
  iotgateDeviceCreate: {
    numberOfKeys: 1,
    lua: `
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1`,
  },
  iotgateDeviceUpdate: {
    numberOfKeys: 1,
    lua: `
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local nset = tonumber(ARGV[1])
if nset > 0 then redis.call('HSET', KEYS[1], unpack(ARGV, 2, nset + 1)) end
if #ARGV > nset + 1 then redis.call('HDEL', KEYS[1], unpack(ARGV, nset + 2)) end
return redis.call('HGETALL', KEYS[1])`,
  },
  // KEYS[1] the record, KEYS[2] its owner (HASH gateway, session). Values in the record are JSON.
  iotgateDevicePresence: {
    numberOfKeys: 2,
    lua: `
if redis.call('EXISTS', KEYS[1]) == 0 then return {'unknown'} end
local on, gateway, session = ARGV[1] == 'on', ARGV[2], ARGV[3]
if not on then
  local owner = redis.call('HMGET', KEYS[2], 'gateway', 'session')
  if owner[1] ~= gateway or (session ~= '' and owner[2] ~= session) then return {'not_owner'} end
end
local stored = tonumber(redis.call('HGET', KEYS[1], 'presenceVersion') or '0') or 0
local version = string.format('%d', math.max(stored, tonumber(ARGV[4])) + 1)
local previous = redis.call('HGET', KEYS[1], 'protocol') or 'null'
if on then
  redis.call('HSET', KEYS[1], 'online', 'true', 'protocol', ARGV[5], 'connectedAt', ARGV[6], 'lastSeen', ARGV[6], 'presenceVersion', version)
  redis.call('HSET', KEYS[2], 'gateway', gateway, 'session', session)
else
  redis.call('HSET', KEYS[1], 'online', 'false', 'protocol', 'null', 'presenceVersion', version)
  if ARGV[5] ~= '' then redis.call('HSET', KEYS[1], 'lastSeen', ARGV[5]) end
  redis.call('DEL', KEYS[2])
end
return {'applied', version, previous}`,
  },
};

function toFields(record: Partial<DeviceRecord>): string[] {
  const out: string[] = [];
  for (const [k, v] of Object.entries(record)) if (v !== undefined) out.push(k, JSON.stringify(v));
  return out;
}

function fromHash(hash: Record<string, string>): DeviceRecord | null {
  const entries = Object.entries(hash);
  if (entries.length === 0) return null;
  const record: Record<string, unknown> = {};
  for (const [k, v] of entries) record[k] = JSON.parse(v) as unknown;
  return record as unknown as DeviceRecord;
}

function fromFlat(flat: readonly (string | null)[]): DeviceRecord | null {
  const hash: Record<string, string> = {};
  for (let i = 0; i + 1 < flat.length; i += 2) hash[flat[i] as string] = flat[i + 1] as string;
  return fromHash(hash);
}

export class RedisDeviceRegistry implements DeviceRegistry, PresenceStore {
  constructor(
    private readonly client: Redis,
    private readonly keys: RedisKeys,
  ) {
    defineScripts(client, SCRIPTS);
  }

  async get(id: string): Promise<DeviceRecord | null> {
    try {
      return fromHash(await this.client.hgetall(this.keys.device(id)));
    } catch (err) {
      throw storeError(err);
    }
  }

  async create(record: DeviceRecord): Promise<boolean> {
    try {
      // The index entry goes out in the same pipeline; for an existing id it is already there.
      const [created] = await Promise.all([
        this.client.iotgateDeviceCreate(this.keys.device(record.id), ...toFields(record)),
        this.client.zadd(this.keys.deviceIndex(), 0, record.id),
      ]);
      return created === 1;
    } catch (err) {
      throw storeError(err);
    }
  }

  async update(id: string, patch: Partial<Omit<DeviceRecord, 'id'>>): Promise<DeviceRecord | null> {
    try {
      const set: string[] = [];
      const del: string[] = [];
      for (const [k, v] of Object.entries(patch)) {
        if (k === 'id') continue;
        if (v === undefined) del.push(k);
        else set.push(k, JSON.stringify(v));
      }
      const reply = await this.client.iotgateDeviceUpdate(this.keys.device(id), set.length, ...set, ...del);
      if (reply === 0) return null;
      return fromFlat(replyArray(reply, 'iotgateDeviceUpdate'));
    } catch (err) {
      throw storeError(err);
    }
  }

  async delete(id: string): Promise<boolean> {
    try {
      const [deleted] = await Promise.all([this.client.del(this.keys.device(id)), this.client.del(this.keys.presence(id))]);
      if (deleted !== 1) return false;
      await this.client.zrem(this.keys.deviceIndex(), id);
      // A create that ran between our DEL and ZREM has its index entry removed by us: put it back.
      if ((await this.client.exists(this.keys.device(id))) === 1) await this.client.zadd(this.keys.deviceIndex(), 0, id);
      return true;
    } catch (err) {
      throw storeError(err);
    }
  }

  async writePresence(id: string, change: PresenceOnline | PresenceOffline): Promise<PresenceWrite> {
    try {
      const keys = [this.keys.device(id), this.keys.presence(id)] as const;
      const args = change.online
        ? ['on', change.owner.gateway, change.owner.session, String(change.minVersion), JSON.stringify(change.protocol), JSON.stringify(change.at)]
        : ['off', change.owner.gateway, change.owner.session ?? '', String(change.minVersion), change.lastSeen === undefined ? '' : JSON.stringify(change.lastSeen)];
      // The gateway's set first, in the same write: it always covers what the gateway holds.
      const [, reply] = await Promise.all([
        change.online ? this.client.sadd(this.keys.presenceHeld(change.owner.gateway), id) : null,
        this.client.iotgateDevicePresence(...keys, ...args),
      ]);
      const [status, version, previous] = replyArray(reply, 'iotgateDevicePresence');
      if (status === 'unknown' || status === 'not_owner') return { status };
      if (status !== 'applied') throw new Error(`unexpected reply from iotgateDevicePresence: ${String(status)}`);
      // An entry left behind (a crash right here) is harmless: the owner check skips it.
      if (!change.online) await this.client.srem(this.keys.presenceHeld(change.owner.gateway), id);
      return { status, version: Number(version), protocol: JSON.parse(previous ?? 'null') as DeviceRecord['protocol'] };
    } catch (err) {
      throw storeError(err);
    }
  }

  async *presenceHeldBy(gateway: string): AsyncIterable<string[]> {
    let cursor = '0';
    try {
      do {
        const [next, ids] = await this.client.sscan(this.keys.presenceHeld(gateway), cursor, 'COUNT', 500);
        cursor = next;
        if (ids.length > 0) yield ids;
      } while (cursor !== '0');
    } catch (err) {
      throw storeError(err);
    }
  }

  async forgetGateway(gateway: string): Promise<void> {
    try {
      await this.client.del(this.keys.presenceHeld(gateway));
    } catch (err) {
      throw storeError(err);
    }
  }

  async list(q: DeviceListQuery): Promise<DevicePage> {
    try {
      let after = q.cursor === undefined ? null : decodeCursor(q.cursor);
      const filtered = q.type !== undefined || q.online !== undefined;
      // One more than a page tells whether another page exists; filters read ahead in bigger batches.
      const batch = filtered ? Math.min(1000, Math.max(100, q.limit + 1)) : q.limit + 1;
      const items: DeviceRecord[] = [];
      for (;;) {
        const ids = await this.client.zrangebylex(this.keys.deviceIndex(), after === null ? '-' : `(${after}`, '+', 'LIMIT', 0, batch);
        if (ids.length === 0) return { items, nextCursor: null };
        // Auto-pipelined: one round trip for the batch (on a cluster, one per node).
        const records = await Promise.all(ids.map((id) => this.get(id)));
        for (const r of records) {
          if (r === null) continue;
          if (q.type !== undefined && r.type !== q.type) continue;
          if (q.online !== undefined && r.online !== q.online) continue;
          if (items.length === q.limit) return { items, nextCursor: encodeCursor((items[items.length - 1] as DeviceRecord).id) };
          items.push(r);
        }
        if (ids.length < batch) return { items, nextCursor: null };
        after = ids[ids.length - 1] as string;
      }
    } catch (err) {
      throw storeError(err);
    }
  }

  /** The client belongs to createRedisStores(), which closes it. */
  async close(): Promise<void> {}
}
