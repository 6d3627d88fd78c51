/**
 * Publishers → broker → one subscriber. Each message carries its publisher and send time; the
 * subscriber's receipt is the completion (latency = publish to delivery, both on this clock).
 *  - closed loop: each publisher keeps `window` messages between send and delivery;
 *  - open loop (`rate`): messages are offered on a schedule; a publisher whose socket pushes back
 *    (the broker stopped reading) skips its turn, counted as `blocked`.
 */
import { LeanMqtt } from '../lib/mqtt-client.js';
import { publishTemplate, type PublishTemplate } from '../lib/mqtt-wire.js';
import { nowUs, payloadTemplate, readSender, readTimeUs, stamp } from '../lib/payloads.js';
import { Meter, RateTicker } from './meter.js';
import type { Load, LoadResult, MqttFlowJob } from './protocol.js';

const STALL_MS = 5000;

export class MqttFlow implements Load {
  private readonly meter = new Meter();
  private pubs: LeanMqtt[] = [];
  private sub: LeanMqtt | null = null;
  private templates: PublishTemplate[] = [];
  private markOffset = 0;
  private inflight = new Int32Array(0);
  private lastProgress = new Float64Array(0);
  private nextMid = new Uint16Array(0);
  private running = false;
  private ticker: RateTicker | null = null;
  private watchdog: NodeJS.Timeout | null = null;
  private rr = 0;

  constructor(private readonly job: MqttFlowJob) {}

  async start(): Promise<void> {
    const { job } = this;
    const n = job.publishers.length;
    const payload = payloadTemplate(job.payload);
    this.markOffset = payload.markOffset;
    this.templates = job.publishers.map((p) => publishTemplate(p.topic, payload.bytes, job.qos));
    this.inflight = new Int32Array(n);
    this.lastProgress = new Float64Array(n);
    this.nextMid = new Uint16Array(n);

    const sub = await LeanMqtt.connect({ host: job.host, port: job.port, ...job.subscriber, keepaliveSeconds: 120 });
    this.sub = sub;
    sub.onPublish = (buf, _ts, _te, ps) => {
      const sender = readSender(buf, ps, this.markOffset);
      const sentUs = readTimeUs(buf, ps, this.markOffset);
      const m = this.meter;
      m.completed++;
      m.hist.record(nowUs() - sentUs);
      if (sender < n) {
        this.inflight[sender] = Math.max(0, (this.inflight[sender] as number) - 1);
        this.lastProgress[sender] = performance.now();
        if (this.job.rate === undefined) this.pump(sender);
      }
    };
    sub.onClose = (err) => {
      if (this.running && err) this.meter.add('subscriberClosed');
    };
    const granted = await sub.subscribe([{ topic: job.filter, qos: job.qos }]);
    if (granted[0] === 0x80) throw new Error(`subscription to ${job.filter} refused`);

    this.pubs = await Promise.all(
      job.publishers.map(async (p, i) => {
        const c = await LeanMqtt.connect({ host: job.host, port: job.port, ...p, keepaliveSeconds: 120 });
        c.onPuback = () => this.meter.add('acked');
        c.onClose = (err) => {
          if (this.running && err) this.meter.add('publisherClosed');
        };
        this.lastProgress[i] = performance.now();
        return c;
      }),
    );

    this.running = true;
    if (job.rate !== undefined) {
      this.ticker = new RateTicker(job.rate, (due) => this.offer(due));
      this.ticker.start();
    } else {
      for (let i = 0; i < n; i++) this.pump(i);
    }
    // A message that never arrives (refused, dropped) would hold its window slot forever.
    this.watchdog = setInterval(() => {
      const now = performance.now();
      for (let i = 0; i < n; i++) {
        if ((this.inflight[i] as number) > 0 && now - (this.lastProgress[i] as number) > STALL_MS) {
          this.meter.lost += this.inflight[i] as number;
          this.inflight[i] = 0;
          this.lastProgress[i] = now;
          if (this.job.rate === undefined) this.pump(i);
        }
      }
    }, 1000);
  }

  private send(i: number): void {
    const tpl = this.templates[i] as PublishTemplate;
    const b = Buffer.allocUnsafe(tpl.bytes.length);
    tpl.bytes.copy(b);
    if (tpl.messageIdOffset >= 0) {
      let mid = ((this.nextMid[i] as number) + 1) & 0xffff;
      if (mid === 0) mid = 1;
      this.nextMid[i] = mid;
      b[tpl.messageIdOffset] = mid >> 8;
      b[tpl.messageIdOffset + 1] = mid & 0xff;
    }
    stamp(b, tpl.payloadOffset, this.markOffset, i, nowUs());
    (this.pubs[i] as LeanMqtt).send(b);
    this.inflight[i]!++;
    if (this.inflight[i] === 1) this.lastProgress[i] = performance.now();
    this.meter.sent++;
  }

  private pump(i: number): void {
    const window = this.job.window;
    while (this.running && (this.inflight[i] as number) < window) this.send(i);
  }

  private offer(due: number): void {
    const n = this.pubs.length;
    for (let k = 0; k < due && this.running; k++) {
      const i = this.rr++ % n;
      this.meter.add('offered');
      if ((this.pubs[i] as LeanMqtt).congested || (this.inflight[i] as number) >= this.job.window) this.meter.add('blocked');
      else this.send(i);
    }
  }

  mark(): void {
    this.meter.mark();
  }

  collect(): LoadResult {
    const r = this.meter.result();
    r.extra['inflight'] = this.inflight.reduce((a, b) => a + b, 0);
    return r;
  }

  async stop(): Promise<void> {
    this.running = false;
    this.ticker?.stop();
    if (this.watchdog) clearInterval(this.watchdog);
    for (const c of this.pubs) c.destroy();
    this.sub?.destroy();
    await Promise.all([...this.pubs.map((c) => c.closed), this.sub?.closed]);
  }
}
