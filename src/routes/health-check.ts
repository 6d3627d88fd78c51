/**
 * Optional active health checks of a route's upstreams: `GET <upstream><check.path>` every
 * intervalMs (one at a time per upstream); 2xx/3xx within timeoutMs is healthy. The first round
 * runs at once, so an upstream that is down at start is known before traffic finds out.
 */
import type { Logger } from 'pino';
import type { Balancer, Upstream } from './balancer.js';

export interface HealthCheckSettings {
  path: string;
  intervalMs: number;
  timeoutMs: number;
}

export class ActiveHealthChecker {
  private timer: NodeJS.Timeout | null = null;
  private readonly running = new Set<Upstream>();
  private closed = false;

  constructor(
    private readonly route: string,
    private readonly balancer: Balancer,
    private readonly settings: HealthCheckSettings,
    private readonly log: Logger,
  ) {}

  start(): void {
    this.round();
    this.timer = setInterval(() => this.round(), this.settings.intervalMs).unref();
  }

  private round(): void {
    for (const u of this.balancer.upstreams) {
      if (this.running.has(u)) continue;
      this.running.add(u);
      void this.check(u).finally(() => this.running.delete(u));
    }
  }

  private async check(u: Upstream): Promise<void> {
    const base = u.url.pathname.endsWith('/') ? u.url.pathname.slice(0, -1) : u.url.pathname;
    const target = new URL(u.url.href);
    target.pathname = `${base}${this.settings.path}`;
    let ok = false;
    let reason = '';
    try {
      const res = await fetch(target, { method: 'GET', redirect: 'manual', signal: AbortSignal.timeout(this.settings.timeoutMs) });
      await res.body?.cancel();
      ok = res.status >= 200 && res.status < 400;
      reason = `health check answered ${res.status}`;
    } catch (err) {
      reason = err instanceof Error && err.name === 'TimeoutError' ? 'health check timed out' : 'health check could not connect';
    }
    if (this.closed) return;
    const before = u.state;
    this.balancer.checked(u, ok, reason);
    if (u.state !== before) this.log.info({ route: this.route, upstream: u.label, state: u.state, reason: ok ? 'health check passed' : reason }, 'route upstream health changed');
  }

  stop(): void {
    this.closed = true;
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }
}
