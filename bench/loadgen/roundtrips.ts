/**
 * Round trips through a device at a fixed rate (open loop), latency from the moment a request is
 * issued (time spent waiting for a free connection included):
 *  - shadow: REST PATCH desired (clientToken b<n>) → the device gets update/delta, reports the
 *    value with the same clientToken → the REST side sees the device's update on GET /v1/events;
 *  - command: REST POST command with wait → the device answers on .../response → 200 succeeded.
 */
import { request as httpRequest, type ClientRequest } from 'node:http';
import { Histogram } from '../lib/histogram.js';
import { encodeRequest, HttpPool } from '../lib/http-client.js';
import { LeanMqtt } from '../lib/mqtt-client.js';
import { encodePublish } from '../lib/mqtt-wire.js';
import { nowUs } from '../lib/payloads.js';
import { Meter, RateTicker } from './meter.js';
import type { CommandRoundtripJob, DeviceCredential, Load, LoadResult, ShadowRoundtripJob } from './protocol.js';

const LOST_AFTER_US = 10_000_000;

async function connectDevices(host: string, port: number, devices: DeviceCredential[], meter: Meter, isRunning: () => boolean): Promise<LeanMqtt[]> {
  const out: LeanMqtt[] = [];
  for (let i = 0; i < devices.length; i += 50) {
    const batch = devices.slice(i, i + 50);
    out.push(
      ...(await Promise.all(
        batch.map(async (d) => {
          const c = await LeanMqtt.connect({ host, port, clientId: d.id, username: d.id, password: d.token, keepaliveSeconds: 120 });
          c.onClose = (err) => {
            if (isRunning() && err) meter.add('deviceClosed');
          };
          return c;
        }),
      )),
    );
  }
  return out;
}

abstract class Roundtrip implements Load {
  protected readonly meter = new Meter();
  protected pool: HttpPool | null = null;
  protected devices: LeanMqtt[] = [];
  protected running = false;
  private ticker: RateTicker | null = null;
  private sweeper: NodeJS.Timeout | null = null;
  /** Round trip number → issue time (µs). */
  protected readonly pending = new Map<number, number>();
  protected seq = 0;
  /** Where the time goes: issue → HTTP response, issue → the device has it. */
  protected readonly httpHist = new Histogram();
  protected readonly deviceHist = new Histogram();

  constructor(
    protected readonly job: ShadowRoundtripJob | CommandRoundtripJob,
  ) {}

  protected abstract setup(): Promise<void>;
  protected abstract issue(n: number, device: number): void;

  async start(): Promise<void> {
    const { job } = this;
    this.pool = new HttpPool(job.host, job.httpPort, 64, 1);
    await this.pool.open();
    this.devices = await connectDevices(job.host, job.mqttPort, job.devices, this.meter, () => this.running);
    await this.setup();
    this.running = true;
    this.ticker = new RateTicker(job.rate, (due) => {
      for (let k = 0; k < due; k++) {
        const n = ++this.seq;
        this.meter.sent++;
        this.pending.set(n, nowUs());
        this.issue(n, n % this.devices.length);
      }
    });
    this.ticker.start();
    this.sweeper = setInterval(() => {
      const cutoff = nowUs() - LOST_AFTER_US;
      for (const [n, t] of this.pending) {
        if (t < cutoff) {
          this.pending.delete(n);
          this.meter.lost++;
        }
      }
    }, 1000);
  }

  /** Round trip `n` finished (ok or not). */
  protected complete(n: number, ok: boolean, what?: string): void {
    const t = this.pending.get(n);
    if (t === undefined) return;
    this.pending.delete(n);
    this.meter.hist.record(nowUs() - t);
    if (ok) this.meter.completed++;
    else {
      this.meter.errors++;
      if (what) this.meter.add(what);
    }
  }

  /** Records a stage of round trip `n` (ms figures go to the result's extra). */
  protected stage(h: Histogram, n: number): void {
    const t = this.pending.get(n);
    if (t !== undefined) h.record(nowUs() - t);
  }

  mark(): void {
    this.meter.mark();
    this.httpHist.reset();
    this.deviceHist.reset();
  }

  collect(): LoadResult {
    const r = this.meter.result();
    r.extra['pending'] = this.pending.size;
    const ms = (h: Histogram, p: number) => (h.count === 0 ? -1 : Math.round(h.percentile(p) / 10) / 100);
    r.extra['httpP50Ms'] = ms(this.httpHist, 50);
    r.extra['httpP99Ms'] = ms(this.httpHist, 99);
    r.extra['deviceP50Ms'] = ms(this.deviceHist, 50);
    r.extra['deviceP99Ms'] = ms(this.deviceHist, 99);
    return r;
  }

  async stop(): Promise<void> {
    this.running = false;
    this.ticker?.stop();
    if (this.sweeper) clearInterval(this.sweeper);
    this.pool?.close();
    for (const d of this.devices) d.destroy();
    await Promise.all(this.devices.map((d) => d.closed));
  }
}

export class ShadowRoundtrip extends Roundtrip {
  private sse: ClientRequest | null = null;
  private host = '';

