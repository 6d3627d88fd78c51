/**
 * The embedded MQTT broker (aedes 1.x, MQTT 3.1.1; see docs/security.md for why not MQTT 5 yet)
 * behind the TCP, mutual-TLS and WebSocket listeners. Hooks live in hooks/, one file each; this
 * file wires them, follows sessions for presence, and closes revoked devices' sessions.
 */
import type { Duplex } from 'node:stream';
import { Aedes, type Client, type PublishPacket } from 'aedes';
import { Gauge } from 'prom-client';
import type { DeviceProtocol } from '../../src/core/model.js';
import type { DisconnectReason } from '../../src/core/events.js';
import { createCounters, type EdgeContext } from './context.js';
import { guardStream } from './guard.js';
import { batchWrites } from './write-batch.js';
import { createAuthenticate } from './hooks/authenticate.js';
import { createAuthorizeForward } from './hooks/authorize-forward.js';
import { createAuthorizePublish, DROPPED_TOPIC } from './hooks/authorize-publish.js';
import { createAuthorizeSubscribe } from './hooks/authorize-subscribe.js';
import { createPreConnect, type ConnectFacts } from './hooks/pre-connect.js';
import { memoryBrokerState, type BrokerState, type BrokerStateFactory } from './backend.js';
import { hardenEmitter, memoryEmitter } from './emitter.js';
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
  /** The session state's connections (Redis: persistence, bus, keeper), for readiness. */
  stateStatus(): { ok: boolean; detail: string };
  close(): Promise<void>;
}

/** How long close() waits for aedes to close its clients before it moves on. */
const CLOSE_DEADLINE_MS = 3_000;

const SOCKET_ERRORS = new Set(['ECONNRESET', 'EPIPE', 'ETIMEDOUT', 'ECONNABORTED']);

type AuthorizePublish = (client: Client | null, packet: PublishPacket, callback: (error?: Error | null) => void) => void;

/** Runs the state's pre-ack stage (backend.ts) for an authorized QoS 1 publish that goes on. */
function withBeforeAck(authorize: AuthorizePublish, store: BrokerState, available?: () => boolean): AuthorizePublish {
  const beforeAck = store.beforeAck?.bind(store);
  if (!beforeAck) return authorize;
  return (client, packet, callback) =>
    authorize(client, packet, (err) => {
      if (err || packet.qos !== 1 || packet.topic === DROPPED_TOPIC) return callback(err);
      // Redis unreachable: no PUBACK and the connection closes now, rather than waiting for it.
      if (available?.() === false) return callback(new Error('the gateway cannot reach its store'));
      beforeAck(packet).then(
        () => callback(null),
        (e: unknown) => callback(e instanceof Error ? e : new Error(String(e))),
      );
    });
}

/**
 * `state`: where sessions, queued messages, retained messages and wills live, and how publishes
 * reach other gateways (backend.ts: in memory by default, redis.ts to share one Redis).
 */
export async function createMqttBroker(deps: MqttEdgeDeps, state: BrokerStateFactory = memoryBrokerState): Promise<MqttBroker> {
  const sessions = new SessionTable();
  const facts = new WeakMap<Client, ConnectFacts>();
  const ctx = { deps, sessions, ...createCounters(deps) } as EdgeContext;
  const { settings, presence, log } = deps;

  const connections = new Gauge({ name: 'iotgate_mqtt_connections', help: 'Open MQTT sessions by listener', labelNames: ['listener'], registers: [deps.metrics] });
  for (const l of ['mqtt', 'mqtts', 'mqtt-ws']) connections.set({ listener: l }, 0);

  let aedesRef: Aedes | null = null;
  const store = await state({
    log,
    offlineQueueMax: settings.offlineQueueMax,
    // aedes keeps live clients in `clients` (not in its typings).
    isLocal: (clientId) => aedesRef !== null && clientId in (aedesRef as unknown as { clients: Record<string, unknown> }).clients,
    onDrop: (clientId) => {
      ctx.rejections.inc({ reason: 'offline_queue_full' });
      log.debug({ clientId }, 'offline queue full: message dropped');
    },
  });
  const persistence = store.persistence;
  // aedes' publish queue, shared (Redis) or in-process, without its recursion and O(n) shift.
  const mq = hardenEmitter(store.mq ?? memoryEmitter());

  // Several gateways on one Redis: when a client id connects on another broker, aedes closes the
  // local client with that id ($SYS/<broker>/new/clients over the shared emitter), and with no
  // subscriptions to drop that close reaches clientDisconnect synchronously. This handler is on the
  // emitter before aedes' own, so the client is marked first: presence then knows the device
  // moved and does not announce it offline.
  mq.on('$SYS/+/new/clients', (packet, done) => {
    if (aedesRef !== null && packet.topic.split('/')[1] !== aedesRef.id) {
      const client = sessions.deviceClient(packet.payload.toString('utf8'));
      if (client) sessions.markReason(client, 'moved');
    }
    done();
  });

  let aedes: Aedes;
  try {
    aedes = await Aedes.createBroker({
      ...(store.brokerId !== undefined && { id: store.brokerId }),
      persistence,
      mq,
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
      authorizePublish: withBeforeAck(createAuthorizePublish(ctx), store, deps.available),
      authorizeSubscribe: createAuthorizeSubscribe(ctx),
      authorizeForward: createAuthorizeForward(ctx),
    });
    aedesRef = aedes;
    // A persistence or emitter failure (Redis unreachable) is reported here; unheard, an
    // EventEmitter 'error' would end the process.
    (aedes as unknown as NodeJS.EventEmitter).on('error', (err: Error) => log.error({ err }, 'mqtt broker error'));
    await store.attach(aedes);
  } catch (err) {
    if (aedesRef) await new Promise<void>((resolve) => aedesRef?.close(() => resolve()));
    await store.close().catch(() => undefined);
    throw err;
  }
  ctx.aedes = aedes;
  ctx.isQos2Retransmission = (client, packet) =>
    persistence.incomingGetPacket(client, packet).then(
      () => true,
      () => false,
    );

  let closing = false;

  aedes.on('clientReady', (client) => {
    const sessionId = sessions.ready(client);
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
  const commandBridge = attachCommandBridge({ aedes, sessions, persistence, commands: deps.commands });
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
      batchWrites(stream);
    },
    disconnectDevice(deviceId, reason) {
      const client = sessions.deviceClient(deviceId);
      if (!client) return 0;
      sessions.markReason(client, reason);
      client.close();
      return 1;
    },
    stateStatus() {
      return store.status?.() ?? { ok: true, detail: store.kind };
    },
    async close() {
      closing = true;
      deps.bus.off('device.connected', onStatus);
      deps.bus.off('device.disconnected', onStatus);
      detachShadows();
      commandBridge.detach();
      store.beforeClose(aedes);
      // Bounded: with Redis unreachable, aedes' persistence calls wait for a reconnect that may never
      // come, and SIGTERM must still exit within 10 s (contract §1).
      await new Promise<void>((resolve) => {
        const cut = setTimeout(resolve, CLOSE_DEADLINE_MS);
        aedes.close(() => {
          clearTimeout(cut);
          resolve();
        });
      });
      await store.close();
    },
  };
}
