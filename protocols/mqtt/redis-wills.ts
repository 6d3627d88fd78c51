/**
 * Wills of connections whose gateway died (contract §4: "will messages work"), for brokers that
 * share one Redis. aedes-persistence-redis stores each will under the id of the broker holding the
 * connection (`will:<brokerId>:<clientId>`), and aedes publishes the wills of a broker only when
 * it has stopped hearing that broker's heartbeat, every 4 heartbeat intervals, in a process that
 * heard it at least once. That loses or garbles wills in three ways, all handled here instead:
 *
 * - A broker that comes back with the same id never publishes the wills of its previous life, and
 *   one that comes back with a new id waits 4 minutes (aedes' default) before it does.
 * - It publishes the stored packet as is, with the dead broker's id: aedes then numbers it with
 *   its own counter under that id, so subscribers that saw higher numbers from the dead broker drop
 *   it as a duplicate, and its persistence key can overwrite a queued message of the dead broker.
 * - A client that reconnects first does not remove the old will (aedes deletes
 *   `will:undefined:<id>`), so it is published later, after the client came back.
 *
 * Liveness: every broker refreshes its score in the sorted set `iotgate:mqtt:brokers` every
 * `beatMs` and keeps a Redis connection named `iotgate:mqtt:<brokerId>`. A broker is dead when its
 * score is older than `deadAfterMs` (a host that vanished), or when its named connection is missing
 * from CLIENT LIST on two looks at least `beatMs / 2` apart (a killed process: the kernel closes
 * its sockets at once). CLIENT LIST counts only for a broker that refreshed its liveness since the
 * Redis server started (the same `run_id` in `iotgate:mqtt:broker-runs`): right after a Redis
 * restart every gateway is still reconnecting. A will is published by whoever deletes its key (one
 * Lua script), so exactly one gateway publishes it.
 *
 * The same look serves presence: for every dead broker, `onGone(brokerId)` runs (the gateway's
 * PresenceService.reap, whose owner id is the broker id) before the broker is taken out of the set;
 * if it fails, the broker stays in the set and the next pass (here or elsewhere) runs it again.
 */
import type { Redis } from 'ioredis';
import type { Logger } from 'pino';

export const BROKERS_KEY = 'iotgate:mqtt:brokers';
/** Hash: broker id → the Redis `run_id` it last refreshed its liveness on. */
export const BROKER_RUNS_KEY = 'iotgate:mqtt:broker-runs';
export const CONNECTION_PREFIX = 'iotgate:mqtt:';
// The layout of aedes-persistence-redis 12 (asyncPersistence.js): the list of will keys and one
// key per will.
const WILLS_LIST = 'will';
export const willKey = (brokerId: string, clientId: string): string => `will:${brokerId}:${encodeURIComponent(clientId)}`;
const brokerOfWillKey = (key: string): string | null => /^will:([^:]+):/.exec(key)?.[1] ?? null;

// Returns the will and deletes it (and its entry in the list): whoever gets it publishes it.
const CLAIM = `local v = redis.call('GET', KEYS[1])
if v then redis.call('DEL', KEYS[1]) end
redis.call('LREM', KEYS[2], 0, KEYS[1])
return v`;

/** The part of a stored will that is published (never the dead broker's id and counter). */
export interface WillPacket {
  cmd: 'publish';
  topic: string;
  payload: Buffer;
  qos: 0 | 1 | 2;
  retain: boolean;
  dup: false;
}

export interface WillKeeperOptions {
  /** A connection of this keeper's own, named `iotgate:mqtt:<brokerId>` (CLIENT SETNAME). */
  redis: Redis;
  brokerId: string;
  /** Decodes a stored will (the persistence's msgpack). */
  decode(stored: Buffer): unknown;
  /** Publishes a will through the broker; resolves when it was handed to the broker. */
  publish(will: WillPacket): Promise<void>;
  log: Logger;
  /** Liveness refresh and reaper interval (default 2000 ms). */
  beatMs?: number;
  /** A broker whose last refresh is older than this is dead (default 10 000 ms). */
  deadAfterMs?: number;
  /**
   * Called once per pass for each broker found dead, after its wills and before it is forgotten
   * (several gateways may call it for the same broker: it must be safe to run twice).
   */
  onGone?(brokerId: string): Promise<void>;
}

function toWill(value: unknown): WillPacket | null {
  if (value === null || typeof value !== 'object') return null;
  const v = value as Record<string, unknown>;
  if (typeof v.topic !== 'string' || v.topic.length === 0) return null;
  const payload = Buffer.isBuffer(v.payload) ? v.payload : v.payload instanceof Uint8Array ? Buffer.from(v.payload) : typeof v.payload === 'string' ? Buffer.from(v.payload) : Buffer.alloc(0);
  const qos = v.qos === 1 || v.qos === 2 ? v.qos : 0;
  return { cmd: 'publish', topic: v.topic, payload, qos, retain: v.retain === true, dup: false };
}

