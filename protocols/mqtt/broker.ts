/**
 * The embedded MQTT broker (aedes 1.x, MQTT 3.1.1; see docs/security.md for why not MQTT 5 yet)
 * behind the TCP, mutual-TLS and WebSocket listeners. Hooks live in hooks/, one file each; this
 * file wires them, follows sessions for presence, and closes revoked devices' sessions.
 */
import type { Duplex } from 'node:stream';
import { Aedes, type Client } from 'aedes';
import { Gauge } from 'prom-client';
import type { DeviceProtocol } from '../../src/core/model.js';
import type { DisconnectReason } from '../../src/core/events.js';
import { createCounters, type EdgeContext } from './context.js';
import { guardStream } from './guard.js';
import { createAuthenticate } from './hooks/authenticate.js';
import { createAuthorizeForward } from './hooks/authorize-forward.js';
import { createAuthorizePublish } from './hooks/authorize-publish.js';
import { createAuthorizeSubscribe } from './hooks/authorize-subscribe.js';
import { createPreConnect, type ConnectFacts } from './hooks/pre-connect.js';
import { boundedMemoryPersistence } from './offline-queue.js';
import { publishStatus } from './reports.js';
import { SessionTable } from './sessions.js';
import { attachShadowBridge } from './shadow.js';
import { attachCommandBridge } from './commands.js';
import type { MqttEdgeDeps } from './types.js';

export interface MqttBroker {
  readonly aedes: Aedes;
  /** Hands a new connection to the broker; `protocol` names the listener it came through. */
  handle(stream: Duplex, protocol: DeviceProtocol): void;
  /** Closes every open session of a device (revocation). */
  disconnectDevice(deviceId: string, reason: DisconnectReason): number;
  close(): Promise<void>;
}

const SOCKET_ERRORS = new Set(['ECONNRESET', 'EPIPE', 'ETIMEDOUT', 'ECONNABORTED']);

