/**
 * CoAP over UDP. The foundation binds the socket so ports are reserved and reported; the CoAP
 * device edge issue mounts the `coap` server on this socket (coap 1.5 has no address(): we own the
 * dgram socket and pass it to `listen`). Until then datagrams are dropped.
 */
import { createSocket, type Socket } from 'node:dgram';
import { isIPv6 } from 'node:net';

export interface CoapListener {
  readonly socket: Socket;
  port(): number;
  close(): Promise<void>;
}

export async function bindCoap(host: string, port: number): Promise<CoapListener> {
  const socket = createSocket({ type: isIPv6(host) ? 'udp6' : 'udp4', reuseAddr: false });
  await new Promise<void>((resolve, reject) => {
    socket.once('error', reject);
    socket.bind(port, host, () => {
      socket.off('error', reject);
      resolve();
    });
  });
  socket.on('message', () => {
    // Dropped until the CoAP edge lands.
  });
  socket.on('error', () => {
    // A UDP socket error (ICMP unreachable etc.) must never crash the process.
  });
  return {
    socket,
    port: () => socket.address().port,
    close: () => new Promise<void>((resolve) => socket.close(() => resolve())),
  };
}
