/**
 * aedes' publish emitter for several gateways on one Redis, local first (issue 8 items 2 and 5).
 *
 * A publish is delivered to this gateway's subscribers at once, by an in-process mqemitter, and
 * forwarded to the other gateways through Redis pub/sub: the messages of one event-loop turn go
 * in one PUBLISH on the channel `iotgate:mqtt:bus` (a frame: this gateway's id and a newline, then
 * per packet a 4-byte length and the packet in msgpack, encoded when it is emitted). Every gateway subscribes to that channel, skips its own frames by their
 * first bytes, and hands the others' packets to its in-process emitter.
 *
 * It replaces mqemitter-redis, which sent every message through Redis even when all its
 * subscribers were local, made aedes wait for that round trip before the PUBACK, and cost one
 * PUBLISH, one msgpack encode and decode and one dedup-cache lookup per message and gateway (the
 * largest share of the gateway's CPU in the Redis benchmark, docs/performance.md).
 *
 * A gateway alone on its Redis sends nothing but `$SYS` messages: it forwards while the will keeper sees another live
 * gateway (`peers`), or for 10 s after a frame from another gateway arrived. A starting gateway
 * announces itself with an empty frame and waits for it to come back before its listeners open,
 * so the others forward to it from then on, not only from their next keeper pass.
 *
 * Delivery to other gateways is at most once, as with any Redis pub/sub (and mqemitter-redis):
 * a frame published while another gateway's subscriber reconnects is lost for it. Messages for
 * offline persistent sessions do not depend on it: they are stored in Redis before the PUBACK
 * (redis.ts `beforeAck`). While Redis is unreachable frames are dropped at once (counted), never
 * queued.
 */
import { createRequire } from 'node:module';
import { Redis } from 'ioredis';
import mqemitter from 'mqemitter';
import type { Logger } from 'pino';

export const BUS_CHANNEL = 'iotgate:mqtt:bus';

/** How long a frame from another gateway keeps this one forwarding without the keeper's word. */
const PEER_GRACE_MS = 10_000;

/** A frame is sent once it holds this many bytes of payload, or at the end of the turn. */
const FRAME_BYTES = 512 * 1024;

const require = createRequire(import.meta.url);
const fromPersistence = createRequire(require.resolve('aedes-persistence-redis'));
const msgpack = fromPersistence('msgpack-lite') as { encode(value: unknown): Buffer; decode(buf: Buffer): unknown };

interface Packet {
  topic: string;
  payload?: Buffer | string;
}

type Done = (err?: Error) => void;

export interface RedisBusEmitter {
  on(topic: string, handler: (packet: { topic: string; payload: Buffer }, done: () => void) => void): void;
  emit(packet: Packet, done?: Done): void;
  close(done: () => void): void;
  /** Frames (and messages) sent to and received from other gateways, and dropped while Redis was unreachable. */
  readonly stats: { framesSent: number; messagesSent: number; framesReceived: number; messagesReceived: number; messagesDropped: number };
  /** Resolves once the channel subscription is active. */
  ready(): Promise<void>;
  readonly pubConn: Redis;
  readonly subConn: Redis;
}

export interface RedisBusEmitterOptions {
  url: string;
  /** This gateway's broker id (unique per process): frames starting with it are its own. */
  brokerId: string;
  /** Whether another gateway is alive (the will keeper's view); absent: always forward. */
  peers?: () => boolean;
  channel?: string;
  log?: Logger;
}

