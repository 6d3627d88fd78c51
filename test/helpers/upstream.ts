/**
 * Upstream microservices for the API gateway route tests: real HTTP servers on 127.0.0.1:0 that
 * record what they receive. By default each answers with a JSON echo of the request; a test may
 * swap the handler. `kill()` stops one the hard way (listener closed, open sockets destroyed).
 */
import { createServer, type IncomingHttpHeaders, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { Socket } from 'node:net';

export interface SeenRequest {
  method: string;
  url: string;
  headers: IncomingHttpHeaders;
  bodyBytes: number;
}

export type UpstreamHandler = (req: IncomingMessage, res: ServerResponse, seen: SeenRequest, body: Buffer) => void;

export interface TestUpstream {
  name: string;
  /** http://127.0.0.1:<port> */
  url: string;
  port: number;
  server: Server;
  /** Every request that reached this upstream, in order (recorded once its body was read). */
  requests: SeenRequest[];
  /** Requests seen at arrival, before the body is read (for handlers that never read it). */
  arrivals: number;
  handler: UpstreamHandler;
  /** Resolves with the next request (already seen or future) that matches. */
  waitFor(match: (r: SeenRequest) => boolean): Promise<SeenRequest>;
  /** Stops listening and destroys every open connection at once. */
  kill(): void;
  close(): Promise<void>;
}

export const echo =
  (name: string): UpstreamHandler =>
  (_req, res, seen) => {
    const body = JSON.stringify({ upstream: name, ...seen });
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
    res.end(body);
  };

export async function startUpstream(name: string, handler?: UpstreamHandler, opts: { readBody?: boolean } = {}): Promise<TestUpstream> {
  const sockets = new Set<Socket>();
  const waiters = new Set<{ match: (r: SeenRequest) => boolean; resolve: (r: SeenRequest) => void }>();
  const up: TestUpstream = {
    name,
    url: '',
    port: 0,
    server: createServer((req, res) => {
      up.arrivals++;
      const seen: SeenRequest = { method: req.method ?? '', url: req.url ?? '', headers: req.headers, bodyBytes: 0 };
      const record = (body: Buffer) => {
        seen.bodyBytes = body.length;
        up.requests.push(seen);
        for (const w of waiters) {
          if (w.match(seen)) {
            waiters.delete(w);
            w.resolve(seen);
          }
        }
        up.handler(req, res, seen, body);
      };
      if (opts.readBody === false) {
        record(Buffer.alloc(0));
        return;
      }
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => record(Buffer.concat(chunks)));
    }),
    requests: [],
    arrivals: 0,
    handler: handler ?? echo(name),
    waitFor(match) {
      const found = up.requests.find(match);
      if (found) return Promise.resolve(found);
      return new Promise((resolve) => waiters.add({ match, resolve }));
    },
    kill() {
      up.server.close();
      for (const s of sockets) s.destroy();
    },
    close() {
      return new Promise((resolve) => {
        up.server.close(() => resolve());
        for (const s of sockets) s.destroy();
      });
    },
  };
  up.server.on('connection', (s: Socket) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise<void>((resolve) => up.server.listen(0, '127.0.0.1', resolve));
  const addr = up.server.address();
  up.port = typeof addr === 'object' && addr ? addr.port : 0;
  up.url = `http://127.0.0.1:${up.port}`;
  return up;
}

/** A loopback URL where nothing listens (a port that was just free). */
export async function deadUrl(): Promise<string> {
  const s = createServer();
  await new Promise<void>((resolve) => s.listen(0, '127.0.0.1', resolve));
  const addr = s.address();
  const port = typeof addr === 'object' && addr ? addr.port : 0;
  await new Promise<void>((resolve) => s.close(() => resolve()));
  return `http://127.0.0.1:${port}`;
}
