/**
 * CoAP over UDP for load generation and simulated devices, on one connected dgram socket per
 * endpoint (one source port = one CoAP client to the server):
 *  - `requestTemplate` builds a request once; the flood patches message id, token and payload bytes;
 *  - `CoapEndpoint` is a small client with CON retransmission (RFC 7252 §4.2: ACK_TIMEOUT 2 s,
 *    random factor 1.5, MAX_RETRANSMIT 4), separate responses and Observe (RFC 7641).
 */
import { createSocket, type Socket } from 'node:dgram';
import { randomBytes } from 'node:crypto';
import { generate, parse, type ParsedPacket } from 'coap-packet';

/** Message types in the header (RFC 7252 §3). */
export const COAP_TYPE = { con: 0, non: 1, ack: 2, rst: 3 } as const;

export interface CoapRequestSpec {
  method: 'GET' | 'POST' | 'PUT' | 'DELETE';
  path: string;
  /** Uri-Query options, e.g. ['t=...'] */
  query?: string[];
  /** 50 = application/json, 42 = application/octet-stream */
  contentFormat?: number;
  payload?: Buffer;
  observe?: 0 | 1;
  confirmable?: boolean;
}

function options(spec: CoapRequestSpec): { name: string; value: Buffer }[] {
  const out: { name: string; value: Buffer }[] = [];
  if (spec.observe !== undefined) out.push({ name: 'Observe', value: spec.observe === 0 ? Buffer.alloc(0) : Buffer.from([1]) });
  for (const seg of spec.path.split('/').filter(Boolean)) out.push({ name: 'Uri-Path', value: Buffer.from(seg) });
  if (spec.contentFormat !== undefined) out.push({ name: 'Content-Format', value: spec.contentFormat === 0 ? Buffer.alloc(0) : Buffer.from([spec.contentFormat]) });
  for (const q of spec.query ?? []) out.push({ name: 'Uri-Query', value: Buffer.from(q) });
  return out;
}

/** A request with a 4-byte token; patch bytes 2–3 (message id), 4–7 (token), `payloadOffset`… */
export interface CoapTemplate {
  bytes: Buffer;
  payloadOffset: number;
}

export function requestTemplate(spec: CoapRequestSpec): CoapTemplate {
  const payload = spec.payload ?? Buffer.alloc(0);
  const bytes = generate({
    code: spec.method,
    confirmable: spec.confirmable !== false,
    messageId: 1,
    token: Buffer.alloc(4),
    options: options(spec),
    payload,
  });
  return { bytes, payloadOffset: bytes.length - payload.length };
}

/** Header fields of a datagram without parsing options (the flood's hot path). */
export function peekHeader(buf: Buffer): { type: number; code: number; messageId: number; token: number } | null {
  if (buf.length < 4 || (buf[0] as number) >> 6 !== 1) return null;
  const tkl = (buf[0] as number) & 0x0f;
  return {
    type: ((buf[0] as number) >> 4) & 3,
    code: buf[1] as number,
    messageId: buf.readUInt16BE(2),
    token: tkl === 4 && buf.length >= 8 ? buf.readUInt32BE(4) : -1,
  };
}

/** "2.04" from the code byte. */
export function codeString(code: number): string {
  return `${code >> 5}.${String(code & 31).padStart(2, '0')}`;
}

export function emptyAck(messageId: number): Buffer {
  return Buffer.from([0x60, 0, messageId >> 8, messageId & 0xff]);
}

export interface CoapResponse {
  code: string;
  payload: Buffer;
  packet: ParsedPacket;
}

interface Exchange {
  resolve(r: CoapResponse): void;
  reject(e: Error): void;
  timer: NodeJS.Timeout | null;
  mid: number;
  observe: ((r: CoapResponse) => void) | null;
}

const ACK_TIMEOUT_MS = 2000;
const MAX_RETRANSMIT = 4;
const EXCHANGE_TIMEOUT_MS = 93_000; // MAX_TRANSMIT_WAIT

export class CoapEndpoint {
  private readonly socket: Socket;
  private nextMid = Math.floor(Math.random() * 0xffff);
  private readonly byToken = new Map<string, Exchange>();
  /** Message id of an unacknowledged CON request → its token key (for empty ACKs and RSTs). */
  private readonly byMid = new Map<number, string>();
  private closed = false;
  readonly ready: Promise<void>;

  constructor(host: string, port: number) {
    this.socket = createSocket(host.includes(':') ? 'udp6' : 'udp4');
    this.ready = new Promise((resolve, reject) => {
      this.socket.once('error', reject);
      this.socket.connect(port, host, () => {
        this.socket.off('error', reject);
        resolve();
      });
    });
    this.socket.on('error', () => undefined);
    this.socket.on('message', (msg: Buffer) => this.onMessage(msg));
  }

