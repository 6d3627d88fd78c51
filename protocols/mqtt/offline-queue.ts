/**
 * aedes' in-memory persistence with a cap on each offline session's queue. aedes queues every
 * QoS>0 message for a disconnected persistent session without limit; past `max` messages since
 * the session went offline, new ones for it are dropped (and counted) instead.
 */
import { createRequire } from 'node:module';

type Sub = { clientId: string };
/** The part of aedes-persistence's promise API this wrapper touches (its typings are callback-style). */
export interface Persistence {
  outgoingEnqueueCombi(subs: Sub[], packet: unknown): Promise<void>;
  outgoingEnqueue(sub: Sub, packet: unknown): Promise<void>;
  /** Called by aedes for every PUBACK/PUBCOMP (and to drop packets it will not send). */
  outgoingClearMessageId(client: unknown, packet: { cmd?: string; messageId?: number }): Promise<unknown>;
  /** Resolves when a QoS 2 packet with this id from this client is stored (a retransmission); rejects otherwise. */
  incomingGetPacket(client: unknown, packet: unknown): Promise<unknown>;
}
// aedes-persistence is CommonJS whose types declare only the callback API; aedes 1.x uses the
// promise API of the same object (its own default is this very factory).
const createMemoryPersistence = createRequire(import.meta.url)('aedes-persistence') as () => Persistence;

export interface BoundedPersistence {
  persistence: Persistence;
  /** The client is connected again: its queue is being delivered. */
  reset(clientId: string): void;
}

export function boundedMemoryPersistence(max: number, isConnected: (clientId: string) => boolean, onDrop: (clientId: string) => void): BoundedPersistence {
  const persistence = createMemoryPersistence();
  const queued = new Map<string, number>();
  const enqueue = persistence.outgoingEnqueueCombi.bind(persistence);
  persistence.outgoingEnqueueCombi = (subs: Sub[], packet: unknown) => {
    const kept: Sub[] = [];
    for (const sub of subs) {
      if (isConnected(sub.clientId)) {
        kept.push(sub);
        continue;
      }
      const n = queued.get(sub.clientId) ?? 0;
      if (n >= max) {
        onDrop(sub.clientId);
        continue;
      }
      queued.set(sub.clientId, n + 1);
      kept.push(sub);
    }
    return kept.length === 0 ? Promise.resolve() : enqueue(kept, packet);
  };
  return { persistence, reset: (clientId) => void queued.delete(clientId) };
}
