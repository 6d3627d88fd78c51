/** Counters and the latency histogram of one load, reset at the harness's mark. */
import { Histogram } from '../lib/histogram.js';
import type { LoadResult } from './protocol.js';

export class Meter {
  completed = 0;
  sent = 0;
  errors = 0;
  lost = 0;
  readonly hist = new Histogram();
  extra: Record<string, number> = {};
  private at = performance.now();
  private cpu = process.cpuUsage();

  mark(): void {
    this.completed = 0;
    this.sent = 0;
    this.errors = 0;
    this.lost = 0;
    this.hist.reset();
    this.extra = {};
    this.at = performance.now();
    this.cpu = process.cpuUsage();
  }

  add(key: string, n = 1): void {
    this.extra[key] = (this.extra[key] ?? 0) + n;
  }

  result(): LoadResult {
    const cpu = process.cpuUsage(this.cpu);
    return {
      completed: this.completed,
      sent: this.sent,
      errors: this.errors,
      lost: this.lost,
      elapsedMs: performance.now() - this.at,
      latency: this.hist.snapshot(),
      cpuUs: cpu.user + cpu.system,
      extra: { ...this.extra },
    };
  }
}

/**
 * Calls `send(n)` so that `rate` operations per second go out on average (open loop): every
 * millisecond or so it sends what is due since the start, so a late timer catches up.
 */
export class RateTicker {
  private timer: NodeJS.Timeout | null = null;
  private issued = 0;
  private t0 = 0;

  constructor(
    private readonly rate: number,
    private readonly send: (n: number) => void,
  ) {}

  start(): void {
    this.t0 = performance.now();
    this.issued = 0;
    this.timer = setInterval(() => {
      const due = Math.floor(((performance.now() - this.t0) * this.rate) / 1000) - this.issued;
      if (due <= 0) return;
      this.issued += due;
      this.send(due);
    }, 1);
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }
}
