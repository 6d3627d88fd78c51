/**
 * The embedded MQTT broker (aedes 1.x) behind the TCP and mutual-TLS listeners. This foundation
 * authenticates CONNECT and closes the sessions of revoked devices; topic authorization, presence
 * and the errors topic are the MQTT edge issue's. Until then every PUBLISH and SUBSCRIBE is refused
 * (secure by default).
 */
import { Aedes, type Client } from 'aedes';
import { createAuthenticate } from './hooks/authenticate.js';
import type { MqttEdgeDeps, MqttPrincipal } from './types.js';

export interface MqttBroker {
  readonly aedes: Aedes;
  /** Closes every open session of a device (revocation). */
  disconnectDevice(deviceId: string): number;
  close(): Promise<void>;
}

export async function createMqttBroker(deps: MqttEdgeDeps): Promise<MqttBroker> {
  const principals = new WeakMap<Client, MqttPrincipal>();
  const byDevice = new Map<string, Set<Client>>();

  const aedes = await Aedes.createBroker({
    authenticate: createAuthenticate(deps, principals),
    authorizePublish: (_client, _packet, callback) => callback(new Error('publish not authorized')),
    authorizeSubscribe: (_client, _sub, callback) => callback(new Error('subscribe not authorized')),
  });

  aedes.on('clientReady', (client) => {
    const p = principals.get(client);
    if (p?.kind !== 'device') return;
    let set = byDevice.get(p.deviceId);
    if (!set) byDevice.set(p.deviceId, (set = new Set()));
    set.add(client);
  });
  aedes.on('clientDisconnect', (client) => {
    const p = principals.get(client);
    if (p?.kind === 'device') byDevice.get(p.deviceId)?.delete(client);
  });
  aedes.on('clientError', (client, err) => deps.log.debug({ clientId: client.id, err: err.message }, 'mqtt client error'));
  aedes.on('connectionError', (client, err) => deps.log.debug({ clientId: client?.id, err: err.message }, 'mqtt connection error'));

  return {
    aedes,
    disconnectDevice(deviceId) {
      const set = byDevice.get(deviceId);
      if (!set) return 0;
      const n = set.size;
      for (const client of set) client.close();
      byDevice.delete(deviceId);
      return n;
    },
    close: () => new Promise<void>((resolve) => aedes.close(() => resolve())),
  };
}
