/** preConnect: remembers what authenticate cannot see (an empty client id, the will topic). */
import type { Client, ConnectPacket } from 'aedes';

export interface ConnectFacts {
  emptyClientId: boolean;
  willTopic: string | null;
  keepalive: number;
}

export function createPreConnect(facts: WeakMap<Client, ConnectFacts>) {
  return (client: Client, packet: ConnectPacket, callback: (error: Error | null, success: boolean) => void): void => {
    facts.set(client, { emptyClientId: !packet.clientId, willTopic: packet.will?.topic ?? null, keepalive: packet.keepalive ?? 0 });
    callback(null, true);
  };
}

