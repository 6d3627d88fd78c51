/**
 * CPU time and RSS of another process, read from outside (Linux /proc) so that a saturated event
 * loop in the measured process cannot delay or distort the reading. Elsewhere the child reports
 * its own numbers over IPC (`selfStats`).
 */
import { readFileSync } from 'node:fs';

export interface CpuRss {
  /** user + system CPU time, microseconds */
  cpuUs: number;
  rssBytes: number;
}

let ticksPerSecond = 100; // USER_HZ: 100 on every Linux ABI Node supports

/** Null when /proc is not available (not Linux) or the process is gone. */
export function procStats(pid: number): CpuRss | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'latin1');
    // The command name (field 2) may hold spaces: fields are counted after its closing ')'.
    const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const utime = Number(rest[11]);
    const stime = Number(rest[12]);
    const status = readFileSync(`/proc/${pid}/status`, 'latin1');
    const m = /VmRSS:\s+(\d+)\s+kB/.exec(status);
    if (!m || !Number.isFinite(utime)) return null;
    return { cpuUs: ((utime + stime) * 1e6) / ticksPerSecond, rssBytes: Number(m[1]) * 1024 };
  } catch {
    return null;
  }
}

/** This process's own numbers (the fallback a child sends over IPC). */
export function selfStats(): CpuRss {
  const u = process.cpuUsage();
  return { cpuUs: u.user + u.system, rssBytes: process.memoryUsage.rss() };
}

export function setTicksPerSecond(n: number): void {
  ticksPerSecond = n;
}

/**
 * Samples a process's RSS every `intervalMs` (from outside) and keeps the peak; reads CPU at start
 * and end of a window.
 */
export class ProcessWatch {
  private timer: NodeJS.Timeout | null = null;
  private peak = 0;
  private startCpu = 0;
  private startAt = 0;
  readonly samples: { atMs: number; rssBytes: number }[] = [];

  constructor(
    private readonly read: () => Promise<CpuRss | null>,
    private readonly intervalMs = 100,
    private readonly keepSamples = false,
  ) {}

  /** Starts a window: CPU baseline now, peak RSS from now. */
  async begin(): Promise<void> {
    const s = await this.read();
    this.startCpu = s?.cpuUs ?? 0;
    this.peak = s?.rssBytes ?? 0;
    this.startAt = performance.now();
    this.samples.length = 0;
    if (this.keepSamples && s) this.samples.push({ atMs: 0, rssBytes: s.rssBytes });
    this.timer ??= setInterval(() => {
      void this.read().then((r) => {
        if (!r) return;
        if (r.rssBytes > this.peak) this.peak = r.rssBytes;
        if (this.keepSamples) this.samples.push({ atMs: performance.now() - this.startAt, rssBytes: r.rssBytes });
      });
    }, this.intervalMs);
  }

  /** Ends the window: CPU percent of one core over it, peak and current RSS. */
  async end(): Promise<{ cpuPct: number; peakRssBytes: number; rssBytes: number; elapsedMs: number }> {
    const s = await this.read();
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    const elapsedMs = performance.now() - this.startAt;
    const cpuUs = (s?.cpuUs ?? this.startCpu) - this.startCpu;
    const rss = s?.rssBytes ?? 0;
    return { cpuPct: elapsedMs > 0 ? (cpuUs / (elapsedMs * 1000)) * 100 : 0, peakRssBytes: Math.max(this.peak, rss), rssBytes: rss, elapsedMs };
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }
}
