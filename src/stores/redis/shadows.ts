/**
 * ShadowStore on Redis: per device a HASH name → document JSON and a HASH name → version, both under
 * the device's hash tag. compareAndSet is one Lua script, so the version check and both writes are
 * atomic across every gateway sharing the Redis.
 */
import type { ClientContext, Redis, Result } from 'ioredis';
import type { ShadowStore } from '../../core/ports.js';
import type { StoredShadow } from '../../core/shadow.js';
import type { RedisKeys } from './keys.js';
import { storeError } from './errors.js';
import { defineScripts } from './scripts.js';

declare module 'ioredis' {
  interface RedisCommander<Context extends ClientContext = { type: 'default' }> {
    /** 1 written, 0 the version did not match. `expected` '' means "no document yet". */
    iotgateShadowCas(docs: string, versions: string, name: string, expected: string, version: string, json: string): Result<number, Context>;
  }
}

const SCRIPTS = {
  iotgateShadowCas: {
    numberOfKeys: 2,
    lua: `
local current = redis.call('HGET', KEYS[2], ARGV[1])
if ARGV[2] == '' then
  if current then return 0 end
elseif current ~= ARGV[2] then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[4])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
return 1`,
  },
};

export class RedisShadowStore implements ShadowStore {
  constructor(
    private readonly client: Redis,
    private readonly keys: RedisKeys,
  ) {
    defineScripts(client, SCRIPTS);
  }

  async get(deviceId: string, name: string): Promise<StoredShadow | null> {
    try {
      const json = await this.client.hget(this.keys.shadowDocs(deviceId), name);
      return json === null ? null : (JSON.parse(json) as StoredShadow);
    } catch (err) {
      throw storeError(err);
    }
  }

  async compareAndSet(deviceId: string, name: string, expectedVersion: number | null, next: StoredShadow): Promise<boolean> {
    try {
      const written = await this.client.iotgateShadowCas(
        this.keys.shadowDocs(deviceId),
        this.keys.shadowVersions(deviceId),
        name,
        expectedVersion === null ? '' : String(expectedVersion),
        String(next.version),
        JSON.stringify(next),
      );
      return written === 1;
    } catch (err) {
      throw storeError(err);
    }
  }

  async names(deviceId: string): Promise<string[]> {
    try {
      return (await this.client.hkeys(this.keys.shadowVersions(deviceId))).filter((n) => n !== '').sort();
    } catch (err) {
      throw storeError(err);
    }
  }

  async forgetDevice(deviceId: string): Promise<void> {
    try {
      await this.client.del(this.keys.shadowDocs(deviceId), this.keys.shadowVersions(deviceId));
    } catch (err) {
      throw storeError(err);
    }
  }

  /** The client belongs to createRedisStores(), which closes it. */
  async close(): Promise<void> {}
}
