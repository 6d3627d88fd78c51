/**
 * buildGateway(config) → { start, stop, addresses }: wires config, logging, PKI, stores, core
 * services and every door (REST, MQTT, CoAP). Tests call this; main.ts adds signals and exit codes.
 */
import type { FastifyInstance } from 'fastify';
import { collectDefaultMetrics, Registry } from 'prom-client';
import type { Config } from './config/schema.js';
import { createLogger, type Logger } from './log.js';
import { PACKAGE_VERSION, BUNDLED_SCHEMAS_DIR } from './package-info.js';
import { SchemaRegistry } from './codecs/registry.js';
import { CredentialIndex } from './core/credentials.js';
import { DeviceService } from './core/devices.js';
import { EventBus } from './core/events.js';
import { EventHub } from './core/event-hub.js';
import type { WebhookDispatcher } from './upstream/webhooks.js';
import { eventOutputs } from './gateway-events.js';
import { PresenceService } from './core/presence.js';
import { selectStores, type StoreOverrides } from './gateway-stores.js';
import { ClusterLink } from './cluster/link.js';
import { gatewayLedger } from './gateway-ledger.js';
import { CommandService } from './core/command-service.js';
import { ShadowService } from './core/shadow-service.js';
import { FirmwareService } from './core/firmware.js';
import { TelemetryService } from './core/telemetry.js';
import { serviceGauges, telemetryCounters } from './gateway-metrics.js';
import { ensureCa, loadCaMaterial, PkiAuthority, verifyDeviceCertificate, verifyServiceToken, serviceJwtVerifyOptions } from './pki/index.js';
import { buildHttpApp } from './http/app.js';
import { RouteService } from './routes/service.js';
import type { ComponentStatus } from './http/routes/health.js';
import { startMqttEdge, type MqttEdge } from '../protocols/mqtt/edge.js';
import { redisBrokerState } from '../protocols/mqtt/redis.js';
import { startCoapEdge, type CoapEdge } from '../protocols/coap/server.js';
import { startCoapsEdge, type CoapsEdge } from '../protocols/coap/dtls.js';

/** How long stop() lets in-flight HTTP requests finish before it cuts the remaining sockets. */
const HTTP_CLOSE_GRACE_MS = 5_000;

export interface Addresses {
  http: number;
  mqtt: number;
  mqtts: number;
  coap: number;
  /** The coaps (DTLS) port, or null when coaps.enabled is false. */
  coaps: number | null;
}

export interface Gateway {
  readonly config: Config;
  readonly log: Logger;
  readonly devices: DeviceService;
  readonly bus: EventBus;
  readonly events: EventHub;
  readonly webhooks: WebhookDispatcher;
  readonly presence: PresenceService;
  readonly shadows: ShadowService;
  readonly commands: CommandService;
  readonly credentials: CredentialIndex;
  readonly http: FastifyInstance;
  readonly metrics: Registry;
  /** API gateway routes (contract §11); `routes.reload(config.routes)` swaps them (SIGHUP). */
  readonly routes: RouteService;
  /** Binds every listener and writes the ready line; resolves the bound ports. */
  start(): Promise<Addresses>;
  /** Graceful stop: stops accepting, closes sessions, flushes. Idempotent. */
  stop(): Promise<void>;
  addresses(): Addresses;
}

/** A logger, and store implementations that replace the configured ones (tests). */
export interface GatewayDeps extends StoreOverrides {
  log?: Logger;
}

