/** The MQTT device edge as one unit: broker + TCP, mutual-TLS and WebSocket listeners. */
import type { Server as HttpServer } from 'node:http';
import type { Server } from 'node:net';
import { createMqttBroker, type MqttBroker } from './broker.js';
import { attachMqttWebSocket, listenMqttTcp, listenMqttTls, type TlsMaterial } from './listeners.js';
import type { BrokerStateFactory } from './backend.js';
import type { MqttEdgeDeps } from './types.js';

export interface MqttEdgeOptions {
  host: string;
  mqtt: { port: number; maxConnections: number };
  mqtts: { port: number; maxConnections: number };
  websocket: { server: HttpServer; path: string; maxConnections: number };
  tls: TlsMaterial;
  /**
   * Where sessions, queued and retained messages and wills live, and how publishes reach other
   * gateways: default in this process; `redisBrokerState({ url })` (redis.ts) to share one Redis.
   * Opened with the broker, closed by close().
   */
  brokerState?: BrokerStateFactory;
}

export interface MqttEdge {
  readonly broker: MqttBroker;
  readonly ports: { mqtt: number; mqtts: number };
  updateCrl(crl: string): void;
  listening(): { mqtt: boolean; mqtts: boolean };
  /** Stops accepting, then closes every session. */
  close(): Promise<void>;
}

const closeServer = (server: Server) => new Promise<void>((resolve) => (server.listening ? server.close(() => resolve()) : resolve()));

export async function startMqttEdge(deps: MqttEdgeDeps, opts: MqttEdgeOptions): Promise<MqttEdge> {
  const broker = await createMqttBroker(deps, opts.brokerState);
  const tcp = await listenMqttTcp(broker, { host: opts.host, ...opts.mqtt });
  const tls = await listenMqttTls(broker, { host: opts.host, ...opts.mqtts }, opts.tls, deps.log);
  const ws = attachMqttWebSocket(broker, opts.websocket.server, {
    path: opts.websocket.path,
    maxConnections: opts.websocket.maxConnections,
    maxPacketBytes: deps.settings.maxPacketBytes,
  });
  return {
    broker,
    ports: { mqtt: tcp.port, mqtts: tls.port },
    updateCrl: (crl) => tls.updateCrl(crl),
    listening: () => ({ mqtt: tcp.server.listening, mqtts: tls.server.listening }),
    async close() {
      const stopped = Promise.all([closeServer(tcp.server), closeServer(tls.server)]);
      await ws.close();
      await broker.close();
      await stopped;
    },
  };
}