const runIdOf = (info: string): string => /run_id:(\w+)/.exec(info)?.[1] ?? '';

/** The connection names in a CLIENT LIST reply. */
function parseClientNames(list: string): Set<string> {
  const names = new Set<string>();
  for (const line of list.split('\n')) {
    const m = / name=(\S*)/.exec(line);
    if (m?.[1]) names.add(m[1]);
  }
  return names;
}

export class WillKeeper {
  private readonly redis: Redis;
  private readonly brokerId: string;
  private readonly beatMs: number;
  private readonly deadAfterMs: number;
  private readonly log: Logger;
  /** Brokers in the sorted set at the last look, with their last refresh (epoch ms). */
  private brokers = new Map<string, number>();
  /** Brokers whose connection was missing from CLIENT LIST, since when. */
  private readonly missing = new Map<string, number>();
  /** The Redis server's `run_id` (new at every Redis start), and the one each broker last saw. */
  private runId = '';
  private runs = new Map<string, string>();
  private clientListDenied = false;
  private timer: NodeJS.Timeout | null = null;
  private running: Promise<void> | null = null;
  private stopped = false;

  constructor(private readonly opts: WillKeeperOptions) {
    this.redis = opts.redis;
    this.brokerId = opts.brokerId;
    this.beatMs = opts.beatMs ?? 2000;
    this.deadAfterMs = opts.deadAfterMs ?? 10_000;
    this.log = opts.log;
  }

  /** Registers this broker and publishes the wills of dead ones (before any listener is bound). */
  async start(): Promise<void> {
    this.runId = runIdOf(await this.redis.info('server'));
    await this.pass(true);
    this.timer = setInterval(() => {
      if (this.running) return;
      this.running = this.pass(false)
        .catch((err: unknown) => this.log.warn({ err }, 'mqtt will keeper: pass failed'))
        .finally(() => (this.running = null));
    }, this.beatMs);
    this.timer.unref();
  }

  /** Whether another broker looked alive at the last look. */
  othersAlive(): boolean {
    const now = Date.now();
    for (const [id, at] of this.brokers) if (id !== this.brokerId && !this.isDead(id, at, now)) return true;
    return false;
  }

  /** Whether `brokerId` looked alive at the last look (this broker always is). */
  isLive(brokerId: string): boolean {
    if (brokerId === this.brokerId) return true;
    const at = this.brokers.get(brokerId);
    return at !== undefined && !this.isDead(brokerId, at, Date.now());
  }

  /**
   * A client is connecting here: a will of an earlier connection of the same client id, left by a
   * dead broker, is published now, before the new session starts. One left by a live broker is
   * that broker's: it publishes it when it closes the old connection (aedes' takeover).
   */
  async onConnect(clientId: string): Promise<void> {
    const others = [...this.brokers.keys()].filter((b) => b !== this.brokerId);
    if (others.length === 0 || this.stopped) return;
    const keys = others.map((b) => willKey(b, clientId));
    const pipeline = this.redis.pipeline();
    for (const k of keys) pipeline.exists(k);
    const found = ((await pipeline.exec()) ?? []).map(([, n]) => n === 1);
    const candidates = others.filter((_, i) => found[i]);
    if (candidates.length === 0) return;
    const names = await this.clientNames();
    const now = Date.now();
    for (const b of candidates) {
      if (this.gone(b, names) || this.isDead(b, this.brokers.get(b) ?? 0, now)) await this.claimAndPublish(willKey(b, clientId), 'reconnect');
    }
  }

