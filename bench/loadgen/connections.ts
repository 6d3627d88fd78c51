/**
 * connections: opens many authenticated MQTT connections, `concurrency` CONNECTs in flight, and
 * keeps them open and idle (keepalive 300 s) until stopped. The start resolves when every CONNECT
 * has been answered; connects/s = connections / time from the first CONNECT to the last CONNACK.
 */
import { LeanMqtt } from '../lib/mqtt-client.js';
import { Meter } from './meter.js';
import type { ConnectionsJob, Load, LoadResult } from './protocol.js';

export class Connections implements Load {
  private readonly meter = new Meter();
  private clients: LeanMqtt[] = [];
  private running = false;

  constructor(private readonly job: ConnectionsJob) {}

  async start(): Promise<Record<string, number>> {
    const { job } = this;
    const t0 = performance.now();
    let next = 0;
    let failed = 0;
    const worker = async () => {
      while (next < job.devices.length) {
        const d = job.devices[next++];
        if (!d) break;
        const t = performance.now();
        try {
          const c = await LeanMqtt.connect({ host: job.host, port: job.port, ...d, keepaliveSeconds: 300, connectTimeoutMs: 30_000 });
          c.onClose = (err) => {
            if (this.running && err) this.meter.add('dropped');
          };
          this.clients.push(c);
          this.meter.hist.record((performance.now() - t) * 1000);
          this.meter.completed++;
        } catch {
          failed++;
          this.meter.errors++;
        }
      }
    };
    this.running = true;
    await Promise.all(Array.from({ length: job.concurrency }, worker));
    const seconds = (performance.now() - t0) / 1000;
    return { connected: this.clients.length, failed, seconds, connectsPerSec: this.clients.length / seconds };
  }

  /** The connect phase is what is measured: the mark does not reset its latencies. */
  mark(): void {}

  collect(): LoadResult {
    const r = this.meter.result();
    r.extra['open'] = this.clients.filter((c) => !c.socket.destroyed).length;
    return r;
  }

  async stop(): Promise<void> {
    this.running = false;
    for (const c of this.clients) c.destroy();
    await Promise.all(this.clients.map((c) => c.closed));
    this.clients = [];
  }
}
