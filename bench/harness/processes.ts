/** The harness's handles on the server under test and on the load generator. */
import { ChildPeer, forkBench } from '../lib/ipc.js';
import { ProcessWatch, procStats, type CpuRss } from '../lib/proc-stats.js';
import type { LoadJob, LoadResult, LoadgenRequest, LoadgenResponse } from '../loadgen/protocol.js';
import type { CredentialRecord } from '../../src/core/model.js';
import type { TargetKind, TargetPorts, TargetRequest, TargetResponse } from '../targets/protocol.js';

export class Target {
  readonly watch: ProcessWatch;
  private stopping = false;
  /** Set when the process exited without being asked to: what it said, and how it ended. */
  crash: string | null = null;

  private constructor(
    private readonly peer: ChildPeer<TargetRequest, TargetResponse>,
    readonly kind: TargetKind,
    readonly ports: TargetPorts,
    readonly info: Record<string, string>,
    keepSamples: boolean,
  ) {
    this.watch = new ProcessWatch(() => this.stats(), 100, keepSamples);
    peer.child.once('exit', (code, signal) => {
      // Asked to stop and stopped cleanly (or killed by us after the grace period): no crash.
      if (this.stopping && (code === 0 || signal === 'SIGKILL' || signal === 'SIGTERM')) return;
      const when = this.stopping ? ' while shutting down' : '';
      this.crash = `${kind} process exited${when} (${signal ?? `code ${String(code)}`})${peer.lastError() ? `: ${peer.lastError()}` : ''}`;
    });
  }

  static async start(kind: TargetKind, env?: Record<string, string>, opts: { keepSamples?: boolean; cpuProfDir?: string } = {}): Promise<Target> {
    const child = forkBench('targets/main', [], { exposeGc: true, ...(opts.cpuProfDir !== undefined && { cpuProfDir: opts.cpuProfDir }) });
    const peer = new ChildPeer<TargetRequest, TargetResponse>(child);
    try {
      const res = await peer.call({ op: 'start', kind, ...(env && { env }) });
      if (res.op !== 'started') throw new Error(`target ${kind} did not start`);
      return new Target(peer, kind, res.ports, res.info, opts.keepSamples === true);
    } catch (err) {
      await peer.kill();
      throw err;
    }
  }

  get pid(): number {
    return this.peer.pid;
  }

  /** CPU and RSS from /proc (so a busy event loop cannot delay it), else asked over IPC. */
  async stats(): Promise<CpuRss | null> {
    const fromProc = procStats(this.pid);
    if (fromProc) return fromProc;
    const res = await this.peer.call({ op: 'stats' }).catch(() => null);
    return res?.op === 'stats' ? { cpuUs: res.cpuUs, rssBytes: res.rssBytes } : null;
  }

  /** The process's own view of its memory (heap and external), asked over IPC. */
  async heap(): Promise<{ heapUsedBytes: number; externalBytes: number } | null> {
    const res = await this.peer.call({ op: 'stats' }).catch(() => null);
    return res?.op === 'stats' ? { heapUsedBytes: res.heapUsedBytes, externalBytes: res.externalBytes } : null;
  }

  /** Adds token-only device credentials to a running iotgate (setup, not measured). */
  async provision(records: CredentialRecord[]): Promise<void> {
    for (let i = 0; i < records.length; i += 2000) await this.peer.call({ op: 'provision', records: records.slice(i, i + 2000) });
  }

  async gc(): Promise<void> {
    await this.peer.call({ op: 'gc' });
  }

  async stop(): Promise<void> {
    this.stopping = true;
    this.watch.stop();
    await Promise.race([this.peer.call({ op: 'stop' }).catch(() => undefined), new Promise((r) => setTimeout(r, 15_000).unref())]);
    await this.peer.kill();
  }
}

export class Loadgen {
  private readonly peer = new ChildPeer<LoadgenRequest, LoadgenResponse>(forkBench('loadgen/main'));

  get pid(): number {
    return this.peer.pid;
  }

  get alive(): boolean {
    return this.peer.alive;
  }

  async start(job: LoadJob): Promise<Record<string, number>> {
    const res = await this.peer.call({ op: 'start', job });
    return res.op === 'ok' ? (res.setup ?? {}) : {};
  }

  async mark(): Promise<void> {
    await this.peer.call({ op: 'mark' });
  }

  async collect(): Promise<LoadResult> {
    const res = await this.peer.call({ op: 'collect' });
    if (res.op !== 'result') throw new Error('load generator sent no result');
    return res.result;
  }

  async stop(): Promise<void> {
    await this.peer.call({ op: 'stop' });
  }

  async close(): Promise<void> {
    await this.peer.kill();
  }
}
