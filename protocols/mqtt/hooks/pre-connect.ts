/** preConnect: remembers what authenticate cannot see (an empty client id, the will topic). */
import type { Client, ConnectPacket } from 'aedes';

export interface ConnectFacts {
  emptyClientId: boolean;
  willTopic: string | null;
}

export function createPreConnect(facts: WeakMap<Client, ConnectFacts>) {
  return (client: Client, packet: ConnectPacket, callback: (error: Error | null, success: boolean) => void): void => {
    facts.set(client, { emptyClientId: !packet.clientId, willTopic: packet.will?.topic ?? null });
    callback(null, true);
  };
}