export function redisBusEmitter(opts: RedisBusEmitterOptions): RedisBusEmitter {
  const channel = opts.channel ?? BUS_CHANNEL;
  const origin = Buffer.from(`${opts.brokerId}\n`, 'latin1');
  // The same in-process emitter aedes builds (its `concurrency`), matching `a/+` with `a/` [MQTT-4.7.1-3].
  const local = mqemitter({ concurrency: 100, matchEmptyLevels: true }) as unknown as RedisBusEmitter & {
    emit(packet: Packet, done?: Done): void;
    close(done: () => void): void;
  };
  const localEmit = local.emit.bind(local);
  const localClose = local.close.bind(local);
  const connection = { enableOfflineQueue: false, maxRetriesPerRequest: 0, retryStrategy: (attempt: number) => Math.min(50 * attempt, 1000) };
  const pubConn = new Redis(opts.url, { ...connection, connectionName: `iotgate:bus-pub:${opts.brokerId}` });
  const subConn = new Redis(opts.url, { ...connection, enableOfflineQueue: true, connectionName: `iotgate:bus-sub:${opts.brokerId}` });
  const stats = { framesSent: 0, messagesSent: 0, framesReceived: 0, messagesReceived: 0, messagesDropped: 0 };
  let errors = 0;
  const onError = (err: Error) => {
    if (errors++ % 100 === 0) opts.log?.warn({ err: err.message, errors }, 'mqtt: redis bus connection error');
  };
  pubConn.on('error', onError);
  subConn.on('error', onError);
  /** When a frame of another gateway last arrived (epoch ms). */
  let foreignAt = 0;
  let helloBack: (() => void) | null = null;
  // ioredis subscribes again by itself after a reconnect. Ready once our own announcement came
  // back (the others have it too), or after 2 s without it (the keeper tells them soon anyway).
  const subscribed = subConn.subscribe(channel).then(
    () =>
      new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, 2000);
        timer.unref();
        helloBack = () => {
          clearTimeout(timer);
          resolve();
        };
        const announce = () => void pubConn.publish(channel, origin).catch(() => undefined);
        if (pubConn.status === 'ready') announce();
        else pubConn.once('ready', announce);
      }),
  );
  subscribed.catch(() => undefined);
  subConn.on('messageBuffer', (_channel: Buffer, frame: Buffer) => {
    if (frame.length >= origin.length && frame.compare(origin, 0, origin.length, 0, origin.length) === 0) {
      if (frame.length === origin.length) helloBack?.();
      return;
    }
    foreignAt = Date.now();
    decideAt = 0;
    const packets: Packet[] = [];
    try {
      for (let at = frame.indexOf(10) + 1; at < frame.length; ) {
        const len = frame.readUInt32BE(at);
        packets.push(msgpack.decode(frame.subarray(at + 4, at + 4 + len)) as Packet);
        at += 4 + len;
      }
    } catch (err) {
      opts.log?.warn({ err: (err as Error).message }, 'mqtt: unreadable frame on the redis bus; skipped');
      return;
    }
    stats.framesReceived++;
    stats.messagesReceived += packets.length;
    for (const p of packets) localEmit(p);
  });

  // The packets of this turn, each as a length and its msgpack encoding.
  let parts: Buffer[] = [origin];
  let messages = 0;
  let batchBytes = 0;
  let scheduled = false;
  let closed = false;
  /** Whether messages go to other gateways, decided again every 100 ms (and at once on a foreign frame). */
  let forwarding = true;
  let decideAt = 0;
  const forwardingNow = (): boolean => {
    const now = Date.now();
    if (now >= decideAt) {
      forwarding = opts.peers === undefined || opts.peers() || now - foreignAt < PEER_GRACE_MS;
      decideAt = now + 100;
    }
    return forwarding;
  };
  const flush = () => {
    scheduled = false;
    if (messages === 0) return;
    const frame = Buffer.concat(parts, batchBytes + origin.length);
    const count = messages;
    parts = [origin];
    messages = 0;
    batchBytes = 0;
    if (pubConn.status !== 'ready') {
      stats.messagesDropped += count;
      return;
    }
    stats.framesSent++;
    stats.messagesSent += count;
    pubConn.publish(channel, frame).catch(() => {
      stats.messagesDropped += count;
    });
  };

  local.emit = (packet: Packet, done?: Done) => {
    localEmit(packet, done);
    // `$SYS/...` always goes out: it carries aedes-persistence-redis' subscription index updates
    // (`$SYS/<id>/sub/add|rm`) and session takeovers, which a gateway that started a moment ago
    // must not miss while the others have not heard of it yet. They are rare.
    if (closed || (!forwardingNow() && !packet.topic.startsWith('$SYS/'))) return;
    let encoded: Buffer;
    try {
      encoded = msgpack.encode(packet);
    } catch (err) {
      stats.messagesDropped++;
      opts.log?.warn({ err: (err as Error).message, topic: packet.topic }, 'mqtt: could not encode a message for the redis bus');
      return;
    }
    const len = Buffer.allocUnsafe(4);
    len.writeUInt32BE(encoded.length, 0);
    parts.push(len, encoded);
    messages++;
    batchBytes += 4 + encoded.length;
    if (batchBytes >= FRAME_BYTES) flush();
    else if (!scheduled) {
      scheduled = true;
      setImmediate(flush);
    }
  };
  local.close = (done: () => void) => {
    if (!closed) {
      closed = true;
      flush();
    }
    let pending = 2;
    const finish = () => {
      if (--pending === 0) localClose(done);
    };
    // QUIT when connected (what was published goes first), else drop: never wait for Redis.
    for (const conn of [pubConn, subConn]) {
      if (conn.status !== 'ready') {
        conn.disconnect();
        finish();
        continue;
      }
      const timer = setTimeout(() => conn.disconnect(), 1000);
      timer.unref();
      conn
        .quit()
        .catch(() => conn.disconnect())
        .finally(() => {
          clearTimeout(timer);
          finish();
        });
    }
  };
  Object.assign(local, { stats, pubConn, subConn, ready: () => subscribed });
  return local;
}
