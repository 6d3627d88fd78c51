/**
 * preConnect: hands authenticate what it cannot see (an empty client id, the will topic, the
 * keepalive): the CONNECT packet itself, until authenticate has read it. authenticate takes it
 * out of the map and clears the packet's password there, so that nothing keeps it afterwards.
 */
import type { Client, ConnectPacket } from 'aedes';

/** The CONNECT packet as preConnect saw it (aedes does not change it before authenticate). */
export type ConnectFacts = Pick<ConnectPacket, 'clientId' | 'will' | 'keepalive' | 'username' | 'password'>;

export function createPreConnect(facts: WeakMap<Client, ConnectFacts>) {
  return (client: Client, packet: ConnectPacket, callback: (error: Error | null, success: boolean) => void): void => {
    facts.set(client, packet);
    callback(null, true);
  };
}
