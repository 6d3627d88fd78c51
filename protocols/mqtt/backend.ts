/**
 * Where the broker keeps its state (sessions, queued QoS>0 messages, retained messages, wills) and
 * how it fans messages out: in this process (aedes-persistence's memory store and aedes' own
 * emitter, the embedded default) or in Redis (redis.ts). The broker opens one state when it is
 * created and closes it after aedes.
 */
import type { Aedes, PublishPacket } from 'aedes';
import type { Logger } from 'pino';
import { boundedMemoryPersistence, type Persistence } from './offline-queue.js';

/** What the broker tells its state when opening it. */
export interface BrokerStateContext {
  log: Logger;
  /** Messages queued for one offline persistent session; further ones are dropped. */
  offlineQueueMax: number;
  /** Whether a client with this id is connected to this broker (this process). */
  isLocal(clientId: string): boolean;
  /** A message for an offline session was dropped because its queue is full. */
  onDrop(clientId: string): void;
}

/** An aedes `mq` (mqemitter interface); aedes types it as `any`. */
export interface MessageEmitter {
  on(topic: string, handler: (packet: { topic: string; payload: Buffer }, done: () => void) => void): void;
  close(done: () => void): void;
}

export interface BrokerState {
  /** `memory` or `redis` (logs). */
  readonly kind: string;
  /** The aedes id; unique per process (never reused across restarts). Undefined: aedes picks one. */
  readonly brokerId: string | undefined;
  readonly persistence: Persistence;
  /** Undefined: aedes' in-process emitter. */
  readonly mq: MessageEmitter | undefined;
  /** Whether the state's own connections are up (readiness); absent: always (in memory). */
  status?(): { ok: boolean; detail: string };
  /** Called once, after aedes is listening and before any listener is bound. */
  attach(aedes: Aedes): Promise<void>;
  /**
   * A QoS 1 PUBLISH from a client that will be forwarded: called before aedes sends the PUBACK
   * (aedes 1.x acknowledges first and stores afterwards). A durable state stores the message here,
   * so an acknowledged message survives a crash; a rejection closes the connection unacknowledged.
   */
  beforeAck?(packet: PublishPacket): Promise<void>;
  /** Called before aedes closes its clients (graceful stop). */
  beforeClose(aedes: Aedes): void;
  /** After aedes closed: stops background work and closes connections. */
  close(): Promise<void>;
}

export type BrokerStateFactory = (ctx: BrokerStateContext) => Promise<BrokerState>;

/** The embedded default: aedes' memory persistence with a cap per offline session. */
export const memoryBrokerState: BrokerStateFactory = async (ctx) => {
  const offline = boundedMemoryPersistence(ctx.offlineQueueMax, ctx.isLocal, ctx.onDrop);
  return {
    kind: 'memory',
    brokerId: undefined,
    persistence: offline.persistence,
    mq: undefined,
    async attach(aedes) {
      // The client is connected again: its queue is being delivered.
      aedes.on('clientReady', (client) => offline.reset(client.id));
    },
    beforeClose() {},
    async close() {},
  };
};
