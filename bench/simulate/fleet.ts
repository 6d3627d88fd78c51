/**
 * `iotgate simulate`: registers a fleet over REST, connects every device (MQTT or CoAP), sends
 * telemetry at `rate` per device (spread evenly over the fleet), reports shadows, and answers
 * commands until the duration ends or `stop()`; counts everything for the progress line and the
 * summary.
 */
import { Histogram } from '../lib/histogram.js';
import { RateTicker } from '../loadgen/meter.js';
import type { DeviceCredential } from '../loadgen/protocol.js';
import { CoapSimDevice } from './coap-device.js';
import { MqttSimDevice } from './mqtt-device.js';
import { registerFleet } from './provision.js';
import { newCounters, type SimCounters, type SimDevice, type SimSink, type SimulateOptions } from './types.js';

export interface SimProgress extends SimCounters {
  devices: number;
  elapsedS: number;
  /** Telemetry acknowledged per second over the last second. */
  ratePerSec: number;
}

export interface SimulationSummary {
  protocol: string;
  type: string;
  prefix: string;
  devices: number;
  connected: number;
  durationS: number;
  sent: number;
  acked: number;
  errors: number;
  disconnects: number;
  /** Telemetry acknowledged per second over the run. */
  ratePerSec: number;
  ackLatencyMs: { p50: number | null; p99: number | null; max: number | null };
  shadowReports: number;
  deltasApplied: number;
  commandsAnswered: number;
  /** The first few error messages (e.g. what the gateway said on the errors topic). */
  errorSamples: string[];
}

const MAX_ERROR_SAMPLES = 10;

export class Simulation implements SimSink {
  readonly counters = newCounters();
  private readonly hist = new Histogram();
  private readonly errorSamples: string[] = [];
  private sims: SimDevice[] = [];
  private ticker: RateTicker | null = null;
  private timers: NodeJS.Timeout[] = [];
  private startedAt = 0;
  private lastAcked = 0;
  private rate = 0;
  private ended: (() => void) | null = null;
  /** Resolves when the duration has passed (never without one). */
  readonly done: Promise<void>;

  private constructor(
    readonly opts: SimulateOptions,
    readonly fleet: DeviceCredential[],
  ) {
    this.done = new Promise((resolve) => (this.ended = resolve));
  }

  /** Registers and connects the fleet and starts the traffic. */
  static async start(opts: SimulateOptions, onSetup: (line: string) => void = () => undefined): Promise<Simulation> {
    onSetup(`registering ${opts.devices} devices at ${opts.url} ...`);
    const fleet = await registerFleet({ url: opts.url, token: opts.token, prefix: opts.prefix, count: opts.devices, type: opts.type });
    const sim = new Simulation(opts, fleet);
    onSetup(`connecting ${opts.devices} ${opts.protocol.toUpperCase()} devices ...`);
    await sim.connectAll();
    sim.run();
    return sim;
  }

  acked(us: number): void {
    this.hist.record(us);
  }

  error(detail: string): void {
    this.counters.errors++;
    if (this.errorSamples.length < MAX_ERROR_SAMPLES) this.errorSamples.push(detail);
  }

  private async connectAll(): Promise<void> {
    const { opts } = this;
    const where = opts.protocol === 'mqtt' ? opts.mqtt : opts.coap;
    this.sims = this.fleet.map((cred, i) =>
      opts.protocol === 'mqtt' ? new MqttSimDevice(cred, i, { ...where, type: opts.type }, this) : new CoapSimDevice(cred, i, { ...where, type: opts.type }, this),
    );
    let next = 0;
    let firstError: string | null = null;
    const worker = async () => {
      while (next < this.sims.length) {
        const sim = this.sims[next++] as SimDevice;
        await sim.start().catch((err: unknown) => {
          const message = err instanceof Error ? err.message : String(err);
          firstError ??= message;
          this.error(`${sim.id}: cannot connect: ${message}`);
        });
      }
    };
    await Promise.all(Array.from({ length: Math.min(50, this.sims.length) }, worker));
    if (this.counters.connected === 0) {
      await this.stopDevices();
      throw new Error(`no simulated device could connect to ${opts.protocol}://${where.host}:${where.port}: ${firstError ?? 'unknown error'}`);
    }
  }

  private run(): void {
    const { opts } = this;
    this.startedAt = performance.now();
    let rr = 0;
    const total = opts.devices * opts.rate;
    if (total > 0) {
      this.ticker = new RateTicker(total, (due) => {
        for (let k = 0; k < due; k++) this.sims[rr++ % this.sims.length]?.telemetry();
      });
      this.ticker.start();
    }
    this.timers.push(
      setInterval(() => {
        this.rate = this.counters.acked - this.lastAcked;
        this.lastAcked = this.counters.acked;
      }, 1000),
      setInterval(() => {
        for (const s of this.sims) s.reportShadow();
      }, opts.shadowEveryS * 1000),
    );
    if (opts.durationS !== undefined) this.timers.push(setTimeout(() => this.ended?.(), opts.durationS * 1000));
  }

  progress(): SimProgress {
    return { ...this.counters, devices: this.opts.devices, elapsedS: (performance.now() - this.startedAt) / 1000, ratePerSec: this.rate };
  }

  private async stopDevices(): Promise<void> {
    await Promise.all(this.sims.map((s) => s.stop().catch(() => undefined)));
  }

  /** Stops the traffic, disconnects the fleet (devices stay registered), and sums up. */
  async stop(): Promise<SimulationSummary> {
    const elapsedS = (performance.now() - this.startedAt) / 1000;
    this.ticker?.stop();
    for (const t of this.timers) clearTimeout(t);
    const connected = this.counters.connected;
    await this.stopDevices();
    const ms = (p: number) => (this.hist.count === 0 ? null : Math.round(this.hist.percentile(p) / 10) / 100);
    const c = this.counters;
    return {
      protocol: this.opts.protocol,
      type: this.opts.type,
      prefix: this.opts.prefix,
      devices: this.opts.devices,
      connected,
      durationS: Math.round(elapsedS * 10) / 10,
      sent: c.sent,
      acked: c.acked,
      errors: c.errors,
      disconnects: c.disconnects,
      ratePerSec: elapsedS > 0 ? Math.round((c.acked / elapsedS) * 10) / 10 : 0,
      ackLatencyMs: { p50: ms(50), p99: ms(99), max: this.hist.count === 0 ? null : Math.round(this.hist.max / 10) / 100 },
      shadowReports: c.shadowReports,
      deltasApplied: c.deltasApplied,
      commandsAnswered: c.commandsAnswered,
      errorSamples: [...this.errorSamples],
    };
  }
}

export function progressLine(p: SimProgress): string {
  const n = (x: number) => Math.round(x).toLocaleString('en-US');
  return (
    `${n(p.elapsedS)} s | ${n(p.connected)}/${n(p.devices)} connected | sent ${n(p.sent)} | acked ${n(p.acked)} | errors ${n(p.errors)} | ` +
    `${n(p.ratePerSec)} msg/s | shadow ${n(p.shadowReports)} | commands ${n(p.commandsAnswered)}`
  );
}