  private mid(): number {
    this.nextMid = (this.nextMid + 1) & 0xffff;
    return this.nextMid;
  }

  /** Sends a request (CON retransmitted); resolves with the response, or the first notification. */
  request(spec: CoapRequestSpec, onNotify?: (r: CoapResponse) => void): Promise<CoapResponse> {
    if (this.closed) return Promise.reject(new Error('endpoint closed'));
    const token = randomBytes(4);
    const key = token.toString('hex');
    const confirmable = spec.confirmable !== false;
    const messageId = this.mid();
    const datagram = generate({ code: spec.method, confirmable, messageId, token, options: options(spec), payload: spec.payload ?? Buffer.alloc(0) });
    if (confirmable) this.byMid.set(messageId, key);
    return new Promise((resolve, reject) => {
      const ex: Exchange = { resolve, reject, timer: null, mid: messageId, observe: onNotify ?? null };
      this.byToken.set(key, ex);
      let attempt = 0;
      let wait = ACK_TIMEOUT_MS * (1 + Math.random() * 0.5);
      const started = Date.now();
      const transmit = () => {
        if (this.closed) return;
        this.socket.send(datagram);
        if (!confirmable) {
          ex.timer = setTimeout(() => this.finish(key, new Error('no response')), EXCHANGE_TIMEOUT_MS);
          return;
        }
        ex.timer = setTimeout(() => {
          if (attempt++ >= MAX_RETRANSMIT || Date.now() - started > EXCHANGE_TIMEOUT_MS) return this.finish(key, new Error('no response after retransmissions'));
          wait *= 2;
          transmit();
        }, wait);
      };
      transmit();
    });
  }

  /** Ends an Observe registration locally (the server learns it from the RST to its next notification). */
  forget(token: Buffer): void {
    this.byToken.delete(token.toString('hex'));
  }

  private finish(key: string, err: Error): void {
    const ex = this.byToken.get(key);
    if (!ex) return;
    this.byToken.delete(key);
    this.byMid.delete(ex.mid);
    if (ex.timer) clearTimeout(ex.timer);
    ex.reject(err);
  }

  private onMessage(msg: Buffer): void {
    let packet: ParsedPacket;
    try {
      packet = parse(msg);
    } catch {
      return;
    }
    if (packet.confirmable) this.socket.send(emptyAck(packet.messageId));
    if (packet.ack || packet.reset) {
      const pendingKey = this.byMid.get(packet.messageId);
      this.byMid.delete(packet.messageId);
      if (packet.reset && pendingKey !== undefined) return this.finish(pendingKey, new Error('reset by the server'));
      if (packet.code === '0.00' && pendingKey !== undefined) {
        // Empty ACK: stop retransmitting; the response comes separately (RFC 7252 §5.2.2).
        const ex = this.byToken.get(pendingKey);
        if (ex?.timer) {
          clearTimeout(ex.timer);
          ex.timer = setTimeout(() => this.finish(pendingKey, new Error('no separate response')), EXCHANGE_TIMEOUT_MS);
        }
        return;
      }
    }
    if (packet.code === '0.00') return;
    const key = packet.token.toString('hex');
    const ex = this.byToken.get(key);
    if (!ex) {
      // A notification nobody waits for: tell the server to stop (RFC 7641 §3.6).
      if (packet.confirmable || !packet.ack) this.socket.send(Buffer.from([0x70, 0, packet.messageId >> 8, packet.messageId & 0xff]));
      return;
    }
    if (ex.timer) {
      clearTimeout(ex.timer);
      ex.timer = null;
    }
    this.byMid.delete(ex.mid);
    const response: CoapResponse = { code: packet.code, payload: packet.payload, packet };
    const observing = ex.observe !== null && packet.options.some((o) => o.name === 'Observe') && packet.code.startsWith('2.');
    if (!observing) this.byToken.delete(key);
    ex.resolve(response); // first answer resolves; later calls are no-ops
    if (observing) ex.observe?.(response);
  }

  close(): Promise<void> {
    if (this.closed) return Promise.resolve();
    this.closed = true;
    for (const ex of this.byToken.values()) {
      if (ex.timer) clearTimeout(ex.timer);
      ex.reject(new Error('endpoint closed'));
    }
    this.byToken.clear();
    this.byMid.clear();
    return new Promise((resolve) => this.socket.close(() => resolve()));
  }
}
