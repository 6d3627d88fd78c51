/**
 * CoAP telemetry: CON POST /telemetry?t=<token> with a 100-byte JSON body, from `sockets` source
 * ports, each device's request pre-built and patched (message id, 4-byte token, send time).
 * Closed loop with `window` outstanding per socket, or open loop at `rate`/s. A request without an
 * answer after 5 s is lost (no retransmission: on loopback a loss is the server's doing).
 */
import { createSocket, type Socket } from 'node:dgram';
import { COAP_TYPE, emptyAck, peekHeader, requestTemplate, type CoapTemplate } from '../lib/coap-client.js';
import { nowUs, payloadTemplate, stamp } from '../lib/payloads.js';
import { Meter, RateTicker } from './meter.js';
import type { CoapFlowJob, Load, LoadResult } from './protocol.js';

const LOST_AFTER_US = 5_000_000;
const CHANGED = (2 << 5) | 4; // 2.04

interface Lane {
  socket: Socket;
  /** token → send time (µs) */
  pending: Map<number, number>;
  mid: number;
  /** devices this socket sends for, in turn */
  devices: number[];
  nextDevice: number;
}

export class CoapFlow implements Load {
  private readonly meter = new Meter();
  private lanes: Lane[] = [];
  private templates: CoapTemplate[] = [];
  private markOffset = 0;
  private token = 1;
  private running = false;
  private ticker: RateTicker | null = null;
  private sweeper: NodeJS.Timeout | null = null;
  private rr = 0;

  constructor(private readonly job: CoapFlowJob) {}

  async start(): Promise<void> {
    const { job } = this;
    const payload = payloadTemplate('generic');
    this.markOffset = payload.markOffset;
    this.templates = job.tokens.map((t) =>
      requestTemplate({ method: 'POST', path: 'telemetry', query: [`t=${t}`], contentFormat: 50, payload: payload.bytes }),
    );
    for (let s = 0; s < job.sockets; s++) {
      const socket = createSocket('udp4');
      await new Promise<void>((resolve, reject) => {
        socket.once('error', reject);
        socket.connect(job.port, job.host, () => resolve());
      });
      // Large buffers: the loss we measure should be the server's, not this socket's.
      socket.setRecvBufferSize(4 * 1024 * 1024);
      socket.setSendBufferSize(4 * 1024 * 1024);
      const lane: Lane = { socket, pending: new Map(), mid: Math.floor(Math.random() * 0xffff), devices: [], nextDevice: 0 };
      socket.on('message', (msg: Buffer) => this.onMessage(lane, msg));
      socket.on('error', () => this.meter.add('socketError'));
      this.lanes.push(lane);
    }
    job.tokens.forEach((_t, d) => this.lanes[d % job.sockets]?.devices.push(d));
    this.running = true;
    if (job.rate !== undefined) {
      this.ticker = new RateTicker(job.rate, (due) => this.offer(due));
      this.ticker.start();
    } else {
      for (const lane of this.lanes) this.pump(lane);
    }
    this.sweeper = setInterval(() => {
      const cutoff = nowUs() - LOST_AFTER_US;
      for (const lane of this.lanes) {
        let freed = false;
        for (const [tok, t] of lane.pending) {
          if (t < cutoff) {
            lane.pending.delete(tok);
            this.meter.lost++;
            freed = true;
          }
        }
        if (freed && this.job.rate === undefined) this.pump(lane);
      }
    }, 500);
  }

  private send(lane: Lane): void {
    if (lane.devices.length === 0) return;
    const d = lane.devices[lane.nextDevice++ % lane.devices.length] as number;
    const tpl = this.templates[d] as CoapTemplate;
    const b = Buffer.allocUnsafe(tpl.bytes.length);
    tpl.bytes.copy(b);
    lane.mid = (lane.mid + 1) & 0xffff;
    b.writeUInt16BE(lane.mid, 2);
    const tok = this.token;
    this.token = (this.token + 1) >>> 0 || 1;
    b.writeUInt32BE(tok, 4);
    const t = nowUs();
    stamp(b, tpl.payloadOffset, this.markOffset, d % 10_000, t);
    lane.pending.set(tok, t);
    this.meter.sent++;
    lane.socket.send(b);
  }

  private pump(lane: Lane): void {
    while (this.running && lane.pending.size < this.job.window) this.send(lane);
  }

  private offer(due: number): void {
    for (let k = 0; k < due && this.running; k++) {
      const lane = this.lanes[this.rr++ % this.lanes.length] as Lane;
      this.meter.add('offered');
      if (lane.pending.size >= this.job.window) this.meter.add('blocked');
      else this.send(lane);
    }
  }

  private onMessage(lane: Lane, msg: Buffer): void {
    const h = peekHeader(msg);
    if (!h) return;
    if (h.type === COAP_TYPE.con) lane.socket.send(emptyAck(h.messageId)); // a separate response
    if (h.code === 0) return; // empty ACK: the response follows separately
    const t = lane.pending.get(h.token);
    if (t === undefined) return;
    lane.pending.delete(h.token);
    const m = this.meter;
    m.hist.record(nowUs() - t);
    if (h.code === CHANGED) m.completed++;
    else {
      m.errors++;
      m.add(`coap${h.code >> 5}.${String(h.code & 31).padStart(2, '0')}`);
    }
    if (this.job.rate === undefined) this.pump(lane);
  }

  mark(): void {
    this.meter.mark();
  }

  collect(): LoadResult {
    return this.meter.result();
  }

  async stop(): Promise<void> {
    this.running = false;
    this.ticker?.stop();
    if (this.sweeper) clearInterval(this.sweeper);
    await Promise.all(this.lanes.map((l) => new Promise<void>((resolve) => l.socket.close(() => resolve()))));
  }
}
