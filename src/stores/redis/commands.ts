/**
 * CommandStore on Redis. Each device's records, creation order, open set, undelivered set, finished
 * history and idempotency keys share the device's hash tag; create, transition, list and open are
 * single Lua scripts over those six keys (commands-lua.ts), so the idempotency check, the
 * `maxUndelivered` bound, the compare-and-set on the state and the history trim are atomic across
 * gateways. The fleet-wide SET `iotgate:commands:devices` (another slot) lets openAll find devices.
 */
import type { ClientContext, Redis, Result } from 'ioredis';
import type { CommandRecord, CommandResponse, CommandState } from '../../core/commands.js';
import type { CommandCreateResult, CommandListQuery, CommandPage, CommandStore, CommandTransition } from '../../core/ports.js';
import { COMMAND_SCRIPTS } from './commands-lua.js';
import type { CommandKeys, RedisKeys } from './keys.js';
import { storeError } from './errors.js';
import { defineScripts, replyArray } from './scripts.js';

type Keys6 = CommandKeys;

declare module 'ioredis' {
  interface RedisCommander<Context extends ClientContext = { type: 'default' }> {
    iotgateCommandCreate(...args: [...Keys6, ...string[]]): Result<unknown, Context>;
    iotgateCommandTransition(...args: [...Keys6, ...string[]]): Result<unknown, Context>;
    iotgateCommandList(...args: [...Keys6, ...string[]]): Result<unknown, Context>;
    iotgateCommandOpen(...args: Keys6): Result<unknown, Context>;
  }
}

// Same cursor as the memory store: an opaque base64url of the last record's creation sequence.
function encodeCursor(seq: string): string {
  return Buffer.from(`c${seq}`).toString('base64url');
}

function decodeCursor(cursor: string): string | null {
  const m = /^c(\d{1,15})$/.exec(Buffer.from(cursor, 'base64url').toString('latin1'));
  return m ? (m[1] as string) : null;
}

/** Everything but state, updatedAt and response: written once at create, never decoded in Lua. */
function body(record: CommandRecord): string {
  const { state: _s, updatedAt: _u, response: _r, ...rest } = record;
  return JSON.stringify(rest);
}

/** Rebuilds records from the scripts' flat [body, state, updatedAt, response, ...] replies. */
function records(flat: readonly (string | null)[], from = 0): CommandRecord[] {
  const out: CommandRecord[] = [];
  for (let i = from; i + 3 < flat.length; i += 4) {
    const r = JSON.parse(flat[i] as string) as CommandRecord;
    r.state = flat[i + 1] as CommandState;
    r.updatedAt = Number(flat[i + 2]);
    const response = flat[i + 3];
    if (response) r.response = JSON.parse(response) as CommandResponse;
    out.push(r);
  }
  return out;
}

export class RedisCommandStore implements CommandStore {
  constructor(
    private readonly client: Redis,
    private readonly keys: RedisKeys,
    private readonly opts: { historyMax: number } = { historyMax: 1000 },
  ) {
    defineScripts(client, COMMAND_SCRIPTS);
  }

  async create(record: CommandRecord, opts: { maxUndelivered: number }): Promise<CommandCreateResult> {
    try {
      const hasKey = record.idempotencyKey !== undefined;
      const [reply] = await Promise.all([
        this.client.iotgateCommandCreate(
          ...this.keys.commands(record.deviceId),
          record.id,
          body(record),
          record.state,
          String(record.updatedAt),
          record.response === undefined ? '' : JSON.stringify(record.response),
          hasKey ? '1' : '0',
          record.idempotencyKey ?? '',
          String(opts.maxUndelivered),
          String(this.opts.historyMax),
        ),
        // Cross-slot, so not in the script; idempotent, and in the same auto-pipelined write.
        this.client.sadd(this.keys.commandDevices(), record.deviceId),
      ]);
      const flat = replyArray(reply, 'iotgateCommandCreate');
      switch (flat[0]) {
        case 'created':
          return { kind: 'created', record: structuredClone(record) };
        case 'existing':
          return { kind: 'existing', record: records(flat, 1)[0] as CommandRecord };
        case 'full':
          return { kind: 'full', undelivered: Number(flat[1]) };
        default:
          throw new Error(`unexpected reply from iotgateCommandCreate: ${String(flat[0])}`);
      }
    } catch (err) {
      throw storeError(err);
    }
  }

  async get(deviceId: string, id: string): Promise<CommandRecord | null> {
    try {
      const [data] = this.keys.commands(deviceId);
      const flat = await this.client.hmget(data, `b:${id}`, `s:${id}`, `u:${id}`, `r:${id}`);
      if (flat[0] === null || flat[0] === undefined) return null;
      return records(flat)[0] ?? null;
    } catch (err) {
      throw storeError(err);
    }
  }

  async transition(deviceId: string, id: string, from: readonly CommandState[], change: CommandTransition): Promise<CommandRecord | null> {
    try {
      if (from.length === 0) return null;
      const reply = await this.client.iotgateCommandTransition(
        ...this.keys.commands(deviceId),
        id,
        change.state,
        String(change.updatedAt),
        change.response === undefined ? '' : JSON.stringify(change.response),
        String(this.opts.historyMax),
        ...from,
      );
      if (reply === 0) return null;
      return records(replyArray(reply, 'iotgateCommandTransition'))[0] ?? null;
    } catch (err) {
      throw storeError(err);
    }
  }

  async list(deviceId: string, query: CommandListQuery): Promise<CommandPage> {
    try {
      const after = query.cursor === undefined ? '0' : decodeCursor(query.cursor);
      if (after === null) return { items: [], nextCursor: null };
      const states = query.states ?? [];
      const reply = await this.client.iotgateCommandList(
        ...this.keys.commands(deviceId),
        after,
        String(query.limit),
        query.states ? '1' : '0',
        ...states,
      );
      const flat = replyArray(reply, 'iotgateCommandList');
      return { items: records(flat, 2), nextCursor: flat[0] === '1' ? encodeCursor(flat[1] as string) : null };
    } catch (err) {
      throw storeError(err);
    }
  }

  async open(deviceId: string): Promise<CommandRecord[]> {
    try {
      return records(replyArray(await this.client.iotgateCommandOpen(...this.keys.commands(deviceId)), 'iotgateCommandOpen'));
    } catch (err) {
      throw storeError(err);
    }
  }

  async openAll(): Promise<CommandRecord[]> {
    try {
      const out: CommandRecord[] = [];
      const seen = new Set<string>();
      let cursor = '0';
      do {
        const [next, devices] = await this.client.sscan(this.keys.commandDevices(), cursor, 'COUNT', 500);
        cursor = next;
        // SSCAN may return a member twice.
        const fresh = devices.filter((d) => !seen.has(d) && seen.add(d));
        for (const list of await Promise.all(fresh.map((d) => this.open(d)))) out.push(...list);
      } while (cursor !== '0');
      return out;
    } catch (err) {
      throw storeError(err);
    }
  }

  async forgetDevice(deviceId: string): Promise<void> {
    try {
      await Promise.all([this.client.del(...this.keys.commands(deviceId)), this.client.srem(this.keys.commandDevices(), deviceId)]);
    } catch (err) {
      throw storeError(err);
    }
  }

  /** The client belongs to createRedisStores(), which closes it. */
  async close(): Promise<void> {}
}