export async function buildGateway(config: Config, deps: GatewayDeps = {}): Promise<Gateway> {
  const log = deps.log ?? createLogger({ level: config.log.level });
  const certsDir = config.certs.dir;

  const created = await ensureCa(certsDir, { hostnames: [...config.certs.hostnames] });
  if (created.created) log.info({ certsDir }, 'created a dev CA, server certificate and token secrets (first start)');
  const material = await loadCaMaterial(certsDir);
  const ca = new PkiAuthority(material, { deviceCertDays: config.certs.deviceCertDays });

  // Contract §1: with redis.url every piece of state lives in Redis, shared by every gateway on it.
  const stores = selectStores(config, deps, log);
  const { redis, limiter, registry } = stores;
  // The CA database too (files, or Redis), and the CRL each gateway signs for its TLS listeners.
  const caDatabase = gatewayLedger(config, certsDir, material, redis, log);
  const { ledger } = caDatabase;
  const bus = new EventBus();
  // Before anything can emit: every bus event becomes a CloudEvent once, for SSE and webhooks.
  const events = new EventHub(bus, { bufferSize: config.events.bufferSize, log: log.child({ module: 'events' }) });
  const presence = new PresenceService(registry, bus, log.child({ module: 'presence' }));
  const rateLimits = {
    messages: limiter({ unit: 'messages', windows: config.limits.deviceMessages }),
    bytes: limiter({ unit: 'bytes', windows: config.limits.deviceBytes }),
    services: limiter({ unit: 'requests', windows: config.limits.serviceRequests }),
  };
  const credentials = new CredentialIndex(ca, ledger);
  const schemasDir = config.schemas.dir || BUNDLED_SCHEMAS_DIR;
  // A broken schema stops the start here, naming file, line and reason.
  const schemas = await SchemaRegistry.load(schemasDir, { maxBytes: config.limits.telemetryBytes, maxDepth: config.limits.telemetryDepth });
  const devices = new DeviceService({
    ca,
    ledger,
    registry,
    credentials,
    isKnownType: (t) => schemas.has(t),
    log: log.child({ module: 'devices' }),
  });

  const metrics = new Registry();
  collectDefaultMetrics({ register: metrics });
  const routes = new RouteService({ routes: config.routes, redisUrl: config.redis.url, log: log.child({ module: 'routes' }), registry: metrics });
  const telemetryStore = stores.telemetry;
  const { webhooks, eventLog, ...outputs } = eventOutputs(config, events, redis, telemetryStore, log, metrics);
  const telemetry = new TelemetryService({
    decoderFor: (type) => schemas.get(type),
    store: telemetryStore,
    bus,
    counters: telemetryCounters(metrics),
    log: log.child({ module: 'telemetry' }),
  });
  const typeOf = (deviceId: string) => {
    const record = credentials.get(deviceId);
    return record && record.revokedAt === null ? record.type : undefined;
  };
  const shadowStore = stores.shadows;
  const shadows = new ShadowService({
    store: shadowStore,
    bus,
    limits: { maxStateBytes: config.limits.shadowStateBytes, maxDepth: config.limits.shadowDepth },
    log: log.child({ module: 'shadows' }),
  });
  const firmware = new FirmwareService({ shadows, bus, registry, log: log.child({ module: 'firmware' }) });
  const commandStore = stores.commands;
  // Several gateways on one Redis: commands created on one are delivered by the one holding the
  // device, answers wake the requests waiting elsewhere, shadow changes reach every CoAP observer.
  const cluster = redis ? new ClusterLink({ publisher: redis.client, subscriber: redis.client.duplicate({ enableOfflineQueue: true, maxRetriesPerRequest: null }), bus, log: log.child({ module: 'cluster' }) }) : null;
  cluster?.remote.on('command.updated', (record) => commands.remoteUpdate(record));
  cluster?.onResync(() => {
    commands.kickAll().catch((err: unknown) => log.warn({ err: err instanceof Error ? err.message : String(err) }, 'could not resync commands after a cluster reconnect'));
  });
  const commands = new CommandService({
    store: commandStore,
    bus,
    log: log.child({ module: 'commands' }),
    queueMax: config.commands.queueMax,
    codecOf: (deviceId) => {
      const type = typeOf(deviceId);
      return type === undefined ? undefined : schemas.get(type);
    },
  });
  credentials.on('revoked', (record) => {
    // With Redis unreachable these fail: the credentials are refused anyway; the stored data of
    // the revoked device stays until it is deleted again (logged, never an unhandled rejection).
    const forgetFailed = (what: string) => (err: unknown) =>
      log.warn({ err: err instanceof Error ? err.message : String(err), deviceId: record.id }, `could not forget the revoked device's ${what}`);
    commands.forgetDevice(record.id).catch(forgetFailed('commands'));
    Promise.resolve(telemetryStore.forget(record.id)).catch(forgetFailed('telemetry'));
    shadows.forgetDevice(record.id).catch(forgetFailed('shadows'));
    firmware.forgetDevice(record.id);
  });
  serviceGauges(metrics, { commandWaiters: () => commands.waiting, devicesKnown: () => credentials.live().length });

  let state: 'built' | 'starting' | 'running' | 'stopping' | 'stopped' = 'built';
  let mqtt: MqttEdge | null = null;
  let coap: CoapEdge | null = null;
  let coaps: CoapsEdge | null = null;
  let bound: Addresses | null = null;

  const listenerStatus = (up: boolean): ComponentStatus =>
    state === 'stopping' || state === 'stopped' ? { status: 'stopping' } : up ? { status: 'ok' } : { status: 'starting' };
  const brokerStatus = (s: { ok: boolean; detail: string } | undefined): ComponentStatus =>
    s === undefined ? listenerStatus(false) : s.ok ? { status: 'ok', detail: s.detail } : { status: 'failing', detail: s.detail };

  const http = await buildHttpApp({
    log: log.child({ module: 'http' }),
    version: PACKAGE_VERSION,
    bodyLimitBytes: config.http.bodyLimitBytes,
    publicMetrics: config.http.publicMetrics,
    jwt: (() => {
      const { key, ...verify } = serviceJwtVerifyOptions(material.jwtPublicKeyPem);
      return { publicKeyPem: key, verify };
    })(),
    devices,
    authenticateDevice: (token) => credentials.authenticateTokenFresh(token),
    limitService: (sub) => rateLimits.services.take(sub),
    telemetry: {
      telemetry,
      store: telemetryStore,
      typeOf,
      limit: (deviceId, bytes) => rateLimits.messages.take(deviceId) ?? rateLimits.bytes.take(deviceId, bytes),
      touch: (deviceId) => presence.touch(deviceId),
    },
    schemas,
    shadows,
    firmware,
    commands,
    events: { log: eventLog, heartbeatMs: config.events.heartbeatMs, maxLagEvents: config.events.sseMaxLagEvents },
    upstreams: webhooks,
    routes,
    metrics,
    readiness: async () => ({
      pki: { status: 'ok' },
      store: stores.status(),
      // The broker's own Redis connections (sessions, wills, the bus between gateways).
      ...(redis && { broker: brokerStatus(mqtt?.broker.stateStatus()) }),
      credentials: listenerStatus(state === 'running'),
      mqtt: listenerStatus(mqtt?.listening().mqtt === true),
      mqtts: listenerStatus(mqtt?.listening().mqtts === true),
      coap: listenerStatus(coap !== null),
      ...(config.coaps.enabled && { coaps: listenerStatus(coaps !== null) }),
    }),
  });

  const mqttLog = log.child({ module: 'mqtt' });
  credentials.on('revoked', (record) => {
    const closed = mqtt?.broker.disconnectDevice(record.id, 'revoked') ?? 0;
    if (closed > 0) mqttLog.info({ deviceId: record.id, sessions: closed }, 'closed sessions of a revoked device');
    // Its DTLS sessions end too; a new handshake is refused (the PSK and certificate checks read the index).
    coaps?.dropDevice(record.id, 'revoked');
    caDatabase.refreshCrl();
  });

  async function start(): Promise<Addresses> {
    if (state !== 'built') throw new Error(`gateway cannot start: it is ${state}`);
    state = 'starting';
    if (redis) {
      // The state is there: nothing is served before Redis answers (it reconnects by itself later).
      await redis.ready();
      await cluster?.start();
      await caDatabase.importFiles();
    }
    credentials.start(config.certs.syncIntervalMs);
    await credentials.ready;
    await commands.start();

    const host = config.host;
    const httpAddress = await http.listen({ host, port: config.http.port });
    const crlPem = await caDatabase.start((crl) => mqtt?.updateCrl(crl));
    mqtt = await startMqttEdge(
      {
        log: mqttLog,
        ...(redis && { available: () => redis.isReady() }),
        settings: { ...config.broker, maxPacketBytes: config.limits.mqttPacketBytes },
        credentials,
        presence,
        bus,
        metrics,
        rateLimits,
        shadows,
        commands,
        ingestTelemetry: ({ deviceId, protocol, payload }) =>
          telemetry.ingest({ deviceId, protocol, payload, type: typeOf(deviceId) ?? 'generic' }),
        verifyDeviceCertificate: (der) => verifyDeviceCertificate(der, { caCertPem: material.caCertPem }),
        verifyServiceToken: (token) => {
          try {
            return verifyServiceToken(material.jwtPublicKeyPem, token);
          } catch {
            return null;
          }
        },
      },
      {
        host,
        mqtt: config.mqtt,
        mqtts: config.mqtts,
        websocket: { server: http.server, path: '/mqtt', maxConnections: config.http.mqttWsMaxConnections },
        tls: { key: material.serverKeyPem, cert: material.serverCertPem, ca: material.caCertPem, crl: crlPem },
        // Sessions, queued and retained messages and wills in Redis, shared by every gateway.
        // The broker id is the presence owner id: the gateways that find it dead reap its devices.
        ...(config.redis.url !== undefined && {
          brokerState: redisBrokerState({ url: config.redis.url, brokerId: presence.gatewayId, onGatewayGone: async (id) => void (await presence.reap(id)) }),
        }),
      },
    );
    coap = await startCoapEdge(
      {
        log: log.child({ module: 'coap' }),
        metrics,
        bus,
        ...(cluster && { remoteBus: cluster.remote }),
        credentials,
        presence,
        shadows,
        commands,
        rateLimits,
        ingestTelemetry: ({ deviceId, protocol, payload, contentType }) =>
          telemetry.ingest({ deviceId, protocol, payload, type: typeOf(deviceId) ?? 'generic', ...(contentType && { contentType }) }),
        settings: {
          presenceWindowMs: config.coap.presenceWindowMs,
          dedupEntries: config.coap.dedupEntries,
          maxBlockTransfers: config.coap.maxBlockTransfers,
          maxPayloadBytes: config.limits.telemetryBytes,
        },
      },
      { host, port: config.coap.port },
    );
    if (config.coaps.enabled) {
      coaps = await startCoapsEdge(
        coap.context,
        {
          credentials,
          caCertPem: material.caCertPem,
          serverCertPem: material.serverCertPem,
          serverKeyPem: material.serverKeyPem,
          tokenSecret: material.tokenSecret,
        },
        { host, port: config.coaps.port },
      );
    }

    bound = {
      http: Number(new URL(httpAddress).port),
      mqtt: mqtt.ports.mqtt,
      mqtts: mqtt.ports.mqtts,
      coap: coap.port(),
      coaps: coaps?.port() ?? null,
    };
    state = 'running';
    log.info({ ...bound }, 'iotgate ready');
    return bound;
  }

  /**
   * Fastify's close waits for in-flight requests, and a connection that opened but never sent a
   * request is not "idle" to Node: after a grace period every remaining socket is cut.
   */
  async function closeHttp(): Promise<void> {
    const cut = setTimeout(() => http.server.closeAllConnections(), HTTP_CLOSE_GRACE_MS);
    try {
      await http.close();
    } finally {
      clearTimeout(cut);
    }
  }

  let stopping: Promise<void> | null = null;
  async function stop(): Promise<void> {
    stopping ??= (async () => {
      const wasRunning = state === 'running' || state === 'starting';
      state = 'stopping';
      credentials.stop();
      caDatabase.stop();
      // Waiting command requests get their answer (503) before HTTP stops taking requests.
      commands.close();
      // Stop accepting first, then close sessions and in-flight HTTP requests.
      await mqtt?.close();
      await Promise.all([closeHttp(), coap?.close()]);
      await routes.close();
      // After the CoAP edge: its final Observe notifications (5.03) still go out over DTLS.
      await coaps?.close();
      firmware.close();
      await outputs.close();
      events.close();
      await presence.close();
      await telemetryStore.close();
      await shadowStore.close();
      await commands.idle();
      await commandStore.close();
      rateLimits.messages.close();
      rateLimits.bytes.close();
      rateLimits.services.close();
      await registry.close();
      await cluster?.close();
      await redis?.close();
      state = 'stopped';
      if (wasRunning) log.info('iotgate stopped');
      await new Promise<void>((resolve) => log.flush(() => resolve()));
    })();
    return stopping;
  }

  return {
    config,
    log,
    devices,
    bus,
    events,
    webhooks,
    presence,
    shadows,
    commands,
    credentials,
    http,
    metrics,
    routes,
    start,
    stop,
    addresses() {
      if (!bound) throw new Error('gateway is not started');
      return bound;
    },
  };
}
