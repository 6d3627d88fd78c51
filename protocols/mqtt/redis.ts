/**
 * The broker's state in Redis (issue 8 item 2), so that several gateways act as one broker and a
 * restarted one loses nothing: aedes-persistence-redis 12 keeps subscriptions of persistent
 * sessions, their queued and in-flight QoS 1/2 messages, retained messages and wills;
 * redis-emitter.ts carries every publish to the subscribers of every gateway (Redis pub/sub, local
 * subscribers first).
 *
 * What this module adds to those two packages:
 * - a fresh aedes id per process: packet keys (`packet:<brokerId>:<counter>`), duplicate detection
 *   and session takeover across gateways (`$SYS/<brokerId>/new/clients`) all assume that no two
 *   live brokers, and no broker before and after a restart, share an id;
 * - a QoS 1 message is in Redis before its PUBACK (`beforeAck`; aedes acknowledges first and
 *   stores afterwards, so a crash right after a PUBACK lost the message);
 * - wills of gateways that died or stopped (redis-wills.ts);
 * - the per-session offline queue cap (`broker.offlineQueueMax`), counted in Redis: a session that
 *   is connected to any live gateway is never capped (its messages are in flight, not queued);
 * - a session that is replaced by a clean one gives back its queued messages (aedes-persistence-
 *   redis drops the list but keeps every message it referenced, forever);
 * - a persistent SUBSCRIBE with several filters gets its SUBACK (see `addSubscriptions` below);
 * - closing never waits for an unreachable Redis.
 *
 * Key layout: aedes-persistence-redis' own (`client:*`, `clients`, `outgoing:*`, `outgoing-id:*`,
 * `incoming:*`, `packet:*`, `retained`, `will`, `will:*`) plus `iotgate:mqtt:brokers` (sorted set:
 * live gateways) and `iotgate:mqtt:sessions` (hash: persistent client id → gateway holding it).
 * It is the standalone layout (Redis Cluster is not supported for the broker state).
 */
import { randomUUID } from 'node:crypto';
import { createRequire } from 'node:module';
import { Readable } from 'node:stream';
import type { Aedes, Client } from 'aedes';
import { Redis } from 'ioredis';
import type { Logger } from 'pino';
import type { BrokerState, BrokerStateFactory } from './backend.js';
import type { Persistence } from './offline-queue.js';
import { redisBusEmitter } from './redis-emitter.js';
import { CONNECTION_PREFIX, WillKeeper, type WillPacket } from './redis-wills.js';

export const SESSIONS_KEY = 'iotgate:mqtt:sessions';
const outgoingKey = (clientId: string): string => `outgoing:${encodeURIComponent(clientId)}`;

type Sub = { clientId: string };

/** aedes-persistence-redis (CallBackPersistence over its async class): the promise API used here. */
interface RedisPersistence extends Persistence {
  addSubscriptions(client: { id: string }, subs: object): Promise<unknown>;
  storeRetained(packet: unknown): Promise<void>;
  subscriptionsByTopic(topic: string): Promise<unknown[]>;
  cleanSubscriptions(client: { id: string }): Promise<unknown>;
  subscriptionsByClient(client: { id: string }): Promise<unknown>;
  delWill(client: { id: string; brokerId?: string }): Promise<unknown>;
  streamWill(brokers?: unknown): Readable;
  destroy(): Promise<void>;
}

/** The ioredis 5 client aedes-persistence-redis is written and tested against. */
interface LegacyRedis {
  status: string;
  on(event: 'error', listener: (err: Error) => void): unknown;
  disconnect(): void;
}

const require = createRequire(import.meta.url);
// CommonJS without typings. Created through its default export (a factory): aedes needs the
// callback wrapper it returns; the bare class crashes aedes on the first SUBSCRIBE.
const createRedisPersistence = require('aedes-persistence-redis') as (opts: { conn: LegacyRedis; maxSessionDelivery: number }) => RedisPersistence;
// Resolved from aedes-persistence-redis itself: the codec it stores wills with, and its ioredis.
const fromPersistence = createRequire(require.resolve('aedes-persistence-redis'));
const msgpack = fromPersistence('msgpack-lite') as { decode(buf: Buffer): unknown };
const LegacyRedisClient = fromPersistence('ioredis') as new (url: string, opts: Record<string, unknown>) => LegacyRedis;

