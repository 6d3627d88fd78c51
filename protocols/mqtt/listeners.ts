/**
 * MQTT listeners: TCP (token / service JWT), TLS with mandatory client certificates, and
 * WebSocket at /mqtt on the REST server. Each caps its open connections.
 */
import type { Server as HttpServer, IncomingMessage } from 'node:http';
import { createServer as createTcpServer, type Server, type Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { createServer as createTlsServer, type Server as TlsServer, type TLSSocket } from 'node:tls';
import type { Logger } from 'pino';
import { WebSocketServer, createWebSocketStream } from 'ws';
import type { MqttBroker } from './broker.js';

export interface TlsMaterial {
  key: string;
  cert: string;
  ca: string;
  crl: string;
}

async function listen(server: Server, host: string, port: number): Promise<number> {
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen({ host, port }, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const address = server.address();
  if (address === null || typeof address === 'string') throw new Error('listener has no port');
  return address.port;
}

export async function listenMqttTcp(
  broker: MqttBroker,
  opts: { host: string; port: number; maxConnections: number },
): Promise<{ server: Server; port: number }> {
  // TCP_NODELAY: small MQTT packets go out at once (Nagle adds tens of ms to p99 under load).
  const server = createTcpServer({ noDelay: true }, (socket: Socket) => broker.handle(socket, 'mqtt'));
  server.maxConnections = opts.maxConnections;
  return { server, port: await listen(server, opts.host, opts.port) };
}

/**
 * Mutual TLS: the handshake itself refuses a missing certificate, an unknown CA, an expired or a
 * revoked (CRL) certificate. `updateCrl` swaps the secure context without a restart.
 */
export async function listenMqttTls(
  broker: MqttBroker,
  opts: { host: string; port: number; maxConnections: number },
  tls: TlsMaterial,
  log: Logger,
): Promise<{ server: TlsServer; port: number; updateCrl(crl: string): void }> {
  const options = { key: tls.key, cert: tls.cert, ca: tls.ca, crl: tls.crl, requestCert: true, rejectUnauthorized: true, minVersion: 'TLSv1.2' as const, noDelay: true };
  const server = createTlsServer(options, (socket: TLSSocket) => broker.handle(socket, 'mqtts'));
  server.maxConnections = opts.maxConnections;
  server.on('tlsClientError', (err) => log.debug({ err: err.message }, 'mqtts handshake refused'));
  return {
    server,
    port: await listen(server, opts.host, opts.port),
    updateCrl(crl) {
      server.setSecureContext({ ...options, crl });
    },
  };
}

/**
 * MQTT over WebSocket at `path` on the REST server (subprotocol `mqtt`). WebSocket frames are
 * capped at the MQTT packet limit; upgrades past `maxConnections` get 503.
 */
export function attachMqttWebSocket(
  broker: MqttBroker,
  server: HttpServer,
  opts: { path: string; maxConnections: number; maxPacketBytes: number },
): { close(): Promise<void> } {
  const wss = new WebSocketServer({
    noServer: true,
    maxPayload: opts.maxPacketBytes,
    handleProtocols: (protocols) => (protocols.has('mqtt') ? 'mqtt' : protocols.has('mqttv3.1') ? 'mqttv3.1' : false),
  });
  const onUpgrade = (req: IncomingMessage, socket: Duplex, head: Buffer) => {
    if (new URL(req.url ?? '/', 'http://x').pathname !== opts.path) return; // not ours: another handler (or none) answers
    if (wss.clients.size >= opts.maxConnections) {
      socket.end('HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 0\r\n\r\n');
      return;
    }
    wss.handleUpgrade(req, socket, head, (ws) => {
      const stream = createWebSocketStream(ws);
      stream.on('error', () => ws.terminate());
      broker.handle(stream, 'mqtt-ws');
    });
  };
  server.on('upgrade', onUpgrade);
  return {
    close: () =>
      new Promise<void>((resolve) => {
        server.off('upgrade', onUpgrade);
        for (const ws of wss.clients) ws.terminate();
        wss.close(() => resolve());
      }),
  };
}