  /**
   * Stops the reaper and marks this broker dead (score 0), so the others publish the wills it
   * leaves at their next look.
   */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearInterval(this.timer);
    // Redis unreachable: nothing to wait for (the others see this broker's liveness expire).
    if (this.redis.status !== 'ready') return;
    await this.running;
    await this.redis.zadd(BROKERS_KEY, '0', this.brokerId).catch(() => undefined);
  }

  /**
   * Whether `brokerId`'s named connection is missing from CLIENT LIST, for a broker that refreshed
   * its liveness since this Redis server started (same `run_id`): one that has not may still be
   * reconnecting after a Redis restart (then only the expiry of its liveness counts).
   */
  private gone(brokerId: string, names: Set<string> | null): boolean {
    return names !== null && this.runs.get(brokerId) === this.runId && !names.has(CONNECTION_PREFIX + brokerId);
  }

  private isDead(brokerId: string, lastBeat: number, now: number): boolean {
    if (lastBeat < now - this.deadAfterMs) return true;
    const since = this.missing.get(brokerId);
    return since !== undefined && now - since >= this.beatMs / 2;
  }

  private async clientNames(): Promise<Set<string> | null> {
    if (this.clientListDenied) return null;
    try {
      return parseClientNames(String(await this.redis.call('CLIENT', 'LIST', 'TYPE', 'normal')));
    } catch (err) {
      this.clientListDenied = true;
      this.log.warn({ err }, 'mqtt will keeper: CLIENT LIST refused; a dead gateway is noticed only after its liveness expires');
      return null;
    }
  }

  private async pass(first: boolean): Promise<void> {
    if (this.stopped) return;
    const now = Date.now();
    const res = await this.redis
      .multi()
      .zadd(BROKERS_KEY, String(now), this.brokerId)
      .hset(BROKER_RUNS_KEY, this.brokerId, this.runId)
      .zrange(BROKERS_KEY, '0', '-1', 'WITHSCORES')
      .hgetall(BROKER_RUNS_KEY)
      .info('server')
      .exec();
    const flat = (res?.[2]?.[1] ?? []) as string[];
    const brokers = new Map<string, number>();
    for (let i = 0; i + 1 < flat.length; i += 2) brokers.set(flat[i] as string, Number(flat[i + 1]));
    this.brokers = brokers;
    this.runs = new Map(Object.entries((res?.[3]?.[1] ?? {}) as Record<string, string>));
    // Read after this broker wrote it: if Redis restarted in between, the next pass writes the new one.
    this.runId = runIdOf(String(res?.[4]?.[1] ?? ''));
    const names = await this.clientNames();

    const dead = new Set<string>();
    for (const [b, at] of brokers) {
      if (b === this.brokerId) continue;
      if (this.gone(b, names)) {
        if (!this.missing.has(b)) this.missing.set(b, now);
      } else this.missing.delete(b);
      if (this.isDead(b, at, now)) dead.add(b);
    }
    for (const b of this.missing.keys()) if (!brokers.has(b)) this.missing.delete(b);
    // Wills of brokers that are not in the set at all (a broker that stopped, whose wills were
    // left when this one looked last) are looked for at start and along with any dead broker.
    if (dead.size > 0 || first) await this.reap(dead);
  }

  private async reap(dead: Set<string>): Promise<void> {
    // One snapshot of both: a broker registers before it accepts its first connection, so every
    // will in the list belongs to a broker in the set, or to one that was taken out (dead).
    const res = await this.redis.multi().lrange(WILLS_LIST, 0, -1).zrange(BROKERS_KEY, '0', '-1').exec();
    const keys = (res?.[0]?.[1] ?? []) as string[];
    const registered = new Set((res?.[1]?.[1] ?? []) as string[]);
    let published = 0;
    for (const key of keys) {
      if (this.stopped) return;
      const b = brokerOfWillKey(key);
      if (b === null || b === this.brokerId) continue;
      if (!dead.has(b) && registered.has(b)) continue;
      if (await this.claimAndPublish(key, 'gateway gone')) published++;
    }
    // Forgotten only once onGone succeeded: otherwise the next pass (here or elsewhere) runs it again.
    const done: string[] = [];
    for (const b of dead) {
      if (this.stopped) return;
      try {
        await this.opts.onGone?.(b);
        done.push(b);
      } catch (err) {
        this.log.warn({ err, broker: b }, 'mqtt will keeper: handling a gateway that is gone failed; retried at the next pass');
      }
    }
    if (done.length > 0) await this.redis.multi().zrem(BROKERS_KEY, ...done).hdel(BROKER_RUNS_KEY, ...done).exec();
    for (const b of done) this.missing.delete(b);
    if (dead.size > 0 || published > 0) this.log.info({ brokers: [...dead], wills: published }, 'published the wills of gateways that are gone');
  }

  private async claimAndPublish(key: string, why: string): Promise<boolean> {
    const stored = (await this.redis.callBuffer('EVAL', CLAIM, '2', key, WILLS_LIST)) as Buffer | null;
    if (stored === null) return false;
    let will: WillPacket | null = null;
    try {
      will = toWill(this.opts.decode(stored));
    } catch (err) {
      this.log.warn({ err, key }, 'mqtt will keeper: a stored will could not be decoded; dropped');
    }
    if (will === null) return false;
    this.log.debug({ key, topic: will.topic, why }, 'publishing the will of a connection whose gateway is gone');
    await this.opts.publish(will);
    return true;
  }
}