// Drops every message a session's queue references: each is shared by the sessions it was queued
// for and deleted with the last one (aedes-persistence-redis' `offlineCount`).
const DRAIN_QUEUE = `local refs = redis.call('LRANGE', KEYS[1], 0, -1)
for _, ref in ipairs(refs) do
  if string.sub(ref, 1, 7) == 'packet:' then
    if redis.call('DECR', ref .. ':offlineCount') <= 0 then redis.call('DEL', ref, ref .. ':offlineCount') end
  else
    redis.call('DEL', ref)
  end
end
redis.call('DEL', KEYS[1])
return #refs`;

const FORGET_SESSION = `if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then return redis.call('HDEL', KEYS[1], ARGV[1]) end
return 0`;

export interface RedisBrokerOptions {
  /** `redis://host:port/db` or `rediss://` */
  url: string;
  /** Liveness refresh and will reaper interval (default 2000 ms). */
  beatMs?: number;
  /** A gateway whose liveness is older than this is dead (default 10 000 ms). */
  deadAfterMs?: number;
  /** The aedes id (default: a fresh UUID); must be unique per process and never reused. */
  brokerId?: string;
  /** Runs for every gateway found dead, before it is forgotten (the presence reaper). */
  onGatewayGone?: (brokerId: string) => Promise<void>;
}

/** Waits for `promise` (errors ignored) at most `ms`. */
async function withTimeout(promise: Promise<unknown>, ms: number): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([promise.catch(() => undefined), new Promise((resolve) => (timer = setTimeout(resolve, ms)))]);
  clearTimeout(timer);
}

/** QUIT when connected (pending replies first), else drop the connection: never waits for Redis to come back. */
export async function closeConnection(conn: Redis): Promise<void> {
  if (conn.status === 'ready') await withTimeout(conn.quit(), 1000);
  conn.disconnect();
}

/** Logs the first error of a connection and then one in a hundred (Redis down: one per retry). */
function errorLogger(log: Logger, connection: string): (err: Error) => void {
  let n = 0;
  return (err) => {
    if (n++ % 100 === 0) log.warn({ connection, err: err.message, errors: n }, 'mqtt: redis connection error');
  };
}

