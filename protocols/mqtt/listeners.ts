/** MQTT listeners: TCP (token / service JWT) and TLS with mandatory client certificates. */
import { createServer as createTcpServer, type Server, type Socket } from 'node:net';
import { createServer as createTlsServer, type Server as TlsServer, type TLSSocket } from 'node:tls';
import type { Logger } from 'pino';
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

export async function listenMqttTcp(broker: MqttBroker, host: string, port: number): Promise<{ server: Server; port: number }> {
  const server = createTcpServer((socket: Socket) => broker.aedes.handle(socket));
  return { server, port: await listen(server, host, port) };
}

/**
 * Mutual TLS: the handshake itself refuses a missing certificate, an unknown CA, an expired or a
 * revoked (CRL) certificate. `updateCrl` swaps the secure context without a restart.
 */
export async function listenMqttTls(
  broker: MqttBroker,
  host: string,
  port: number,
  tls: TlsMaterial,
  log: Logger,
): Promise<{ server: TlsServer; port: number; updateCrl(crl: string): void }> {
  const options = { key: tls.key, cert: tls.cert, ca: tls.ca, crl: tls.crl, requestCert: true, rejectUnauthorized: true, minVersion: 'TLSv1.2' as const };
  const server = createTlsServer(options, (socket: TLSSocket) => broker.aedes.handle(socket));
  server.on('tlsClientError', (err) => log.debug({ err: err.message }, 'mqtts handshake refused'));
  return {
    server,
    port: await listen(server, host, port),
    updateCrl(crl) {
      server.setSecureContext({ ...options, crl });
    },
  };
}
