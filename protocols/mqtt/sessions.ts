/**
 * What the edge knows of each aedes client: who it is, which listener it came through, its guard,
 * and why it ended. aedes gives none of that, so it is kept here, keyed by the Client object.
 */
import type { Client } from 'aedes';
import type { Duplex } from 'node:stream';
import type { DeviceProtocol } from '../../src/core/model.js';
import type { DisconnectReason } from '../../src/core/events.js';
import { DISCONNECT, type GuardState } from './guard.js';
import type { MqttPrincipal } from './types.js';

export interface ConnectionInfo {
  protocol: DeviceProtocol;
  guard: GuardState;
}

let nextSession = 0;

export class SessionTable {
  private readonly connections = new WeakMap<Duplex, ConnectionInfo>();
  private readonly principals = new WeakMap<Client, MqttPrincipal>();
  private readonly sessionIds = new WeakMap<Client, string>();
  private readonly reasons = new WeakMap<Client, DisconnectReason>();
  /** Clients that passed authentication and are finishing CONNECT, by client id. */
  private readonly connecting = new Map<string, Client>();
  /** Live device clients by device id (one per id: the broker enforces takeover). */
  private readonly devices = new Map<string, Client>();

  addConnection(stream: Duplex, info: ConnectionInfo): void {
    this.connections.set(stream, info);
  }

  connection(client: Client): ConnectionInfo | undefined {
    return this.connections.get(client.conn as Duplex);
  }

  authenticated(client: Client, principal: MqttPrincipal): void {
    this.principals.set(client, principal);
    this.connecting.set(client.id, client);
  }

  principal(client: Client | null): MqttPrincipal | undefined {
    return client ? this.principals.get(client) : undefined;
  }

  /** The client's CONNECT completed. Returns its session id. */
  ready(client: Client): string {
    if (this.connecting.get(client.id) === client) this.connecting.delete(client.id);
    const id = `${client.id}#${++nextSession}`;
    this.sessionIds.set(client, id);
    const p = this.principals.get(client);
    if (p?.kind === 'device') this.devices.set(p.deviceId, client);
    return id;
  }

  sessionId(client: Client): string | undefined {
    return this.sessionIds.get(client);
  }

  markReason(client: Client, reason: DisconnectReason): void {
    if (!this.reasons.has(client)) this.reasons.set(client, reason);
  }

  /** The client is gone; resolves why. */
  ended(client: Client): DisconnectReason {
    const p = this.principals.get(client);
    if (p?.kind === 'device' && this.devices.get(p.deviceId) === client) this.devices.delete(p.deviceId);
    const pending = this.connecting.get(client.id);
    if (pending === client) this.connecting.delete(client.id);
    const marked = this.reasons.get(client);
    if (marked) return marked;
    if (pending !== undefined && pending !== client) return 'takeover';
    const guard = this.connection(client)?.guard;
    if (guard?.violation) return 'protocol_error';
    if (guard?.lastType === DISCONNECT) return 'client_disconnect';
    return 'connection_lost';
  }

  deviceClient(deviceId: string): Client | undefined {
    return this.devices.get(deviceId);
  }

  isConnected(clientId: string): boolean {
    return this.devices.has(clientId) || this.connecting.has(clientId);
  }
}
