/**
 * A lean HTTP/1.1 client for load generation: keep-alive connections over raw net sockets
 * (TCP_NODELAY), requests pre-encoded as bytes, optional pipelining, responses parsed in order
 * (Content-Length or chunked). Not a general client: no redirects, no compression, no 1xx.
 */
import { connect as netConnect, type Socket } from 'node:net';

export interface HttpResponse {
  status: number;
  body: Buffer;
}

export interface RequestSpec {
  method: string;
  path: string;
  headers?: Record<string, string>;
  body?: string | Buffer;
}

/** Encodes a request once (reuse the bytes for every repetition). */
export function encodeRequest(host: string, spec: RequestSpec): Buffer {
  const body = spec.body === undefined ? null : Buffer.isBuffer(spec.body) ? spec.body : Buffer.from(spec.body, 'utf8');
  let head = `${spec.method} ${spec.path} HTTP/1.1\r\nhost: ${host}\r\n`;
  for (const [k, v] of Object.entries(spec.headers ?? {})) head += `${k}: ${v}\r\n`;
  if (body) head += `content-length: ${body.length}\r\n`;
  head += '\r\n';
  return body ? Buffer.concat([Buffer.from(head, 'latin1'), body]) : Buffer.from(head, 'latin1');
}

const CRLFCRLF = Buffer.from('\r\n\r\n');

interface Pending {
  resolve(r: HttpResponse): void;
  reject(e: Error): void;
}

export class HttpConn {
  private buf: Buffer | null = null;
  private readonly pending: Pending[] = [];
  private closedError: Error | null = null;
  private readonly socket: Socket;
  readonly ready: Promise<void>;

  constructor(host: string, port: number) {
    this.socket = netConnect({ host, port, noDelay: true });
    this.ready = new Promise((resolve, reject) => {
      this.socket.once('connect', () => resolve());
      this.socket.once('error', reject);
    });
    this.socket.on('data', (chunk: Buffer) => this.onData(chunk));
    this.socket.on('error', (err) => this.fail(err));
    this.socket.on('close', () => this.fail(new Error('connection closed')));
  }

  /** Requests sent and not answered yet. */
  get inFlight(): number {
    return this.pending.length;
  }

  get alive(): boolean {
    return this.closedError === null;
  }

  send(raw: Buffer): Promise<HttpResponse> {
    if (this.closedError) return Promise.reject(this.closedError);
    return new Promise((resolve, reject) => {
      this.pending.push({ resolve, reject });
      this.socket.write(raw);
    });
  }

  close(): void {
    this.socket.destroy();
  }

  private fail(err: Error): void {
    if (this.closedError) return;
    this.closedError = err;
    for (const p of this.pending.splice(0)) p.reject(err);
  }

  private onData(chunk: Buffer): void {
    let buf = this.buf ? Buffer.concat([this.buf, chunk]) : chunk;
    this.buf = null;
    for (;;) {
      const parsed = parseResponse(buf);
      if (parsed === null) break;
      if (parsed === 'bad') {
        this.socket.destroy(new Error('malformed HTTP response'));
        return;
      }
      const p = this.pending.shift();
      p?.resolve(parsed.response);
      buf = buf.subarray(parsed.consumed);
      if (buf.length === 0) return;
    }
    this.buf = buf;
  }
}

/** One response from the start of `buf`, or null when incomplete. */
export function parseResponse(buf: Buffer): { response: HttpResponse; consumed: number } | null | 'bad' {
  const headEnd = buf.indexOf(CRLFCRLF);
  if (headEnd < 0) return buf.length > 65_536 ? 'bad' : null;
  const head = buf.toString('latin1', 0, headEnd);
  const status = Number(head.slice(9, 12));
  if (!head.startsWith('HTTP/1.') || !Number.isInteger(status)) return 'bad';
  const lower = head.toLowerCase();
  const bodyStart = headEnd + 4;
  const cl = /\r\ncontent-length:\s*(\d+)/.exec(lower);
  if (cl) {
    const len = Number(cl[1]);
    if (buf.length < bodyStart + len) return null;
    return { response: { status, body: buf.subarray(bodyStart, bodyStart + len) }, consumed: bodyStart + len };
  }
  if (/\r\ntransfer-encoding:\s*chunked/.test(lower)) {
    const parts: Buffer[] = [];
    let o = bodyStart;
    for (;;) {
      const lineEnd = buf.indexOf('\r\n', o);
      if (lineEnd < 0) return null;
      const size = Number.parseInt(buf.toString('latin1', o, lineEnd), 16);
      if (!Number.isFinite(size)) return 'bad';
      const dataStart = lineEnd + 2;
      if (buf.length < dataStart + size + 2) return null;
      if (size === 0) return { response: { status, body: Buffer.concat(parts) }, consumed: dataStart + 2 };
      parts.push(buf.subarray(dataStart, dataStart + size));
      o = dataStart + size + 2;
    }
  }
  // 204/304 and friends: no body.
  return { response: { status, body: Buffer.alloc(0) }, consumed: bodyStart };
}

/**
 * A pool of keep-alive connections that sends each request on the connection with the fewest
 * requests in flight (up to `depth` pipelined per connection; beyond that requests wait here).
 */
export class HttpPool {
  private readonly conns: HttpConn[] = [];
  private readonly waiting: { raw: Buffer; resolve(r: HttpResponse): void; reject(e: Error): void }[] = [];

  constructor(
    private readonly host: string,
    private readonly port: number,
    private readonly size: number,
    private readonly depth = 1,
  ) {}

  async open(): Promise<void> {
    for (let i = 0; i < this.size; i++) this.conns.push(new HttpConn(this.host, this.port));
    await Promise.all(this.conns.map((c) => c.ready));
  }

  /** Requests queued here because every connection is at `depth`. */
  get queued(): number {
    return this.waiting.length;
  }

  request(raw: Buffer): Promise<HttpResponse> {
    const conn = this.pick();
    if (conn) return this.run(conn, raw);
    return new Promise((resolve, reject) => this.waiting.push({ raw, resolve, reject }));
  }

  private pick(): HttpConn | null {
    let best: HttpConn | null = null;
    for (let i = 0; i < this.conns.length; i++) {
      let c = this.conns[i] as HttpConn;
      if (!c.alive) {
        c = new HttpConn(this.host, this.port);
        this.conns[i] = c;
      }
      if (c.inFlight < this.depth && (best === null || c.inFlight < best.inFlight)) best = c;
      if (best?.inFlight === 0) break;
    }
    return best;
  }

  private run(conn: HttpConn, raw: Buffer): Promise<HttpResponse> {
    return conn.send(raw).finally(() => {
      const next = this.waiting.length > 0 ? this.pick() : null;
      if (next) {
        const w = this.waiting.shift();
        if (w) this.run(next, w.raw).then(w.resolve, w.reject);
      }
    });
  }

  close(): void {
    for (const c of this.conns) c.close();
    for (const w of this.waiting.splice(0)) w.reject(new Error('pool closed'));
  }
}
