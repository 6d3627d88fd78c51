/**
 * What the edge knows of each aedes client: who it is, which listener it came through, its guard,
 * and why it ended. aedes gives none of that, so it is kept here, keyed by the client's connection.
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

/**
 * Everything the table keeps for one connection, in one object under one WeakMap key (the stream
 * aedes reads, `client.conn`): an idle connection costs this object and one ephemeron entry.
 */
class Session {
  principal: MqttPrincipal | undefined = undefined;
  sessionId: string | undefined = undefined;
  reason: DisconnectReason | undefined = undefined;

  constructor(public info: ConnectionInfo | undefined) {}
}

export class SessionTable {
  private readonly sessions = new WeakMap<object, Session>();
  /** Clients that passed authentication and are finishing CONNECT, by client id. */
  private readonly connecting = new Map<string, Client>();
  /** Live device clients by device id (one per id: the broker enforces takeover). */
  private readonly devices = new Map<string, Client>();

  private keyOf(client: Client): object {
    return (client.conn as Duplex | undefined) ?? client;
  }

  private entry(client: Client): Session {
    const key = this.keyOf(client);
    let s = this.sessions.get(key);
    if (s === undefined) this.sessions.set(key, (s = new Session(undefined)));
    return s;
  }

  addConnection(stream: Duplex, info: ConnectionInfo): void {
    const s = this.sessions.get(stream);
    if (s === undefined) this.sessions.set(stream, new Session(info));
    else s.info = info;
  }

  connection(client: Client): ConnectionInfo | undefined {
    return this.sessions.get(this.keyOf(client))?.info;
  }

  authenticated(client: Client, principal: MqttPrincipal): void {
    this.entry(client).principal = principal;
    this.connecting.set(client.id, client);
  }

  principal(client: Client | null): MqttPrincipal | undefined {
    return client ? this.sessions.get(this.keyOf(client))?.principal : undefined;
  }

  /** The client's CONNECT completed. Returns its session id. */
  ready(client: Client): string {
    if (this.connecting.get(client.id) === client) this.connecting.delete(client.id);
    const s = this.entry(client);
    // join() makes one flat string (a template literal would keep a rope of three parts).
    const id = [client.id, ++nextSession].join('#');
    s.sessionId = id;
    const p = s.principal;
    if (p?.kind === 'device') this.devices.set(p.deviceId, client);
    return id;
  }

  sessionId(client: Client): string | undefined {
    return this.sessions.get(this.keyOf(client))?.sessionId;
  }

  markReason(client: Client, reason: DisconnectReason): void {
    const s = this.entry(client);
    if (s.reason === undefined) s.reason = reason;
  }

  /** The client is gone; resolves why. */
  ended(client: Client): DisconnectReason {
    const s = this.sessions.get(this.keyOf(client));
    const p = s?.principal;
    if (p?.kind === 'device' && this.devices.get(p.deviceId) === client) this.devices.delete(p.deviceId);
    const pending = this.connecting.get(client.id);
    if (pending === client) this.connecting.delete(client.id);
    const marked = s?.reason;
    if (marked) return marked;
    if (pending !== undefined && pending !== client) return 'takeover';
    const guard = s?.info?.guard;
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
