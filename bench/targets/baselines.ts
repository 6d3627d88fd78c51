/**
 * The baselines, each the way its README starts it, with stock settings: what a gateway built on
 * these packages costs is measured against them.
 */
import { createSocket } from 'node:dgram';
import { Agent as HttpAgent, createServer as createHttpServer, request as httpRequest } from 'node:http';
import { createServer as createTcpServer, type AddressInfo, type Server } from 'node:net';
import { Aedes } from 'aedes';
import { createServer as createCoapServer } from 'coap';
import Fastify from 'fastify';
import type { RunningTarget } from './protocol.js';

const HOST = '127.0.0.1';

/**
 * `net.createServer(aedes.handle)`: no authentication, no hooks, in-memory persistence; with
 * TCP_NODELAY on its sockets (the first lever: without it, small writes wait for the
 * peer's delayed ACK), unless `nagle` asks for Node's default.
 */
export async function startBareAedes(nagle = false): Promise<RunningTarget> {
  const aedes = await Aedes.createBroker();
  const server: Server = createTcpServer({ noDelay: !nagle }, aedes.handle);
  await new Promise<void>((resolve) => server.listen(0, HOST, resolve));
  return {
    ports: { mqtt: (server.address() as AddressInfo).port },
    info: { server: 'aedes' },
    async stop() {
      server.close();
      await new Promise<void>((resolve) => aedes.close(() => resolve()));
    },
  };
}

/** A shadow-sized and a device-sized constant, serialised by Fastify on every request. */
const SHADOW = {
  state: { desired: { seq: 1, led: 'green' }, reported: { seq: 1, led: 'green' } },
  metadata: { desired: { seq: { timestamp: 1795323014 }, led: { timestamp: 1795323014 } }, reported: { seq: { timestamp: 1795323017 }, led: { timestamp: 1795323017 } } },
  version: 2,
  timestamp: 1795323017,
};
const DEVICE = {
  id: 'bench-g-0000',
  type: 'generic',
  online: false,
  protocol: null,
  lastSeen: null,
  connectedAt: null,
  certificate: null,
  firmware: null,
  createdAt: 1795323014000,
};

/** Fastify with the two routes of rest-read answering constants: no auth, no store. */
export async function startBareFastify(): Promise<RunningTarget> {
  const app = Fastify({ logger: false });
  app.get('/v1/devices/:id/shadow', async () => SHADOW);
  app.get('/v1/devices/:id', async () => DEVICE);
  const address = await app.listen({ host: HOST, port: 0 });
  return {
    ports: { http: Number(new URL(address).port) },
    info: { server: 'fastify' },
    stop: () => app.close(),
  };
}

/** A `coap` server (its default response cache included) answering every request 2.04. */
export async function startBareCoap(): Promise<RunningTarget> {
  // coap 1.5 cannot report its port: bind the socket ourselves and hand it over.
  const socket = createSocket('udp4');
  await new Promise<void>((resolve) => socket.bind(0, HOST, resolve));
  const server = createCoapServer((_req, res) => {
    res.code = '2.04';
    res.end();
  });
  server.listen(socket);
  return {
    ports: { coap: socket.address().port },
    info: { server: 'coap' },
    stop: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
      }),
  };
}

/** The upstream's answer to every GET: a constant JSON document of about 100 bytes. */
export const UPSTREAM_BODY = Buffer.from(
  JSON.stringify({ id: 'order-0042', status: 'shipped', items: 3, total: 129.5, currency: 'EUR', updatedAt: 1795323017000 }),
);

/**
 * The proxy scenario's upstream: a plain node:http server (keep-alive, Node's defaults) answering
 * every request 200 with UPSTREAM_BODY. Its own process, so the gateway's CPU is measured alone.
 */
export async function startUpstream(): Promise<RunningTarget> {
  const headers = { 'content-type': 'application/json', 'content-length': String(UPSTREAM_BODY.length) };
  const server = createHttpServer((req, res) => {
    req.resume();
    res.writeHead(200, headers);
    res.end(UPSTREAM_BODY);
  });
  await new Promise<void>((resolve) => server.listen(0, HOST, resolve));
  return {
    ports: { http: (server.address() as AddressInfo).port },
    info: { server: 'node:http upstream' },
    stop: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}

/**
 * The least a Node.js reverse proxy does, as a reference for the proxy scenario: a node:http
 * server forwarding every request to `upstreamUrl` over keep-alive node:http connections (128 at
 * most) and piping the response back. No auth, no logging, no metrics, no header policy.
 */
export async function startBareProxy(upstreamUrl: string): Promise<RunningTarget> {
  const up = new URL(upstreamUrl);
  const agent = new HttpAgent({ keepAlive: true, maxSockets: 128 });
  const server = createHttpServer((req, res) => {
    // The route prefix (/api/orders) is replaced by the upstream's base path, as the route does.
    const rest = (req.url ?? '/').replace(/^\/[^/]+\/[^/?]+/, '');
    const out = httpRequest({ host: up.hostname, port: up.port, method: req.method, path: up.pathname + rest, headers: { 'x-forwarded-for': req.socket.remoteAddress ?? '' }, agent }, (upRes) => {
      res.writeHead(upRes.statusCode ?? 502, upRes.headers);
      upRes.pipe(res);
    });
    out.on('error', () => {
      if (!res.headersSent) res.writeHead(502);
      res.end();
    });
    req.pipe(out);
  });
  await new Promise<void>((resolve) => server.listen(0, HOST, resolve));
  return {
    ports: { http: (server.address() as AddressInfo).port },
    info: { server: 'node:http proxy' },
    stop: () =>
      new Promise<void>((resolve) => {
        agent.destroy();
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