  protected async setup(): Promise<void> {
    const job = this.job;
    this.host = `${job.host}:${job.httpPort}`;
    // Devices: apply every delta by reporting it back with the request's clientToken.
    this.devices.forEach((c, i) => {
      const id = (job.devices[i] as DeviceCredential).id;
      const reportTopic = `devices/${id}/shadow/update`;
      let mid = 0;
      c.onPublish = (buf, _ts, _te, ps, pe) => {
        let doc: { state?: { seq?: unknown }; clientToken?: unknown };
        try {
          doc = JSON.parse(buf.toString('utf8', ps, pe)) as typeof doc;
        } catch {
          this.meter.add('badDelta');
          return;
        }
        const n = typeof doc.clientToken === 'string' && doc.clientToken.startsWith('b') ? Number(doc.clientToken.slice(1)) : NaN;
        if (Number.isInteger(n)) this.stage(this.deviceHist, n);
        const report = { state: { reported: { seq: doc.state?.seq ?? null } }, ...(typeof doc.clientToken === 'string' && { clientToken: doc.clientToken }) };
        mid = (mid % 0xfffe) + 1;
        c.send(encodePublish(reportTopic, Buffer.from(JSON.stringify(report)), 1, mid));
      };
    });
    await Promise.all(this.devices.map((c, i) => c.subscribe([{ topic: `devices/${(job.devices[i] as DeviceCredential).id}/shadow/update/delta`, qos: 1 }])));
    // The REST side: the event stream of shadow updates.
    await new Promise<void>((resolve, reject) => {
      const req = httpRequest(
        { host: job.host, port: job.httpPort, path: '/v1/events?types=iotgate.shadow.updated', headers: { authorization: `Bearer ${job.token}`, accept: 'text/event-stream' } },
        (res) => {
          if (res.statusCode !== 200) return reject(new Error(`GET /v1/events: HTTP ${res.statusCode}`));
          res.setEncoding('utf8');
          let buffered = '';
          res.on('data', (chunk: string) => {
            buffered += chunk;
            let nl: number;
            while ((nl = buffered.indexOf('\n')) >= 0) {
              const line = buffered.slice(0, nl);
              buffered = buffered.slice(nl + 1);
              if (line.startsWith('data:')) this.onEvent(line);
            }
          });
          resolve();
        },
      );
      req.on('error', (err) => (this.running ? this.meter.add('sseError') : reject(err)));
      req.end();
      this.sse = req;
    });
  }

  private onEvent(line: string): void {
    if (!line.includes('"writer":"device"')) return;
    const m = /"clientToken":"b(\d+)"/.exec(line);
    if (m) this.complete(Number(m[1]), true);
  }

  protected issue(n: number, device: number): void {
    const id = (this.job.devices[device] as DeviceCredential).id;
    const raw = encodeRequest(this.host, {
      method: 'PATCH',
      path: `/v1/devices/${encodeURIComponent(id)}/shadow`,
      headers: { authorization: `Bearer ${this.job.token}`, 'content-type': 'application/json' },
      body: `{"state":{"desired":{"seq":${n}}},"clientToken":"b${n}"}`,
    });
    this.pool?.request(raw).then(
      (res) => {
        this.stage(this.httpHist, n);
        if (res.status !== 200) this.complete(n, false, `http${res.status}`);
      },
      () => this.complete(n, false, 'httpError'),
    );
  }

  override async stop(): Promise<void> {
    this.sse?.destroy();
    await super.stop();
  }
}

export class CommandRoundtrip extends Roundtrip {
  private host = '';

  protected async setup(): Promise<void> {
    const job = this.job;
    this.host = `${job.host}:${job.httpPort}`;
    const answer = Buffer.from('{"status":200,"payload":{"ok":true}}');
    this.devices.forEach((c) => {
      let mid = 0;
      c.onPublish = (buf, ts, te, ps, pe) => {
        const n = /"n":(\d+)/.exec(buf.toString('utf8', ps, pe))?.[1];
        if (n !== undefined) this.stage(this.deviceHist, Number(n));
        mid = (mid % 0xfffe) + 1;
        c.send(encodePublish(`${buf.toString('utf8', ts, te)}/response`, answer, 1, mid));
      };
    });
    await Promise.all(this.devices.map((c, i) => c.subscribe([{ topic: `devices/${(job.devices[i] as DeviceCredential).id}/commands/+`, qos: 1 }])));
  }

  protected issue(n: number, device: number): void {
    const id = (this.job.devices[device] as DeviceCredential).id;
    const raw = encodeRequest(this.host, {
      method: 'POST',
      path: `/v1/devices/${encodeURIComponent(id)}/commands`,
      headers: { authorization: `Bearer ${this.job.token}`, 'content-type': 'application/json' },
      body: `{"name":"ping","params":{"n":${n}},"wait":true,"timeoutMs":10000,"ttlMs":60000}`,
    });
    this.pool?.request(raw).then(
      (res) => {
        const ok = res.status === 200 && res.body.includes('"state":"succeeded"');
        this.complete(n, ok, ok ? undefined : `http${res.status}`);
      },
      () => this.complete(n, false, 'httpError'),
    );
  }
}