/** The broker's state in the Redis at `opts.url`; see the module comment. */
export function redisBrokerState(opts: RedisBrokerOptions): BrokerStateFactory {
  return async (ctx): Promise<BrokerState> => {
    const log = ctx.log;
    const brokerId = opts.brokerId ?? randomUUID();
    // Named, so other gateways see in CLIENT LIST that this process is alive.
    const keeperConn = new Redis(opts.url, { connectionName: CONNECTION_PREFIX + brokerId, lazyConnect: true, commandTimeout: 5000 });
    keeperConn.on('error', errorLogger(log, 'keeper'));
    try {
      await keeperConn.connect();
    } catch (err) {
      keeperConn.disconnect();
      throw err;
    }

    const db = new LegacyRedisClient(opts.url, {});
    db.on('error', errorLogger(log, 'persistence'));
    const persistence = createRedisPersistence({ conn: db, maxSessionDelivery: Math.max(1000, ctx.offlineQueueMax) });
    // Forwards to the other gateways only while there are any (the keeper below knows).
    const mq = redisBusEmitter({ url: opts.url, brokerId, log, peers: () => keeper.othersAlive() });

    let aedesRef: Aedes | null = null;
    const keeper = new WillKeeper({
      redis: keeperConn,
      brokerId,
      decode: (buf) => msgpack.decode(buf),
      publish: (will: WillPacket) =>
        new Promise((resolve) => {
          if (!aedesRef || aedesRef.closed) return resolve();
          aedesRef.publish(will, () => resolve());
        }),
      log,
      ...(opts.beatMs !== undefined && { beatMs: opts.beatMs }),
      ...(opts.deadAfterMs !== undefined && { deadAfterMs: opts.deadAfterMs }),
      ...(opts.onGatewayGone && { onGone: opts.onGatewayGone }),
    });

    // Messages stored before their PUBACK (beforeAck), by `<brokerId>:<brokerCounter>`: aedes'
    // own store step after the PUBACK skips them.
    const early = { enqueued: new Set<string>(), retained: new Set<string>() };
    const keyOf = (packet: unknown): string => {
      const p = packet as { brokerId?: unknown; brokerCounter?: unknown };
      return `${String(p.brokerId)}:${String(p.brokerCounter)}`;
    };
    const remember = (set: Set<string>, key: string) => {
      set.add(key);
      // Normally taken back out right after; bounded in case aedes never gets to it.
      if (set.size > 10_000) set.delete(set.values().next().value as string);
    };
    const storeRetained = persistence.storeRetained.bind(persistence);
    persistence.storeRetained = async (packet: unknown) => {
      if (early.retained.delete(keyOf(packet))) return;
      return storeRetained(packet);
    };

    const enqueue = persistence.outgoingEnqueueCombi.bind(persistence);
    persistence.outgoingEnqueueCombi = async (subs: Sub[], packet: unknown) => {
      // aedes calls this for every publish; with no persistent subscriber there is nothing to do
      // (and only a stale entry to drop, if beforeAck stored for a subscriber gone since).
      if (subs.length === 0) {
        if (early.enqueued.size > 0) early.enqueued.delete(keyOf(packet));
        return;
      }
      if (early.enqueued.delete(keyOf(packet))) return;
      const elsewhere = subs.filter((s) => !ctx.isLocal(s.clientId));
      if (elsewhere.length === 0) return enqueue(subs, packet);
      const p = keeperConn.pipeline().hmget(SESSIONS_KEY, ...elsewhere.map((s) => s.clientId));
      for (const s of elsewhere) p.llen(outgoingKey(s.clientId));
      const res = (await p.exec()) ?? [];
      const holders = (res[0]?.[1] ?? []) as (string | null)[];
      const full = new Set<Sub>();
      elsewhere.forEach((s, i) => {
        const holder = holders[i];
        if (holder != null && keeper.isLive(holder)) return;
        if (Number(res[i + 1]?.[1] ?? 0) >= ctx.offlineQueueMax) full.add(s);
      });
      for (const s of full) ctx.onDrop(s.clientId);
      const kept = full.size === 0 ? subs : subs.filter((s) => !full.has(s));
      if (kept.length > 0) await enqueue(kept, packet);
    };

    // aedes 1.2 stores a persistent SUBSCRIBE once per filter, each time with every filter of the
    // packet; aedes-persistence-redis then waits for its own broadcast of each copy under one key,
    // so all but the last wait forever and a SUBSCRIBE with two filters never gets its SUBACK.
    // One store per packet: the calls share the packet's array. The broadcast only updates the
    // other gateways' in-memory index (the subscriptions are already in Redis), so a lost one
    // does not hold the SUBACK back either.
    const addSubscriptions = persistence.addSubscriptions.bind(persistence);
    const adding = new WeakMap<object, Promise<unknown>>();
    persistence.addSubscriptions = (client, subs) => {
      let stored = adding.get(subs);
      if (!stored) {
        let timer: NodeJS.Timeout | undefined;
        const broadcastLost = new Promise((resolve) => (timer = setTimeout(resolve, 5000)));
        stored = Promise.race([addSubscriptions(client, subs), broadcastLost.then(() => log.warn({ clientId: client.id }, 'mqtt: subscription broadcast not seen back within 5 s'))]).finally(() =>
          clearTimeout(timer),
        );
        adding.set(subs, stored);
      }
      return stored;
    };
    // aedes stores a QoS 1 delivery in flight only for a persistent session (client.js: a clean
    // client's is written at once), yet clears on every PUBACK: for a clean session that was a
    // lookup of a key that cannot exist (aedes-persistence-redis' message-id cache, about 1 µs per
    // message). The stored packets a clean CONNECT finds are still cleared (their cmd is publish).
    const clearMessageId = persistence.outgoingClearMessageId.bind(persistence);
    persistence.outgoingClearMessageId = (client, packet) =>
      (client as { clean?: boolean }).clean === true && packet.cmd === 'puback' ? Promise.resolve(undefined) : clearMessageId(client, packet);
    // A clean CONNECT: whatever an earlier persistent session of this id had queued is discarded.
    const cleanSubscriptions = persistence.cleanSubscriptions.bind(persistence);
    persistence.cleanSubscriptions = async (client) => {
      await keeperConn.multi().eval(DRAIN_QUEUE, 1, outgoingKey(client.id)).hdel(SESSIONS_KEY, client.id).exec();
      return cleanSubscriptions(client);
    };
    // A persistent CONNECT (aedes fetches its subscriptions): this gateway holds the session now.
    const subscriptionsByClient = persistence.subscriptionsByClient.bind(persistence);
    persistence.subscriptionsByClient = async (client) => {
      await keeperConn.hset(SESSIONS_KEY, client.id, brokerId);
      return subscriptionsByClient(client);
    };
    // aedes calls delWill with the connecting Client (no brokerId) before storing its new will.
    const delWill = persistence.delWill.bind(persistence);
    persistence.delWill = async (client) => {
      if (client.brokerId === undefined) await keeper.onConnect(client.id).catch((err: unknown) => log.warn({ err, clientId: client.id }, 'mqtt: could not check for an earlier will'));
      return delWill(client);
    };
    // aedes' own will sweep (every 4 heartbeats) is replaced by the keeper.
    persistence.streamWill = () => Readable.from([]);

    const onDisconnect = (client: Client) => {
      if (client.clean) return;
      const id = client.id;
      // After a takeover on this gateway the new connection registers right after the old one
      // leaves: the entry is then the new connection's.
      setImmediate(() => {
        if (!ctx.isLocal(id)) void keeperConn.eval(FORGET_SESSION, 1, SESSIONS_KEY, id, brokerId).catch(() => undefined);
      });
    };

    return {
      kind: 'redis',
      brokerId,
      persistence,
      mq,
      async beforeAck(packet) {
        // The id and number aedes would give it (its Packet keeps ones already set), so that the
        // message stored now is the one aedes delivers and acknowledges later.
        const broker = aedesRef as unknown as { id: string; counter: number };
        const p = packet as typeof packet & { brokerId?: string; brokerCounter?: number };
        p.brokerId = broker.id;
        p.brokerCounter = ++broker.counter;
        const key = keyOf(p);
        if (p.retain) {
          await storeRetained(p);
          remember(early.retained, key);
        }
        let subs = (await persistence.subscriptionsByTopic(p.topic)) as (Sub & { topic: string })[];
        // As aedes does: `$SYS/...` never goes to `#` or `+/...` subscriptions.
        if (p.topic.startsWith('$SYS/')) subs = subs.filter((s) => !s.topic.startsWith('#') && !s.topic.startsWith('+'));
        // No persistent subscriber: nothing to store, and aedes' own step after the PUBACK finds
        // the same (or stores for one that subscribed meanwhile).
        if (subs.length === 0) return;
        await persistence.outgoingEnqueueCombi(subs, p);
        remember(early.enqueued, key);
      },
      status() {
        const conns = { persistence: db.status, bus: mq.pubConn.status, 'bus-subscriber': mq.subConn.status, keeper: keeperConn.status };
        const down = Object.entries(conns).filter(([, s]) => s !== 'ready');
        return down.length === 0 ? { ok: true, detail: 'redis' } : { ok: false, detail: `redis ${down.map(([name, s]) => `${name} ${s}`).join(', ')}` };
      },
      async attach(aedes) {
        aedesRef = aedes;
        aedes.on('clientDisconnect', onDisconnect);
        await keeper.start();
        // Announced on the bus before any listener opens: the others forward to this gateway now.
        await mq.ready();
        log.info({ brokerId }, 'mqtt: sessions, retained messages and wills in redis');
      },
      beforeClose(aedes) {
        // The wills of connections this gateway closes on its way out stay in Redis: another
        // gateway (or this one, started again) publishes them (redis-wills.ts).
        for (const client of Object.values((aedes as unknown as { clients: Record<string, { will: unknown }> }).clients)) client.will = null;
      },
      async close() {
        await keeper.stop();
        // Unreachable Redis: destroy would only wait (its last step is this disconnect anyway).
        if (db.status === 'ready') await withTimeout(persistence.destroy(), 2000);
        db.disconnect();
        await closeConnection(keeperConn);
      },
    };
  };
}