export async function createMqttBroker(deps: MqttEdgeDeps): Promise<MqttBroker> {
  const sessions = new SessionTable();
  const facts = new WeakMap<Client, ConnectFacts>();
  const ctx = { deps, sessions, ...createCounters(deps) } as EdgeContext;
  const { settings, presence, log } = deps;

  const connections = new Gauge({ name: 'iotgate_mqtt_connections', help: 'Open MQTT sessions by listener', labelNames: ['listener'], registers: [deps.metrics] });
  for (const l of ['mqtt', 'mqtts', 'mqtt-ws']) connections.set({ listener: l }, 0);

  let aedesRef: Aedes | null = null;
  const offline = boundedMemoryPersistence(
    settings.offlineQueueMax,
    // aedes keeps live clients in `clients` (not in its typings).
    (clientId) => aedesRef !== null && clientId in (aedesRef as unknown as { clients: Record<string, unknown> }).clients,
    (clientId) => {
      ctx.rejections.inc({ reason: 'offline_queue_full' });
      log.debug({ clientId }, 'offline queue full: message dropped');
    },
  );

  const aedes = await Aedes.createBroker({
    persistence: offline.persistence,
    connectTimeout: settings.connectTimeoutMs,
    // Keepalive bounds are checked in authenticate: aedes' own check answers with CONNACK 6,
    // which MQTT 3.1.1 does not define.
    keepaliveLimit: 0,
    maxInflightInbound: settings.maxInflightQos2,
    drainTimeout: settings.drainTimeoutMs,
    // aedes' ceiling (its topic tree breaks past 100 levels); our hooks refuse deeper than
    // settings.maxTopicLevels the MQTT way (SUBACK 0x80 / dropped publish + errors topic).
    maxTopicLevels: 100,
    maxClientsIdLength: 128,
    heartbeatInterval: 60_000,
    preConnect: createPreConnect(facts),
    authenticate: createAuthenticate(ctx, facts),
    authorizePublish: createAuthorizePublish(ctx),
    authorizeSubscribe: createAuthorizeSubscribe(ctx),
    authorizeForward: createAuthorizeForward(ctx),
  });
  aedesRef = aedes;
  ctx.aedes = aedes;
  ctx.isQos2Retransmission = (client, packet) =>
    offline.persistence.incomingGetPacket(client, packet).then(
      () => true,
      () => false,
    );

  let closing = false;

  aedes.on('clientReady', (client) => {
    const sessionId = sessions.ready(client);
    offline.reset(client.id);
    const protocol = sessions.connection(client)?.protocol ?? 'mqtt';
    connections.inc({ listener: protocol });
    const p = sessions.principal(client);
    if (p?.kind !== 'device') return;
    log.info({ deviceId: p.deviceId, protocol }, 'device connected');
    void presence.connected(p.deviceId, protocol, sessionId).catch((err: unknown) => log.error({ err }, 'presence update failed'));
  });

  aedes.on('clientDisconnect', (client) => {
    const protocol = sessions.connection(client)?.protocol ?? 'mqtt';
    connections.dec({ listener: protocol });
    const reason = closing ? 'shutdown' : sessions.ended(client);
    const sessionId = sessions.sessionId(client);
    const p = sessions.principal(client);
    if (p?.kind !== 'device' || sessionId === undefined) return;
    if (reason === 'takeover') log.info({ deviceId: p.deviceId }, 'a new connection with the same client id took over the session');
    log.info({ deviceId: p.deviceId, protocol, reason }, 'device disconnected');
    void presence.disconnected(p.deviceId, protocol, sessionId, reason).catch((err: unknown) => log.error({ err }, 'presence update failed'));
  });

  aedes.on('keepaliveTimeout', (client) => sessions.markReason(client, 'keepalive_timeout'));
  aedes.on('clientError', (client, err) => {
    const code = (err as NodeJS.ErrnoException).code;
    const reason = code && SOCKET_ERRORS.has(code) ? 'connection_lost' : 'protocol_error';
    sessions.markReason(client, reason);
    if (reason === 'protocol_error') ctx.rejections.inc({ reason: 'protocol_error' });
    log.debug({ clientId: client.id, err: err.message }, 'mqtt client error');
  });
  aedes.on('connectionError', (client, err) => {
    log.debug({ clientId: client?.id, err: err.message }, 'mqtt connection error');
  });

  const detachShadows = attachShadowBridge(aedes, deps.bus, deps.shadows, (client) => {
    const p = sessions.principal(client);
    return p?.kind === 'device' ? p.deviceId : null;
  });

  // After the clientReady listener above: a restored session's device is in the session table.
  const commandBridge = attachCommandBridge({ aedes, sessions, persistence: offline.persistence, commands: deps.commands });
  ctx.isCommandReplay = commandBridge.isReplay;

  const onStatus = (event: { deviceId: string; online: boolean; reason: string; at: number; version: number }) => {
    if (!aedes.closed) void publishStatus(aedes, event.deviceId, event);
  };
  deps.bus.on('device.connected', onStatus);
  deps.bus.on('device.disconnected', onStatus);

  return {
    aedes,
    handle(stream, protocol) {
      const info = { protocol, guard: { lastType: 0, violation: null as string | null } };
      sessions.addConnection(stream, info);
      aedes.handle(stream);
      info.guard = guardStream(stream, settings.maxPacketBytes);
    },
    disconnectDevice(deviceId, reason) {
      const client = sessions.deviceClient(deviceId);
      if (!client) return 0;
      sessions.markReason(client, reason);
      client.close();
      return 1;
    },
    async close() {
      closing = true;
      deps.bus.off('device.connected', onStatus);
      deps.bus.off('device.disconnected', onStatus);
      detachShadows();
      commandBridge.detach();
      await new Promise<void>((resolve) => aedes.close(() => resolve()));
    },
  };
}
