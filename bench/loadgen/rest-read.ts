/**
 * rest-read: GET shadow and GET device in turn (or the job's `paths` in turn: the proxy scenario),
 * closed loop, keep-alive and pipelined.
 */
import { encodeRequest, HttpPool } from '../lib/http-client.js';
import { nowUs } from '../lib/payloads.js';
import { Meter } from './meter.js';
import type { Load, LoadResult, RestReadJob } from './protocol.js';

export class RestRead implements Load {
  private readonly meter = new Meter();
  private pool: HttpPool | null = null;
  private running = false;
  private requests: Buffer[] = [];
  private next = 0;

  constructor(private readonly job: RestReadJob) {}

  async start(): Promise<void> {
    const { job } = this;
    const host = `${job.host}:${job.port}`;
    const auth: Record<string, string> = job.token === null ? {} : { authorization: `Bearer ${job.token}` };
    this.pool = new HttpPool(job.host, job.port, job.connections, job.depth);
    await this.pool.open();
    if (job.seedShadows) {
      for (const id of job.deviceIds) {
        const raw = encodeRequest(host, {
          method: 'PATCH',
          path: `/v1/devices/${encodeURIComponent(id)}/shadow`,
          headers: { ...auth, 'content-type': 'application/json' },
          body: JSON.stringify({ state: { desired: { seq: 1, led: 'green', schedule: [8, 12, 18] } } }),
        });
        const res = await this.pool.request(raw);
        if (res.status !== 200) throw new Error(`seeding the shadow of ${id}: HTTP ${res.status} ${res.body.toString().slice(0, 200)}`);
      }
    }
    this.requests = job.paths
      ? job.paths.map((path) => encodeRequest(host, { method: 'GET', path, headers: auth }))
      : job.deviceIds.flatMap((id) => [
          encodeRequest(host, { method: 'GET', path: `/v1/devices/${encodeURIComponent(id)}/shadow`, headers: auth }),
          encodeRequest(host, { method: 'GET', path: `/v1/devices/${encodeURIComponent(id)}`, headers: auth }),
        ]);
    this.running = true;
    for (let k = 0; k < job.connections * job.depth; k++) this.loop();
  }

  private loop(): void {
    if (!this.running || !this.pool) return;
    const raw = this.requests[this.next++ % this.requests.length] as Buffer;
    const t = nowUs();
    this.meter.sent++;
    this.pool.request(raw).then(
      (res) => {
        const m = this.meter;
        m.hist.record(nowUs() - t);
        if (res.status === 200) m.completed++;
        else {
          m.errors++;
          m.add(`http${res.status}`);
        }
        this.loop();
      },
      () => {
        this.meter.errors++;
        if (this.running) setTimeout(() => this.loop(), 10);
      },
    );
  }

  mark(): void {
    this.meter.mark();
  }

  collect(): LoadResult {
    return this.meter.result();
  }

  async stop(): Promise<void> {
    this.running = false;
    this.pool?.close();
  }
}
